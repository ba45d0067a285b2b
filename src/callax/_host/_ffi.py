"""Host calls that XLA reaches by a registered name: programs JAX's persistent cache can keep.

JAX's own host callbacks (``jax.debug.callback``, ``io_callback``, ``pure_callback`` and
``mlir.emit_python_callback``) bake a Python object into the compiled executable, and JAX
before 0.11 refuses to store such an executable in its persistent compilation cache (every
program with a callax callback would compile again in each new process). Here one XLA FFI
handler, ``callax_host`` on the CPU platform, is registered once per process; a call site
names the Python function it runs by a small integer attribute ``key``. Keys are handed out
in the order functions are first lowered, and JAX lowers a program again in every process
before looking it up in the cache, so the same program lowered in a fresh process names the
same keys (the cache key matches) and the table of this process resolves them.

The handler is a :mod:`ctypes` function (no compiled extension): it reads XLA's call frame
(``xla/ffi/api/c_api.h``, a stable C ABI; the structs and their checks: :mod:`._ffi_abi`),
hands the operands to the Python function as NumPy arrays (copies: the buffers belong to XLA)
and writes what it returns into the results once their dtypes and shapes match. A Python
exception becomes an XLA error holding its traceback, so the jitted call raises as with
JAX's callbacks. Token operands and results (an ordered effect's token) are passed through.

- **What survives a reload.** XLA keeps the handler's address for the life of the process.
  The C entry point and the table of functions live in an object reachable from :mod:`sys`
  (:func:`_anchor`), made once per process; re-importing this module (``importlib.reload``)
  only points the entry at the new code.
- **What it keeps alive.** The table only names functions (weakly). A lowered program keeps
  its own host functions (:class:`_Held`, a keepalive JAX stores with the executable and
  its ``Lowered``). When JAX drops the executable (its jitted function collected,
  ``jax.clear_caches()``), an execution dispatched before may still be running: its
  functions stay until every execution dispatched so far, on any thread, has ended (the
  tokens of callax's ordered effect tell, :mod:`._inflight`), and go at the next lowering
  of a host call or ``jax.effects_barrier()`` after that. A sweep retracing a new host
  function each time keeps only those of programs alive or running. A function lowered
  again after it was let go gets a new key: at worst a miss in JAX's persistent cache,
  never another function. The calls without callax's effect (:func:`._ffi_path.bind`, the
  host reads of :mod:`._primitives`) are not tracked: they call module-level functions, or
  their program waits for its results.

:func:`lower` emits the call; :data:`AVAILABLE` says whether callax lowers host calls on CPU
to this handler: decided at import by :mod:`._ffi_path` (JAX's own path where JAX caches
host callbacks itself; otherwise this handler, once a round trip through it succeeded).
"""

from __future__ import annotations

import ctypes
import sys
import threading
import traceback
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._writer import _interrupt
from . import _ffi_abi as abi, _inflight
from ._numbering import WeakNumbering

TARGET = "callax_host"

# XLA_FFI_DataType (xla::PrimitiveType numbers) -> NumPy dtype.
_DTYPES = {1: np.dtype(np.bool_), 2: np.dtype(np.int8), 3: np.dtype(np.int16),
           4: np.dtype(np.int32), 5: np.dtype(np.int64), 6: np.dtype(np.uint8),
           7: np.dtype(np.uint16), 8: np.dtype(np.uint32), 9: np.dtype(np.uint64),
           10: np.dtype(np.float16), 11: np.dtype(np.float32), 12: np.dtype(np.float64),
           15: np.dtype(np.complex64), 16: np.dtype(jnp.bfloat16), 18: np.dtype(np.complex128)}
_MAX_RANK = 64


def _dtype(code: int) -> np.dtype:
    try:
        return _DTYPES[code]
    except KeyError:
        raise TypeError(f"callax host call: XLA element type {code} has no NumPy dtype here; "
                        "send float32, int32 or another standard type") from None


# ---- what lives as long as the process ------------------------------------------------------

_ANCHOR = "_callax_xla_ffi"  # the attribute of ``sys`` holding it


def _anchor() -> types.SimpleNamespace:
    """The process's C entry point (``thunk``, the address XLA keeps), the function it
    forwards to (``dispatch``: this module's current :func:`_handle`), the table of host
    functions by key (weak: programs keep their functions, see :class:`_Held`) and the keys
    whose names were checked. Made at the first import and kept on :mod:`sys`, so that no
    reload or re-import frees what XLA calls."""
    anchor = getattr(sys, _ANCHOR, None)
    if anchor is None:
        checked: set[int] = set()
        anchor = types.SimpleNamespace(functions=WeakNumbering(on_forget=checked.discard),
                                       checked=checked, dispatch=None, registered=False,
                                       unreported=None)

        def entry(address: int) -> int | None:  # what XLA calls; never raises
            return anchor.dispatch(address)

        anchor.thunk = abi.HANDLER(entry)
        setattr(sys, _ANCHOR, anchor)
    return anchor


_PROCESS = _anchor()


def name_of(fn: Callable[..., Sequence[Any]]) -> str:
    """The name a program records next to a key (checked at the key's first call, so that an
    executable from the cache never runs another function under a reused key)."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def key_of(fn: Callable[..., Sequence[Any]]) -> int:
    """The key that names ``fn`` in compiled programs (the same live function, the same
    key; a key is never given to another function). Lowering is when functions of programs
    that have ended are let go (:func:`._inflight.release_finished`)."""
    _inflight.release_finished()
    return _PROCESS.functions.number(fn)


def function_of(key: int) -> Callable[..., Sequence[Any]] | None:
    """The live function under ``key`` in this process (``None``: freed, or never lowered)."""
    return _PROCESS.functions.get_item(key)


class _Held:
    """The host functions one lowered program calls, by key: a keepalive of its lowering,
    which JAX keeps with the program's executable (and its ``Lowered``). When the executable
    goes, they are retired (:func:`._inflight.retire`): kept until the executions
    dispatched before have ended. ``serialize_executable`` pickles it as keys and names:
    loaded in this process (or one that lowered the same program), it holds the same
    functions again while they are alive."""

    __slots__ = ("functions",)

    def __init__(self) -> None:
        self.functions: dict[int, Callable[..., Sequence[Any]]] = {}

    def __reduce__(self):
        return _held_again, (tuple((key, name_of(fn)) for key, fn in self.functions.items()),)

    def __del__(self) -> None:
        try:
            _inflight.retire(self.functions)
        except Exception:  # noqa: BLE001 - at interpreter exit the module may be gone
            pass


def _held_again(entries: tuple[tuple[int, str], ...]) -> _Held:
    """A pickled :class:`_Held` in this process: the live functions under its keys that
    still have their names (a key without one fails when called, as from the cache)."""
    held = _Held()
    for key, name in entries:
        fn = function_of(key)
        if fn is not None and name_of(fn) == name:
            held.functions[key] = fn
    return held


def _held_by(module_context) -> _Held:
    """The :class:`_Held` of the program being lowered (made at its first host call)."""
    for kept in module_context.keepalives:
        if isinstance(kept, _Held):
            return kept
    _inflight.watch()  # from now on JAX reports what runs (see _inflight)
    held = _Held()
    module_context.add_keepalive(held)
    return held


# ---- the handler ------------------------------------------------------------------------------


def _buffers(items: abi.List, what: str) -> list[abi.Buffer]:
    """The buffers of an argument or result list, each checked, tokens left out."""
    if items.struct_size < abi.SIZES[abi.List]:
        raise abi.AbiMismatch(f"XLA's {what} list is {items.struct_size} bytes, callax reads "
                              f"{abi.SIZES[abi.List]}")
    out = []
    for i in range(items.size):
        buffer = abi.checked(items.items[i], abi.Buffer, f"{what} buffer {i}")
        if buffer.dtype != abi.TOKEN:
            out.append(buffer)
    return out


def _shape(buffer: abi.Buffer) -> tuple[int, ...]:
    if not 0 <= buffer.rank <= _MAX_RANK:
        raise abi.AbiMismatch(f"XLA passed a buffer of rank {buffer.rank}")
    return tuple(buffer.dims[d] for d in range(buffer.rank))


def _array(buffer: abi.Buffer) -> np.ndarray:
    """A copy of an operand (the buffer belongs to XLA)."""
    array = np.empty(_shape(buffer), _dtype(buffer.dtype))
    if array.nbytes:
        ctypes.memmove(array.ctypes.data, buffer.data, array.nbytes)
    return array


def _attribute(attrs: abi.Attrs, wanted: bytes) -> int | str:
    """The 64-bit integer (``int``) or string attribute ``wanted`` of a call."""
    for i in range(attrs.size):
        span = attrs.names[i].contents
        if ctypes.string_at(span.ptr, span.len) != wanted:
            continue
        if attrs.types[i] == abi.SCALAR:
            scalar = abi.Scalar.from_address(attrs.attrs[i])
            if scalar.dtype != abi.S64:
                raise abi.AbiMismatch(f"attribute {wanted.decode()!r} has element type "
                                      f"{scalar.dtype}, not int64")
            return ctypes.c_int64.from_address(scalar.value).value
        if attrs.types[i] == abi.STRING:
            value = abi.ByteSpan.from_address(attrs.attrs[i])
            return ctypes.string_at(value.ptr, value.len).decode()
    raise LookupError(f"callax host call without its {wanted.decode()!r} attribute")


def _function(attrs: abi.Attrs) -> Callable[..., Sequence[Any]]:
    if attrs.struct_size < abi.SIZES[abi.Attrs]:
        raise abi.AbiMismatch(f"XLA's attributes struct is {attrs.struct_size} bytes, callax "
                              f"reads {abi.SIZES[abi.Attrs]}")
    key = int(_attribute(attrs, b"key"))
    fn = function_of(key)
    if fn is None:
        raise LookupError(f"callax host call {key}: no function under this key in this "
                          "process (its program outlived it, or came from elsewhere)")
    if key not in _PROCESS.checked:  # the name is read and compared at a key's first call
        name = _attribute(attrs, b"name")
        if name != name_of(fn):
            raise LookupError(f"callax host call {key} names {name!r}, but this process has "
                              f"{name_of(fn)!r} under that key")
        _PROCESS.checked.add(key)
    return fn


def _results(fn: Callable, values: Sequence[Any], outputs: list[abi.Buffer]) -> list[np.ndarray]:
    """What ``fn`` returned, as the result buffers' dtypes and shapes demand, all checked
    before any is written."""
    if len(values) != len(outputs):
        raise TypeError(f"host function {name_of(fn)} returned {len(values)} value(s) for "
                        f"{len(outputs)} result(s)")
    arrays = []
    for i, (value, buffer) in enumerate(zip(values, outputs, strict=True)):
        dtype, shape = _dtype(buffer.dtype), _shape(buffer)
        array = np.asarray(value)
        if not array.flags.c_contiguous:
            array = array.copy(order="C")
        if array.dtype != dtype or array.shape != shape:
            raise TypeError(f"host function {name_of(fn)} returned {array.dtype}"
                            f"{list(array.shape)} for result {i}, which is {dtype}{list(shape)}")
        arrays.append(array)
    return arrays


def _execute(frame: abi.CallFrame) -> None:
    abi.checked_api(frame.api)
    _interrupt.check_not_refused()
    fn = _function(frame.attrs)
    values = fn(*(_array(b) for b in _buffers(frame.args, "operand")))
    outputs = _buffers(frame.rets, "result")
    for array, buffer in zip(_results(fn, values, outputs), outputs, strict=True):
        ctypes.memmove(buffer.data, array.ctypes.data, array.nbytes)


def _metadata(extension: int) -> bool:
    """Answer XLA's registration-time question (the API version callax was written for) if
    ``extension`` asks it; whether it did."""
    base = abi.checked(extension, abi.ExtensionBase, "extension")
    if base.type != abi.METADATA:
        return False
    found = abi.checked(extension, abi.MetadataExtension, "metadata extension")
    metadata = abi.checked(found.metadata, abi.Metadata, "metadata")
    if metadata.api_version.struct_size < abi.SIZES[abi.ApiVersion]:
        raise abi.AbiMismatch("XLA's metadata holds a smaller API version struct")
    metadata.api_version.major_version, metadata.api_version.minor_version = abi.API_VERSION
    metadata.traits = 0
    return True


def _message(error: BaseException) -> str:
    if isinstance(error, abi.AbiMismatch):
        return f"callax host call: {error}"
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next  # the handler's own frames: only the host function's are shown
    return "callax host call failed:\n" + "".join(
        traceback.format_exception(type(error), error, tb))


def _handle(address: int) -> int | None:
    """One call of the handler: ``None`` (success) or an ``XLA_FFI_Error*``."""
    try:
        head = abi.checked(address, abi.FrameHead, "call frame")
    except BaseException as error:  # noqa: BLE001 - not even an API table to report it
        _PROCESS.unreported = _message(error)
        return None
    try:
        if head.extension_start and _metadata(head.extension_start):
            return None
        frame = abi.checked(address, abi.CallFrame, "call frame")
        if frame.stage == abi.EXECUTE:
            _execute(frame)
        return None
    except BaseException as error:  # noqa: BLE001 - every error goes back to XLA
        message = _message(error)
        code = abi.FAILED_PRECONDITION if isinstance(error, abi.AbiMismatch) else abi.INTERNAL
        try:
            made = abi.create_error(head.api, message, code)
        except BaseException:  # noqa: BLE001 - nothing may escape into XLA
            made = None
        if made is None:  # no way to tell XLA: kept for the round trip to report
            _PROCESS.unreported = message
        return made


_PROCESS.dispatch = _handle  # the entry calls this module's code, also after a reload


def register() -> None:
    """Register the handler with XLA for the CPU platform (once per process; raises if XLA
    refuses it, e.g. an FFI API version it does not support)."""
    if _PROCESS.registered:
        return
    import jax.ffi

    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(_PROCESS.thunk), platform="cpu")
    _PROCESS.registered = True


def lower(ctx, fn: Callable[..., Sequence[Any]], token, operands: Sequence[Any]):
    """Emit the call of ``fn`` in a lowering rule; return ``(results, token)``.

    ``fn`` receives the operands as NumPy arrays and returns one array per result of
    ``ctx.avals_out``, of its dtype and shape. With a ``token`` (an ordered effect's) the
    call takes it and returns the next one. The program keeps ``fn`` alive (its
    :class:`_Held`), the key table only names it. For programs on one device (see
    ``_primitives._lower_call``)."""
    import dataclasses

    import jax.ffi

    try:
        from jax._src.core import abstract_token
    except ImportError:  # pragma: no cover - depends on the JAX version
        from jax.core import abstract_token  # pyright: ignore[reportAttributeAccessIssue]

    operands = list(operands)
    if token is not None:
        operands = [token, *operands]
        ctx = dataclasses.replace(ctx, avals_in=[abstract_token, *ctx.avals_in],
                                  avals_out=[abstract_token, *ctx.avals_out])
    key = key_of(fn)
    _held_by(ctx.module_context).functions[key] = fn
    call = jax.ffi.build_ffi_lowering_function(TARGET, has_side_effect=True)(
        ctx, *operands, key=np.int64(key), name=name_of(fn))
    results = list(call.results)
    if token is not None:
        token, *results = results
    return results, token


def _take_unreported() -> str | None:
    """The last failure the handler could not return to XLA (no usable API table)."""
    message, _PROCESS.unreported = _PROCESS.unreported, None
    return message


def decide() -> tuple[bool, str]:
    """Whether callax's host calls on CPU should lower to this handler, and why (see
    :mod:`._ffi_path`; warns once if the handler fails its round trip)."""
    return _ffi_path.choose(register, lower, _take_unreported)


from . import _ffi_path  # noqa: E402 - decides with the functions above

_DECIDING = threading.Lock()
AVAILABLE: bool  # set by the first read (see __getattr__)
REASON: str


def __getattr__(name: str) -> object:
    """``AVAILABLE`` (whether callax's host calls on CPU lower to this handler) and
    ``REASON`` (why, or why not), decided at their first read: the first lowering of a host
    call. Deciding runs a round trip through the handler on the CPU backend, which starts
    JAX's backends, so it must not happen at ``import callax``: ``jax.distributed.initialize``
    and backend options (``jax_platforms``, ``jax_num_cpu_devices``) must come before any
    backend starts."""
    if name not in ("AVAILABLE", "REASON"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _DECIDING:
        if "AVAILABLE" not in globals():
            available, reason = decide()
            globals().update(AVAILABLE=available, REASON=reason)
    return globals()[name]
