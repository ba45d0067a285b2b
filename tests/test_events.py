"""The generic event recorder: declaration, reducers (checked against NumPy on the recorded
values), eager/jit/scan/vmap, tags read back from TensorBoard files, trace-time errors."""

import inspect
import os
import pydoc
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from callax import JITSummaryWriter
from callax.events import (
    REDUCERS,
    EventInterface,
    EventRecord,
    SACEvents,
    discover,
    elapsed,
    event,
    record,
    recording,
    sequenced,
    timestamp,
)
from conftest import assert_steps_increase, read_run, run_dirs


class Probe(EventInterface):
    """One event per reducer, with and without keys, and a two-field event."""

    @event(reducer="mean")
    def mean(self, probe_key: int | str, value: float) -> None:
        """Mean."""

    @event
    def nanmean(self, probe_key: int | str, value: float) -> None:
        """Default reducer."""

    @event(reducer="min")
    def low(self, value: float) -> None:
        """Min."""

    @event(reducer="max")
    def high(self, value: float) -> None:
        """Max."""

    @event(reducer="sum")
    def total(self, value: float) -> None:
        """Sum."""

    @event(reducer="count")
    def calls(self, value: float) -> None:
        """Count."""

    @event(reducer="last")
    def final(self, value: float) -> None:
        """Last."""

    @event(reducer={"b": "max"})
    def pair(self, a: float, b: float) -> None:
        """Two fields: a (nanmean), b (max)."""


N_CALLS = 3  # calls of each event per step
KEYS = (0, "x")


def probe_step(values, final=True):
    """Record one step: ``values[f32[N_CALLS, 9]]`` (columns: mean/0, mean/x, nanmean/0,
    nanmean/x, low, high, total, calls, final); pair gets (col 2, col 5)."""
    for i in range(N_CALLS):
        row = values[i]
        Probe.mean(0, row[0])
        Probe.mean("x", row[1])
        Probe.nanmean(probe_key=0, value=row[2])
        Probe.nanmean("x", row[3])
        Probe.low(row[4])
        Probe.high(row[5])
        Probe.total(row[6])
        Probe.calls(row[7])
        if final:
            Probe.final(row[8])
        Probe.pair(a=row[2], b=row[5])


def numpy_reduce(values):
    """Independent reduction of the values of one epoch: ``values[T, N_CALLS, 9]``."""
    v = values.reshape(-1, values.shape[-1])

    def nanmean(x):
        x = x[~np.isnan(x)]
        return None if x.size == 0 else float(np.mean(x))

    out = {
        "Probe/mean/0": float(np.mean(v[:, 0])),
        "Probe/mean/x": float(np.mean(v[:, 1])),
        "Probe/nanmean/0": nanmean(v[:, 2]),
        "Probe/nanmean/x": nanmean(v[:, 3]),
        "Probe/low": float(np.min(v[:, 4])),
        "Probe/high": float(np.max(v[:, 5])),
        "Probe/total": float(np.sum(v[:, 6])),
        "Probe/calls": float(v.shape[0]),
        "Probe/final": float(v[-1, 8]),
        "Probe/pair/a": nanmean(v[:, 2]),
        "Probe/pair/b": float(np.max(v[:, 5])),
    }
    return {k: x for k, x in out.items() if x is not None}


def random_values(key, steps):
    values = jax.random.normal(key, (steps, N_CALLS, 9)) * 3.0
    # Sprinkle NaNs into the nanmean columns; column 3 is all-NaN in some steps.
    nan = jax.random.uniform(jax.random.fold_in(key, 1), (steps, N_CALLS)) < 0.3
    values = values.at[:, :, 2].set(jnp.where(nan, jnp.nan, values[:, :, 2]))
    all_nan = jnp.arange(steps) % 2 == 0
    return values.at[:, :, 3].set(jnp.where(all_nan[:, None], jnp.nan, values[:, :, 3]))


def assert_close(got, expected):
    assert set(got) == set(expected)
    for tag, value in expected.items():
        assert got[tag] == pytest.approx(value, rel=1e-5, abs=1e-5), tag


# ---- declaration ----------------------------------------------------------------------------


def test_declared_events_fields_keys_and_tags():
    specs = Probe.events()
    assert list(specs) == ["mean", "nanmean", "low", "high", "total", "calls", "final", "pair"]
    assert specs["mean"].keys == ("probe_key",) and specs["mean"].fields == ("value",)
    assert specs["pair"].fields == ("a", "b") and specs["pair"].reducers == ("nanmean", "max")
    assert specs["pair"].tag("a", ()) == "Probe/pair/a"
    assert specs["mean"].tag("value", ("x",)) == "Probe/mean/x"
    assert set(REDUCERS) == {"mean", "nanmean", "min", "max", "sum", "count", "last"}
    for name, spec in specs.items():  # a user's interface shows its own parameters too
        assert inspect.signature(getattr(Probe, name)) == spec.signature
    assert tuple(inspect.signature(Probe.pair).parameters) == ("a", "b")


def test_sac_events_interface_matches_the_spec():
    expected = {
        "policy_loss": ("step_key", "value"), "policy_grad_norm": ("step_key", "value"),
        "policy_entropy": ("step_key", "value"), "policy_mean_logp": ("step_key", "value"),
        "entropy_coef": ("step_key", "value"), "entropy_loss": ("step_key", "value"),
        "critic_value": ("critic_key", "value"), "critic_value_loss": ("critic_key", "value"),
        "critic_grad_norm": ("critic_key", "value"),
        "errors_between_critics": ("critic_key", "value"),
        "buffer_size": ("value",), "buffer_avg_pick_per_transition": ("value",),
        "estimated_queue_sizes": ("before", "after"),
        "time_backprob": ("time", "percent"), "time_dequeuing_actors": ("time", "percent"),
        "time_learner_rollout": ("time", "percent"),
        "time_loss_computation": ("time", "percent"),
        "time_sampling_from_buffer": ("time", "percent"),
    }
    specs = SACEvents.events()
    assert {name: tuple(s.signature.parameters) for name, s in specs.items()} == expected
    # What users see: inspect.signature, help() and the function's own attributes, on the
    # class and on an instance (not ``(*args, **kwargs)``).
    for name, params in expected.items():
        for fn in (getattr(SACEvents, name), getattr(SACEvents(), name)):
            assert tuple(inspect.signature(fn).parameters) == params, name
            assert fn.__name__ == name and fn.__qualname__ == f"SACEvents.{name}"
            text = pydoc.render_doc(fn, renderer=pydoc.plaintext)
            assert f"{name}({', '.join(params)}" in text.replace(": 'int | str'", "").replace(
                ": 'float'", "").replace(": 'int'", ""), text
            assert fn.__doc__.startswith(SACEvents.__dict__[name].__doc__.strip())
    assert str(inspect.signature(SACEvents.critic_value)) == (
        "(critic_key: 'int | str', value: \"Float[ArrayLike, '']\") -> 'None'")
    for spec in specs.values():
        assert set(spec.reducers) == {"nanmean"}
        assert spec.keys == tuple(p for p in expected[spec.name] if p.endswith("_key"))
    assert specs["time_backprob"].tag("percent", ()) == "trainer/time_backprob/percent"
    assert specs["critic_value"].tag("value", (0,)) == "trainer/critic_value/0"
    assert specs["buffer_size"].tag("value", ()) == "trainer/buffer_size"
    assert specs["policy_entropy"].tag("value", (None,)) == "trainer/policy_entropy"


def test_custom_name_inheritance_and_instances():
    class Base(EventInterface, name="Custom"):
        @event
        def a(self, value: float) -> None:
            """A."""

    class Child(Base):
        @event(keys=("group",))
        def b(self, group: int, value: float) -> None:
            """B."""

    assert Base.events()["a"].interface == "Custom"
    assert list(Child.events()) == ["a", "b"]
    _, rec = record(lambda: (Child.a(1.0), Child().b(3, 2.0)))()
    assert rec.as_dict() == {"Child/a": 1.0, "Child/b/3": 2.0}


@pytest.mark.parametrize("declare, match", [
    (lambda: event(lambda self, some_key: None), "no value parameter"),
    (lambda: event(lambda self, value=1.0: None), "default"),
    (lambda: event(reducer="median")(lambda self, value: None), "unknown reducer"),
    (lambda: event(keys=("nope",))(lambda self, value: None), "not parameters"),
    (lambda: event(reducer={"nope": "max"})(lambda self, value: None), "unknown fields"),
    (lambda: event(lambda self, *values: None), "plain named parameter"),
])
def test_bad_declarations_fail_when_the_class_is_created(declare, match):
    with pytest.raises((TypeError, ValueError), match=match):
        type("Bad", (EventInterface,), {"e": declare()})


# ---- reducers, eagerly and jitted -------------------------------------------------------------


def test_reducers_eager_match_numpy():
    values = np.array(random_values(jax.random.key(0), 1)[0])
    values[:, 3] = [1.0, np.nan, 5.0]
    _, rec = record(probe_step)(values)
    assert_close(rec.as_dict(), numpy_reduce(values[None]))


def test_merge_fold_and_jit_agree_with_numpy():
    values = np.asarray(random_values(jax.random.key(1), 4))
    step = jax.jit(record(probe_step))
    records = [step(v)[1] for v in values]
    merged = records[0]
    for r in records[1:]:
        merged = merged.merge(r)
    assert_close(merged.as_dict(), numpy_reduce(values))
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *records)
    assert_close(stacked.fold().as_dict(), numpy_reduce(values))
    # a later epoch starts from nothing
    assert merged.reset().as_dict() == {}
    assert merged.reset().merge(records[3]).as_dict() == pytest.approx(
        records[3].as_dict(), nan_ok=True)


def test_merge_of_different_slots_is_their_union():
    _, a = record(lambda: Probe.low(1.0))()
    _, b = record(lambda: (Probe.high(2.0), Probe.low(-1.0)))()
    merged = a.merge(b)
    assert merged.tags == ("Probe/low", "Probe/high")
    assert merged.as_dict() == {"Probe/low": -1.0, "Probe/high": 2.0}
    assert EventRecord.empty().merge(a).as_dict() == {"Probe/low": 1.0}


def test_where_masks_a_whole_record():
    _, rec = record(lambda: Probe.total(4.0))()
    assert rec.where(False).as_dict() == {} and rec.where(True).as_dict() == {"Probe/total": 4}


def test_discover_and_recording():
    assert not recording()
    seen = []

    def fn(x):
        seen.append(recording())
        Probe.nanmean("x", x)
        Probe.pair(x, 2 * x)
        return x

    empty = discover(fn, 1.0)
    assert seen == [True]
    assert empty.tags == ("Probe/nanmean/x", "Probe/pair/a", "Probe/pair/b")
    assert empty.as_dict() == {}
    assert fn(3.0) == 3.0  # outside record(): checked, then nothing happens


# ---- written to TensorBoard ----------------------------------------------------------------------

EPOCHS, STEPS = 4, 5


def epochs_program(writer, key):
    """Scan over EPOCHS epochs of a scan over STEPS recorded steps; writes once per epoch at
    step (epoch + 1) * 10. ``Probe/final`` is only recorded in odd epochs."""
    values = random_values(key, EPOCHS * STEPS).reshape(EPOCHS, STEPS, N_CALLS, 9)
    empty = discover(probe_step, values[0, 0])  # includes Probe/final

    def epoch(acc, inputs):
        index, epoch_values = inputs

        def step(acc, v):
            _, rec = record(probe_step)(v, final=False)
            return acc.merge(rec), None

        acc, _ = jax.lax.scan(step, acc, epoch_values)
        _, final = record(lambda: Probe.final(epoch_values[-1, -1, 8]))()
        acc = acc.merge(final.where(index % 2 == 1))
        acc.write(writer, (index + 1) * 10)
        return acc.reset(), None

    jax.lax.scan(epoch, empty, (jnp.arange(EPOCHS), values))
    return values


def expected_epochs(values):
    expected: dict[str, list[tuple[int, float]]] = {}
    for e in range(EPOCHS):
        reduced = numpy_reduce(values[e])
        if e % 2 == 0:
            del reduced["Probe/final"]
        for tag, value in reduced.items():
            expected.setdefault(tag, []).append(((e + 1) * 10, value))
    return expected


def assert_run(run, expected):
    assert set(run) == set(expected)
    for tag, points in expected.items():
        assert [s for s, _ in run[tag]] == [s for s, _ in points], tag
        np.testing.assert_allclose([v for _, v in run[tag]], [v for _, v in points],
                                   rtol=1e-5, atol=1e-5, err_msg=tag)
    assert_steps_increase(run)


@pytest.fixture(scope="module")
def epochs_jit():
    return jax.jit(epochs_program)


def test_jit_scan_epochs_written_and_read_back(logdir, epochs_jit):
    writer = JITSummaryWriter(os.path.join(logdir, "run"))
    values = np.asarray(epochs_jit(writer, jax.random.key(3)))
    run = read_run(writer.log_dir)
    assert_run(run, expected_epochs(values))
    # a slot never called in an epoch is not written (all-NaN nanmean: test_eager_write)
    assert [s for s, _ in run["Probe/final"]] == [20, 40]


def test_vmap_over_seeds_writes_one_run_per_seed(logdir):
    writer = JITSummaryWriter(os.path.join(logdir, "v"))
    keys = jax.random.split(jax.random.key(4), 3)
    values = np.asarray(jax.jit(jax.vmap(lambda k: epochs_program(writer, k)))(keys))
    assert run_dirs(logdir) == [f"v/seed_{i}" for i in range(3)]
    for i in range(3):
        assert_run(read_run(os.path.join(logdir, "v", f"seed_{i}")), expected_epochs(values[i]))


def test_eager_write(logdir):
    writer = JITSummaryWriter(logdir)
    _, rec = record(lambda: (Probe.total(2.0), Probe.total(3.0), Probe.nanmean(1, jnp.nan)))()
    rec.write(writer, 7)
    rec.write(writer, 8, when=False)
    assert read_run(logdir) == {"Probe/total": [(7, 5.0)]}


# ---- trace-time errors -----------------------------------------------------------------------


@pytest.mark.parametrize("call, error, match", [
    (lambda x: Probe.nanmean(0.5, x), TypeError, "key 'probe_key' must be a Python int or str"),
    (lambda x: Probe.nanmean(True, x), TypeError, "must be a Python int or str"),
    (lambda x: Probe.nanmean(jnp.int32(0), x), TypeError, "Python int or str"),
    (lambda x: Probe.nanmean("a/b", x), ValueError, "without '/'"),
    (lambda x: Probe.nanmean(0, jnp.ones(3) * x), ValueError, "must be a scalar"),
    (lambda x: Probe.nanmean(0, "high"), TypeError, "must be a number"),
    (lambda x: Probe.low(), TypeError, "missing a required argument"),
    (lambda x: Probe.low(x, x), TypeError, "too many positional arguments"),
    (lambda x: Probe.low(x, bogus=1), TypeError, "unexpected keyword argument"),
    (lambda x: Probe.nope(x), AttributeError, "Probe has no event 'nope'; its events are"),
    (lambda x: Probe().nope(x), AttributeError, "Probe has no event 'nope'"),
])
def test_bad_calls_fail_at_trace_time(call, error, match):
    traced = []

    def fn(x):
        traced.append(True)
        call(x)
        return x

    with pytest.raises(error, match=match):
        jax.jit(record(fn)).trace(1.0)
    with pytest.raises(error, match=match):
        fn(1.0)  # also outside record(): checked the same way


def test_traced_key_fails_at_trace_time():
    with pytest.raises(TypeError, match="traced value; keys must be static"):
        jax.jit(record(lambda k, x: Probe.nanmean(k, x))).trace(0, 1.0)


def test_call_inside_nested_transformation_fails_clearly():
    def fn(xs):
        return jax.lax.scan(lambda c, x: (Probe.low(x), None)[1:] + (None,), None, xs)

    with pytest.raises(RuntimeError, match="inside a JAX transformation"):
        record(fn)(jnp.ones(3))
    with pytest.raises(RuntimeError, match="inside a JAX transformation"):
        record(jax.vmap(lambda x: Probe.low(x)))(jnp.ones(3))


# ---- clock ------------------------------------------------------------------------------------


def test_timestamps_measure_real_phases():
    """Each phase's elapsed time covers the work sequenced between its timestamps.

    The second phase holds a host-side sleep of SLEEP seconds: a lower bound no load can
    break (a machine can only be slower). Both phases fit in the wall time of the call."""
    sleep = 0.2

    def slept(y):
        time.sleep(sleep)
        return y

    @jax.jit
    def program(x):
        t0 = timestamp(x)
        y = jnp.tanh(sequenced(x, t0) @ x.T / 64.0)
        t1 = timestamp(y)
        z = jax.pure_callback(slept, jax.ShapeDtypeStruct(y.shape, y.dtype), sequenced(y, t1),
                                   vmap_method="broadcast_all")
        t2 = timestamp(z)
        return z, elapsed(t0, t1), elapsed(t1, t2)

    x = jnp.ones((128, 128))
    jax.block_until_ready(program(x))
    start = time.perf_counter()
    _, short, long = jax.block_until_ready(program(x))
    wall = time.perf_counter() - start
    assert 0 < float(short) and 0 < float(long)
    assert float(short) + float(long) <= wall
    assert float(long) >= sleep  # the sleep lies between t1 and t2
    # under vmap: one clock read for the whole batch
    _, s, lo = jax.jit(jax.vmap(program))(jnp.ones((2, 8, 8)))
    assert s.shape == (2,) and float(s[0]) == float(s[1]) and float(lo[0]) >= 0
