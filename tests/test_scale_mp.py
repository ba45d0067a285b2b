"""Two real JAX processes (gloo on 127.0.0.1) training with shard_map x vmap: one run name
for both, each global seed written by exactly one process, no step twice (also through
TensorBoard's data server), process-local data written once or per process."""

from __future__ import annotations

import os
import urllib.parse
import urllib.request

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import two_processes
from callax.callbacks._seeds import read_statistics
from conftest import get_json, read_run, run_dirs, settled, tensorboard_server
from test_scale import assert_points, expected, expected_seeds, gradient_descent_losses

HERE = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def mp_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("scale_mp"))
    two_processes.run("scale_mp_script.py", root, timeout=240)
    return root


def writers(directory: str) -> set[str]:
    """The process ids in the names of a directory's event files (``...<pid>.<n>.callax``)."""
    return {f.split(".")[-3] for f in os.listdir(directory) if ".tfevents." in f}


def test_one_run_name_and_one_process_per_seed(mp_root):
    train = os.path.join(mp_root, "train")
    (name,) = os.listdir(train)
    assert run_dirs(train) == (sorted(f"{name}/seed_{i}" for i in range(8))
                               + [f"{name}/seeds/{s}" for s in ("band", "max", "mean", "min")])
    for i in range(8):
        directory = os.path.join(train, name, f"seed_{i}")
        assert len(writers(directory)) == 1, (i, os.listdir(directory))
        assert_points(read_run(directory), expected(i))
    # The statistics over seeds: the rows of both processes' devices gathered, written by
    # one process.
    for statistic in ("band", "max", "mean", "min"):
        assert len(writers(os.path.join(train, name, "seeds", statistic))) == 1
    assert_points(read_statistics(os.path.join(train, name)), expected_seeds(8))


def test_every_writer_gets_each_global_seed_from_one_process(mp_root):
    # JSON lines: one file per seed, appended by the one process holding the seed (a second
    # writer would duplicate every point); W&B: one run per global seed, grouped by the run.
    from callax.writers import read_jsonl
    from wandb_records import wandb_runs

    train = os.path.join(mp_root, "train")
    (name,) = os.listdir(train)
    runs = wandb_runs(mp_root)
    assert sorted(runs) == sorted(f"{name}/seed_{i}" for i in range(8))
    for i in range(8):
        directory = os.path.join(train, name, f"seed_{i}")
        events = read_run(directory)
        assert read_jsonl(directory) == events
        run = runs[f"{name}/seed_{i}"]
        assert run.run.run_group == name and run.finished
        assert run.scalars()["train/loss"] == events["train/loss"]


def test_process_local_data_written_once_or_per_process(mp_root):
    assert read_run(os.path.join(mp_root, "local")) == {"process": [(0, 0.0)]}
    assert len(writers(os.path.join(mp_root, "local"))) == 1
    accumulator = EventAccumulator(os.path.join(mp_root, "local"),
                                   size_guidance={"histograms": 0})
    accumulator.Reload()
    (histogram,) = accumulator.Histograms("process")  # process 0's, once (host.send)
    assert (histogram.step, histogram.histogram_value.num) == (1, 3)
    assert histogram.histogram_value.max == 0.0
    assert run_dirs(os.path.join(mp_root, "per_process")) == ["process_0", "process_1"]
    for p in range(2):
        run = read_run(os.path.join(mp_root, "per_process", f"process_{p}"))
        assert run == {"process": [(0, float(p))]}
    assert writers(os.path.join(mp_root, "per_process", "process_0")) != writers(
        os.path.join(mp_root, "per_process", "process_1"))


def test_docs_example_processes(mp_root):
    examples = os.path.join(mp_root, "examples")
    assert run_dirs(os.path.join(examples, "processes")) == [f"seed_{i}" for i in range(8)]
    by_process = []
    for i in range(8):
        directory = os.path.join(examples, "processes", f"seed_{i}")
        (pid,) = writers(directory)
        by_process.append(pid)
        assert_points(read_run(directory),
                      {"train/loss": gradient_descent_losses(1.0 + i, 1)})
    # Seeds 0-3 live on process 0's devices, 4-7 on process 1's: each process writes its own.
    assert len(set(by_process[:4])) == 1 and len(set(by_process[4:])) == 1
    assert by_process[0] != by_process[4]
    local = os.path.join(examples, "processes_local")
    assert run_dirs(local) == ["process_0", "process_1"]
    for p in range(2):
        assert read_run(os.path.join(local, f"process_{p}")) == {
            "host/process_index": [(0, float(p))]}


def test_sharded_jit_over_processes_is_written_by_process_zero(mp_root):
    root = os.path.join(mp_root, "jit")
    assert run_dirs(root) == [f"seed_{i}" for i in range(8)]
    pids = set()
    for i in range(8):
        pids |= writers(os.path.join(root, f"seed_{i}"))
        assert_points(read_run(os.path.join(root, f"seed_{i}")),
                      {"train/loss": gradient_descent_losses(1.0 + i, 1)})
    # One process wrote them all: the one that wrote the process-local data by default.
    assert pids == writers(os.path.join(mp_root, "local"))


def test_data_server_sees_every_step_once(mp_root):
    with tensorboard_server(os.path.join(mp_root, "train")) as (port, server):
        base = f"http://127.0.0.1:{port}/data/plugin/scalars"

        def seed_runs():
            tags = get_json(f"{base}/tags")
            runs = {r: t for r, t in tags.items() if "/seeds/" not in r}
            seeds = [r for r in tags if "/seeds/" in r]
            ok = len(runs) == 8 and len(seeds) == 4 and all(
                "train/loss" in t for t in runs.values())
            return runs if ok else None

        tags = settled(seed_runs, server, timeout=60)
        for run in tags:
            seed = int(run.rsplit("seed_", 1)[1])
            query = urllib.parse.urlencode({"run": run, "tag": "train/loss"})
            points = get_json(f"{base}/scalars?{query}")
            steps = [p[1] for p in points]
            assert steps == [8, 16, 24], (run, steps)
            assert [p[2] for p in points] == [(seed + 1.0) * i for i in range(3)]
