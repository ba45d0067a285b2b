"""Timing phases of a jitted program with the host clock: ``timestamp``, ``sequenced``,
``elapsed``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _host

__all__ = ["elapsed", "sequenced", "timestamp"]

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
