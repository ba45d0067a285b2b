"""Declaring event interfaces (``EventInterface``, ``@event``) and calling their events:
a call checks its arguments and adds its values to the innermost active ``record``."""

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

from .._summary_writer import check_tag, scalar_value

__all__ = ["REDUCERS", "EventInterface", "EventSpec", "event"]

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
