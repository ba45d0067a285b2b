"""Values: NaN and ±Inf round-trip; bool/int/float16/bfloat16 (and float64/int64 with x64)
accepted; everything else fails at trace time naming the tag. Read back with EventAccumulator."""

import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from callax import (
    IterationContext,
    JITSummaryWriter,
    ResetContext,
    ScalarBuffer,
    TensorBoardCallback,
    TensorBoardCallbackStepState,
)
from conftest import read_run

SPECIAL = [math.nan, math.inf, -math.inf, -0.0, 1e-45, 3.4028235e38, -3.4028235e38]


def _same(a: float, b: float) -> bool:
    """Equal as float32 (TensorBoard's scalar type), NaN equal to NaN, -0.0 distinct."""
    b = float(np.float32(b))
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) ==
                                                 math.copysign(1, b))


def _assert_points(points, expected):
    assert [s for s, _ in points] == [s for s, _ in expected]
    assert all(_same(v, e) for (_, v), (_, e) in zip(points, expected, strict=True)), points


def test_nan_and_inf_round_trip_eagerly_inside_jit_and_through_a_buffer(logdir):
    writer = JITSummaryWriter(logdir)
    for step, value in enumerate(SPECIAL):
        writer.add_scalar("eager", value, step)

    @jax.jit
    def write(values):
        def body(buffer, x):
            step, value = x
            writer.add_dict("jit", {"v": value}, global_step=step)
            return buffer.append(writer, ("buffered",), step, value[None], jnp.ones(1, bool)), None

        buffer, _ = jax.lax.scan(body, ScalarBuffer.empty(3, 1),
                                 (jnp.arange(len(SPECIAL)), values))
        buffer.flush(writer)

    write(jnp.asarray(SPECIAL, jnp.float32))
    run = read_run(logdir)
    expected = list(enumerate(SPECIAL))
    for tag in ("eager", "jit/v", "buffered"):
        _assert_points(run[tag], expected)


def test_nan_in_the_training_log_reaches_tensorboard(logdir):
    callback = TensorBoardCallback(name="nan", log_dir=logdir, flush_every=1)
    key = jax.random.key(0)
    state = callback.reset(ResetContext(), key=key)
    step_state = TensorBoardCallbackStepState(jnp.full(2, 5, jnp.int32), 0.0, 0, False,
                                              jnp.nan, jnp.nan)
    log = {"loss": jnp.float32(jnp.nan), "grad": jnp.float32(-jnp.inf)}
    callback.on_iteration(IterationContext(state, step_state, None, None, 1, None, log, {}),
                          key=key)
    run = read_run(os.path.join(logdir, "nan"))
    _assert_points(run["train/loss"], [(10, math.nan)])
    _assert_points(run["train/grad"], [(10, -math.inf)])


ACCEPTED = {
    "python/bool": (True, 1.0),
    "python/int": (-7, -7.0),
    "python/float": (0.1, float(np.float32(0.1))),
    "numpy/bool": (np.bool_(False), 0.0),
    "numpy/uint8": (np.uint8(255), 255.0),
    "numpy/int64": (np.int64(2**40), float(2**40)),  # converted on the host side: exact
    "numpy/float64": (np.float64(1.5), 1.5),
    "jax/bool": (jnp.bool_(True), 1.0),
    "jax/int8": (jnp.int8(-128), -128.0),
    "jax/int16": (jnp.int16(300), 300.0),
    "jax/int32": (jnp.int32(2**24 + 1), float(np.float32(2**24 + 1))),  # float32 rounding
    "jax/uint32": (jnp.uint32(2**32 - 1), float(np.float32(2**32 - 1))),
    "jax/float16": (jnp.float16(0.333), float(np.float16(0.333))),
    "jax/bfloat16": (jnp.bfloat16(3.140625), 3.140625),
    "jax/bfloat16_inf": (jnp.asarray(-jnp.inf, jnp.bfloat16), -math.inf),
    "jax/float16_nan": (jnp.asarray(jnp.nan, jnp.float16), math.nan),
    "jax/float32_0d": (jnp.asarray([2.5])[0], 2.5),
}


@pytest.mark.parametrize("jit", [False, True])
def test_accepted_dtypes_round_trip(logdir, jit):
    writer = JITSummaryWriter(logdir)
    values = {tag: value for tag, (value, _) in ACCEPTED.items()}

    def write():
        # Closed over (not jit arguments): JAX itself would truncate an np.int64 argument
        # to int32 without x64, before callax sees it.
        writer.add_dict("", values, global_step=3)

    (jax.jit(write) if jit else write)()
    run = read_run(logdir)
    assert sorted(run) == sorted(ACCEPTED)
    for tag, (_, expected) in ACCEPTED.items():
        _assert_points(run[tag], [(3, expected)])


REJECTED = [
    ("complex", 1 + 2j, TypeError, "is complex"),
    ("complex64", jnp.complex64(1j), TypeError, "is complex"),
    ("string", "1.0", TypeError, "must be a number"),
    ("bytes", b"1", TypeError, "must be a number"),
    ("none", None, TypeError, "must be a number"),
    ("vector", jnp.arange(3.0), ValueError, r"must be a scalar, got shape \(3,\)"),
    ("two_by_one", np.ones((2, 1)), ValueError, r"must be a scalar, got shape \(2, 1\)"),
    ("list", [1.0, 2.0], ValueError, r"must be a scalar, got shape \(2,\)"),
    ("key", jax.random.key(0), TypeError, "non-numeric dtype key"),
    ("object", object(), TypeError, "not an array-like number"),
]


@pytest.mark.parametrize(("name", "value", "error", "message"), REJECTED,
                         ids=[r[0] for r in REJECTED])
def test_other_values_fail_at_trace_time_naming_the_tag(logdir, name, value, error, message):
    writer = JITSummaryWriter(logdir)
    tag = f"bad/{name}"
    # jax.eval_shape only traces: the error comes before anything is compiled or run.
    with pytest.raises(error, match=f"'{tag}'.*{message}|{message}.*'{tag}'"):
        jax.eval_shape(lambda: writer.add_dict("bad", {name: value}, global_step=0))
    with pytest.raises(error, match=f"'{tag}'"):
        writer.add_dict("", {"fine": 1.0, tag: value}, global_step=0)
    if isinstance(value, jax.Array | np.ndarray | complex):
        # (The tests' runtime type checker refuses the other values of add_scalar first.)
        with pytest.raises(error, match=f"'{tag}'"):
            jax.eval_shape(lambda: writer.add_scalar(tag, value, 0))
    assert read_run(logdir) == {}  # not even the valid value of the same call


def test_low_level_rows_refuse_complex_and_non_numeric_values_naming_tags(logdir):
    writer = JITSummaryWriter(logdir)
    with pytest.raises(TypeError, match=r"tag\(s\) 'a', 'b' is complex"):
        jax.eval_shape(lambda: writer.write_rows(("a", "b"), jnp.arange(2),
                                                 jnp.ones((2, 2), jnp.complex64)))
    with pytest.raises(TypeError, match=r"tag\(s\) 'x' is complex"):
        jax.eval_shape(lambda: ScalarBuffer.empty(2, 1).append(
            writer, ("x",), 0, jnp.ones(1, jnp.complex64), jnp.ones(1, bool)))
    with pytest.raises(TypeError, match=r"tag\(s\) 'k' has non-numeric dtype key"):
        writer.write_rows(("k",), jnp.arange(1), jax.random.split(jax.random.key(0), 1)[:, None])
    assert read_run(logdir) == {}


def test_training_log_with_a_complex_or_vector_entry_fails_naming_the_tag(logdir):
    callback = TensorBoardCallback(name="bad", log_dir=logdir)
    key = jax.random.key(0)
    state = callback.reset(ResetContext(), key=key)
    step_state = TensorBoardCallbackStepState.initial()
    for log, error, match in [({"z": jnp.complex64(1j)}, TypeError, "'train/z' is complex"),
                              ({"v": jnp.ones(4)}, ValueError, "'train/v' must be a scalar")]:
        ctx = IterationContext(state, step_state, None, None, 1, None, log, {})
        with pytest.raises(error, match=match):
            jax.eval_shape(lambda ctx=ctx: callback.on_iteration(ctx, key=key))


_X64_SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np, sys
    import callax
    writer = callax.JITSummaryWriter(sys.argv[1])

    @jax.jit
    def write(step, f64, i64):
        writer.add_dict("x64", {"f64": f64, "i64": i64, "f32": f64.astype(jnp.float32)},
                        global_step=step)
        writer.add_scalar("x64/step", 1.0, callax.Step(step) + 1)

    write(jnp.int64(2**62 + 1), jnp.float64(0.1), jnp.int64(-(2**40)))
    write(jnp.int64(2**63 - 3), jnp.float64(1e300), jnp.int64(3))
    try:
        write(jnp.int64(-5), jnp.float64(0.0), jnp.int64(0))
        jax.effects_barrier()
    except Exception as error:
        # Either host call may fail first (they are unordered).
        assert ("negative global step -5 for tag(s) 'x64/f64', 'x64/i64'" in str(error)
                or "negative global step -4 for tag(s) 'x64/step'" in str(error)), error
    else:
        raise AssertionError("negative int64 step accepted")
    callax.flush_all()
""")


def test_float64_and_int64_values_and_steps_with_x64(logdir):
    result = subprocess.run([sys.executable, "-c", _X64_SCRIPT, logdir], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = read_run(logdir)
    steps = [2**62 + 1, 2**63 - 3]
    _assert_points(run["x64/f64"], list(zip(steps, [float(np.float32(0.1)), math.inf])))
    _assert_points(run["x64/i64"], list(zip(steps, [-(2.0**40), 3.0])))
    _assert_points(run["x64/f32"], list(zip(steps, [float(np.float32(0.1)), math.inf])))
    _assert_points(run["x64/step"], list(zip([s + 1 for s in steps], [1.0, 1.0])))
