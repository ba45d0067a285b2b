"""Writes: :func:`emit` (one host call per packed batch, one call for a whole ``vmap``
batch) and :func:`write_eager` (the same without JAX, for calls made outside any trace)."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_batching
from jax.typing import ArrayLike

from .. import _step, _writer as host
from . import _gating, _primitives
from ._packing import _host_writer, _pack
from ._seeds import _gathered, _reduce, global_seed, seed_origin, seed_positions, split_axes

__all__ = ["batching_rule", "emit", "write_eager"]


@functools.cache
def _emitter(axis_names: tuple[str, ...] | None, reduce: str | None, per_process: bool):
    """The ``custom_vmap`` function behind :func:`emit` for one static configuration."""

    @custom_batching.custom_vmap
    def _emit(layout, handle, seed, steps, values, valid, pred, sync):
        seed_axes, replicated = split_axes(axis_names, reduce)

        def send(values, valid, pred):
            if replicated:
                values, valid, pred = _reduce(replicated, reduce, values, valid, pred)
            host_fn = _host_writer(seed_axes, per_process)
            args = _gathered(layout, handle, global_seed(seed, seed_axes), steps, values,
                             valid, pred, sync)
            jax.lax.cond(jnp.any(pred | sync),
                         lambda: _primitives.callback(host_fn, _pack(*args)), lambda: None)

        if replicated:
            # The reduction's collectives run only when some device of the replicated axes
            # sends (one scalar all-reduce per call decides, so all devices agree), not at
            # every buffered row.
            names = tuple(name for name, _ in replicated)
            anyone = jax.lax.psum(jnp.any(pred | sync).astype(jnp.int32), names) > 0
            jax.lax.cond(anyone, send, lambda *_: None, values, valid, pred)
        else:
            send(values, valid, pred)
        return jnp.zeros((), jnp.int32)

    _emit.def_vmap(functools.partial(batching_rule, _emit))
    return _emit


def batching_rule(fn, axis_size, in_batched, layout, handle, seed, steps, values, valid,
                  pred, sync):
    """The ``custom_vmap`` rule of :func:`emit`'s function ``fn``: call ``fn`` once for the
    whole batch, every argument batched, each element's ``seed`` its flat (local) position
    and its ``pred`` ANDed with the gate of a loop or ``cond`` whose predicate is batched
    (:mod:`._gating`). ``fn``'s unbatched body then turns local positions into global
    seeds with :func:`global_seed`."""
    def batched(x, is_batched):
        return x if is_batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))

    if not in_batched[2]:
        seed = seed_positions(axis_size, seed)
    args = (layout, handle, seed, steps, values, valid, pred, sync)
    flags = (*in_batched[:2], True, *in_batched[3:])
    args = [batched(x, b) for x, b in zip(args, flags, strict=True)]
    args[6] = _gating.apply(args[6], axis_size, "a write")
    fn(*args)
    return jnp.zeros((axis_size,), jnp.int32), True


def emit(layout, handle, steps, values, valid, pred: ArrayLike = True,
         sync: ArrayLike = False, *, axis_names: tuple[str, ...] | None = None,
         reduce: str | None = None, per_process: bool = False) -> None:
    """Send ``steps[K]``, ``values[K, width]`` (where ``valid[K, width]`` and ``pred``) to the
    host, for the tags of ``layout`` (see :func:`register_layout`; columns past the number of
    tags are ignored). ``steps`` are integers or a :class:`callax.Step` (64-bit words); the
    step :data:`callax._step.AUTO` means "one more than the tag's last step", any other
    negative step makes the host call raise, naming the tags.

    With ``sync``, the same host call then waits until the run's files hold everything handed
    over (a separate flush callback could be reordered before the write by XLA).

    Under ``jax.vmap``, ``jax.pmap`` and ``shard_map`` each batch element is written to
    ``seed_<i>``, ``i`` its global index (see :func:`split_axes`, :func:`global_seed`);
    ``reduce`` writes replicated training once. With several processes, a call with no seed
    axis is written by process 0 only unless ``per_process``.
    """
    _emitter(None if axis_names is None else tuple(axis_names), reduce, bool(per_process))(
        jnp.asarray(layout, jnp.int32),
        jnp.asarray(handle, jnp.int32),
        seed_origin(),
        _step.as_words(steps),
        jax.lax.stop_gradient(jnp.asarray(values, jnp.float32)),
        jnp.asarray(valid, jnp.bool_),
        jnp.asarray(pred, jnp.bool_),
        jnp.asarray(sync, jnp.bool_),
    )


def write_eager(tags: tuple[str, ...], handle: int, steps: np.ndarray, values: np.ndarray,
                valid: np.ndarray, *, per_process: bool = False) -> None:
    """What :func:`emit` does for a call made outside any trace, without JAX: ``steps[K]``
    (``int64``, :data:`callax._step.AUTO` for "the next step"), ``values[K, n]`` and
    ``valid[K, n]`` for ``tags`` go straight to the writer thread (no program is compiled
    or run). Host calls of programs dispatched earlier run first (``jax.effects_barrier``,
    ~1 µs when none is pending), so eager and jitted writes stay in program order. With
    several processes only process 0 writes, unless ``per_process``."""
    if not _forked:
        jax.effects_barrier()
        if not per_process and jax.process_count() > 1 and jax.process_index() != 0:
            return
    steps = np.where(steps == _step.AUTO, host.AUTO_STEP, steps)
    if len(steps) == 1 and valid.all():  # add_scalar/add_dict: joins the rows queued before
        host.write_row(handle, tags, int(steps[0]), values[0])
    else:
        host.write(handle, tags, _NO_SEED_ROW, steps[None], values[None], valid[None])


_NO_SEED_ROW = np.array([host.NO_SEED])
_forked = False


def _after_fork_in_child() -> None:
    # JAX's runtime threads do not survive a fork: a forked worker's eager writes must not
    # wait for them (``effects_barrier`` would hang). Such a child writes as one process.
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
