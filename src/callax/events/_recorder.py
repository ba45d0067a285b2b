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

import functools
from collections.abc import Callable
from typing import Any

import jax

from ._declare import REDUCERS, EventInterface, EventSpec, _Collector, _stack, event
from ._record import EventRecord
from ._timing import elapsed, sequenced, timestamp

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
