"""Generic batched host calls built on the seed numbering: :func:`send` (one call for the
whole batch, gathered to one device), the per-device variant, and reads of the host clock
and of the Ctrl-C stop flag."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import custom_batching
from jax.typing import ArrayLike

from . import _gating, _primitives
from ._primitives import read_clock, read_stop
from ._seeds import (
    _flat_rows,
    _gather_manual,
    _gathered,
    manual_axes,
    seed_origin,
    seed_positions,
    vary,
)
from ._weak import weak_memo

__all__ = ["clock", "send", "stop_requested"]


def _sender(host_fn: Callable[..., None]) -> Callable[..., jax.Array]:
    def on_host(when, seed, *arrays) -> None:
        seed, when, arrays = _flat_rows(seed, when, arrays)
        host_fn(seed, when, *arrays)

    def on_process_0(when, seed, *arrays) -> None:
        if jax.process_index() == 0:
            on_host(when, seed, *arrays)

    @custom_batching.custom_vmap
    def call(when, seed, *arrays):
        # Under manual axes exactly one device of the whole mesh calls (the rows of all
        # devices gathered). Otherwise the call is replicated or gathered data, or the
        # program of one process: with several processes only process 0 calls host_fn
        # (decided on the host, so that every process compiles the same program).
        fn = on_host if manual_axes() else on_process_0
        when, seed, arrays, first = _gather_manual(when, seed, arrays)
        when, seed, *arrays = _gathered(when, seed, *arrays)
        jax.lax.cond(jnp.any(when) & first,
                     lambda: _primitives.callback(fn, when, seed, *arrays), lambda: None)
        return jnp.zeros((), jnp.int32)

    @call.def_vmap
    def call_vmap(axis_size, in_batched, when, seed, *arrays):
        # One host call for the whole batch, each element tagged with its seed position.
        if not in_batched[1]:
            seed = seed_positions(axis_size, seed)
        args = (when, seed, *arrays)
        flags = (in_batched[0], True, *in_batched[2:])
        when, *rest = (x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))
                       for x, b in zip(args, flags, strict=True))
        call(_gating.apply(when, axis_size, "a host call"), *rest)
        return jnp.zeros((axis_size,), jnp.int32), True

    return call


@functools.cache
def _if_several(host_fn: Callable[..., None]) -> Callable[..., jax.Array]:
    """:func:`send` made only where the call carries several seeds: under a ``vmap`` of 2
    or more elements (one call for the batch), or under manual axes (seeds spread over
    devices); a ``vmap`` of one element is looked through (an enclosing one may batch
    again)."""

    def send_now(when, *arrays):
        _sender(host_fn)(when, seed_origin(), *arrays)
        return jnp.zeros((), jnp.int32)

    @custom_batching.custom_vmap
    def call(when, *arrays):
        # Not batched: one seed, unless seeds are spread over the devices of manual axes.
        if manual_axes():
            send_now(when, *arrays)
        return jnp.zeros((), jnp.int32)

    @call.def_vmap
    def call_vmap(axis_size, in_batched, *args):
        if axis_size == 1:
            call(*(x[0] if b else x for x, b in zip(args, in_batched, strict=True)))
            return jnp.zeros((axis_size,), jnp.int32), True

        # The batched arguments mapped again (``send``'s own rule makes one call for the
        # batch), the others closed over as they are (broadcasting them would give them a
        # sharding that disagrees with the batched ones').
        def one(*batched):
            items = iter(batched)
            return send_now(*(next(items) if b else x
                              for x, b in zip(args, in_batched, strict=True)))

        jax.vmap(one)(*(x for x, b in zip(args, in_batched, strict=True) if b))
        return jnp.zeros((axis_size,), jnp.int32), True

    return call


def send(host_fn: Callable[..., None], *arrays, when: ArrayLike = True,
         several_seeds: bool = False) -> None:
    """Call ``host_fn(seed, when, *arrays)`` on the host with the arrays' values, eagerly or
    from inside ``jit``/``scan``/``cond``/``while_loop``, and under ``jax.vmap`` (nested or
    not) **once for the whole batch**.

    ``host_fn`` receives NumPy arrays with one leading *row* axis: one row per batch
    element (a single row outside ``vmap``). ``seed[rows]`` (``int32``) is each row's seed
    position, numbered as :func:`emit` numbers them (``NO_SEED`` outside any mapped axis;
    under ``pmap``/``shard_map`` the global index over every enclosing manual axis, the rows
    of all devices gathered into the one call made by the first device; with several
    processes and no manual axis, only process 0 calls ``host_fn``);
    ``when[rows]`` says which rows asked for the call; ``arrays`` are the given arrays, each
    with its row axis in front. The call is made when ``when`` holds for at least one row,
    so ``host_fn`` should usually ignore the other rows. A call under ``vmap`` is batched
    only if at least one argument depends on the mapped axis (pass something that does,
    e.g. data derived from a per-seed PRNG key, to count the seeds).

    Unordered, like ``jax.debug.callback``; the arguments carry whatever the host needs to
    be independent of call order. The cost is that of one host call per execution
    (~10 µs plus ~20 µs per array): pack values into few arrays, and never call it per env
    step.

    **Arguments:**

    - `host_fn`: a Python function; its return value is ignored.
    - `arrays`: array-likes (converted with ``jnp.asarray``).
    - `when`: a boolean scalar (per batch element): whether to make the call.
    - `several_seeds`: make the call only where it carries several seeds (a ``vmap`` of 2
      or more elements, or seeds spread over the devices of manual axes); with one seed
      the program holds no host call at all (e.g. statistics over seeds).
    """
    when = jnp.asarray(when, jnp.bool_)
    arrays = tuple(jnp.asarray(a) for a in arrays)
    if several_seeds:
        _if_several(host_fn)(when, *arrays)
    else:
        _sender(host_fn)(when, seed_origin(), *arrays)


def clock(token) -> jax.Array:
    """Read the host clock (``time.perf_counter``) once the float32 scalar ``token`` has
    been computed; returns ``int32[2]`` (seconds, nanoseconds).

    Under ``vmap`` it reads the clock once for the whole batch (the result is unbatched).
    """
    return read_clock(jnp.asarray(token, jnp.float32))


@weak_memo  # not functools.cache: it would keep every host function (see _weak)
def each_device(host_fn: Callable[..., None]) -> Callable[..., jax.Array]:
    """Like :func:`send`, but every device of the enclosing manual axes calls ``host_fn``
    with its own rows (no gathering); with several processes, every process."""
    def on_host(when, seed, *arrays) -> None:
        seed, when, arrays = _flat_rows(seed, when, arrays)
        host_fn(seed, when, *arrays)

    @custom_batching.custom_vmap
    def call(when, seed, *arrays):
        jax.lax.cond(jnp.any(when),
                     lambda: _primitives.callback(on_host, when, seed, *arrays), lambda: None)
        return jnp.zeros((), jnp.int32)

    @call.def_vmap
    def call_vmap(axis_size, in_batched, when, seed, *arrays):
        args = (when, seed, *arrays)
        when, *rest = (x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))
                       for x, b in zip(args, in_batched, strict=True))
        call(_gating.apply(when, axis_size, "a host call"), *rest)
        return jnp.zeros((axis_size,), jnp.int32), True

    return call


# --------------------------------------------------------------------------------------------
# Ctrl-C: the stop flag, read once per iteration by a training (see callax._writer._interrupt).


def stop_requested(token) -> jax.Array:
    """Whether Ctrl-C asked the running training to stop: a ``bool`` scalar read from the
    host once ``token`` (e.g. the iteration counter) is computed. Under ``vmap`` one read for
    the batch; under ``pmap``/``shard_map`` every device reads and all agree (the reads are
    OR-ed over the manual axes), so every device stops at the same iteration."""
    flag = read_stop(jnp.asarray(token, jnp.int32))
    axes = manual_axes()
    if axes:
        names = tuple(name for name, _ in axes)
        flag = jax.lax.pmax(vary(flag).astype(jnp.int32), names) > 0
    return flag
