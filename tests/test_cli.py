"""The ``callax`` command line, run in-process through ``callax.cli.main``."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys

import jax
import pytest

from callax import cli
from conftest import assert_steps_increase, read_run, run_dirs

PPO_STEPS = 2048  # 8 iterations of PPO's default 4 envs x 64 steps


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    """``callax train --algo ppo --env cartpole --seeds 2`` with a few thousand steps."""
    logdir = tmp_path_factory.mktemp("cli")
    out, err = run_main(["train", "--algo", "ppo", "--env", "cartpole",
                         "--total-timesteps", str(PPO_STEPS), "--seeds", "2",
                        "--logdir", str(logdir), "--name", "ppo_run"])
    return logdir, out, err


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
    assert run_dirs(root) == ["seed_0", "seed_1", "seeds"]
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
    # the summary names the run, each seed's final return, timings and the tensorboard line
    lines = out.strip().splitlines()
    assert lines[0] == f"run: {root}"
    for seed in (0, 1):
        final = read_run(os.path.join(root, f"seed_{seed}"))["rollout/ep_rew_mean"][-1][1]
        assert f"seed {seed}: final ep_rew_mean {final:.1f} after {PPO_STEPS:,} steps" in out
    assert "steps/s" in out and "wall time" in out
    assert lines[-1] == f"tensorboard --logdir {logdir}"  # TensorBoard is installed here
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
    assert cli._view_command("/tmp/my runs") == "tensorboard --logdir '/tmp/my runs'"
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    assert cli._view_command("/tmp/runs") == (
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
    for line in lines[1:]:
        run, tag, points, last_step, last_value, low, high = line.split()
        rows[(run, tag)] = (int(points), int(last_step), float(last_value), float(low),
                            float(high))
    # columns are aligned: every row as long as the header's start of the last column
    widths = {len(line) for line in lines}
    assert max(widths) - min(widths) < 12
    expected = {}
    for run_name in ("ppo_run/seed_0", "ppo_run/seed_1", "ppo_run/seeds"):
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
                               for name in ("seed_0", "seed_1", "seeds")]
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
    out, _ = run_main(["train", "--algo", "ppo", "--env", "pendulum",
                                    "--total-timesteps", "2048", "--logdir", str(tmp_path),
                                    "--name", "pend", "--no-progress"])
    run = read_run(os.path.join(tmp_path, "pend", "seed_0"))
    assert "train/std" in run and "rollout/ep_rew_mean" in run
    assert run["train/std"][-1][0] == 2048
    assert "seed 0: final ep_rew_mean -" in out


def test_train_sac_pendulum_records_sac_events(tmp_path):
    """SAC through the command line: TensorBoard scalars and SACEvents in the same run."""
    out, _ = run_main(["train", "--algo", "sac", "--env", "pendulum", "--total-timesteps",
                       "2000", "--logdir", str(tmp_path), "--name", "sac", "--no-progress"])
    run = read_run(os.path.join(tmp_path, "sac", "seed_0"))
    assert_steps_increase(run)
    assert "rollout/ep_rew_mean" in run and "train/critic_loss" in run
    assert any(tag.startswith("trainer/") for tag in run)
    assert run["rollout/ep_rew_mean"][-1][0] == 2000
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
    (["summary"], "the following arguments are required: DIR"),
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
    assert "no TensorBoard event files" in capsys.readouterr().err


def test_python_dash_m():
    """``python -m callax`` is the same command line (bad input: exit status 2)."""
    result = subprocess.run([sys.executable, "-m", "callax", "train", "--algo", "nope",
                             "--env", "cartpole"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("callax: error: argument --algo")
