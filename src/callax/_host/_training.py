"""Training boundaries: a training begins (one run directory per training) and the
training that reads the Ctrl-C stop flag starts and ends."""

from __future__ import annotations

import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .. import _writer as host
from .._writer import _interrupt
from ._runs import _rollover_name
from ._seeds import device_position, manual_axes, seed_origin
from ._send import each_device, send
from ._trace import is_traced, under_trace

__all__ = ["begin_training", "training_ended", "training_started"]


# --------------------------------------------------------------------------------------------
# A training begins: one run per training.

_begin_lock = threading.Lock()
_begin_calls: dict[tuple[int, int], int] = {}
_begun: dict[int, int] = {}


def _begin_on_host(handle: int, device: int) -> None:
    # The k-th call from a device starts training k of the run; the first call of a training
    # (from whichever device calls first) moves the run on, the others find it done. Every
    # device's writes after its own call are queued after the move.
    with _begin_lock:
        count = _begin_calls[(handle, device)] = _begin_calls.get((handle, device), 0) + 1
        if count <= _begun.get(handle, 0):
            return
        _begun[handle] = count
    host.begin_training(handle, _rollover_name)


def _begin_rows(seed, when, handle, device) -> None:
    del seed
    rows = np.asarray(when)
    for h, d in {(int(h), int(d)) for h, d in zip(np.asarray(handle)[rows],
                                                   np.asarray(device)[rows], strict=True)}:
        _begin_on_host(h, d)


def begin_training(handle) -> None:
    """A training begins writing to run ``handle`` (a callback's ``reset``), eagerly or
    inside ``jit``/``vmap``/``pmap``/``shard_map``: if the run already holds points of an
    earlier training (a compiled training function executed again, a callback reused), its
    writes go on in a new directory ``<run>_<n>``, as a callback built inside ``jit`` does.
    In program order with the writes, under every device of a mesh (each device's writes
    after its call go to the new directory)."""
    if not is_traced(handle) and not under_trace():
        jax.effects_barrier()
        for h in np.unique(np.asarray(handle)).tolist():
            _begin_on_host(int(h), 0)
        return
    axes = manual_axes()
    device = device_position(axes)[0] if axes else jnp.zeros((), jnp.int32)
    if axes:
        # Every device calls for itself (its own writes must follow its own call).
        each_device(_begin_rows)(jnp.asarray(True), seed_origin(),
                                  jnp.asarray(handle, jnp.int32), device)
    else:
        send(_begin_rows, jnp.asarray(handle, jnp.int32), device)


def _mark(started: bool) -> Callable[..., None]:
    def on_host(seed, when, *arrays) -> None:
        del seed, arrays
        if np.asarray(when).any():
            (_interrupt.training_started if started else _interrupt.training_ended)()

    return on_host


_MARK_START, _MARK_END = _mark(True), _mark(False)


def training_started(token: ArrayLike = 0) -> None:
    """Tell the host a training that reads :func:`stop_requested` begins (eagerly or from
    inside ``jit``; every device and process that runs it): the first Ctrl-C will stop it
    instead of ending the process. Clears an earlier stop request."""
    if not under_trace() and not is_traced(token):
        _interrupt.training_started()
        return
    each_device(_MARK_START)(jnp.asarray(True), seed_origin(), jnp.asarray(token, jnp.int32))


def training_ended(token: ArrayLike = 0) -> None:
    """Tell the host that the training of :func:`training_started` ended."""
    if not under_trace() and not is_traced(token):
        _interrupt.training_ended()
        return
    each_device(_MARK_END)(jnp.asarray(True), seed_origin(), jnp.asarray(token, jnp.int32))
