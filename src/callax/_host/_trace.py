"""Whether code is being traced (``jit``, ``vmap``, a loop body) or runs eagerly."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax.core import Tracer

__all__ = ["is_traced", "under_trace"]


def is_traced(x) -> bool:
    return isinstance(x, Tracer)


def _make_under_trace() -> Callable[[], bool]:
    try:
        from jax._src.core import trace_ctx

        trace_ctx.is_top_level()
    except (ImportError, AttributeError):  # pragma: no cover - depends on the JAX version
        # Inside jit (and inside scan/cond bodies) a freshly made array is a tracer.
        return lambda: is_traced(jnp.zeros((), jnp.int32))
    return lambda: not trace_ctx.is_top_level()


under_trace = _make_under_trace()
under_trace.__doc__ = """Whether code is being traced (``jit``, ``vmap``, a ``scan`` body, ...)
rather than run eagerly; ~0.2 µs."""
_under_trace = under_trace
