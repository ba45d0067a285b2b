"""The host writer interface and the JSON lines writer: the same run written as event files
and as JSON lines reads back the same; a failing writer costs its own points only."""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import callax
from callax import JITSummaryWriter
from callax._writer import _queue
from callax._writer._read import read_run, read_scalars
from callax.cli import summarize
from callax.writers import AbstractWriter, JsonlWriter, read_jsonl
from conftest import sync

NAN = float("nan")


def same(a: dict, b: dict) -> bool:
    """Equal ``{tag: [(step, value)]}``, NaN equal to NaN, values compared exactly."""
    if a.keys() != b.keys():
        return False
    for tag in a:
        if len(a[tag]) != len(b[tag]):
            return False
        for (s1, v1), (s2, v2) in zip(a[tag], b[tag], strict=True):
            if s1 != s2 or not (v1 == v2 or (math.isnan(v1) and math.isnan(v2))):
                return False
    return True


def write_mixed(writer: JITSummaryWriter) -> None:
    """Eager writes covering what the run decides: NaN/Inf, float32 rounding, AUTO steps,
    masked rows, a dropped point (step going back)."""
    writer.add_scalar("a", 0.1, 0)
    writer.add_scalar("a", NAN, 1)
    writer.add_scalar("a", float("inf"), 2)
    writer.add_dict("", {"a": -math.inf, "b": 1e30}, global_step=3)
    writer.add_scalar("b", 2.5)  # AUTO: 4
    writer.write_rows(("a", "b"), np.array([5, 6, 7]),
                      np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32),
                      np.array([[True, False], [False, True], [True, True]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        writer.add_scalar("a", 9.0, 6)  # goes back: dropped by the run, for every writer
    writer.add_scalar("a", 123456.789, 8)


def test_jsonl_and_event_files_read_back_the_same(tmp_path):
    writer = JITSummaryWriter(str(tmp_path / "run"), writers=("tensorboard", "jsonl"))
    write_mixed(writer)
    writer.flush()
    directory = writer.log_dir
    events, lines = read_scalars(directory), read_jsonl(directory)
    assert [s for s, _ in events["a"]] == [0, 1, 2, 3, 5, 7, 8]
    assert [s for s, _ in events["b"]] == [3, 4, 6, 7]
    assert same(events, lines), (events, lines)
    # callax summary reads a run of JSON lines alone as it reads the event files.
    alone = tmp_path / "alone"
    shutil.copytree(directory, alone / "run")
    for name in os.listdir(alone / "run"):
        if "tfevents" in name:
            os.remove(alone / "run" / name)
    assert os.listdir(alone / "run") == ["metrics.jsonl"]
    assert same(read_run(str(alone / "run")), events)
    by_events = summarize(str(tmp_path / "run"))["."]
    by_lines = summarize(str(alone))["run"]
    assert json.dumps(by_events, sort_keys=True) == json.dumps(by_lines, sort_keys=True)


def test_jsonl_lines(tmp_path):
    writer = JITSummaryWriter(str(tmp_path), writers=("jsonl",))
    writer.add_dict("", {"x": NAN, "y": -math.inf, "z": 0.5}, global_step=7)
    writer.flush()
    assert os.listdir(tmp_path) == ["metrics.jsonl"]  # no event file
    text = (tmp_path / "metrics.jsonl").read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # strict JSON: no bare NaN
    assert [(d["step"], d["tag"], d["value"]) for d in lines] == [
        (7, "x", "NaN"), (7, "y", "-Infinity"), (7, "z", 0.5)]
    assert all(isinstance(d["wall_time"], float) for d in lines)
    assert "NaN," not in text and "Infinity," not in text.replace('"-Infinity",', "")


def test_jsonl_reader_skips_an_unfinished_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "tag": "a", "value": 2.0, "wall_time": 1.0}\n'
                    '{"step": 2, "tag": "a", "val')
    assert read_jsonl(str(tmp_path)) == {"a": [(1, 2.0)]}
    path.write_text('{"step": 1, "tag": "a", "value": 2.0, "wall_time": 1.0}\nnot json\n')
    with pytest.warns(RuntimeWarning, match="line 2"):
        assert read_jsonl(str(path)) == {"a": [(1, 2.0)]}


def test_jsonl_per_seed_and_resumed(tmp_path):
    run = str(tmp_path / "run")
    writer = JITSummaryWriter(run, writers=("tensorboard", "jsonl"))

    def write(w, x, step):
        w.add_scalar("v", x, step)

    for step in range(6):
        jax.vmap(write, in_axes=(None, 0, None))(writer, jnp.arange(3.0) + step, step)
    sync()
    for seed in range(3):
        directory = os.path.join(run, f"seed_{seed}")
        assert read_jsonl(directory) == {"v": [(s, seed + s) for s in range(6)]}
    # Resumed at step 4: both readers hide the old tail, then read the new points.
    resumed = JITSummaryWriter(run, purge_step=4, writers=("tensorboard", "jsonl"))
    for step in (4, 5):
        jax.vmap(write, in_axes=(None, 0, None))(resumed, jnp.arange(3.0) + 10 * step, step)
    sync()
    for seed in range(3):
        directory = os.path.join(run, f"seed_{seed}")
        expected = [(s, seed + s) for s in range(4)] + [(s, seed + 10 * s) for s in (4, 5)]
        assert read_jsonl(directory) == {"v": expected}
        assert same(read_scalars(directory), read_jsonl(directory))


def test_jsonl_histograms_and_hparams(tmp_path):
    from callax._writer import write_histograms, write_hparams

    writer = JITSummaryWriter(str(tmp_path), writers=("jsonl", "tensorboard"))
    handle = int(writer.handle)
    stats = np.array([[[0.0, 3.0, 4.0, 6.0, 14.0, 1.0]]])
    write_histograms(handle, ("w",), np.array([-1]), np.array([5]), stats,
                     np.array([[[1.0, 1.0, 2.0]]]))
    write_hparams(handle, np.array([-1]), {"lr": 0.5, "algo": "ppo", "norm": True})
    writer.flush()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["histogram"] == {"min": 0.0, "max": 3.0, "num": 4.0, "sum": 6.0,
                                     "sum_squares": 14.0, "bucket_limits": [1.0, 2.0, 3.0],
                                     "bucket_counts": [1.0, 1.0, 2.0]}
    assert (lines[0]["step"], lines[0]["tag"]) == (5, "w")
    assert lines[1]["hparams"] == {"lr": 0.5, "algo": "ppo", "norm": True}


class Broken(AbstractWriter):
    """Fails every scalar write."""

    made = 0

    def __init__(self, destination):
        type(self).made += 1
        self.path = os.path.join(destination.directory, "broken")

    def write_scalars(self, tags, steps, values, valid, wall_times):
        raise OSError(28, "No space left on device")

    def close(self):
        pass


def test_a_failing_writer_costs_its_points_only(tmp_path):
    writer = JITSummaryWriter(str(tmp_path), writers=("tensorboard", Broken, "jsonl"))
    with pytest.warns(RuntimeWarning, match="broken.*No space left"):
        for step in range(5):
            writer.add_dict("", {"a": float(step), "b": 2.0 * step}, global_step=step)
            _queue.wait_idle()  # one batch per write (eager rows waiting would join one)
        jax.effects_barrier()
        with pytest.raises(callax.WriteError, match="broken") as info:
            writer.flush()
    assert info.value.lost == 10
    assert Broken.made >= 2  # replaced after each failure: writing goes on when it works
    expected = {"a": [(s, float(s)) for s in range(5)], "b": [(s, 2.0 * s) for s in range(5)]}
    assert read_scalars(str(tmp_path)) == expected
    assert read_jsonl(str(tmp_path)) == expected
    writer.flush()  # the error was raised once


def test_writers_are_checked_when_configured(tmp_path):
    with pytest.raises(ValueError, match="unknown writer 'csv'"):
        JITSummaryWriter(str(tmp_path), writers=("tensorboard", "csv"))
    with pytest.raises(TypeError, match="instance"):
        JITSummaryWriter(str(tmp_path), writers=(JsonlWriter.__new__(JsonlWriter),))
    with pytest.raises(ValueError, match="twice"):
        JITSummaryWriter(str(tmp_path), writers=("jsonl", "jsonl"))
    with pytest.raises(ValueError, match="at least one"):
        JITSummaryWriter(str(tmp_path), writers=())


def test_rerun_moves_every_writer_to_the_new_directory(tmp_path):
    tb = callax.TensorBoardCallback(name="r", log_dir=str(tmp_path),
                                    writers=("tensorboard", "jsonl"))
    from callax._host import begin_training

    writer = tb.tb_writer
    begin_training(writer.handle)
    writer.add_scalar("x", 1.0, 0)
    begin_training(writer.handle)
    writer.add_scalar("x", 2.0, 0)
    sync()
    assert read_jsonl(str(tmp_path / "r")) == {"x": [(0, 1.0)]}
    assert read_jsonl(str(tmp_path / "r_1")) == {"x": [(0, 2.0)]}
    assert read_scalars(str(tmp_path / "r_1")) == {"x": [(0, 2.0)]}


def test_cli_writer_flag():
    from callax.cli import ENVS, UsageError, build_parser

    parser = build_parser()
    base = ["train", "--algo", "ppo", "--env", ENVS[0]]
    assert parser.parse_args(base).writers is None  # TensorBoard alone
    args = parser.parse_args([*base, "--writer", "jsonl", "--writer", "wandb"])
    assert args.writers == ["jsonl", "wandb"]
    with pytest.raises(UsageError, match="invalid choice: 'csv'"):
        parser.parse_args([*base, "--writer", "csv"])


def test_wandb_alone_keeps_callax_json_lines():
    """The closing summary and ``callax summary`` read files: with W&B alone (whose offline
    files have no public reader) ``callax train`` writes its own JSON lines too."""
    from callax.cli._closing import outputs

    assert outputs(("wandb",)) == ("wandb", "jsonl")
    assert outputs(("tensorboard", "wandb")) == ("tensorboard", "wandb")
    assert outputs(("jsonl",)) == ("jsonl",)
