"""``EventRecord``: the accumulated event calls of an epoch, a pytree of a few small
arrays; merged, folded, reduced and written in one host call."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from .._host import under_trace
from .._summary_eager import is_eager, write_rows_eagerly
from .._summary_writer import JITSummaryWriter
from ._declare import _REDUCER_CODE, EventSpec, _Call

__all__ = ["EventRecord"]

# --------------------------------------------------------------------------------------------
# Records.


@dataclasses.dataclass(frozen=True, order=True)
class _Column:
    # One (event, field, key) slot. Sorted by interface, declaration order, key, field.
    sort_key: tuple
    tag: str = dataclasses.field(compare=False)
    reducer: str = dataclasses.field(compare=False)


def _key_order(key: tuple[int | str | None, ...]) -> tuple:
    return tuple((-1, 0, "") if k is None else (0, k, "") if isinstance(k, int)
                  else (1, 0, k) for k in key)


def _columns_of(spec: EventSpec, key: tuple[int | str | None, ...]) -> list[_Column]:
    return [
        _Column((spec.interface, spec.order, spec.name, _key_order(key), i),
                spec.tag(field, key), reducer)
        for i, (field, reducer) in enumerate(zip(spec.fields, spec.reducers, strict=True))
    ]


class _plain_method:
    """A method whose bound form is a ``functools.partial``, not an Equinox module.

    Equinox binds a method looked up on a module as a module of its own (``BoundMethod``,
    ~0.07 ms to build), a sizeable part of an eager ``write``'s cost. Methods a Python loop
    calls eagerly at every write (``merge``, ``write``, ``reset``) are bound plainly
    instead; they are not meant to be passed through ``jax.jit`` as pytrees."""

    def __init__(self, fn):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __get__(self, obj, objtype=None):
        return self if obj is None else functools.partial(self.fn, obj)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


class EventRecord(eqx.Module):
    """The accumulated calls of a set of event slots (a pytree of six ``[n]`` arrays).

    One column per (event, field, key) slot, identified by its tag. For every column the
    record keeps the number of calls and the sum, count, minimum, maximum and last value of
    what was recorded, which is enough for every reducer and merges associatively.

    **Attributes:**

    - `columns`: static; the slots, in a canonical order (see
      [`EventRecord.tags`][callax.events.EventRecord.tags]).
    - `calls`: ``int32[n]``, calls per column.
    - `total`, `count`: sum and number of the values (NaN excluded for ``nanmean`` columns).
    - `minimum`, `maximum`, `last`: ``float32[n]``.
    """

    columns: tuple[_Column, ...] = eqx.field(static=True)
    calls: jax.Array
    total: jax.Array
    count: jax.Array
    minimum: jax.Array
    maximum: jax.Array
    last: jax.Array

    # -- construction --

    @classmethod
    def empty(cls, columns: Sequence[_Column] = ()) -> EventRecord:
        """A record of ``columns`` with no calls (the identity of
        [`merge`][callax.events.EventRecord.merge])."""
        columns = tuple(sorted(set(columns)))
        n = len(columns)
        return cls(
            columns=columns,
            calls=jnp.zeros((n,), jnp.int32),
            total=jnp.zeros((n,), jnp.float32),
            count=jnp.zeros((n,), jnp.float32),
            minimum=jnp.full((n,), jnp.inf, jnp.float32),
            maximum=jnp.full((n,), -jnp.inf, jnp.float32),
            last=jnp.full((n,), jnp.nan, jnp.float32),
        )

    @classmethod
    def _from_calls(cls, calls: Sequence[_Call]) -> EventRecord:
        if not calls:
            return cls.empty()
        # Every call contributes one value to each of its columns; the values are packed in
        # one vector and reduced per column with static segment ids (a handful of ops).
        column_values: dict[_Column, list[jax.Array]] = {}
        for call in calls:
            for column, value in zip(_columns_of(call.spec, call.key), call.values, strict=True):
                column_values.setdefault(column, []).append(value)
        columns = tuple(sorted(column_values))
        flat = tuple(v for c in columns for v in column_values[c])
        ids = tuple(i for i, c in enumerate(columns) for _ in column_values[c])
        nan_columns = tuple(c.reducer == "nanmean" for c in columns)
        # Eagerly: one program per structure (cached), not a dozen operations one by one.
        reduce = _reduce_calls_program if _untraced(*flat) else _reduce_calls
        stats = reduce(flat, ids, nan_columns)
        return cls(columns=columns, **dict(zip(_STATS, stats, strict=True)))

    # -- combination --

    def _aligned(self, columns: tuple[_Column, ...]) -> EventRecord:
        """This record expressed over ``columns`` (a superset), no-call slots elsewhere."""
        if columns == self.columns:
            return self
        empty = EventRecord.empty(columns)
        position = {c: i for i, c in enumerate(columns)}
        index = np.array([position[c] for c in self.columns], np.int32)
        batch = jnp.shape(self.calls)[:-1]

        def put(base, mine):
            base = jnp.broadcast_to(base, (*batch, len(columns)))
            return base.at[..., index].set(mine) if len(index) else base

        return EventRecord(
            columns=columns,
            **{f: put(getattr(empty, f), getattr(self, f)) for f in _STATS},
        )

    @_plain_method
    def merge(self, other: EventRecord) -> EventRecord:
        """Both records' calls together (``other``'s calls count as later for ``last``).

        Records over different slots merge into one over the union of their slots. Eagerly
        (outside any trace) it runs one program compiled once per pair of structures."""
        if not isinstance(other, EventRecord):
            raise TypeError(f"can only merge an EventRecord, got {type(other).__name__}")
        if _concrete(self) and _concrete(other):  # eagerly: one cached program, not op by op
            return _merge_program(self, other)
        return _merge(self, other)

    # -- (merge's body: traced as it is inside jit, compiled once per structure eagerly) --

    def _merged(self, other: EventRecord) -> EventRecord:
        columns = self.columns
        if other.columns != columns:
            columns = tuple(sorted(set(self.columns) | set(other.columns)))
        a, b = self._aligned(columns), other._aligned(columns)
        return EventRecord(
            columns=columns,
            calls=a.calls + b.calls,
            total=a.total + b.total,
            count=a.count + b.count,
            minimum=jnp.minimum(a.minimum, b.minimum),
            maximum=jnp.maximum(a.maximum, b.maximum),
            last=jnp.where(b.calls > 0, b.last, a.last),
        )

    def where(self, pred: Any) -> EventRecord:
        """This record if ``pred`` (a boolean scalar), else the same slots with no calls."""
        pred = jnp.asarray(pred, jnp.bool_)
        empty = EventRecord.empty(self.columns)
        return EventRecord(
            columns=self.columns,
            **{f: jnp.where(pred, getattr(self, f), getattr(empty, f)) for f in _STATS},
        )

    @_plain_method
    def reset(self) -> EventRecord:
        """The same slots with no calls (start of the next epoch).

        Eagerly (outside any trace) the empty arrays come from one cached program per
        shape: ~0.05 ms, where the traced code run op by op costs ~2 ms."""
        if not _concrete(self):
            return jax.tree.map(
                lambda x, e: jnp.broadcast_to(e, jnp.shape(x)).astype(x.dtype),
                self, EventRecord.empty(self.columns))
        stats = tuple(self.__dict__[f] for f in _STATS)
        empty = _empty_stats(tuple((np.shape(x), np.dtype(x.dtype)) for x in stats))
        return jax.tree.unflatten(jax.tree.structure(self), empty)

    def fold(self, axis: int = 0) -> EventRecord:
        """Merge the records stacked along ``axis`` (e.g. returned by a ``lax.scan``), in
        order."""
        axis = axis % jnp.ndim(self.calls)
        if axis == jnp.ndim(self.calls) - 1:
            raise ValueError("cannot fold the column axis")
        called = self.calls > 0
        length = jnp.shape(self.calls)[axis]
        position = jnp.arange(length).reshape((-1,) + (1,) * (jnp.ndim(self.calls) - axis - 1))
        last_pos = jnp.max(jnp.where(called, position, -1), axis=axis, keepdims=True)
        last = jnp.sum(jnp.where(position == last_pos, jnp.nan_to_num(self.last), 0.0),
                       axis=axis)
        last_nan = jnp.any((position == last_pos) & jnp.isnan(self.last), axis=axis)
        any_call = jnp.squeeze(last_pos, axis) >= 0
        return EventRecord(
            columns=self.columns,
            calls=jnp.sum(self.calls, axis=axis),
            total=jnp.sum(self.total, axis=axis),
            count=jnp.sum(self.count, axis=axis),
            minimum=jnp.min(self.minimum, axis=axis),
            maximum=jnp.max(self.maximum, axis=axis),
            last=jnp.where(any_call & ~last_nan, last, jnp.nan),
        )

    # -- results --

    @property
    def tags(self) -> tuple[str, ...]:
        """The tag of every column, in order: ``<interface>/<event>[/<field>][/<key>...]``."""
        return _tags(self.columns)

    @property
    def reducers(self) -> tuple[str, ...]:
        """The reducer of every column."""
        return tuple(c.reducer for c in self.columns)

    def reduce(self) -> tuple[jax.Array, jax.Array]:
        """``(values[n], valid[n])``: each column's reducer applied to its calls.

        A column is valid when it was called (for ``nanmean``: with at least one value that
        is not NaN)."""
        code = jnp.asarray(np.array([_REDUCER_CODE[r] for r in self.reducers], np.int32))
        mean = self.total / jnp.maximum(self.count, 1.0)
        choices = [mean, mean, self.minimum, self.maximum, self.total,
                   self.calls.astype(jnp.float32), self.last]
        values = jnp.choose(code, choices, mode="clip") if self.columns else self.total
        nanmean = code == _REDUCER_CODE["nanmean"]
        valid = (self.calls > 0) & (~nanmean | (self.count > 0))
        return values, valid

    @_plain_method
    def write(self, writer: JITSummaryWriter, step: Any, *, when: Any = True) -> None:
        """Write every valid column's reduced value at ``step`` in one host call (nothing for
        columns without calls). Works eagerly and inside jit/scan/vmap (under ``vmap`` over
        seeds each seed goes to ``<run>/seed_<i>``). ``when=False`` skips the write.

        Called eagerly (a Python loop writing the record its jitted updates returned), it
        reduces on the host with NumPy and hands the row to the writer thread: no program
        is compiled or run, whatever the record's slots. For 6 SAC events (7 slots):
        0.33-0.66 ms median per write (p90 0.52-1.04 ms), 0.76-1.32 ms with the ``reset``
        after it, on a shared 2-core CPU machine (two runs of ``python
        benchmarks/bench_eager.py --cases records``, 2026-12-07; docs/performance.md,
        "Eager writes")."""
        if not self.columns:
            return
        if _write_eagerly(self, writer, step, when):
            return
        values, valid = self.reduce()
        step = jnp.asarray(step, jnp.int32)
        writer.write_rows(self.tags, step[None], values[None], valid[None], when)

    def as_dict(self) -> dict[str, float]:
        """``{tag: value}`` of the valid columns (eager, unbatched records only)."""
        if jnp.ndim(self.calls) != 1:
            raise ValueError("as_dict needs an unbatched record")
        values, valid = _host_reduce(self)
        return {t: float(v) for t, v, ok in zip(self.tags, values, valid, strict=True) if ok}


# Eager writes. Module-level functions, not methods: Equinox binds a method looked up on a
# module as a module of its own, which costs more than the whole eager write.


def _write_eagerly(record: EventRecord, writer: JITSummaryWriter, step: Any, when: Any
                   ) -> bool:
    """``record.write`` outside any trace: reduced with NumPy and handed to the writer
    thread (nothing compiled or run). ``False`` (nothing done) when the call is traced or
    the record batched."""
    stats = tuple(record.__dict__[f] for f in _STATS)
    if np.ndim(stats[0]) != 1 or not is_eager(writer, step, when, *stats):
        return False
    step = np.asarray(step)
    if step.shape != () or not np.issubdtype(step.dtype, np.integer):
        raise TypeError(f"step must be an integer scalar, got {step!r}")
    values, valid = _host_reduce(record)
    write_rows_eagerly(writer, record.tags, step.astype(np.int64)[None], values[None],
                       valid[None], bool(np.asarray(when)))
    return True


def _host_reduce(record: EventRecord) -> tuple[np.ndarray, np.ndarray]:
    """``record.reduce()`` of a concrete record, with NumPy (nothing compiled)."""
    # np.asarray per field: jax.device_get's tree walk costs more than the six copies.
    calls, total, count, minimum, maximum, last = (
        np.asarray(record.__dict__[f]) for f in _STATS)
    code = _reducer_codes(record.columns)
    mean = total / np.maximum(count, 1.0)
    choices = [mean, mean, minimum, maximum, total, calls.astype(np.float32), last]
    values = np.choose(code, choices, mode="clip").astype(np.float32)
    nanmean = code == _REDUCER_CODE["nanmean"]
    return values, (calls > 0) & (~nanmean | (count > 0))


@functools.cache
def _tags(columns: tuple[_Column, ...]) -> tuple[str, ...]:
    return tuple(c.tag for c in columns)


@functools.cache
def _reducer_codes(columns: tuple[_Column, ...]) -> np.ndarray:
    return np.array([_REDUCER_CODE[c.reducer] for c in columns], np.int32)


_STATS = ("calls", "total", "count", "minimum", "maximum", "last")


def _untraced(*arrays: Any) -> bool:
    """Whether ``arrays`` are used outside any trace, all of them concrete."""
    return not under_trace() and not any(isinstance(x, Tracer) for x in arrays)


def _concrete(record: EventRecord) -> bool:
    """Whether ``record`` is used outside any trace, with concrete arrays."""
    return _untraced(*(record.__dict__[f] for f in _STATS))


def _merge(a: EventRecord, b: EventRecord) -> EventRecord:
    return a._merged(b)


_merge_program = jax.jit(_merge)
_EMPTY_FILL = (0, 0.0, 0.0, np.inf, -np.inf, np.nan)  # EventRecord.empty's, per field


@functools.partial(jax.jit, static_argnums=0)
def _empty_stats(layout: tuple[tuple[tuple[int, ...], np.dtype], ...]) -> tuple[jax.Array, ...]:
    """The six arrays of a record with no calls, each of ``(shape, dtype)`` in ``layout``:
    one program per layout, the eager ``reset``'s (a few constants, no inputs)."""
    return tuple(jnp.full(shape, fill, dtype)
                 for (shape, dtype), fill in zip(layout, _EMPTY_FILL, strict=True))


def _reduce_calls(flat: tuple[jax.Array, ...], column_ids: tuple[int, ...],
                  nan_columns: tuple[bool, ...]) -> tuple[jax.Array, ...]:
    """The six arrays of a record from its calls' values, ``flat[i]`` for column
    ``column_ids[i]`` (sorted); ``nan_columns``: which columns skip NaN (``nanmean``).
    The values are packed in one vector and reduced per column with static segment ids."""
    ids = np.asarray(column_ids, np.int32)
    n = len(nan_columns)
    calls_np = np.bincount(ids, minlength=n).astype(np.int32)
    last_index = np.cumsum(calls_np) - 1
    nan_skipping = np.asarray(nan_columns, bool)[ids]
    values = jnp.stack(flat)
    skip = jnp.isnan(values) & nan_skipping
    kept = jnp.where(skip, 0.0, values)
    if len(flat) == n:  # one call per column: no reduction needed
        total, minimum, maximum, last = kept, values, values, values
        count = (~skip).astype(jnp.float32)
    else:
        last = values[last_index]
        total = jax.ops.segment_sum(kept, ids, n, indices_are_sorted=True)
        count = jax.ops.segment_sum((~skip).astype(jnp.float32), ids, n,
                                    indices_are_sorted=True)
        minimum = _segment_nanprop(jax.ops.segment_min, values, ids, n)
        maximum = _segment_nanprop(jax.ops.segment_max, values, ids, n)
    return jnp.asarray(calls_np), total, count, minimum, maximum, last


_reduce_calls_program = jax.jit(_reduce_calls, static_argnums=(1, 2))


def _segment_nanprop(segment_fn, values, ids, n):
    # segment_min/max ignore NaN ordering; make NaN propagate like np.min / np.max.
    has_nan = jax.ops.segment_max(jnp.isnan(values).astype(jnp.int32), ids, n,
                                  indices_are_sorted=True) > 0
    return jnp.where(has_nan, jnp.nan, segment_fn(values, ids, n, indices_are_sorted=True))
