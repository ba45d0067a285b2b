"""The primitives that cross from a compiled program to the host.

- :data:`callback` (``callax_host_call``): call a Python function with the values of some
  arrays, in program order (an ordered effect of its own), returning nothing;
- :func:`read_stop` and :func:`read_clock` (one primitive, ``callax_host_read``): read a
  value from the host once an operand is computed (no effect; the operand orders the read).

On CPU they are lowered to a call of callax's registered XLA FFI target (:mod:`._ffi`), so a
program holding them can be stored in and loaded from JAX's persistent compilation cache;
elsewhere, with ``mlir.emit_python_callback``. Where JAX's internals are missing or changed,
each falls back to JAX's public callbacks (``io_callback(ordered=True)``,
``pure_callback``), which JAX never caches.

Everything else of :mod:`callax._host` (packing, seed numbering, runs) is built on these.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_batching
from jax.core import ShapedArray
from jax.experimental import io_callback

from .._writer import _interrupt
from . import _aot, _autodiff, _ffi, _gating, _inflight
from ._weak import weak_memo

__all__ = ["callback", "direct_host_call", "read_clock", "read_stop"]


def _on_cpu(ctx) -> bool:
    return _ffi.AVAILABLE and tuple(ctx.module_context.platforms) == ("cpu",)


def _lower_call(ctx, on_host: Callable[..., Sequence], token, operands, *, sharding):
    """Emit the host call of ``on_host`` (which returns one value per ``ctx.avals_out``);
    return ``(results, token)``. By name on CPU (cacheable), else ``emit_python_callback``.

    Programs partitioned over several devices (a ``sharding``) keep ``emit_python_callback``:
    XLA's SPMD partitioner accepts a side-effecting call placed on one device only for the
    custom-call targets of JAX's own callbacks (measured: a ``cond`` inside a ``scan`` under
    sharded ``jit`` failed with "side-effect HLO cannot have a replicated sharding")."""
    if sharding is None and _on_cpu(ctx):
        return _ffi.lower(ctx, on_host, token, operands)  # the handler checks the refusal
    from jax.interpreters import mlir

    results, token, _ = mlir.emit_python_callback(
        ctx, _refusable(on_host), token, list(operands), ctx.avals_in, ctx.avals_out,
        has_side_effect=True, returns_token=token is not None, sharding=sharding)
    return results, token


def _placement(ctx):
    """``(partitioned, sharding)``: whether the program is partitioned over several devices,
    and where the call goes then (``None``: a context only JAX's own lowering handles)."""
    from jax._src import sharding_impls

    axis_context = ctx.module_context.axis_context
    if isinstance(axis_context, sharding_impls.SPMDAxisContext) or (
        isinstance(axis_context, sharding_impls.ShardingContext)
        and axis_context.num_devices > 1
    ):
        return True, _partitioned_sharding(axis_context, ctx.avals_out)
    return False, None


@weak_memo  # not functools.cache: it would keep every host function (see _weak)
def _refusable(on_host: Callable[..., Sequence]) -> Callable[..., Sequence]:
    """``on_host`` failing once the process exits after Ctrl-C (as the FFI handler does, see
    :func:`_end_running_programs_after_ctrl_c`), for JAX's callback target."""
    def checked(*arrays):
        _interrupt.check_not_refused()
        return on_host(*arrays)

    return checked


@weak_memo
def _returning_nothing(fn: Callable[..., None]) -> Callable[..., tuple]:
    """``fn`` as the host function of a call without results (one per ``fn``: the same
    function lowers to the same key, see :mod:`._ffi`)."""
    def on_host(*arrays):
        with _interrupt.in_host_call():  # Ctrl-C here must not raise into XLA
            fn(*arrays)
        return ()

    # named after ``fn`` in compiled programs (the FFI call's ``name``) and tracebacks
    on_host.__module__ = getattr(fn, "__module__", None) or __name__
    on_host.__qualname__ = getattr(fn, "__qualname__", type(fn).__qualname__)
    return on_host


def _call_with_numpy(fn: Callable[..., None], *arrays) -> None:
    with _interrupt.in_host_call():  # Ctrl-C here must not raise into XLA
        fn(*(np.asarray(a) for a in arrays))


def _partitioned_sharding(axis_context, avals_out):
    """Where a host call runs in a program partitioned over several devices, as
    ``jax.debug.callback`` places it: on device 0 once under sharded ``jit`` (the operands are
    gathered there), on every device under a fully manual ``shard_map``. ``None`` where the
    direct path does not handle the context (partly manual ``shard_map``) or the JAX
    internals differ: the caller then uses ``jax.debug.callback``'s lowering.

    Going through ``jax.debug.callback`` there copies every operand into a new ``jax.Array``
    (``device_put``) and waits for it. Under sharded ``jit`` on host devices that copy needs a
    runtime worker thread while the other devices hold them, waiting for the next collective:
    measured to deadlock (XLA's rendezvous aborts the process after 40 s) once a flush
    carries ~100 kB on 4 host devices of a 2-core machine (``benchmarks/bench_scale.py``).
    """
    try:
        from jax._src import config, sharding_impls
        from jax._src.lib import xla_client as xc  # pyright: ignore[reportPrivateImportUsage]

        shardy = config.use_shardy_partitioner.value
        if isinstance(axis_context, sharding_impls.SPMDAxisContext):
            if set(axis_context.manual_axes) != set(axis_context.mesh.axis_names):
                return None
            if shardy:
                from jax._src import callback as callback_lib

                return callback_lib._get_sdy_array_list_for_callbacks(avals_out)
            sharding = xc.OpSharding()
            sharding.type = xc.OpSharding.Type.MANUAL
            return sharding
        if shardy:
            sdy_array = sharding_impls.SdyArray  # pyright: ignore[reportPrivateImportUsage]
            return sharding_impls.SdyArrayList((sdy_array(
                mesh_shape=(), dim_shardings=(), logical_device_ids=(0,)),))
        sharding = xc.OpSharding()
        sharding.type = xc.OpSharding.Type.MAXIMAL
        sharding.tile_assignment_dimensions = [1]
        sharding.tile_assignment_devices = [0]
        return sharding
    except (ImportError, AttributeError):  # pragma: no cover - depends on the JAX version
        return None


def _ordered_effect():
    """The effect of callax's host calls: an *ordered* effect of its own.

    JAX threads a token through every ordered effect of a program (``scan``/``while``
    bodies, ``cond`` branches, ``shard_map`` included) and between consecutive executions,
    so host calls run in program order: steps written in a loop, several writes of one
    program and ``global_step=None`` arrive as the program made them. Unordered effects
    (``jax.debug.callback``'s default) ran in orders like 9, 0, 8, 1 in an unrolled
    ``scan``. Registered as *shardable* (allowed in programs over several devices, as
    ``io_callback(ordered=True)`` is) and allowed in control flow, custom derivatives and
    ``jax.checkpoint``, and kept by partial evaluation (loop bodies under ``grad``, see
    :mod:`._autodiff`). Unlike ``io_callback``'s effect, ``while_loop`` and ``cond`` accept
    it under ``vmap`` (callax's calls are never batched: ``custom_vmap`` rules make one call
    for the whole batch).
    The process has one such effect, whatever number of times the host call is built (a
    second effect type would escape the rules installed for the first, and an unpickled
    executable names the process's one instance).
    """
    global _EFFECT
    if _EFFECT is not None:
        return _EFFECT
    from jax._src import effects

    class CallaxHostEffect(effects.Effect):
        __str__ = lambda self: "CallaxHost"  # noqa: E731

        def __reduce__(self):  # a serialized executable holds it: the one instance
            return (_the_effect, ())

    # found by pickle as callax._host._primitives.CallaxHostEffect
    CallaxHostEffect.__qualname__ = CallaxHostEffect.__name__
    CallaxHostEffect.__module__ = __name__
    globals()["CallaxHostEffect"] = CallaxHostEffect
    for kind in ("ordered_effects", "shardable_ordered_effects", "lowerable_effects",
                 "control_flow_allowed_effects", "custom_derivatives_allowed_effects",
                 "remat_allowed_effects", "partial_eval_kept_effects"):
        getattr(effects, kind).add_type(CallaxHostEffect)
    _EFFECT = CallaxHostEffect()
    return _EFFECT


_EFFECT = None


def _the_effect():
    """The effect instance of this process (what an unpickled executable refers to)."""
    return _EFFECT


def _fallback_host_call(fn: Callable[..., None], *args) -> None:
    """The host call without JAX internals: ``io_callback(ordered=True)`` (in program order
    too, but it copies every operand first, and ``vmap`` of a ``cond`` with a batched
    predicate around it is refused by JAX)."""
    def on_host(*arrays):
        _call_with_numpy(fn, *arrays)
        return ()

    io_callback(on_host, (), *args, ordered=True)


_RULES_FOR: list = []  # the primitive whose rules are installed (once per process)


def _install_rules(host_call_p, effect_type: type) -> None:
    """What the host call needs from JAX's rule tables (:mod:`._autodiff`, :mod:`._gating`,
    :mod:`._aot`), installed for the first direct host call built in the process: each wraps
    JAX's rules, so a second install would stack a second wrapper."""
    if _RULES_FOR:
        return
    _RULES_FOR.append(host_call_p)
    try:
        _autodiff.drop_writes_from_while_copies(host_call_p, effect_type)
    except (ImportError, AttributeError, KeyError):  # pragma: no cover - JAX version
        pass  # a while_loop's copy under AD repeats its writes (JAX's own behaviour)
    try:
        _autodiff.keep_writes_in_loops(effect_type)
    except (ImportError, AttributeError, KeyError):  # pragma: no cover - JAX version
        pass  # a loop-invariant write in a scan body under AD runs once (as JAX's own)
    try:
        _gating.install(effect_type)
    except (ImportError, AttributeError, KeyError):  # pragma: no cover - JAX version
        pass  # writes under a batched predicate are not gated
    try:
        _aot.no_fast_path_with(effect_type)
    except (ImportError, AttributeError):  # pragma: no cover - JAX version
        pass
    _inflight.track(effect_type)  # its tokens tell which executions still run


def _make_host_call() -> tuple[Callable[..., None], bool]:
    """Build :func:`callback`; return it and whether it is the direct path.

    ``jax.debug.callback`` and ``io_callback`` first copy every operand into a new
    ``jax.Array`` on the CPU device (``device_put``), which inside a busy compiled program
    waits for the runtime's worker threads: measured 0.6–0.8 ms per call in the PPO-like
    benchmark against ~0.1 ms in an idle program. The direct path is a primitive with an
    ordered effect of its own (:func:`_ordered_effect`), lowered to callax's FFI target on CPU
    (:mod:`._ffi`, cacheable) and with ``mlir.emit_python_callback`` elsewhere, threading the
    effect's token, so the host function gets its operands directly, in program order. Under SPMD
    partitioning (several devices) it places the call as ``jax.debug.callback`` does (see
    :func:`_partitioned_sharding`); inside a partly manual ``shard_map`` the first device of
    the automatic axes calls. It relies on JAX internals; where they are missing at import,
    or lowering a probe program with them fails (a changed signature), it falls back to
    :func:`_fallback_host_call`.
    """
    try:
        from jax._src import sharding_impls
        from jax.extend.core import Primitive
        from jax.interpreters import ad, mlir

        # the internals the lowering uses (an AttributeError here: the public path)
        _ = (sharding_impls.SPMDAxisContext, sharding_impls.ShardingContext,
             mlir.emit_python_callback)
        effect = _ordered_effect()
    except (ImportError, AttributeError):  # pragma: no cover - depends on the JAX version
        return _fallback_host_call, False

    host_call_p = Primitive("callax_host_call")
    host_call_p.multiple_results = True

    @host_call_p.def_impl
    def _impl(*args, fn):
        _call_with_numpy(fn, *args)
        return []

    host_call_p.def_effectful_abstract_eval(lambda *args, fn: ([], {effect}))
    _install_rules(host_call_p, type(effect))

    def _jvp(primals, tangents, *, fn):
        del tangents
        return host_call_p.bind(*primals, fn=fn), []

    ad.primitive_jvps[host_call_p] = _jvp

    def _partly_manual(axis_context, *args, fn):
        # As jax.debug.callback does: the first device along the automatic axes calls.
        from jax import shard_map

        auto = [a for a in axis_context.mesh.axis_names if a not in axis_context.manual_axes]

        def first_calls():
            jax.lax.cond(jax.lax.axis_index(tuple(auto)) == 0,
                         lambda: host_call_p.bind(*args, fn=fn), lambda: [])
            return []

        return shard_map(first_calls, in_specs=(), out_specs=[])()

    def _lowering(ctx, *args, fn):
        partitioned, sharding = _placement(ctx)
        if partitioned and sharding is None:
            return mlir.lower_fun(functools.partial(_partly_manual, ctx.module_context.axis_context,
                                                    fn=fn), multiple_results=True)(ctx, *args)
        results, token = _lower_call(ctx, _returning_nothing(fn), ctx.tokens_in.get(effect),
                                     args, sharding=sharding)
        ctx.set_tokens_out(ctx.tokens_in.update_tokens(mlir.TokenSet({effect: token})))
        return results

    mlir.register_lowering(host_call_p, _lowering)

    def host_call(fn: Callable[..., None], *args) -> None:
        host_call_p.bind(*(jnp.asarray(a) for a in args), fn=fn)

    def probe(fn: Callable[..., None], *args) -> None:
        del fn, args

    try:  # lowering needs the internals' current signatures (a TypeError on older JAX)
        jax.jit(lambda x: host_call(probe, x)).lower(np.zeros((), np.int32))
    except Exception:  # noqa: BLE001 - any failure: use the public path
        return _fallback_host_call, False
    return host_call, True


_BUILDING = threading.Lock()


def _built_at_first_use(make: Callable[[], Any]) -> Callable[[], Any]:
    """``make()``'s result, built once (thread-safe) at the first call, not at ``import
    callax``: the host-call and read builders probe by lowering a program, which starts
    JAX's backends, and ``jax.distributed.initialize`` and backend options
    (``jax_platforms``, ``jax_num_cpu_devices``) only work before any backend started."""
    built: list = []

    def get():
        if not built:
            with _BUILDING:
                if not built:
                    with jax.ensure_compile_time_eval():  # the probe also inside a trace
                        built.append(make())
        return built[0]

    return get


_host_call: Callable[[], tuple[Callable[..., None], bool]] = _built_at_first_use(
    _make_host_call)


def callback(fn: Callable[..., None], *arrays) -> None:
    """Call ``fn`` on the host with the arrays' values as NumPy arrays, eagerly or from
    inside ``jit``/``scan``/``cond``, in program order (an ordered effect; never batched:
    callers wrap it in a ``custom_vmap`` rule)."""
    _host_call()[0](fn, *arrays)


def direct_host_call() -> bool:
    """Whether :func:`callback` is the direct path (see :func:`_make_host_call`), not
    JAX's public callbacks."""
    return _host_call()[1]


# ---- reads: values from the host -----------------------------------------------------------


def _stop_on_host(_: object) -> tuple[np.ndarray]:
    return (np.asarray(_interrupt.stop_requested(), np.bool_),)


def _clock_on_host(_: object) -> tuple[np.ndarray]:
    t = time.perf_counter_ns()
    return (np.array([t // 1_000_000_000, t % 1_000_000_000], np.int32),)


Reader = Callable[[Callable[[object], tuple[np.ndarray]], ShapedArray, jax.Array], jax.Array]


def _public_read(on_host: Callable[[object], tuple[np.ndarray]], aval: ShapedArray,
                 token: jax.Array) -> jax.Array:
    return jax.pure_callback(lambda t: on_host(t)[0],
                             jax.ShapeDtypeStruct(aval.shape, aval.dtype), token)


def _make_read() -> Reader:
    """``read(on_host, aval, token)``: a value of ``aval`` from the host (``on_host``) once
    ``token`` is computed; one primitive for every read, probed at the first read (see
    :func:`_host_call` for why not at import).

    ``jax.pure_callback`` copies its operand into a new ``jax.Array`` first, which inside a
    busy program waits for the runtime's worker threads (as for writes, see
    :func:`_make_host_call`): measured 9-19 % of the PPO-like benchmark's time for a stop
    read once per iteration. The direct path is a primitive without effects (allowed in a
    ``while_loop`` with a batched predicate), lowered as a side-effecting call: its operand
    (e.g. the iteration counter) keeps XLA from hoisting it out of a loop, its result keeps
    it alive. ``pure_callback`` where the JAX internals are missing or the program is partly
    manual."""
    try:
        from jax.extend.core import Primitive
        from jax.interpreters import mlir

        _ = mlir.emit_python_callback  # the lowering off CPU
    except (ImportError, AttributeError):  # pragma: no cover - depends on the JAX version
        return _public_read

    read_p = Primitive("callax_host_read")
    read_p.def_impl(lambda token, *, on_host, aval: jnp.asarray(on_host(np.asarray(token))[0]))
    read_p.def_abstract_eval(lambda token, *, on_host, aval: aval)

    def _lowering(ctx, token, *, on_host, aval):
        partitioned, sharding = _placement(ctx)
        if partitioned and sharding is None:  # partly manual shard_map: JAX's own placement
            return mlir.lower_fun(functools.partial(_public_read, on_host, aval),
                                  multiple_results=False)(ctx, token)
        results, _ = _lower_call(ctx, on_host, None, [token], sharding=sharding)
        return results

    mlir.register_lowering(read_p, _lowering)

    def read(on_host, aval, token):
        return read_p.bind(token, on_host=on_host, aval=aval)

    try:  # the internals' signatures: a TypeError on other JAX releases
        jax.jit(functools.partial(read, _stop_on_host, _STOP)).lower(np.zeros((), np.int32))
    except Exception:  # noqa: BLE001 - any failure: the public path
        return _public_read
    return read


_STOP = ShapedArray((), jnp.bool_)
_CLOCK = ShapedArray((2,), jnp.int32)
_reader: Callable[[], Reader] = _built_at_first_use(_make_read)


def _read(on_host: Callable[[object], tuple[np.ndarray]], aval: ShapedArray,
          token: jax.Array) -> jax.Array:
    """:func:`_make_read`'s reader, built at the first read."""
    return _reader()(on_host, aval, token)


@custom_batching.custom_vmap
def read_stop(token: jax.Array) -> jax.Array:
    """The host's stop flag (``bool[]``) once ``token`` is computed; under ``vmap`` one read
    for the whole batch (the result is unbatched)."""
    return _read(_stop_on_host, _STOP, token)


@read_stop.def_vmap
def _read_stop_vmap(axis_size, in_batched, token):
    return read_stop(jnp.sum(token)), False


@custom_batching.custom_vmap
def read_clock(token: jax.Array) -> jax.Array:
    """The host clock (``time.perf_counter`` as ``int32[2]``: seconds, nanoseconds) once the
    float32 scalar ``token`` is computed; under ``vmap`` one read for the whole batch."""
    return _read(_clock_on_host, _CLOCK, token)


@read_clock.def_vmap
def _read_clock_vmap(axis_size, in_batched, token):
    return read_clock(jnp.sum(token)), False  # the batch is computed together


# ---- exit after Ctrl-C ----------------------------------------------------------------------


def _end_running_programs_after_ctrl_c() -> None:
    """When the main thread ends with an uncaught ``KeyboardInterrupt``, a jitted program
    still running would keep the process alive (JAX waits at exit for programs with ordered
    effects): refuse its host calls, so that it fails at the next one, and wait for that here
    (the refusal's error is expected; JAX's own exit wait then finds nothing running)."""
    if not _interrupt.refuse_host_calls_if_interrupted():
        return
    try:
        jax.effects_barrier()
    except Exception:  # noqa: BLE001 - the refused call's error
        try:
            from jax._src import dispatch

            dispatch.runtime_tokens.clear()
        except (ImportError, AttributeError):  # pragma: no cover - depends on the JAX version
            pass


if hasattr(threading, "_register_atexit"):  # when the main thread ends, before atexit hooks
    threading._register_atexit(_end_running_programs_after_ctrl_c)  # pyright: ignore
