"""Eager writes (host loops that jit only the update): no compilation per call, flat memory,
in order with the writes of jitted programs (issue 16, "Eager writes", "Flat memory")."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import callax
from conftest import read_run

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def compiles():
    """A list that receives one entry per XLA compilation while the test runs."""
    seen: list[float] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield seen
    jax.monitoring.unregister_event_duration_listener(listener)


def test_eager_writes_compile_nothing_after_the_first_write(logdir, compiles):
    writer = callax.JITSummaryWriter(logdir)
    writer.add_scalar("a", 0.0, 0)
    writer.add_dict("d", {"x": 0.0, "y": np.float32(0.0)}, global_step=0)
    before = len(compiles)
    for step in range(1, 200):
        writer.add_scalar("a", float(step), step)
        writer.add_scalar("a2", np.float64(step))  # global_step=None: the next step
        writer.add_dict("d", {"x": step, "y": np.int64(step) * 2}, global_step=np.int64(step))
    writer.flush()
    assert len(compiles) == before, f"{len(compiles) - before} compilations in eager writes"
    run = read_run(logdir)
    assert run["a"] == [(s, float(s)) for s in range(200)]
    assert run["a2"] == [(s - 1, float(s)) for s in range(1, 200)]
    assert run["d/y"] == [(s, 2.0 * s) for s in range(200)]


def test_eager_and_jitted_writes_keep_program_order(logdir):
    # An eager write right after a jitted call whose host calls may still be running: the
    # eager point is written after the program's points (global_step=None counts on).
    writer = callax.JITSummaryWriter(logdir)

    @jax.jit
    def chunk(x):
        def body(c, _):
            writer.add_scalar("loss", c)
            return c + 1.0, None

        return jax.lax.scan(body, x, None, length=8, unroll=4)[0]

    x = jnp.float32(0.0)
    for _ in range(3):
        x = chunk(x)
        writer.add_scalar("loss", -1.0)  # eager, between chunks
    writer.flush()
    expected = []
    for k in range(3):
        expected += [float(8 * k + i) for i in range(8)] + [-1.0]
    assert read_run(logdir)["loss"] == list(enumerate(expected))


def test_eager_writes_accept_concrete_jax_arrays_and_check_their_values(logdir, compiles):
    writer = callax.JITSummaryWriter(logdir)
    update = jax.jit(lambda w: w * 0.5)
    w = update(update(jnp.float32(16.0)))  # compiled for this argument type
    writer.add_scalar("w", w, 0)  # a jax.Array computed by a jitted update
    before = len(compiles)
    for step in range(1, 5):
        w = update(w)
        writer.add_dict("train", {"w": w, "step": jnp.int32(step)}, global_step=step)
    assert len(compiles) == before
    with pytest.raises(ValueError, match="must be a scalar"):
        writer.add_scalar("bad", jnp.ones(3), 5)
    with pytest.raises(ValueError, match="negative global_step"):
        writer.add_scalar("w", 1.0, -1)
    writer.flush()
    run = read_run(logdir)
    assert run["w"] == [(0, 4.0)]
    assert run["train/w"] == [(s, 8.0 * 0.5 ** (s + 1)) for s in range(1, 5)]


def test_memory_stays_flat_over_many_eager_writes_and_runs(tmp_path):
    # 100,000 eager writes into one run, then 1,000 runs opened, written and closed (a
    # sweep), in a fresh process: RSS after closing stays within 50 MB of where it started.
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "eager_memory_script.py"), str(tmp_path),
         "100000", "1000"],
        capture_output=True, text=True, timeout=600, check=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1"))
    out = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    grown = int(out["rss_end"]) - int(out["rss_start"])
    assert grown < 50 * 2**20, f"RSS grew by {grown / 2**20:.1f} MB"
    assert out["points"].split() == ["50000", "50000", "3000"]


def test_eagerly_written_event_records_compile_nothing_per_write(logdir, compiles):
    """Issue 26: a Python loop writing the ``EventRecord`` its jitted update returned (as a
    CleanRL-style SAC loop does) compiled a new ``jit(cond)`` at every write. The first
    write of a record structure compiles at most once, the next 100 writes nothing."""
    from callax.events import SACEvents, record

    @jax.jit
    @record
    def update(x):
        SACEvents.policy_loss(None, x)
        SACEvents.critic_value_loss(0, 2.0 * x)
        SACEvents.critic_value_loss(1, jnp.where(x > 50, jnp.nan, x))  # NaN: left out
        return x + 1.0

    @jax.jit
    @record
    def other(x):
        SACEvents.buffer_size(x.astype(jnp.int32))
        return x

    writer = callax.JITSummaryWriter(logdir)
    x, epoch = update(jnp.float32(0.0))
    _, sizes = other(x)
    epoch.merge(epoch)  # compiled before counting: the update and merge's eager ops
    before = len(compiles)
    epoch.write(writer, 0)
    sizes.write(writer, 0)
    assert len(compiles) - before <= 2, "more than one compilation per record structure"
    before = len(compiles)
    for step in range(1, 101):
        x, rec = update(x)
        epoch = epoch.merge(rec) if step % 10 else rec  # accumulate, restart every 10
        epoch.write(writer, step)  # eagerly: a host-side reduce, no program
        sizes.write(writer, np.int64(step), when=step % 2 == 0)
    writer.flush()
    assert len(compiles) == before, f"{len(compiles) - before} compilations in 100 writes"
    run = read_run(logdir)

    def mean(values):
        return float(np.mean(np.asarray(values, np.float32)))

    # At step s the record holds updates 10 * (s // 10) .. s (x = the update's index).
    first = [10 * (s // 10) for s in range(101)]
    assert run["trainer/policy_loss"] == [(s, mean(range(first[s], s + 1)))
                                            for s in range(101)]
    assert run["trainer/critic_value_loss/0"] == [(s, 2 * mean(range(first[s], s + 1)))
                                                    for s in range(101)]
    # NaN (x > 50) is left out by nanmean; a record of NaN only writes no point.
    assert run["trainer/critic_value_loss/1"] == [
        (s, mean([v for v in range(first[s], s + 1) if v <= 50])) for s in range(60)]
    assert run["trainer/buffer_size"] == [(s, 1.0) for s in (0, *range(2, 101, 2))]


def _same_arrays(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # NaN equals NaN


def test_eager_reset_is_the_traced_reset_and_compiles_once(logdir, compiles):
    """Issue 26: the docs' Python loop (the jitted update merges its record into the
    epoch's; every N updates ``write`` then ``reset`` eagerly) compiles nothing after the
    first epoch; the eager ``reset`` (one cached program per shape) returns what the traced
    one does, unbatched and batched, and inside jit ``reset`` still traces to plain ops."""
    from callax.events import EventRecord, SACEvents, discover, record

    def train_step(x):
        SACEvents.critic_value_loss(0, x)
        SACEvents.policy_loss(None, 2.0 * x)
        SACEvents.time_backprob(x, 50.0)
        return x + 1.0

    @jax.jit
    def update(x, epoch):
        x, rec = record(train_step)(x)
        return x, epoch.merge(rec)

    traced_reset = jax.jit(lambda r: r.reset())
    writer = callax.JITSummaryWriter(logdir)
    x, epoch = jnp.float32(0.0), discover(train_step, jnp.float32(0.0))
    for step in range(1, 301):
        if step == 4:
            before = len(compiles)
        x, epoch = update(x, epoch)
        if step % 3 == 0:
            epoch.write(writer, step)
            reset = epoch.reset()
            assert isinstance(reset, EventRecord) and reset.columns == epoch.columns
            _same_arrays(reset, traced_reset(epoch))
            epoch = reset
    writer.flush()
    assert len(compiles) == before, f"{len(compiles) - before} compilations in 99 epochs"
    run = read_run(logdir)
    # Epoch k (steps 3k-2 .. 3k) holds x = 3k-3, 3k-2, 3k-1: mean 3k-2.
    assert run["trainer/critic_value_loss/0"] == [(s, float(s - 2)) for s in range(3, 301, 3)]
    assert run["trainer/policy_loss"] == [(s, float(2 * (s - 2))) for s in range(3, 301, 3)]

    # Batched (a vmapped update's record) and never-called slots: the same as traced.
    _, batched = jax.vmap(record(train_step))(jnp.arange(3.0))
    _same_arrays(batched.reset(), traced_reset(batched))
    assert jnp.shape(batched.reset().calls) == (3, len(batched.columns))
    _same_arrays(EventRecord.empty().reset(), traced_reset(EventRecord.empty()))
    # Inside jit: the traced code (no nested program), as before.
    primitives = {e.primitive.name for e in jax.make_jaxpr(lambda r: r.reset())(batched).eqns}
    assert "pjit" not in primitives and "jit" not in primitives, primitives


def test_eager_record_and_merge_are_the_traced_ones(compiles):
    """Issue 26: recording an epoch-level event eagerly and merging it into the epoch's
    record (docs/foreign-loops.md's CleanRL recipe) ran a dozen (record) and ~40 (merge)
    operations one by one at every write; each is now one program compiled once per
    structure, with the same arrays as under jit (NaN skipped, several calls per slot,
    slots of both records)."""
    from callax.events import SACEvents, record

    def several(x, size):
        SACEvents.critic_value_loss(0, x)
        SACEvents.critic_value_loss(0, jnp.nan)
        SACEvents.critic_value_loss(0, 2.0 * x)
        SACEvents.policy_loss(None, x)
        SACEvents.buffer_size(size)

    def other(x):
        SACEvents.policy_loss(None, -x)
        SACEvents.entropy_coef(None, x)

    traced_merge, traced_record = jax.jit(lambda a, b: a.merge(b)), jax.jit(record(several))
    for i in range(5):
        if i == 2:
            before = len(compiles)
        x = jnp.float32(i)
        _, eager = record(several)(x, i + 1)
        _, traced = traced_record(x, i + 1)
        assert eager.columns == traced.columns
        _same_arrays(eager, traced)
        _, end = record(other)(x)
        merged = eager.merge(end)
        _same_arrays(merged, traced_merge(eager, end))
        assert merged.as_dict() == {"trainer/critic_value_loss/0": 1.5 * i,
                                    "trainer/policy_loss": 0.0,  # mean of x and -x
                                    "trainer/entropy_coef": float(i),
                                    "trainer/buffer_size": float(i + 1)}
    assert len(compiles) == before, f"{len(compiles) - before} compilations"


def test_rows_alternating_over_tags_join_one_batch(logdir, monkeypatch):
    """Issue 26: a tight loop alternating over 6 tags (CleanRL's) queued one job, and one
    file write, per call, so the queue filled and each call waited for the writer thread.
    Rows of any tags queued while the thread is busy are now written by one job."""
    import threading

    from callax._writer import _queue
    from callax._writer._tensorboard import TensorBoardWriter

    tags = ("charts/episodic_return", "charts/episodic_length", "losses/qf1_values",
            "losses/qf1_loss", "losses/actor_loss", "charts/SPS")
    writer = callax.JITSummaryWriter(logdir)
    writer.add_scalar("warm", 0.0, 0)
    writer.flush()
    calls = []
    original = TensorBoardWriter.write_scalars

    def counting(self, *args):
        calls.append(args[0])
        return original(self, *args)

    monkeypatch.setattr(TensorBoardWriter, "write_scalars", counting)
    release = threading.Event()
    _queue.submit(release.wait)  # the writer thread is busy until released
    for i in range(60):
        writer.add_scalar(tags[i % 6], float(i), i // 6)
    release.set()
    writer.flush()
    assert len(calls) == 1, f"{len(calls)} writes for 60 rows"
    run = read_run(logdir)
    for j, tag in enumerate(tags):
        assert run[tag] == [(k, float(6 * k + j)) for k in range(10)]
