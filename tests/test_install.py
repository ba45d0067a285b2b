"""The README's main job on a core-only install: a fresh virtual environment with
``pip install -e .`` (no extras, so no TensorBoard), the installed ``callax`` entry point
training and summarising, and every number it prints checked against the event files.

One venv serves the module. It is made without a pip of its own (``ensurepip`` took ~30 s on
a loaded machine): the test environment's pip installs into it (``pip --python``), resolving
the same core dependencies as the venv's own pip would, without compiling their bytecode at
install time (Python compiles what it imports, as it runs)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import venv

import pytest

from callax.cli._closing import dashboard_url
from conftest import FAST_COMPILE, read_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2048


def _run(argv, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, (argv, result.stdout[-2000:], result.stderr[-4000:])
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def core_env(tmp_path_factory):
    """A fresh venv with callax installed as the README's first command does it."""
    home = tmp_path_factory.mktemp("core_venv")
    venv.create(home, with_pip=False)
    bin_dir = os.path.join(home, "Scripts" if os.name == "nt" else "bin")
    python = os.path.join(bin_dir, "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
          "--disable-pip-version-check", "--no-compile", "-e", ROOT], env=env)
    return bin_dir, env


def test_core_install_has_no_extras(core_env):
    bin_dir, env = core_env
    code = ("import importlib.util as u, callax, callax.cli, callax.envs, callax.train\n"
            "print([m for m in ('tensorboard', 'gymnax', 'gymnasium', 'pytest', 'beartype')"
            " if u.find_spec(m)])")
    out = _run([os.path.join(bin_dir, "python"), "-c", code], env=env).stdout
    assert out.strip() == "[]"


def test_main_job_and_summary_on_the_core_install(core_env, tmp_path):
    bin_dir, env = core_env
    callax = os.path.join(bin_dir, "callax")
    # tests/test_cli.py's options (progress on, two seeds), compiled like its children without
    # XLA's expensive optimizations (a JAX setting of the environment, not of the install or
    # the command; this test checks what is installed and printed, not learning): the
    # program of its runs, found in the session's compilation cache (tests/conftest.py)
    # when the versions of JAX match.
    train = _run([callax, "train", "--algo", "ppo", "--env", "cartpole", "--seeds", "2",
                  "--total-timesteps", str(STEPS), "--logdir", str(tmp_path), "--name", "run"],
                 env={**env, **FAST_COMPILE}, cwd=tmp_path)
    lines = train.stdout.strip().splitlines()
    # without TensorBoard the next step says how to install it and open the run
    root = os.path.join(tmp_path, "run")
    assert lines[-4:] == ["next:",
                          f"  python -m pip install tensorboard && tensorboard --logdir {root}",
                          f"  then open {dashboard_url()}  (the return pinned first)",
                          f"  callax summary {root}"]
    for seed in (0, 1):
        run = read_run(os.path.join(tmp_path, "run", f"seed_{seed}"))
        final = run["rollout/ep_rew_mean"][-1][1]
        assert f"seed {seed}: final ep_rew_mean {final:.1f} after {STEPS:,} steps" in lines
        assert run["train/value_loss"][-1][0] == STEPS

    summary = json.loads(_run([callax, "summary", str(tmp_path), "--json"], env=env).stdout)
    over_seeds = summary.pop(os.path.join("run", "seed_*"))
    assert over_seeds["rollout/ep_rew_mean"]["seeds"] == 2
    assert sorted(summary) == [os.path.join("run", name)
                               for name in ("seed_0", "seed_1", "seeds/band", "seeds/max",
                                            "seeds/mean", "seeds/min")]
    for name, tags in summary.items():
        run = read_run(os.path.join(tmp_path, name))
        assert sorted(tags) == sorted(run)
        for tag, stats in tags.items():
            values = [v for _, v in run[tag]]
            assert stats["points"] == len(values), tag
            assert stats["last_step"] == run[tag][-1][0], tag
            assert math.isclose(stats["last_value"], values[-1], rel_tol=1e-6), tag
            assert math.isclose(stats["min"], min(values), rel_tol=1e-6), tag
            assert math.isclose(stats["max"], max(values), rel_tol=1e-6), tag
    table = _run([callax, "summary", str(tmp_path)], env=env).stdout
    assert re.search(r"rollout/ep_rew_mean", table) and "Over seeds" in table


def test_gymnax_without_the_extra_names_it(core_env):
    """An optional extra missing: one clear line naming the extra, no traceback."""
    bin_dir, env = core_env
    code = ("from callax.envs import GymnaxEnv\n"
            "try:\n    GymnaxEnv('CartPole-v1')\n"
            "except ImportError as error:\n    print(error)\n")
    out = _run([os.path.join(bin_dir, "python"), "-c", code], env=env).stdout
    assert "callax[gymnax]" in out, out
