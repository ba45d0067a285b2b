"""ConsoleTableCallback: SB3's console table from inside jit/vmap, checked against the
TensorBoard callback's event files."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from callax import ConsoleTableCallback
from callax.callbacks import format_table
from conftest import callax_train, child_env, read_run, run_dirs


def parse(text: str) -> list[dict[str, list[str]]]:
    """Tables printed: ``{key: [value per seed]}`` each, keys as ``group/name``."""
    tables, current, group = [], None, ""
    for line in text.splitlines():
        if set(line) == {"-"}:
            if current is None:
                current = {}
            else:
                tables.append(current)
                current = None
            continue
        if current is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0].endswith("/"):
            group = cells[0]
        elif cells[0] and not cells[0].startswith("seed"):
            current[group + cells[0]] = cells[1:]
    return tables


# tests/tiny_ppo.py's jitted PPO (2 seeds) with the table on stdout and a TensorBoard
# callback, in a child process that compiles without XLA's expensive optimizations
# (tests/conftest.py's child_env): its last line names the run directory.
TABLE_SCRIPT = """
import sys

import jax

sys.path.insert(0, sys.argv[2])
from callax import ConsoleTableCallback, TensorBoardCallback, flush_all
from tiny_ppo import learn_vmap

tb = TensorBoardCallback(log_dir=sys.argv[1])
learn_vmap(jax.random.split(jax.random.key(0), 2), [tb, ConsoleTableCallback(every=2)])
jax.effects_barrier()
flush_all()
print("log_dir", tb.tb_writer.log_dir, flush=True)
"""


def test_table_every_n_iterations_per_seed_matches_event_files(logdir):
    done = subprocess.run([sys.executable, "-c", TABLE_SCRIPT, logdir,
                           os.path.dirname(os.path.abspath(__file__))],
                          capture_output=True, text=True, env=child_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    printed, last = done.stdout.rstrip().rsplit("\n", 1)
    assert last.startswith("log_dir ")
    log_dir = last.removeprefix("log_dir ")
    tables = parse(printed)
    assert len(tables) == 2
    assert re.search(r"\|\s+\| seed 0\s+\| seed 1\s+\|", printed)
    for table, step in zip(tables, (64, 128), strict=True):
        assert table["time/total_timesteps"] == [str(step)] * 2
        assert table["time/iterations"] == [str(step // 32)] * 2
        assert {"time/fps", "time/time_elapsed", "train/loss", "train/approx_kl"} <= set(table)
        # CartPole pays 1 a step: the mean episode return is the mean length, <= 20 here.
        assert table["rollout/ep_rew_mean"] == table["rollout/ep_len_mean"]
        assert all(0 < float(v) <= 20 for v in table["rollout/ep_len_mean"])
    for seed in (0, 1):
        run = read_run(f"{log_dir}/seed_{seed}")
        # The table shows 3 significant digits; the dashboard has the same numbers.
        for tag in ("train/loss", "train/learning_rate", "rollout/ep_rew_mean",
                    "rollout/ep_len_mean"):
            points = dict(run[tag])
            assert [float(t[tag][seed]) for t in tables] == [
                pytest.approx(points[s], rel=6e-3) for s in (64, 128)], tag
        # fps: the same clock reading, the same integer.
        fps = dict(run["time/fps"])
        assert [float(t["time/fps"][seed]) for t in tables] == [fps[s] for s in (64, 128)]
        assert all(v > 0 for v in fps.values())


def test_format_table_groups_keys_like_sb3():
    text = format_table({"time/fps": [1234.0], "train/loss": [0.5], "rollout/ep_rew_mean":
                         [float("nan")]})
    lines = text.splitlines()
    assert lines[0] == lines[-1] and set(lines[0]) == {"-"}
    assert lines[1:3] == ["| rollout/        |      |", "|     ep_rew_mean | nan  |"]
    assert "|     fps         | 1234 |" in lines and "|     loss        | 0.5  |" in lines
    with pytest.raises(ValueError, match="every"):
        ConsoleTableCallback(every=0)


def test_callax_train_table(tmp_path):
    # `python -m callax train --table` in a child (tests/conftest.py's callax_train: XLA's
    # expensive optimizations off; the table's numbers are checked above, in-process).
    from callax.train import PPO

    out = callax_train(["--algo", "ppo", "--env", "cartpole", "--total-timesteps", "2048",
                        "--logdir", str(tmp_path), "--no-progress", "--table"]).stdout
    # a short run: four tables (every 2 of 8 iterations of 4 envs x 64 steps)
    tables = parse(out)
    assert [t["time/total_timesteps"] for t in tables] == [["512"], ["1024"], ["1536"],
                                                           ["2048"]]
    assert all("train/loss" in t and "time/fps" in t for t in tables)
    # The run is linked to the algorithm's hyperparameters (parsed by TensorBoard's hparams
    # plugin from what its event accumulator loaded).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    (run,) = [d for d in run_dirs(str(tmp_path)) if d.endswith("seed_0")]
    accumulator = EventAccumulator(str(tmp_path / run))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG]
    hparams = metadata.parse_session_start_info_plugin_data(content).hparams
    assert hparams["algorithm"].string_value == "PPO" and hparams["env"].string_value == (
        "cartpole")
    assert hparams["n_steps"].number_value == PPO().n_steps
