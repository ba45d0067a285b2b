"""The one module that crosses from device to host (``jax.debug.callback``, ``io_callback``).

Everything a jitted program sends to TensorBoard goes through :func:`emit`: one host call
carrying one packed batch (``steps[K]``, ``values[K, n]``, ``valid[K, n]``) for a tuple of
``n`` tags registered once as a *layout*. :func:`emit` is a
:func:`jax.custom_batching.custom_vmap` function: under ``jax.vmap`` (nested or not) it makes
**one** host call for the whole batch and tags every batch element with its flat position, so
each vmapped seed is written to its own run sub-directory ``seed_<i>``. The payload carries
the run handle, the tag layout, the seed position and the steps, so the host never depends on
call order or on which thread or device called it.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_batching
from jax.experimental import io_callback

from ._writer import _host as host

__all__ = [
    "callback", "close", "emit", "flush", "flush_all", "is_traced", "open_run", "register_layout",
]

_layout_lock = threading.Lock()


def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _under_trace() -> bool:
    # Inside jit (and inside scan/cond bodies) a freshly made array is a tracer.
    return is_traced(jnp.zeros((), jnp.int32))


def open_run(log_dir: str | Callable[[], str], *, avoid_existing: bool = False) -> jax.Array:
    """Register a run and return its handle as an ``int32`` scalar.

    Called eagerly, the run is opened now. Called while tracing (inside ``jax.jit``), the run
    is opened by a host callback each time the compiled function executes, so every execution
    writes to a fresh run directory.
    """
    if not _under_trace():
        return jnp.asarray(host.open_run(log_dir, avoid_existing=avoid_existing), jnp.int32)

    def _open() -> np.ndarray:
        return np.asarray(host.open_run(log_dir, avoid_existing=avoid_existing), np.int32)

    return io_callback(_open, jax.ShapeDtypeStruct((), jnp.int32), ordered=False)


_layouts: dict[tuple[str, ...], int] = {}
_layout_tags: list[tuple[str, ...]] = []


def register_layout(tags: tuple[str, ...]) -> int:
    """A small integer standing for a tuple of tags, so that the tags of a packed payload can
    travel as data (a buffer filled in one traced function and flushed from another)."""
    layout = _layouts.get(tags)
    if layout is None:
        with _layout_lock:
            layout = _layouts.get(tags)
            if layout is None:
                layout = _layouts[tags] = len(_layout_tags)
                _layout_tags.append(tags)
    return layout


def _call_with_numpy(fn: Callable[..., None], *arrays) -> None:
    fn(*(np.asarray(a) for a in arrays))


def _make_host_call() -> tuple[Callable[..., None], bool]:
    """Build :func:`callback`; return it and whether it is the direct path.

    ``jax.debug.callback`` first copies every operand into a new ``jax.Array`` on the CPU
    device (``device_put``), which inside a busy compiled program waits for the runtime's
    worker threads: measured 0.6–0.8 ms per call in the PPO-like benchmark against ~0.1 ms
    in an idle program. The direct path is a primitive with the same (unordered debug)
    effect, lowered with ``mlir.emit_python_callback``, so XLA hands the host function the
    NumPy views of its operands directly. It relies on two JAX internals (the debug effect
    and the sharding contexts); where they are missing it falls back to
    ``jax.debug.callback``. Under SPMD partitioning (several devices) it defers to
    ``jax.debug.callback``'s lowering, which knows where to run the call.
    """
    try:
        from jax._src import debugging, sharding_impls
        from jax.extend.core import Primitive
        from jax.interpreters import ad, mlir

        effect = debugging.debug_effect
        debug_lowering = debugging.debug_callback_lowering
        spmd_context = sharding_impls.SPMDAxisContext
        sharding_context = sharding_impls.ShardingContext
        emit_python_callback = mlir.emit_python_callback
    except (ImportError, AttributeError):  # pragma: no cover - depends on the JAX version

        def debug_call(fn: Callable[..., None], *args) -> None:
            jax.debug.callback(functools.partial(_call_with_numpy, fn), *args)

        return debug_call, False

    host_call_p = Primitive("callax_host_call")
    host_call_p.multiple_results = True

    @host_call_p.def_impl
    def _impl(*args, fn):
        _call_with_numpy(fn, *args)
        return []

    host_call_p.def_effectful_abstract_eval(lambda *args, fn: ([], {effect}))

    def _jvp(primals, tangents, *, fn):
        del tangents
        return host_call_p.bind(*primals, fn=fn), []

    ad.primitive_jvps[host_call_p] = _jvp

    def _lowering(ctx, *args, fn):
        axis_context = ctx.module_context.axis_context
        if isinstance(axis_context, spmd_context) or (
            isinstance(axis_context, sharding_context) and axis_context.num_devices > 1
        ):
            return debug_lowering(ctx, *args, effect=effect, partitioned=False,
                                  callback=functools.partial(_call_with_numpy, fn))

        def on_host(*arrays):
            fn(*arrays)
            return ()

        results, _, _ = emit_python_callback(
            ctx, on_host, None, list(args), ctx.avals_in, ctx.avals_out,
            has_side_effect=True, returns_token=False,
        )
        return results

    mlir.register_lowering(host_call_p, _lowering)

    def host_call(fn: Callable[..., None], *args) -> None:
        host_call_p.bind(*(jnp.asarray(a) for a in args), fn=fn)

    return host_call, True


callback, DIRECT_HOST_CALL = _make_host_call()
callback.__doc__ = """``callback(fn, *arrays)``: call ``fn`` on the host with the arrays' values as
NumPy arrays, eagerly or from inside ``jit``/``scan``/``cond``, like ``jax.debug.callback``
(unordered; never batched: callers wrap it in a ``custom_vmap`` rule)."""


_HEADER = 7  # layout, handle, seed, pred, sync, K, width


def _pack(layout, handle, seed, steps, values, valid, pred, sync) -> jax.Array:
    """One int32 array per batch element (a host call costs per operand): a header, the
    steps, the validity mask and the float32 values bit-cast to int32."""
    batch = jnp.shape(seed)
    k, width = jnp.shape(values)[-2:]

    def column(x):
        return jnp.broadcast_to(jnp.asarray(x, jnp.int32), batch)[..., None]

    header = [column(layout), column(handle), column(seed), column(pred), column(sync),
              column(k), column(width)]
    body = [
        jnp.broadcast_to(steps, (*batch, k)).astype(jnp.int32),
        jnp.broadcast_to(valid, (*batch, k, width)).reshape(*batch, k * width).astype(jnp.int32),
        jax.lax.bitcast_convert_type(
            jnp.broadcast_to(values, (*batch, k, width)).astype(jnp.float32), jnp.int32
        ).reshape(*batch, k * width),
    ]
    return jnp.concatenate(header + body, axis=-1)


def _host_write(packed) -> None:
    packed = np.asarray(packed)
    rows = packed.reshape(-1, packed.shape[-1])
    layout, handle, seed, pred, sync, k, width = rows[:, :_HEADER].T
    k, width = int(k[0]), int(width[0])
    steps = rows[:, _HEADER:_HEADER + k]
    valid = rows[:, _HEADER + k:_HEADER + k + k * width].reshape(-1, k, width) != 0
    values = rows[:, _HEADER + k + k * width:].view(np.float32).reshape(-1, k, width)
    valid &= (pred != 0)[:, None, None]
    # A sync call writes in this thread: it waits for the files anyway, and handing the batch
    # to the writer thread first costs two thread switches (~0.25 ms on a busy core).
    wait = bool(sync.any())
    for h, lay in {(int(h), int(t)) for h, t in zip(handle, layout, strict=True)}:
        mine = (handle == h) & (layout == lay) & (pred != 0)
        if mine.any():
            tags = _layout_tags[lay]
            n = len(tags)
            host.write(h, tags, seed[mine], steps[mine], values[mine][..., :n],
                       valid[mine][..., :n], wait=wait)
    if wait:
        for h in np.unique(handle).tolist():
            host.flush(h)


@custom_batching.custom_vmap
def _emit(layout, handle, seed, steps, values, valid, pred, sync):
    def send():
        callback(_host_write, _pack(layout, handle, seed, steps, values, valid, pred, sync))

    jax.lax.cond(jnp.any(pred | sync), send, lambda: None)
    return jnp.zeros((), jnp.int32)


@_emit.def_vmap
def _emit_vmap(axis_size, in_batched, layout, handle, seed, steps, values, valid, pred,
               sync):
    # One host call for the whole batch; each element is tagged with its flat position.
    def batched(x, is_batched):
        return x if is_batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))

    if not in_batched[2]:
        inner = math.prod(jnp.shape(seed))
        positions = jnp.arange(axis_size, dtype=jnp.int32).reshape(
            (axis_size,) + (1,) * jnp.ndim(seed)
        )
        seed = positions * inner + (0 if jnp.ndim(seed) == 0 else seed)
    args = (layout, handle, seed, steps, values, valid, pred, sync)
    flags = (*in_batched[:2], True, *in_batched[3:])
    _emit(*(batched(x, b) for x, b in zip(args, flags, strict=True)))
    return jnp.zeros((axis_size,), jnp.int32), True


def emit(layout, handle, steps, values, valid, pred=True, sync=False) -> None:
    """Send ``steps[K]``, ``values[K, width]`` (where ``valid[K, width]`` and ``pred``) to the
    host, for the tags of ``layout`` (see :func:`register_layout`; columns past the number of
    tags are ignored). A step of ``-1`` means "one more than the tag's last step".

    With ``sync``, the same host call then waits until the run's files hold everything handed
    over (a separate flush callback could be reordered before the write by XLA).
    """
    _emit(
        jnp.asarray(layout, jnp.int32),
        jnp.asarray(handle, jnp.int32),
        jnp.asarray(host.NO_SEED, jnp.int32),
        jnp.asarray(steps, jnp.int32),
        jax.lax.stop_gradient(jnp.asarray(values, jnp.float32)),
        jnp.asarray(valid, jnp.bool_),
        jnp.asarray(pred, jnp.bool_),
        jnp.asarray(sync, jnp.bool_),
    )


def _each_handle(action: Callable[[int], None]) -> Callable[[object], None]:
    def run(handle: object) -> None:
        for h in np.unique(np.asarray(handle)).tolist():
            action(h)

    return run


def flush(handle) -> None:
    """Write everything handed over so far for this run and flush its files.

    Eagerly, this first waits for every pending host callback (``jax.effects_barrier``).
    Inside a traced function it is a host callback of its own, which XLA does not order
    against other unordered callbacks: use the ``sync`` flag of :func:`emit` where the order
    matters.
    """
    if is_traced(handle):
        jax.debug.callback(_each_handle(host.flush), handle)
    else:
        jax.effects_barrier()
        _each_handle(host.flush)(np.asarray(handle))


def close(handle) -> None:
    """Flush and close the run's event files (same ordering rules as :func:`flush`)."""
    if is_traced(handle):
        jax.debug.callback(_each_handle(host.close), handle)
    else:
        jax.effects_barrier()
        _each_handle(host.close)(np.asarray(handle))


def flush_all() -> None:
    """Wait for every pending host callback, then write and flush every run's event files.

    Call it eagerly (not inside a jitted function). It also runs at interpreter exit.
    """
    jax.effects_barrier()
    host.flush_all()
