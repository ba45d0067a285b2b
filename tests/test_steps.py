"""64-bit global steps: host side up to 2**63 - 1, device code past 2**31 (and 2**53) without
x64 through `callax.Step`, TensorBoardCallback's step sum past 2**31, negative steps refused.

Every test reads the event files back with TensorBoard's EventAccumulator and compares the
exact integer steps."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import callax
from callax import (
    IterationContext,
    JITSummaryWriter,
    ResetContext,
    ScalarBuffer,
    Step,
    StepContext,
    TensorBoardCallback,
    TensorBoardCallbackStepState,
    TrainingContext,
    _writer as host,
)
from callax._writer._encode import encode_scalar_rows, varint
from conftest import read_run, run_dirs, sync

BIG = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**53 + 1, 2**62 + 3, 2**63 - 1]


def test_x64_is_off_in_these_tests():
    # The point of callax.Step: none of the device-side tests below relies on x64.
    assert not jax.config.jax_enable_x64


def test_python_and_numpy_int_steps_up_to_int64_max(logdir):
    writer = JITSummaryWriter(logdir)
    for i, step in enumerate(BIG[:5]):
        writer.add_scalar("python", float(i), step)
    for i, step in enumerate(BIG[5:]):
        writer.add_dict("np", {"int64": float(i)}, global_step=np.int64(step))
    # write_rows with a NumPy int64 array: split exactly on the host (no int32 truncation).
    writer.write_rows(("rows",), np.array(BIG, np.int64), np.arange(len(BIG))[:, None])
    run = read_run(logdir)
    assert run["python"] == [(s, float(i)) for i, s in enumerate(BIG[:5])]
    assert run["np/int64"] == [(s, float(i)) for i, s in enumerate(BIG[5:])]
    assert run["rows"] == [(s, float(i)) for i, s in enumerate(BIG)]


def test_host_writer_takes_int64_steps_directly(logdir):
    handle = host.open_run(logdir)
    steps = np.array([[2**31, 2**53 + 1, 2**63 - 1]], np.int64)
    values = np.array([[[1.0], [2.0], [3.0]]], np.float32)
    host.write(handle, ("h",), np.array([host.NO_SEED]), steps, values,
               np.ones(values.shape, bool), wait=True)
    host.flush(handle)
    assert read_run(logdir)["h"] == [(2**31, 1.0), (2**53 + 1, 2.0), (2**63 - 1, 3.0)]


def test_encoder_refuses_steps_outside_int64():
    wall = np.zeros(1)
    with pytest.raises(ValueError, match=r"step -2 of tag\(s\) \('t',\)"):
        encode_scalar_rows(("t",), np.array([-2]), np.zeros((1, 1)), wall)
    with pytest.raises(ValueError, match="2\\*\\*63"):
        encode_scalar_rows(("t",), np.array([2**63], np.uint64), np.zeros((1, 1)), wall)
    with pytest.raises(ValueError, match="negative"):
        varint(-1)  # would otherwise never terminate


def test_step_arithmetic_carries_eagerly():
    assert int(Step(2**32 - 1) + 1) == 2**32
    assert int(Step(2**31 - 1) + jnp.int32(1)) == 2**31
    assert int(1 + Step(5)) == 6
    assert int(Step(2**40) + jnp.uint32(2**32 - 1)) == 2**40 + 2**32 - 1
    assert int(Step(2**53) + Step(2**53 + 1)) == 2**54 + 1
    assert int(Step(2**33) + (-1)) == 2**33 - 1  # adding a negative int32 borrows
    assert int(Step(np.int64(2**62))) == 2**62
    assert repr(Step(2**40)) == f"Step({2**40})"
    assert Step(7).words.dtype == jnp.uint32


@pytest.fixture(scope="module")
def count_from():
    """One compiled scan (shared): writes 6 consecutive steps from a `Step`, each step once
    through `add_scalar` and once through a `ScalarBuffer` (K=4 rows per host call)."""

    @jax.jit
    def run(writer, start):
        def body(carry, i):
            step, buffer = carry
            writer.add_scalar("direct", i.astype(jnp.float32), global_step=step)
            buffer = buffer.append(writer, ("buffered",), step, i[None].astype(jnp.float32),
                                   jnp.ones(1, bool))
            return (step + 1, buffer), None

        carry = (start, ScalarBuffer.empty(4, 1))
        (end, buffer), _ = jax.lax.scan(body, carry, jnp.arange(6))
        buffer.flush(writer)
        return end

    return run


@pytest.mark.parametrize("start", [2**31 - 3, 2**32 - 3, 2**53 - 3, 2**63 - 7])
def test_step_counts_past_int32_and_2_53_inside_jit_without_x64(logdir, count_from, start):
    writer = JITSummaryWriter(logdir)
    end = count_from(writer, Step(start))
    assert int(end) == start + 6
    run = read_run(logdir)
    expected = [(start + i, float(i)) for i in range(6)]
    assert run["direct"] == expected
    assert run["buffered"] == expected


def test_vmapped_step_words_reach_each_seed_run(logdir):
    writer = JITSummaryWriter(logdir)

    @jax.jit
    @jax.vmap
    def write(step, value):
        writer.add_scalar("v", value, global_step=step)
        # (Another tag: two host calls of one function are unordered.)
        writer.add_scalar("w", value + 1, global_step=step + 2**32)

    write(Step(np.array([2**33, 2**53 + 1, 2**62], np.int64)), jnp.arange(3.0))
    assert run_dirs(logdir) == ["seed_0", "seed_1", "seed_2"]
    for i, start in enumerate([2**33, 2**53 + 1, 2**62]):
        assert read_run(os.path.join(logdir, f"seed_{i}")) == {
            "v": [(start, float(i))], "w": [(start + 2**32, float(i + 1))]}


def test_traced_int32_and_uint32_steps(logdir):
    writer = JITSummaryWriter(logdir)

    @jax.jit
    def write(s32, u32):
        writer.add_scalar("int32", 1.0, s32)
        writer.add_scalar("uint32", 2.0, u32)  # zero-extended: 2**32 - 1 is a valid step

    write(jnp.int32(2**31 - 1), jnp.uint32(2**32 - 1))
    run = read_run(logdir)
    assert run == {"int32": [(2**31 - 1, 1.0)], "uint32": [(2**32 - 1, 2.0)]}


def _iteration_fn(callback, n_envs, n_steps):
    key = jax.random.key(0)
    keys = jax.random.split(key, n_envs)

    @jax.jit
    def iteration(state, step_state, i):
        def step(step_state, _):
            ctx = StepContext(step_state, None, None, jnp.ones(n_envs, bool),
                              jnp.ones(n_envs, jnp.float32))
            return jax.vmap(lambda c, k: callback.on_step(c, key=k))(ctx, keys), None

        step_state, _ = jax.lax.scan(step, step_state, None, length=n_steps)
        log = {"loss": i.astype(jnp.float32)}
        ctx = IterationContext(state, step_state, None, None, i + 1, None, log,
                               {"active": True})
        return callback.on_iteration(ctx, key=key), step_state

    return iteration, key


def test_tensorboard_callback_global_step_past_2_31(logdir):
    # Start every env's counter just below 2**31 instead of running 2**31 env steps: each
    # env's int32 count wraps past 2**31 - 1 and the total over envs passes 2**32.
    n_envs, n_steps, start = 2, 2, 2**31 - 3
    callback = TensorBoardCallback(name="big", log_dir=logdir, flush_every=2)
    iteration, key = _iteration_fn(callback, n_envs, n_steps)
    state = callback.reset(ResetContext(), key=key)
    step_state = TensorBoardCallbackStepState(jnp.full(n_envs, start, jnp.int32), 0.0, 0,
                                              False, jnp.nan, jnp.nan)
    for i in range(3):
        state, step_state = iteration(state, step_state, jnp.int32(i))
    state = callback.on_training_end(
        TrainingContext(state, step_state, None, None, 0, 3, None), key=key)
    sync()
    run = read_run(os.path.join(logdir, "big"))
    steps = [n_envs * (start + n_steps * (i + 1)) for i in range(3)]
    assert steps == [2**32 - 2, 2**32 + 2, 2**32 + 6]
    assert run["train/loss"] == [(s, float(i)) for i, s in enumerate(steps)]
    assert run["episode/return"] == [(s, 1.0) for s in steps]


# --- negative steps: a clear error, naming the tag -----------------------------------------


@pytest.mark.parametrize("bad", [-1, np.int64(-5), jnp.int32(-3), -2**63, -2.0])
def test_static_negative_step_fails_naming_the_tag(logdir, bad):
    writer = JITSummaryWriter(logdir)
    with pytest.raises(ValueError, match=r"negative global_step .* tag\(s\) 'eager/x'"):
        writer.add_scalar("eager/x", 1.0, bad)
    if not isinstance(bad, jax.Array):
        # A Python/NumPy constant is static inside jit too: the error comes at trace time.
        with pytest.raises(ValueError, match=r"negative global_step .* 'jit/x'"):
            jax.eval_shape(lambda: writer.add_scalar("jit/x", 1.0, bad))
    assert read_run(logdir) == {}


def test_step_above_int64_max_fails_naming_the_tag(logdir):
    writer = JITSummaryWriter(logdir)
    with pytest.raises(OverflowError, match=r"'huge'.*2\*\*63 - 1"):
        writer.add_scalar("huge", 1.0, 2**63)
    with pytest.raises(OverflowError, match="2\\*\\*63 - 1"):
        Step(2**63)


def test_negative_step_constructor_and_bad_step_types(logdir):
    writer = JITSummaryWriter(logdir)
    with pytest.raises(ValueError, match="a Step must be >= 0, got -4"):
        Step(-4)
    with pytest.raises(TypeError, match="'t' must be an integer scalar or a callax.Step, got 1.5"):
        writer.add_scalar("t", 1.0, 1.5)
    with pytest.raises(TypeError, match="integer scalar"):
        writer.add_scalar("t", 1.0, jnp.arange(2))
    with pytest.raises(TypeError, match="bool"):
        Step(True)
    with pytest.raises(TypeError, match="scalar Step"):
        writer.add_scalar("t", 1.0, Step(np.arange(3)))


def test_traced_negative_step_raises_from_the_host_call_naming_tag_and_run(logdir):
    writer = JITSummaryWriter(logdir)

    @jax.jit
    def write(step):
        writer.add_dict("m", {"a": 1.0, "b": 2.0}, global_step=step)

    with pytest.raises(Exception, match=r"negative global step -1 for tag\(s\) 'm/a', 'm/b'") \
            as info:
        write(jnp.int32(-1))
        jax.effects_barrier()
    assert os.path.abspath(logdir) in str(info.value)
    # The same function with a valid step works afterwards; nothing negative was written.
    write(jnp.int32(4))
    assert read_run(logdir) == {"m/a": [(4, 1.0)], "m/b": [(4, 2.0)]}


def test_traced_negative_step_loses_only_its_own_rows(logdir):
    writer = JITSummaryWriter(logdir)
    write = jax.jit(lambda steps: writer.write_rows(("r",), steps, jnp.arange(3.0)[:, None]))
    with pytest.raises(Exception, match=r"negative global step -2 for tag\(s\) 'r'"):
        write(jnp.array([3, -2, 5], jnp.int32))
        jax.effects_barrier()
    assert read_run(logdir) == {"r": [(3, 0.0), (5, 2.0)]}


def test_step_counter_wrapping_past_int64_max_is_refused_on_the_host(logdir):
    writer = JITSummaryWriter(logdir)

    @jax.jit
    def write(step):
        writer.add_scalar("wrap", 1.0, step + 2)

    with pytest.raises(Exception, match=r"negative global step -9223372036854775807 .*'wrap'"):
        write(Step(2**63 - 1))
        jax.effects_barrier()
    assert read_run(logdir) == {}


def test_auto_step_still_continues_past_2_31(logdir):
    writer = JITSummaryWriter(logdir)
    writer.add_scalar("a", 1.0, 2**40)

    @jax.jit
    def write():
        writer.add_scalar("a", 2.0)

    write()
    write()
    assert read_run(logdir)["a"] == [(2**40, 1.0), (2**40 + 1, 2.0), (2**40 + 2, 2.0)]


def test_step_is_exported():
    assert callax.Step is Step
