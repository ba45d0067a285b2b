"""Resuming a run after restoring a checkpoint: TensorBoard shows the restored history once
and then the resumed points, never the lost tail (EventAccumulator, callax's own reader and
TensorBoard's data server)."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

import callax
from callax._writer._read import read_scalars
from conftest import assert_steps_increase, data_server_scalars, read_run, sync
from minimal_loop import drive
from test_tensorboard import N_ENVS, N_STEPS, expected_log, scripted

N_ITERS = 6
CHECKPOINT_ITERS = 3  # the checkpoint restored was taken after this many iterations
S = CHECKPOINT_ITERS * N_STEPS * N_ENVS  # its env step
_drive = jax.jit(drive)


def expected_resumed() -> dict[str, list[tuple[int, float]]]:
    """The first run's points up to S, then the resumed run's, its steps counted from S."""
    first = expected_log(*scripted(0, N_ITERS))
    resumed = expected_log(*scripted(1, N_ITERS - CHECKPOINT_ITERS))
    resumed["train/loss"] = [(s, 100.0 * v) for s, v in resumed["train/loss"]]
    return {tag: [(s, float(v)) for s, v in first[tag] if s <= S]
            + [(S + s, float(v)) for s, v in resumed[tag]] for tag in first}


@pytest.fixture(scope="module")
def resumed_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("resume"))
    # The first run gets further than its last checkpoint, then dies.
    first = callax.TensorBoardCallback(name="run", log_dir=root, flush_every=1)
    _drive(first, *scripted(0, N_ITERS), jax.random.key(0))
    read_run(os.path.join(root, "run"))  # written
    # Restored from the checkpoint at S, the rest of the run is trained again (other data).
    again = callax.TensorBoardCallback(name="run", log_dir=root, flush_every=2,
                                       resume_from_step=S)
    _drive(again, *scripted(1, N_ITERS - CHECKPOINT_ITERS), jax.random.key(1), log_scale=100.0)
    sync()  # the jitted call returns before its host calls have run (asynchronous dispatch)
    assert os.listdir(root) == ["run"]  # the same run directory, no "run_1"
    assert len(os.listdir(os.path.join(root, "run"))) == 2
    write_tail_run(os.path.join(root, "tail"))
    return root


TAIL_EXPECTED = {
    "a": [(s, float(s)) for s in range(5)] + [(s, 100.0 + s) for s in range(5, 9)],
    "b": [(s, float(s)) for s in range(5)] + [(20, 200.0)],
}


def write_tail_run(run: str) -> None:
    """A JITSummaryWriter run restarted at step 5 (``purge_step=5``) whose tag "b" is not
    written again before step 20."""
    writer = callax.JITSummaryWriter(run)
    for step in range(10):
        writer.add_dict("", {"a": float(step), "b": float(step)}, global_step=step)
    writer.close()
    resumed = callax.JITSummaryWriter(run, purge_step=5)
    for step in range(5, 8):
        resumed.add_scalar("a", 100.0 + step, step)
    resumed.add_scalar("b", 200.0, 20)
    resumed.close()
    # Closed and written again: the new file does not purge the resumed points.
    resumed.add_scalar("a", 108.0, 8)
    resumed.flush()


def assert_points(run, expected):
    assert sorted(run) == sorted(expected)
    for tag, points in expected.items():
        assert [s for s, _ in run[tag]] == [s for s, _ in points], tag
        np.testing.assert_allclose([v for _, v in run[tag]], [v for _, v in points],
                                   rtol=1e-5, err_msg=tag)
    assert_steps_increase(run)  # no step twice


def test_resume_event_accumulator(resumed_root):
    expected = expected_resumed()
    assert any(S < s for s, _ in expected["episode/return"])
    assert_points(read_run(os.path.join(resumed_root, "run")), expected)


def test_resume_callax_reader_agrees(resumed_root):
    assert_points(read_scalars(os.path.join(resumed_root, "run")), expected_resumed())


def test_resume_data_server(resumed_root):
    expected = expected_resumed()
    served = data_server_scalars(resumed_root, {"run": list(expected), "tail": ["a", "b"]})
    assert_points(served["run"], expected)
    assert served["tail"] == TAIL_EXPECTED


def test_purge_step_hides_the_tail_of_every_tag(resumed_root):
    run = os.path.join(resumed_root, "tail")
    assert read_run(run) == TAIL_EXPECTED
    assert read_scalars(run) == TAIL_EXPECTED
    assert len(os.listdir(run)) == 3


def test_purge_step_in_every_seed_directory(tmp_path):
    run = str(tmp_path / "run")

    def write(writer, offset, steps):
        def one(seed):
            writer.add_scalar("x", offset + seed * 1.0, steps)
        jax.vmap(one)(jax.numpy.arange(2.0))

    first = callax.JITSummaryWriter(run)
    for step in range(6):
        write(first, 0.0, step)
    resumed = callax.JITSummaryWriter(run, purge_step=3)
    for step in range(3, 5):
        write(resumed, 10.0, step)
    for seed in range(2):
        directory = os.path.join(run, f"seed_{seed}")
        assert read_run(directory) == {
            "x": [(s, float(seed)) for s in range(3)] + [(s, 10.0 + seed) for s in (3, 4)]}


def test_bad_resume_arguments(tmp_path):
    with pytest.raises(ValueError, match="name"):
        callax.TensorBoardCallback(log_dir=str(tmp_path), resume_from_step=10)
    # (a wrong type is a TypeError where the runtime type checks of the test suite run)
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises((TypeError, ValueError), match="resume_from_step"):
            callax.TensorBoardCallback(name="r", log_dir=str(tmp_path), resume_from_step=bad)
        with pytest.raises((TypeError, ValueError), match="purge_step"):
            callax.JITSummaryWriter(str(tmp_path / "w"), purge_step=bad)
    assert os.listdir(tmp_path) == []
