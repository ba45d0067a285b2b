"""ConsoleTableCallback: SB3's console table from inside jit/vmap, checked against the
TensorBoard callback's event files."""

from __future__ import annotations

import io
import re

import jax
import pytest

from callax import ConsoleTableCallback, TensorBoardCallback
from callax.callbacks import format_table
from conftest import callax_train, read_run, run_dirs
from tiny_ppo import learn_vmap


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


def test_table_every_n_iterations_per_seed_matches_event_files(logdir):
    stream = io.StringIO()
    tb = TensorBoardCallback(log_dir=logdir)
    learn_vmap(jax.random.split(jax.random.key(0), 2),
               [tb, ConsoleTableCallback(every=2, stream=stream)])
    jax.effects_barrier()
    tables = parse(stream.getvalue())
    assert len(tables) == 2
    assert re.search(r"\|\s+\| seed 0\s+\| seed 1\s+\|", stream.getvalue())
    for table, step in zip(tables, (64, 128), strict=True):
        assert table["time/total_timesteps"] == [str(step)] * 2
        assert table["time/iterations"] == [str(step // 32)] * 2
        assert {"time/fps", "time/time_elapsed", "train/loss", "train/approx_kl"} <= set(table)
        # CartPole pays 1 a step: the mean episode return is the mean length, <= 20 here.
        assert table["rollout/ep_rew_mean"] == table["rollout/ep_len_mean"]
        assert all(0 < float(v) <= 20 for v in table["rollout/ep_len_mean"])
    for seed in (0, 1):
        run = read_run(f"{tb.tb_writer.log_dir}/seed_{seed}")
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
