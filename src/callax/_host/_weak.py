"""Caches that keep nothing alive: host functions wrapped once per function, for as long as
something else (a compiled program) holds the wrapper.

A ``functools.cache`` on a function of host functions keeps every host function ever
lowered, and everything it closes over, for the life of the process: a sweep that traces a
new host function each time (a fresh closure per configuration) grew by the size of every
closure, even after ``jax.clear_caches()``. :func:`weak_memo` remembers a wrapper only while
the wrapper is alive; a compiled program keeps its wrappers alive (see ``_ffi.lower``), and
so does a dropped one still running (see ``_inflight``).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F")
W = TypeVar("W")


def weak_memo(wrap: Callable[[F], W]) -> Callable[[F], W]:
    """``wrap(fn)`` made once per ``fn`` while the result lives, holding neither strongly.

    ``wrap(fn)`` must return a weakly referenceable object that references ``fn`` (a closure
    over it): a live result then proves its ``fn`` is alive, so ``id(fn)`` names it."""
    made: dict[int, weakref.ref] = {}
    lock = threading.RLock()  # re-entered by a collection inside the lock

    def forget(ident: int, ref: weakref.ref) -> None:
        with lock:
            if made.get(ident) is ref:
                del made[ident]

    @functools.wraps(wrap)
    def memoized(fn: F) -> W:
        ref = made.get(id(fn))
        result = None if ref is None else ref()
        if result is not None:
            return result
        with lock:
            ref = made.get(id(fn))
            result = None if ref is None else ref()
            if result is None:
                result = wrap(fn)
                made[id(fn)] = weakref.ref(result, functools.partial(forget, id(fn)))
            return result

    memoized.live = lambda: len(made)  # pyright: ignore[reportAttributeAccessIssue]
    return memoized
