"""Which path callax's host calls on CPU take: callax's XLA FFI handler (:mod:`._ffi`) or
JAX's own callback target. Decided once per process, when :mod:`._ffi` is imported.

1. **JAX's own path where JAX caches host callbacks itself.** The handler exists so that
   JAX's persistent compilation cache can store programs holding callax's host calls. From
   JAX 0.11 the cache stores programs with JAX's own host callbacks and re-attaches the
   callbacks of the process that loads them. That is decided by what the installed JAX
   does, not by its version number (:func:`jax_caches_host_callbacks`).
2. **Otherwise, a round trip first.** The handler is registered (XLA checks the API version
   it reports), then a tiny program on the CPU device runs it. The program passes a
   ``float32[2, 3]`` and an ``int32[]`` and gets two results back. Both are compared with
   what NumPy computes from the same inputs. This goes through every struct the handler
   reads: the call frame, the API table, attributes, argument and result buffers.
3. **Any failure selects JAX's callback target,** with one warning that says why. XLA may
   refuse the registration, or the round trip may raise or return other values. Host calls
   then work as before, but their programs are not stored in the persistent cache.

The round trip costs one small compilation at import (~30-60 ms on a loaded 2-core machine).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

_lower: Callable[..., tuple[list, Any]] | None = None  # ``_ffi.lower``, set by choose()


def jax_caches_host_callbacks() -> bool:
    """Whether the installed JAX stores programs with host callbacks in its persistent
    compilation cache: its cache writer no longer receives a program's host callbacks
    (before 0.11 it took them, to refuse such programs) and its cache reader takes them, to
    attach them to the executable it loads. Missing internals: ``False`` (callax's handler,
    tested by its round trip)."""
    try:
        from jax._src import compilation_cache, compiler

        write = inspect.signature(compiler._cache_write).parameters
        read = inspect.signature(compilation_cache.get_executable_and_time).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return False
    return "host_callbacks" not in write and "host_callbacks" in read


def _make_call_primitive():
    """``callax_ffi_call``: call ``fn`` on the host through the handler (CPU only), with
    results of ``avals`` (see :func:`bind`)."""
    from jax.extend.core import Primitive
    from jax.interpreters import mlir

    call_p = Primitive("callax_ffi_call")
    call_p.multiple_results = True
    call_p.def_abstract_eval(lambda *args, fn, avals: list(avals))

    def lowering(ctx, *args, fn, avals):
        assert _lower is not None
        return _lower(ctx, fn, None, args)[0]

    mlir.register_lowering(call_p, lowering, platform="cpu")
    return call_p


_call_p = None


def bind(fn: Callable[..., Sequence[Any]], avals: Sequence[Any], *args) -> list:
    """``fn(*args)`` on the host through callax's handler, from a program for the CPU
    device (traced: e.g. inside ``jax.jit``); ``avals`` (``jax.ShapeDtypeStruct``-like) are
    its results' types. What the round trip runs, and tests of the handler.

    The call has no effect, so no token tracks its executions (:mod:`._inflight`): its
    program must outlive them (wait for its results, as :func:`call` does) or ``fn`` must
    live on (a module-level function)."""
    from jax.core import ShapedArray

    global _call_p
    if _call_p is None:
        _call_p = _make_call_primitive()
    avals = tuple(ShapedArray(tuple(a.shape), a.dtype) for a in avals)
    return _call_p.bind(*args, fn=fn, avals=avals)


def call(fn: Callable[..., Sequence[Any]], avals: Sequence[Any], *args) -> list:
    """:func:`bind` in a jitted program run on the CPU device, on NumPy ``args``; its
    results once ready (the temporary program, which keeps ``fn``, is alive till then)."""
    import jax

    cpu = jax.devices("cpu")[0]
    args = [jax.device_put(np.asarray(a), cpu) for a in args]
    with jax.disable_jit(False):  # a compiled program, also where jit is disabled
        program = jax.jit(lambda *xs: bind(fn, avals, *xs))
        return jax.block_until_ready(program(*args))


def _echo(x: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The round trip's host function (module level: the same key in every process)."""
    return x * np.float32(2) + np.float32(k), np.asarray(k + 1, np.int32)


def _round_trip(unreported: Callable[[], str | None]) -> str | None:
    """Run the handler once; ``None`` if every value came back, else what went wrong."""
    import jax

    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    k = np.asarray(7, np.int32)
    want = _echo(x, k)
    unreported()  # forget failures before this round trip
    try:
        got = [np.asarray(r) for r in call(_echo, [jax.ShapeDtypeStruct(w.shape, w.dtype)
                                                   for w in want], x, k)]
    except Exception as error:  # noqa: BLE001 - any failure: JAX's path, and why
        return f"{type(error).__name__}: {str(error).strip()}"
    for g, w in zip(got, want, strict=True):
        if g.dtype != w.dtype or g.shape != w.shape or not np.array_equal(g, w):
            extra = unreported()
            return (f"the round trip returned {g.dtype}{list(g.shape)} {g.tolist()} where "
                    f"{w.dtype}{list(w.shape)} {w.tolist()} was sent"
                    + (f" ({extra})" if extra else ""))
    return None


def choose(register: Callable[[], None], lower: Callable[..., tuple[list, Any]],
           unreported: Callable[[], str | None]) -> tuple[bool, str]:
    """``(use the handler, why)``; warns once when the handler fails."""
    global _lower
    _lower = lower
    if jax_caches_host_callbacks():
        return False, ("JAX's persistent compilation cache stores programs with host "
                       "callbacks: callax uses JAX's own callback target")
    import jax

    try:
        jax.devices("cpu")
    except RuntimeError:  # no CPU backend (JAX_PLATFORMS without cpu): nothing to lower
        return False, "no CPU backend in this process"
    try:
        register()
    except Exception as error:  # noqa: BLE001 - e.g. an FFI version XLA does not support
        why = f"XLA refused to register it: {type(error).__name__}: {error}"
    else:
        why = _round_trip(unreported)
    why = None if why is None else why.rstrip(".")
    if why is None:
        return True, "callax's XLA FFI handler (its round trip passed)"
    warnings.warn(
        "callax: host calls use JAX's callback target instead of callax's XLA FFI handler, "
        f"because {why}. Points are written as before, but programs holding callax's host "
        "calls are not stored in JAX's persistent compilation cache.",
        RuntimeWarning, stacklevel=2)
    return False, f"JAX's callback target: {why}"
