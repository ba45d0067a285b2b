"""The ``callax`` command line: ``callax summary`` and bad input in-process through
``callax.cli.main``; ``callax train`` in child processes (``python -m callax train``, with
XLA's expensive optimizations off: these tests check files, tags and printed lines, not how
well the agent learns; tests/conftest.py's ``callax_train``)."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import math
import os
import subprocess
import sys

import jax
import pytest

from callax import cli
from callax.cli._closing import dashboard_url
from conftest import FAST_COMPILE, assert_steps_increase, callax_train, read_run, run_dirs

PPO_STEPS = 2048  # 8 iterations of PPO's default 4 envs x 64 steps
STATISTIC_RUNS = ["seeds/band", "seeds/max", "seeds/mean", "seeds/min"]
SAC_STEPS = 2000  # two SAC iterations of 1000 steps; tests/test_dashboard.py's SAC run too


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    """``callax train --algo ppo --env cartpole --seeds 2`` with a few thousand steps, in a
    child process: ``(logdir, stdout, stderr)``."""
    logdir = tmp_path_factory.mktemp("cli")
    done = callax_train(["--algo", "ppo", "--env", "cartpole", "--total-timesteps",
                         str(PPO_STEPS), "--seeds", "2", "--logdir", str(logdir), "--name",
                         "ppo_run"])
    return logdir, done.stdout, done.stderr


def run_main(argv):
    """``cli.main(argv)`` must succeed; returns its ``(stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(argv)
        jax.effects_barrier()  # progress lines printed from host callbacks
    assert status == 0, err.getvalue()
    return out.getvalue(), err.getvalue()


def test_train_writes_one_run_per_seed(ppo_run):
    logdir, out, err = ppo_run
    root = os.path.join(logdir, "ppo_run")
    assert run_dirs(root) == ["seed_0", "seed_1", *STATISTIC_RUNS]
    for seed in (0, 1):
        run = read_run(os.path.join(root, f"seed_{seed}"))
        assert_steps_increase(run)
        for tag in ("rollout/ep_rew_mean", "rollout/ep_len_mean", "time/fps",
                    "train/learning_rate", "train/value_loss", "train/policy_gradient_loss",
                    "train/approx_kl"):
            assert tag in run, tag
        # SB3's names only: no second "return" chart, and no two tags with equal values.
        assert "episode/return" not in run and "episode/length" not in run
        # (CartPole pays 1 per step: ep_rew_mean equals ep_len_mean by the env's design;
        # the SAC Pendulum test below checks every tag.)
        series = [tuple(v for _, v in points) for tag, points in run.items()
                  if tag != "rollout/ep_len_mean"]
        assert len(set(series)) == len(series)
        assert run["train/value_loss"][-1][0] == PPO_STEPS
        assert len(run["train/value_loss"]) == PPO_STEPS // 256
    # the summary names the run, each seed's final return, timings and the next steps
    lines = out.strip().splitlines()
    assert lines[0] == f"run: {root}"
    for seed in (0, 1):
        final = read_run(os.path.join(root, f"seed_{seed}"))["rollout/ep_rew_mean"][-1][1]
        assert f"seed {seed}: final ep_rew_mean {final:.1f} after {PPO_STEPS:,} steps" in out
    assert "steps/s" in out and "wall time" in out
    # TensorBoard is installed here; the run itself: its runs are named seed_0, seeds/mean...
    assert lines[-4:] == ["next:", f"  tensorboard --logdir {root}",
                          f"  then open {dashboard_url()}  (the return pinned first)",
                          f"  callax summary {root}"]
    # progress went to stderr, with a final 100% line
    assert f"{PPO_STEPS:,}/{PPO_STEPS:,} steps (100%)" in err
    assert "2 seeds" in err


def custom_scalars_layout(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    accumulator = EventAccumulator(directory)
    accumulator.Reload()
    tensor = accumulator.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto
    return layout_pb2.Layout.FromString(tensor.string_val[0])


def assert_reads_like_tensorboard(directory):
    """``cli.read_scalars`` (callax's reader) gives EventAccumulator's points exactly."""
    got, expected = cli.read_scalars(directory), read_run(directory)
    assert sorted(got) == sorted(expected) and list(got) == sorted(got)
    for tag, points in expected.items():
        assert len(got[tag]) == len(points), tag
        for (step, value), (e_step, e_value) in zip(got[tag], points, strict=True):
            assert step == e_step and (value == e_value or math.isnan(value) and
                                       math.isnan(e_value)), (tag, step)


def test_read_scalars_matches_tensorboard_on_train_runs(ppo_run):
    logdir, _, _ = ppo_run
    for seed in (0, 1):
        assert_reads_like_tensorboard(os.path.join(logdir, "ppo_run", f"seed_{seed}"))


def test_view_command_names_the_install_when_tensorboard_is_missing(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    assert cli.view_command("/tmp/my runs") == "tensorboard --logdir '/tmp/my runs'"
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    assert cli.view_command("/tmp/runs") == (
        "python -m pip install tensorboard && tensorboard --logdir /tmp/runs")


def test_summary_needs_no_tensorboard(ppo_run):
    """``callax summary`` with ``tensorboard`` made unimportable prints the same JSON."""
    logdir, _, _ = ppo_run
    code = ("import sys; sys.modules['tensorboard'] = None\n"
            "from callax import cli\n"
            f"sys.exit(cli.main(['summary', {str(logdir)!r}, '--json']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out, _ = run_main(["summary", str(logdir), "--json"])
    assert json.loads(result.stdout) == json.loads(out)


def test_summary_warns_about_a_corrupt_record_in_one_line(ppo_run, tmp_path, capsys):
    logdir, _, _ = ppo_run
    source = os.path.join(logdir, "ppo_run", "seed_0")
    (name,) = os.listdir(source)
    with open(os.path.join(source, name), "rb") as file:
        data = bytearray(file.read())
    data[-10] ^= 0xFF  # inside the last record's data
    (tmp_path / name).write_bytes(bytes(data))
    assert cli.main(["summary", str(tmp_path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("callax: warning: "), err
    assert "data CRC mismatch" in err and name in err
    # every point is there but those of the last record
    from tensorboardX.proto.event_pb2 import Event

    from callax._writer._read import read_records

    last = Event.FromString(list(read_records(os.path.join(source, name)))[-1])
    lost = {value.tag for value in last.summary.value}
    assert lost
    summary = json.loads(out)["."]
    for tag, points in read_run(source).items():
        assert summary[tag]["points"] == len(points) - (tag in lost), tag


def test_summary_table_matches_event_files(ppo_run):
    logdir, _, _ = ppo_run
    out, _ = run_main(["summary", str(logdir)])
    lines = out.strip().splitlines()
    assert lines[0].split() == ["run", "tag", "points", "last", "step", "last", "value", "min",
                                "max"]
    rows = {}
    end = lines.index("")  # then the section over seeds
    over_seeds = lines[end + 1:]
    lines = lines[:end]
    assert over_seeds[0].startswith("Over seeds: interquartile mean")
    assert over_seeds[1].split()[:4] == ["seeds", "of", "tag", "seeds"]
    assert any(line.split()[:3] == [os.path.join("ppo_run", "seed_*"), "rollout/ep_rew_mean",
                                    "2"] for line in over_seeds[2:])
    assert not any(line.split()[1] in ("time/fps", "train/learning_rate")
                   for line in over_seeds[2:])
    for line in lines[1:]:
        run, tag, points, last_step, last_value, low, high = line.split()
        rows[(run, tag)] = (int(points), int(last_step), float(last_value), float(low),
                            float(high))
    # columns are aligned: every row as long as the header's start of the last column
    widths = {len(line) for line in lines}
    assert max(widths) - min(widths) < 12
    expected = {}
    for run_name in ["ppo_run/seed_0", "ppo_run/seed_1",
                     *(f"ppo_run/{run}" for run in STATISTIC_RUNS)]:
        for tag, points in read_run(os.path.join(logdir, run_name)).items():
            values = [v for _, v in points]
            expected[(run_name, tag)] = (len(points), points[-1][0], values[-1], min(values),
                                         max(values))
    assert rows.keys() == expected.keys()
    for key, (points, last_step, last_value, low, high) in expected.items():
        got = rows[key]
        assert got[:2] == (points, last_step), key
        for g, e in zip(got[2:], (last_value, low, high)):
            assert g == pytest.approx(e, rel=1e-3, abs=1e-3), key


def test_summary_json_matches_event_files(ppo_run):
    logdir, _, _ = ppo_run
    out, _ = run_main(["summary", str(logdir), "--json"])
    summary = json.loads(out)
    over_seeds = summary.pop(os.path.join("ppo_run", "seed_*"))
    assert sorted(summary) == [os.path.join("ppo_run", name)
                               for name in ("seed_0", "seed_1", *STATISTIC_RUNS)]
    # outcomes only: no interval over seeds of the speed or of the learning-rate schedule
    assert "time/fps" not in over_seeds and "train/learning_rate" not in over_seeds
    assert "train/value_loss" in over_seeds
    # Over seeds: the IQM of the seeds' last values (two seeds: their mean) and its CI.
    from callax._iqm import stratified_bootstrap_ci

    for tag, stats in over_seeds.items():
        last = [read_run(os.path.join(logdir, "ppo_run", f"seed_{i}"))[tag][-1][1]
                for i in (0, 1)]
        assert stats["seeds"] == 2
        assert stats["iqm"] == pytest.approx(sum(last) / 2, rel=1e-6)
        low, high = stratified_bootstrap_ci(last)
        assert (stats["ci95_low"], stats["ci95_high"]) == pytest.approx((low, high))
        assert min(last) <= stats["ci95_low"] <= stats["ci95_high"] <= max(last)
    assert "rollout/ep_rew_mean" in over_seeds
    for run_name, tags in summary.items():
        run = read_run(os.path.join(logdir, run_name))
        assert sorted(tags) == sorted(run)
        for tag, stats in tags.items():
            values = [v for _, v in run[tag]]
            assert stats["points"] == len(values)
            assert stats["last_step"] == run[tag][-1][0]
            assert math.isclose(stats["last_value"], values[-1], rel_tol=1e-6)
            assert math.isclose(stats["min"], min(values), rel_tol=1e-6)
            assert math.isclose(stats["max"], max(values), rel_tol=1e-6)
    # a single run directory works too
    out, _ = run_main(["summary", os.path.join(logdir, "ppo_run", "seed_1"),
                                    "--json"])
    assert list(json.loads(out)) == ["."]


def test_train_ppo_pendulum(tmp_path):
    """Continuous PPO through the command line (its own preset)."""
    out = callax_train(["--algo", "ppo", "--env", "pendulum", "--total-timesteps", "2048",
                        "--logdir", str(tmp_path), "--name", "pend", "--no-progress"]).stdout
    run = read_run(os.path.join(tmp_path, "pend", "seed_0"))
    assert "train/std" in run and "rollout/ep_rew_mean" in run
    assert run["train/std"][-1][0] == 2048
    assert "seed 0: final ep_rew_mean -" in out


def test_train_sac_pendulum_records_sac_events(tmp_path):
    """SAC through the command line: TensorBoard scalars and SACEvents in the same run."""
    # tests/test_dashboard.py's SAC training: one program, from the session's cache.
    out = callax_train(["--algo", "sac", "--env", "pendulum", "--total-timesteps",
                        str(SAC_STEPS), "--logdir", str(tmp_path), "--name", "sac",
                        "--no-progress"]).stdout
    run = read_run(os.path.join(tmp_path, "sac", "seed_0"))
    assert_steps_increase(run)
    assert "rollout/ep_rew_mean" in run and "train/critic_loss" in run
    assert any(tag.startswith("trainer/") for tag in run)
    assert run["rollout/ep_rew_mean"][-1][0] == SAC_STEPS
    # the first chart a user sees: the layout's first category is the returns
    assert "rollout/ep_rew_mean" in str(custom_scalars_layout(
        os.path.join(tmp_path, "sac", "seed_0")).category[0])
    series = [tuple(v for _, v in points) for points in run.values()]
    assert len(set(series)) == len(series)  # no tag repeats another's values
    assert "seed 0: final ep_rew_mean -" in out
    assert_reads_like_tensorboard(os.path.join(tmp_path, "sac", "seed_0"))


BAD_INPUT = [
    (["train", "--algo", "dqn", "--env", "cartpole"], "invalid choice: 'dqn'"),
    (["train", "--algo", "ppo", "--env", "mountaincar"], "invalid choice: 'mountaincar'"),
    (["train", "--algo", "ppo", "--env", "cartpole", "--total-timesteps", "0"],
     "must be a positive integer"),
    (["train", "--algo", "ppo", "--env", "cartpole", "--total-timesteps", "-100"],
     "must be a positive integer"),
    (["train", "--algo", "ppo", "--env", "cartpole", "--total-timesteps", "lots"],
     "expected a positive integer"),
    (["train", "--algo", "ppo", "--env", "cartpole", "--seeds", "0"],
     "must be a positive integer"),
    (["train", "--algo", "sac", "--env", "cartpole"], "sac needs continuous actions"),
    (["train", "--algo", "ppo", "--env", "cartpole", "--name", "a/b"], "invalid run name"),
    (["train", "--algo", "ppo"], "the following arguments are required: --env"),
    (["summary", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "the following arguments are required"),
    (["summary", "/nonexistent/callax"], "no such directory"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_INPUT)
def test_bad_input_fails_fast_without_compiling(argv, message, monkeypatch, capsys):
    def no_jit(*args, **kwargs):
        raise AssertionError("callax train compiled something on bad input")

    monkeypatch.setattr(jax, "jit", no_jit)
    status = cli.main(argv)
    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("callax: error: "), err
    assert message in err


def test_unwritable_logdir(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(jax, "jit", None)
    status = cli.main(["train", "--algo", "ppo", "--env", "cartpole",
                       "--logdir", str(blocker / "runs")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("callax: error: log directory") and err.count("\n") == 1
    assert "not writable" in err


def test_summary_without_event_files(tmp_path, capsys):
    assert cli.main(["summary", str(tmp_path)]) == 2
    assert "no runs under" in capsys.readouterr().err


def test_python_dash_m():
    """``python -m callax`` is the same command line (bad input: exit status 2)."""
    result = subprocess.run([sys.executable, "-m", "callax", "train", "--algo", "nope",
                             "--env", "cartpole"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("callax: error: argument --algo")


def test_summary_defaults_to_runs(ppo_run, tmp_path, monkeypatch):
    """``callax summary`` alone reads ``runs``, where ``callax train`` writes by default."""
    logdir, _, _ = ppo_run
    os.symlink(logdir, tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    assert json.loads(run_main(["summary", "--json"])[0]) == json.loads(
        run_main(["summary", str(logdir), "--json"])[0])


# --- each writer alone, through the real command line in a fresh process ----------------------

# Another budget than PPO_STEPS, and otherwise `ppo_run`'s options (progress and histograms
# on, two seeds, FAST_COMPILE): the same compiled program, loaded from the session's
# compilation cache (tests/conftest.py) by each fresh process instead of compiled four times
# more.
WRITER_STEPS = 1024


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs)


def train_in_a_process(tmp_path, writers):
    """``python -m callax train ... --writer W ...`` in a fresh process (cwd: `tmp_path`,
    W&B offline, no ``WANDB_DIR``); returns ``(run directory, stdout lines)``."""
    argv = [sys.executable, "-m", "callax", "train", "--algo", "ppo", "--env", "cartpole",
            "--total-timesteps", str(WRITER_STEPS), "--seeds", "2", "--logdir", "runs",
            "--name", "r"]
    for writer in writers:
        argv += ["--writer", writer]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(FAST_COMPILE, WANDB_MODE="offline", WANDB_SILENT="true")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return str(tmp_path / "runs" / "r"), result.stdout.strip().splitlines()


WRITER_SETS = [("tensorboard",), ("jsonl",), ("wandb",), ("tensorboard", "jsonl", "wandb")]


@pytest.mark.parametrize("writers", WRITER_SETS, ids="+".join)
def test_each_writer_alone_finishes(tmp_path, writers):
    from wandb_records import wandb_runs

    root, lines = train_in_a_process(tmp_path, writers)
    files = files_under(root)
    events = sorted({os.path.dirname(f) for f in files if ".tfevents." in f})
    jsonl = sorted({os.path.dirname(f) for f in files if f.endswith("metrics.jsonl")})
    statistics = ["seeds/max", "seeds/mean", "seeds/min"]
    # TensorBoard: every seed, the statistics and the band; nothing else writes event files.
    assert events == (["seed_0", "seed_1", "seeds/band", *statistics]
                      if "tensorboard" in writers else [])
    # JSON lines when chosen, and with W&B alone (callax's own record, what summary reads).
    assert jsonl == (["seed_0", "seed_1", *statistics]
                     if "jsonl" in writers or writers == ("wandb",) else [])
    # W&B: under the run (not in the working directory), one W&B run per seed (W&B's group
    # view draws the statistics over seeds itself).
    assert not os.path.exists(tmp_path / "wandb")
    offline = sorted(glob.glob(os.path.join(root, "wandb", "offline-run-*")))
    assert len(offline) == (2 if "wandb" in writers else 0)
    if "wandb" in writers:
        runs = wandb_runs(root)
        assert sorted(runs) == ["r/seed_0", "r/seed_1"]
    # The closing lines: each seed's last return as written, then the next steps.
    for seed in (0, 1):
        points = read_run_any(os.path.join(root, f"seed_{seed}"))["rollout/ep_rew_mean"]
        assert f"seed {seed}: final ep_rew_mean {points[-1][1]:.1f} after " \
               f"{WRITER_STEPS:,} steps" in lines
        if "wandb" in writers:
            assert runs[f"r/seed_{seed}"].scalars()["rollout/ep_rew_mean"] == points
    steps = lines[lines.index("next:") + 1:]
    expected = []
    if "tensorboard" in writers:
        expected.append(f"  tensorboard --logdir {root}")
        expected.append(f"  then open {dashboard_url()}  (the return pinned first)")
    expected.append(f"  callax summary {root}")
    if "wandb" in writers:  # the runs in seed order (their directory names are random)
        sync = steps.pop()
        assert sync.startswith("  wandb sync ") and sorted(sync.split()[2:]) == offline
    assert steps == expected
    # callax summary reads what was written (the command it names works)
    out, _ = run_main(["summary", root, "--json"])
    assert {"seed_0", "seed_1", "seeds/mean"} <= set(json.loads(out))


def read_run_any(directory):
    """Event files if there are any, else JSON lines (what ``callax summary`` reads)."""
    return cli.read_scalars(directory)


@pytest.mark.parametrize("algo, env", [("ppo", "cartpole"), ("sac", "pendulum")])
def test_the_step_budget_is_not_in_the_program(algo, env):
    """The program ``callax train`` compiles is the same for every ``--total-timesteps``
    (the persistent cache finds it again); a Python int budget would be baked in."""
    import jax.numpy as jnp

    from callax import envs
    from callax.cli._train import make_algo

    trainer, environment = make_algo(algo, env), envs.make(env)

    def program(total):
        learn = jax.jit(lambda k, t: trainer.learn(environment, total_timesteps=t, key=k))
        return host_keys_numbered(learn.lower(jax.random.key(0), total).as_text())

    assert program(jnp.int32(2048)) == program(jnp.int32(150_000))
    if algo == "ppo":  # the same with Python ints differs: the test can fail
        baked = jax.jit(lambda k: trainer.learn(environment, total_timesteps=2048, key=k))
        other = jax.jit(lambda k: trainer.learn(environment, total_timesteps=4096, key=k))
        assert (host_keys_numbered(baked.lower(jax.random.key(0)).as_text())
                != host_keys_numbered(other.lower(jax.random.key(0)).as_text()))


def host_keys_numbered(text: str) -> str:
    """`text` (a lowered program) with its host calls' keys numbered from 0 in order of
    appearance: each lowering in one process registers its host functions under new keys,
    while a fresh process (what finds the program in the persistent cache) numbers them the
    same way every time."""
    import re

    keys: dict[str, int] = {}
    return re.sub(r"key = (\d+) : i64",
                  lambda m: f"key = {keys.setdefault(m[1], len(keys))} : i64", text)
