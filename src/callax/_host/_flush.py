"""Flushing and closing runs, eagerly or from inside a traced function (in program order
after the writes before it)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np

from .. import _writer as host
from ._send import send
from ._trace import is_traced

__all__ = ["close", "flush", "flush_all"]


def _each_handle(action: Callable[[int], None], handle: object) -> None:
    """``action(h)`` for every distinct run handle ``h`` in the array ``handle``."""
    for h in np.unique(np.asarray(handle)).tolist():
        action(h)


def _on_handles(action: Callable[[int], None]) -> Callable[..., None]:
    """A :func:`send` host function applying ``action`` to every run handle it receives."""
    def run(seed, when, handle) -> None:
        del seed
        _each_handle(action, np.asarray(handle)[np.asarray(when)])

    return run


def flush(handle) -> None:
    """Write everything handed over so far for this run and flush its files.

    Eagerly, this first waits for every pending host callback (``jax.effects_barrier``).
    Inside a traced function it is a host call of its own, in program order after the
    writes before it.
    """
    if is_traced(handle):
        send(_on_handles(functools.partial(host.flush, report=False)), handle)
    else:
        jax.effects_barrier()
        _each_handle(host.flush, handle)


def close(handle) -> None:
    """Flush and close the run's event files (same ordering rules as :func:`flush`)."""
    if is_traced(handle):
        send(_on_handles(functools.partial(host.close, report=False)), handle)
    else:
        jax.effects_barrier()
        _each_handle(host.close, handle)


def flush_all() -> None:
    """Wait for every pending host callback, then write and flush every run's event files.

    Call it eagerly (not inside a jitted function). It also runs at interpreter exit.
    """
    jax.effects_barrier()
    host.flush_all()
