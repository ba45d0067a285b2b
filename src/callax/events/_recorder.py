"""A JAX-native event recorder in the style of Maze RL's event interfaces.

An *event interface* is a class whose methods are events, declared with
[`event`][callax.events.event]::

    class MyEvents(EventInterface):
        @event                                    # reducer "nanmean", key = critic_key
        def critic_value(self, critic_key: int | str, value: float) -> None:
            "Mean Q value of a critic."

        @event(reducer="max")
        def grad_norm(self, value: float) -> None:
            "Largest gradient norm of the epoch."

Calling an event (``MyEvents.critic_value(0, q)``, on the class or on an instance) inside a
function wrapped by [`record`][callax.events.record] adds the value to that function's
[`EventRecord`][callax.events.EventRecord], a pytree of a few small arrays; outside of
``record`` a call is checked and then does nothing. Records are merged (``a.merge(b)``) in a
``lax.scan``/``while_loop`` carry over an *epoch*; at the end of the epoch
``record.write(writer, step)`` reduces every (event, field, key) *slot* to one scalar and
writes them all in **one** host call, then ``record.reset()`` starts the next epoch.

The set of slots is discovered at trace time: it is exactly the set of calls made while
``record`` traces the function (keys are static). [`discover`][callax.events.discover]
traces a function with ``jax.eval_shape`` (no computation) and returns an empty record with
its slots, which is the fixed-structure initial value of a loop carry.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Concatenate, Generic, ParamSpec, cast, overload

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

try:  # public in jax.extend.core from JAX 0.10
    from jax.extend.core import get_opaque_trace_state
except ImportError:  # JAX 0.8.2-0.9: public in jax.core (deprecated there from 0.10)
    from jax.core import get_opaque_trace_state  # pyright: ignore[reportAttributeAccessIssue]

from .. import _host
from .._summary_writer import JITSummaryWriter, check_tag, scalar_value

__all__ = [
    "REDUCERS",
    "EventInterface",
    "EventRecord",
    "EventSpec",
    "discover",
    "elapsed",
    "event",
    "record",
    "recording",
    "sequenced",
    "timestamp",
]

REDUCERS: tuple[str, ...] = ("nanmean", "mean", "min", "max", "sum", "count", "last")
"""The reducers an event field can use to turn one epoch of calls into one scalar.

- ``nanmean``: mean of the values that are not NaN (Maze's ``np.nanmean``; the default).
- ``mean``: mean of all values (a NaN makes the result NaN).
- ``min``, ``max``, ``sum``: over all values (NaN propagates).
- ``count``: the number of calls.
- ``last``: the value of the last call.
"""

_REDUCER_CODE = {name: i for i, name in enumerate(REDUCERS)}


# --------------------------------------------------------------------------------------------
# Declaring events.


@dataclasses.dataclass(frozen=True)
class EventSpec:
    """The static description of one event of an interface.

    **Attributes:**

    - `interface`: the interface's name (the first part of every tag).
    - `name`: the event's name (the method name).
    - `keys`: names of the grouping-key parameters (static ``int | str`` per call, or
      ``None``: no key part in the tag).
    - `fields`: names of the value parameters (one scalar each per call).
    - `reducers`: the reducer of each field (see ``callax.events.REDUCERS``).
    - `order`: declaration position of the event in its interface (orders tags).
    - `owner`: the interface's class name, which error messages and the event's
      ``__qualname__`` use (the same as `interface` unless the class gives ``name``).
    """

    interface: str
    name: str
    keys: tuple[str, ...]
    fields: tuple[str, ...]
    reducers: tuple[str, ...]
    order: int
    signature: inspect.Signature = dataclasses.field(compare=False, hash=False, repr=False)
    owner: str = dataclasses.field(default="", compare=False, hash=False, repr=False)

    def describe(self) -> str:
        """``Interface.event(param, ...)`` (the class's name), for error messages."""
        params = ", ".join(self.signature.parameters)
        return f"{self.owner or self.interface}.{self.name}({params})"

    def tag(self, field: str, key_values: tuple[int | str | None, ...]) -> str:
        """``<interface>/<event>[/<field>][/<key>...]``; the field part only if the event has
        more than one value field."""
        parts = [self.interface, self.name]
        if len(self.fields) > 1:
            parts.append(field)
        parts.extend(str(k) for k in key_values if k is not None)
        return check_tag("/".join(parts))


_P = ParamSpec("_P")


class _EventDeclaration(Generic[_P]):
    """What ``event`` puts in the class body; becomes an ``EventSpec`` per interface.

    Typed with the method's parameters (after ``self``), so that type checkers and IDEs show
    an event's real signature wherever it is called."""

    def __init__(self, fn: Callable[Concatenate[Any, _P], None],
                 reducer: str | Mapping[str, str], keys: Sequence[str] | None):
        self.fn = fn
        self.reducer = reducer
        self.keys = keys
        self.name = fn.__name__
        self._bound: dict[EventSpec, Callable[..., None]] = {}
        # typeshed types update_wrapper's wrapper as a callable; this is a descriptor.
        functools.update_wrapper(cast(Any, self), fn)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def make_spec(self, interface: str, order: int, owner: str = "") -> EventSpec:
        signature = inspect.signature(self.fn)
        params = list(signature.parameters.values())
        if not params or params[0].name != "self":
            raise TypeError(f"event {interface}.{self.name} must take `self` first")
        params = params[1:]
        for p in params:
            if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                raise TypeError(
                    f"event {interface}.{self.name}: parameter {p.name!r} must be a plain "
                    "named parameter (no *args/**kwargs/positional-only)"
                )
            if p.default is not p.empty:
                raise TypeError(
                    f"event {interface}.{self.name}: parameter {p.name!r} may not have a default"
                )
        names = [p.name for p in params]
        if self.keys is None:
            keys = tuple(n for n in names if n.endswith("_key"))
        else:
            keys = tuple(self.keys)
            unknown = [k for k in keys if k not in names]
            if unknown:
                raise TypeError(
                    f"event {interface}.{self.name}: keys {unknown} are not parameters {names}"
                )
        fields = tuple(n for n in names if n not in keys)
        if not fields:
            raise TypeError(f"event {interface}.{self.name} has no value parameter")
        if isinstance(self.reducer, str):
            reducers = tuple(self.reducer for _ in fields)
        else:
            unknown = set(self.reducer) - set(fields)
            if unknown:
                raise TypeError(
                    f"event {interface}.{self.name}: reducers given for unknown fields "
                    f"{sorted(unknown)}; fields are {list(fields)}"
                )
            reducers = tuple(self.reducer.get(f, "nanmean") for f in fields)
        for r in reducers:
            if r not in _REDUCER_CODE:
                raise ValueError(
                    f"event {interface}.{self.name}: unknown reducer {r!r}; choose one of "
                    f"{list(REDUCERS)}"
                )
        return EventSpec(interface, self.name, keys, fields, reducers, order,
                         signature.replace(parameters=params), owner)

    def __get__(self, obj: Any, owner: type | None = None) -> Callable[_P, None]:
        owner = type(obj) if owner is None else owner
        spec = owner._event_specs[self.name]
        bound = self._bound.get(spec)
        if bound is None:
            bound = self._bound[spec] = _bound_event(spec, self.__doc__)
        return bound


@overload
def event(fn: Callable[Concatenate[Any, _P], None], *, reducer: str | Mapping[str, str] = ...,
          keys: Sequence[str] | None = ...) -> _EventDeclaration[_P]: ...


@overload
def event(fn: None = None, *, reducer: str | Mapping[str, str] = ...,
          keys: Sequence[str] | None = ...
          ) -> Callable[[Callable[Concatenate[Any, _P], None]], _EventDeclaration[_P]]: ...


def event(
    fn: Callable | None = None,
    *,
    reducer: str | Mapping[str, str] = "nanmean",
    keys: Sequence[str] | None = None,
) -> _EventDeclaration[...] | Callable[[Callable[..., None]], _EventDeclaration[...]]:
    """Declare a method of an [`EventInterface`][callax.events.EventInterface] as an event.

    The method's body is never run (write a docstring); its parameters after ``self`` are
    either *grouping keys* (static ``int | str``, one slot per distinct key; ``None`` for
    the single instance of a group, which adds no key part to the tag) or *value fields*
    (one scalar each).

    **Arguments:**

    - `reducer`: how an epoch of values becomes one scalar, one of ``callax.events.REDUCERS``; or a
      mapping ``{field: reducer}`` (unlisted fields use ``nanmean``).
    - `keys`: names of the key parameters. By default, the parameters whose name ends in
      ``_key`` (Maze's ``step_key``, ``critic_key``).

    Use as ``@event`` or ``@event(reducer="max")``.
    """
    if fn is None:
        return lambda f: _EventDeclaration(f, reducer, keys)
    if not callable(fn):
        raise TypeError("@event decorates a method; use @event(reducer=...) for options")
    return _EventDeclaration(fn, reducer, keys)


class _InterfaceMeta(type):
    def __getattr__(cls, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        known = ", ".join(cls._event_specs) if "_event_specs" in cls.__dict__ else ""
        raise AttributeError(
            f"{cls.__name__} has no event {name!r}; its events are: {known or '(none)'}"
        )


class EventInterface(metaclass=_InterfaceMeta):
    """Base class of event interfaces: subclass it, declare events with
    [`event`][callax.events.event].

    Events are called on the class (``SACEvents.policy_loss(0, loss)``) or on an instance
    (Maze style, ``self.events = SACEvents()``; instances hold nothing). The tag prefix is
    the class name, or ``name`` given as a class keyword: ``class E(EventInterface,
    name="Custom")``. Subclasses inherit their parents' events (tagged with their own name).
    """

    _event_specs: ClassVar[dict[str, EventSpec]] = {}
    _event_interface_name: ClassVar[str] = "EventInterface"

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        interface = cls.__name__ if name is None else name
        if not isinstance(interface, str) or not interface or "/" in interface:
            raise ValueError(f"invalid event interface name {interface!r}")
        check_tag(interface)
        declarations: dict[str, _EventDeclaration] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                if isinstance(value, _EventDeclaration):
                    declarations[attr] = value
        cls._event_interface_name = interface
        cls._event_specs = {
            attr: decl.make_spec(interface, order, cls.__name__)
            for order, (attr, decl) in enumerate(declarations.items())
        }

    def __getattr__(self, name: str):
        return getattr(type(self), name)

    @classmethod
    def events(cls) -> dict[str, EventSpec]:
        """The interface's events, by name, in declaration order."""
        return dict(cls._event_specs)


# --------------------------------------------------------------------------------------------
# Calling events.


def _check_key(spec: EventSpec, name: str, value: Any) -> int | str | None:
    where = f"{spec.describe()}: key {name!r}"
    if value is None:  # a single instance: no key part in the tag
        return None
    if isinstance(value, Tracer):
        raise TypeError(
            f"{where} is a traced value; keys must be static Python int or str known at trace "
            "time (use a value field for data that changes at run time)"
        )
    if isinstance(value, bool) or not isinstance(value, int | str | np.integer):
        raise TypeError(f"{where} must be a Python int or str, got {type(value).__name__}: "
                        f"{value!r}")
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, str) and (not value or "/" in value or value.strip() != value):
        raise ValueError(f"{where} must be a non-empty str without '/' or surrounding "
                         f"whitespace, got {value!r}")
    return value


class _Call(eqx.Module):
    spec: EventSpec = eqx.field(static=True)
    key: tuple[int | str | None, ...] = eqx.field(static=True)
    values: tuple[jax.Array, ...]


class _Collector:
    def __init__(self) -> None:
        self.trace = get_opaque_trace_state()
        self.calls: list[_Call] = []


_local = threading.local()


def _stack() -> list[_Collector]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def _bound_event(spec: EventSpec, doc: str | None) -> Callable[..., None]:
    """The event ready to be called, as a plain function with the event's own signature
    (``inspect.signature``, ``help()`` and IDEs show ``(step_key, value)``, not
    ``(*args, **kwargs)``): it checks its arguments, then records them."""

    def call(*args: Any, **kwargs: Any) -> None:
        return _call_event(spec, args, kwargs)

    call.__name__ = spec.name
    call.__qualname__ = f"{spec.owner or spec.interface}.{spec.name}"
    call.__module__ = "callax.events"
    call.__signature__ = spec.signature  # type: ignore[attr-defined]
    call.__annotations__ = {
        **{p.name: p.annotation for p in spec.signature.parameters.values()
           if p.annotation is not p.empty},
        "return": None,
    }
    reducers = ", ".join(f"{f} ({r})" for f, r in zip(spec.fields, spec.reducers, strict=True))
    keys = f"keys {', '.join(spec.keys)}; " if spec.keys else ""
    summary = f"Event {spec.describe()}: {keys}fields {reducers}."
    call.__doc__ = f"{doc.strip()}\n\n{summary}" if doc else summary
    call.spec = spec  # type: ignore[attr-defined]
    return call


def _call_event(spec: EventSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        bound = spec.signature.bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(f"{spec.describe()}: {error}") from None
    arguments = bound.arguments
    key = tuple(_check_key(spec, k, arguments[k]) for k in spec.keys)
    values = []
    for field in spec.fields:
        tag = spec.tag(field, key)
        try:
            values.append(jnp.asarray(scalar_value(tag, arguments[field])))
        except (TypeError, ValueError) as error:
            raise type(error)(f"{spec.describe()}, field {field!r}: {error}") from None
    stack = _stack()
    if not stack:
        return None
    collector = stack[-1]
    if get_opaque_trace_state() != collector.trace:
        raise RuntimeError(
            f"{spec.describe()} was called inside a JAX transformation (a scan/while/cond "
            "body, vmap, grad, ...) nested in the function given to callax.events.record. "
            "Record at the level of that function, or wrap the inner body in record() and "
            "return (and merge) its EventRecord."
        )
    collector.calls.append(_Call(spec, key, tuple(values)))
    return None


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
        flat = [v for c in columns for v in column_values[c]]
        ids = np.concatenate([np.full(len(column_values[c]), i, np.int32)
                              for i, c in enumerate(columns)])
        n = len(columns)
        calls_np = np.bincount(ids, minlength=n).astype(np.int32)
        last_index = np.cumsum(calls_np) - 1
        nan_skipping = np.array([c.reducer == "nanmean" for c in columns])[ids]
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
        return cls(
            columns=columns,
            calls=jnp.asarray(calls_np),
            total=total,
            count=count,
            minimum=minimum,
            maximum=maximum,
            last=last,
        )

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

    def merge(self, other: EventRecord) -> EventRecord:
        """Both records' calls together (``other``'s calls count as later for ``last``).

        Records over different slots merge into one over the union of their slots."""
        if not isinstance(other, EventRecord):
            raise TypeError(f"can only merge an EventRecord, got {type(other).__name__}")
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

    def reset(self) -> EventRecord:
        """The same slots with no calls (start of the next epoch)."""
        return jax.tree.map(lambda x, e: jnp.broadcast_to(e, jnp.shape(x)).astype(x.dtype),
                            self, EventRecord.empty(self.columns))

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
        return tuple(c.tag for c in self.columns)

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

    def write(self, writer: JITSummaryWriter, step: Any, *, when: Any = True) -> None:
        """Write every valid column's reduced value at ``step`` in one host call (nothing for
        columns without calls). Works eagerly and inside jit/scan/vmap (under ``vmap`` over
        seeds each seed goes to ``<run>/seed_<i>``). ``when=False`` skips the write."""
        if not self.columns:
            return
        values, valid = self.reduce()
        step = jnp.asarray(step, jnp.int32)
        writer.write_rows(self.tags, step[None], values[None], valid[None], when)

    def as_dict(self) -> dict[str, float]:
        """``{tag: value}`` of the valid columns (eager, unbatched records only)."""
        values, valid = self.reduce()
        values, valid = np.asarray(values), np.asarray(valid)
        if values.ndim != 1:
            raise ValueError("as_dict needs an unbatched record")
        return {t: float(v) for t, v, ok in zip(self.tags, values, valid, strict=True) if ok}


_STATS = ("calls", "total", "count", "minimum", "maximum", "last")


def _segment_nanprop(segment_fn, values, ids, n):
    # segment_min/max ignore NaN ordering; make NaN propagate like np.min / np.max.
    has_nan = jax.ops.segment_max(jnp.isnan(values).astype(jnp.int32), ids, n,
                                  indices_are_sorted=True) > 0
    return jnp.where(has_nan, jnp.nan, segment_fn(values, ids, n, indices_are_sorted=True))


# --------------------------------------------------------------------------------------------
# Recording.


def record(fn: Callable) -> Callable:
    """Wrap ``fn`` so that it returns ``(fn(...), EventRecord)`` with the events it called.

    Events must be called at the level of ``fn`` itself (not inside a ``lax.scan`` body or
    ``vmap`` nested in it: wrap that body in ``record`` too and merge or
    [`fold`][callax.events.EventRecord.fold] what it returns). ``record`` nests: a call goes
    to the innermost active ``record`` only. Works eagerly and under any transformation
    applied *around* the wrapped function.
    """

    @functools.wraps(fn)
    def recorded(*args: Any, **kwargs: Any) -> tuple[Any, EventRecord]:
        collector = _Collector()
        stack = _stack()
        stack.append(collector)
        try:
            out = fn(*args, **kwargs)
        finally:
            popped = stack.pop()
            assert popped is collector
        return out, EventRecord._from_calls(collector.calls)

    return recorded


def recording() -> bool:
    """Whether an event call made now (while tracing) would be recorded: ``True`` inside a
    function wrapped by [`record`][callax.events.record]. Use it to skip computing values
    that only events use (those are also dead code for XLA when not recorded, unless fused
    with live work)."""
    return bool(_stack())


def discover(fn: Callable, *args: Any, **kwargs: Any) -> EventRecord:
    """The empty record of the slots ``fn(*args, **kwargs)`` records, found by tracing it
    with ``jax.eval_shape`` (nothing is computed). Use it as the initial value of an epoch
    accumulator in a loop carry. Merge several ``discover`` results for several functions.
    """
    _, shapes = jax.eval_shape(record(fn), *args, **kwargs)
    return EventRecord.empty(shapes.columns)


# --------------------------------------------------------------------------------------------
# Timing phases of a jitted program with the host clock.


def timestamp(after: Any) -> jax.Array:
    """Read the host clock (``time.perf_counter``) once every array leaf of ``after`` has been
    computed; returns ``int32[2]`` (seconds, nanoseconds).

    Inside a jitted program this is a real measurement of *when* the values became available.
    It is ``callax``'s host clock read (a host call without side effects, returning its
    result to the device), so it also works inside a ``while_loop`` whose predicate ``vmap``
    has batched; under ``vmap`` it reads the clock once for the batch.
    XLA may start independent work earlier: to time a phase, pass its inputs through
    [`sequenced`][callax.events.sequenced] with the previous timestamp. Costs one host call
    (~30 µs): sample it (for example once per epoch), never per step.
    """
    leaves = [jnp.ravel(x)[0].astype(jnp.float32) for x in jax.tree.leaves(after)
              if _is_numeric(x) and jnp.size(x) > 0]
    token = jax.lax.stop_gradient(sum(leaves, jnp.zeros((), jnp.float32)))
    return _host.clock(token)


def _is_numeric(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray) and (
        jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_
    )


def sequenced(tree: Any, stamp: jax.Array) -> Any:
    """``tree`` with every numeric (and PRNG key) array leaf made to depend on ``stamp``, so
    that work on it cannot start before that clock read (the values are unchanged)."""
    zero = stamp[0].astype(jnp.float32) * 0.0

    def tie(x):
        if not isinstance(x, jax.Array | np.ndarray):
            return x
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = tie(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return x + zero.astype(x.dtype)
        if jnp.issubdtype(x.dtype, jnp.integer):
            return x + (zero != 0).astype(x.dtype)  # XLA does not fold 0.0 * t for floats
        return x

    return jax.tree.map(tie, tree)


def elapsed(start: jax.Array, end: jax.Array) -> jax.Array:
    """Seconds from timestamp ``start`` to timestamp ``end`` (``float32``)."""
    return ((end[..., 0] - start[..., 0]).astype(jnp.float32)
            + (end[..., 1] - start[..., 1]).astype(jnp.float32) * 1e-9)
