"""Host calls that XLA reaches by a registered name: programs JAX's persistent cache can keep.

JAX's own host callbacks (``jax.debug.callback``, ``io_callback``, ``pure_callback`` and
``mlir.emit_python_callback``) bake a Python object into the compiled executable, and JAX
refuses to store such an executable in its persistent compilation cache (every program with a
callax callback would compile again in each new process). Here one XLA FFI handler,
``callax_host`` on the CPU platform, is registered once per process; a call site names the
Python function it runs by a small integer attribute ``key``. Keys are handed out in the order
functions are first lowered, and JAX lowers a program again in every process before looking
it up in the cache, so the same program lowered in a fresh process names the same keys (the
cache key matches) and the table of this process resolves them.

The handler is a :mod:`ctypes` function (no compiled extension): it reads XLA's call frame
(``xla/ffi/api/c_api.h``, a stable C ABI), hands the operands to the Python function as NumPy
arrays (copies: the buffers belong to XLA) and writes what it returns into the results. A
Python exception becomes an XLA error, so the jitted call raises as with JAX's callbacks.
Token operands and results (an ordered effect's token) are passed through untouched.

:func:`lower` emits the call; :data:`AVAILABLE` says whether the handler is registered (where
registration failed, and off CPU, callers lower with ``emit_python_callback`` as before).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._writer import _interrupt
from ._numbering import Numbering

TARGET = "callax_host"

_TOKEN = 17  # XLA_FFI_DataType_TOKEN
_METADATA = 1  # XLA_FFI_Extension_Metadata
_EXECUTE = 3  # XLA_FFI_ExecutionStage_EXECUTE
_SCALAR = 3  # XLA_FFI_AttrType_SCALAR
_STRING = 4  # XLA_FFI_AttrType_STRING
_INTERNAL = 13  # XLA_FFI_Error_Code_INTERNAL

# XLA_FFI_DataType (xla::PrimitiveType numbers) -> NumPy dtype.
_DTYPES = {1: np.dtype(np.bool_), 2: np.dtype(np.int8), 3: np.dtype(np.int16),
           4: np.dtype(np.int32), 5: np.dtype(np.int64), 6: np.dtype(np.uint8),
           7: np.dtype(np.uint16), 8: np.dtype(np.uint32), 9: np.dtype(np.uint64),
           10: np.dtype(np.float16), 11: np.dtype(np.float32), 12: np.dtype(np.float64),
           15: np.dtype(np.complex64), 16: np.dtype(jnp.bfloat16), 18: np.dtype(np.complex128)}


def _dtype(code: int) -> np.dtype:
    try:
        return _DTYPES[code]
    except KeyError:
        raise TypeError(f"callax host call: XLA element type {code} has no NumPy dtype here; "
                        "send float32, int32 or another standard type") from None


_size_t = ctypes.c_size_t
_ptr = ctypes.c_void_p


class _ExtensionBase(ctypes.Structure):
    _fields_ = [("struct_size", _size_t), ("type", ctypes.c_int), ("next", _ptr)]


class _ApiVersion(ctypes.Structure):
    _fields_ = [("struct_size", _size_t), ("extension_start", _ptr),
                ("major_version", ctypes.c_int), ("minor_version", ctypes.c_int)]


class _Api(ctypes.Structure):
    _fields_ = [("struct_size", _size_t), ("extension_start", _ptr),
                ("api_version", _ApiVersion), ("internal_api", _ptr),
                ("error_create", _ptr)]


class _Metadata(ctypes.Structure):
    _fields_ = [("struct_size", _size_t), ("api_version", _ApiVersion),
                ("traits", ctypes.c_uint32), ("state_type_id", ctypes.c_int64)]


class _MetadataExtension(ctypes.Structure):
    _fields_ = [("extension_base", _ExtensionBase), ("metadata", ctypes.POINTER(_Metadata))]


class _Buffer(ctypes.Structure):
    _fields_ = [("struct_size", _size_t), ("extension_start", _ptr), ("dtype", ctypes.c_int),
                ("data", _ptr), ("rank", ctypes.c_int64),
                ("dims", ctypes.POINTER(ctypes.c_int64))]


class _List(ctypes.Structure):  # XLA_FFI_Args and XLA_FFI_Rets
    _fields_ = [("struct_size", _size_t), ("extension_start", _ptr), ("size", ctypes.c_int64),
                ("types", ctypes.POINTER(ctypes.c_int)), ("items", ctypes.POINTER(_ptr))]


class _ByteSpan(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("len", _size_t)]


class _Attrs(ctypes.Structure):
    _fields_ = [("struct_size", _size_t), ("extension_start", _ptr), ("size", ctypes.c_int64),
                ("types", ctypes.POINTER(ctypes.c_int)),
                ("names", ctypes.POINTER(ctypes.POINTER(_ByteSpan))),
                ("attrs", ctypes.POINTER(_ptr))]


class _Scalar(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_int), ("value", _ptr)]


class _CallFrame(ctypes.Structure):
    _fields_ = [("struct_size", _size_t), ("extension_start", _ptr),
                ("api", ctypes.POINTER(_Api)), ("ctx", _ptr), ("stage", ctypes.c_int),
                ("args", _List), ("rets", _List), ("attrs", _Attrs), ("future", _ptr)]


class _ErrorCreateArgs(ctypes.Structure):
    _fields_ = [("struct_size", _size_t), ("extension_start", _ptr),
                ("message", ctypes.c_char_p), ("errc", ctypes.c_int)]


_ERROR_CREATE = ctypes.CFUNCTYPE(_ptr, ctypes.POINTER(_ErrorCreateArgs))
_HANDLER = ctypes.CFUNCTYPE(_ptr, ctypes.POINTER(_CallFrame))

# ---- the table of Python functions, by key ----------------------------------------------------

_functions: Numbering[Callable[..., Sequence[Any]]] = Numbering()
_checked: set[int] = set()  # keys whose name matched the program's at their first call


def name_of(fn: Callable[..., Sequence[Any]]) -> str:
    """The name a program records next to a key (checked at the key's first call, so that an
    executable from the cache never runs another function under a reused key)."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def key_of(fn: Callable[..., Sequence[Any]]) -> int:
    """The key that names ``fn`` in compiled programs (the same function, the same key)."""
    return _functions.number(fn)


# ---- the handler ------------------------------------------------------------------------------


def _buffers(items: _List, skip_tokens: bool = True) -> list[_Buffer]:
    out = []
    for i in range(items.size):
        buffer = ctypes.cast(items.items[i], ctypes.POINTER(_Buffer)).contents
        if not (skip_tokens and buffer.dtype == _TOKEN):
            out.append(buffer)
    return out


def _array(buffer: _Buffer) -> np.ndarray:
    dtype = _dtype(buffer.dtype)
    shape = tuple(buffer.dims[d] for d in range(buffer.rank))
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size == 0:
        return np.zeros(shape, dtype)
    raw = np.ctypeslib.as_array(ctypes.cast(buffer.data, ctypes.POINTER(ctypes.c_uint8)),
                                shape=(size,))
    return raw.view(dtype).reshape(shape).copy()


def _attribute(attrs: _Attrs, wanted: bytes) -> int | str:
    """The scalar (``int``) or string attribute ``wanted`` of a call."""
    for i in range(attrs.size):
        span = attrs.names[i].contents
        if ctypes.string_at(span.ptr, span.len) != wanted:
            continue
        if attrs.types[i] == _SCALAR:
            scalar = ctypes.cast(attrs.attrs[i], ctypes.POINTER(_Scalar)).contents
            return ctypes.cast(scalar.value, ctypes.POINTER(ctypes.c_int64)).contents.value
        if attrs.types[i] == _STRING:
            value = ctypes.cast(attrs.attrs[i], ctypes.POINTER(_ByteSpan)).contents
            return ctypes.string_at(value.ptr, value.len).decode()
    raise LookupError(f"callax host call without its {wanted.decode()!r} attribute")


def _function(attrs: _Attrs) -> Callable[..., Sequence[Any]]:
    key = int(_attribute(attrs, b"key"))
    fn = _functions[key]
    if key not in _checked:  # the name is read and compared at a key's first call only
        name = _attribute(attrs, b"name")
        if name != name_of(fn):
            raise LookupError(f"callax host call {key} names {name!r}, but this process has "
                              f"{name_of(fn)!r} under that key")
        _checked.add(key)
    return fn


def _metadata(frame: _CallFrame) -> None:
    extension = ctypes.cast(frame.extension_start, ctypes.POINTER(_MetadataExtension)).contents
    metadata = extension.metadata.contents
    runtime = frame.api.contents.api_version
    metadata.api_version.struct_size = ctypes.sizeof(_ApiVersion)
    metadata.api_version.extension_start = None
    metadata.api_version.major_version = runtime.major_version
    metadata.api_version.minor_version = runtime.minor_version
    metadata.traits = 0
    if metadata.struct_size >= ctypes.sizeof(_Metadata):
        metadata.state_type_id = 0  # XLA_FFI_UNKNOWN_TYPE_ID: stateless


def _execute(frame: _CallFrame) -> None:
    _interrupt.check_not_refused()
    fn = _function(frame.attrs)
    results = fn(*(_array(b) for b in _buffers(frame.args)))
    outputs = _buffers(frame.rets)
    if len(results) != len(outputs):
        raise RuntimeError(f"host function {fn!r} returned {len(results)} value(s) for "
                           f"{len(outputs)} result(s)")
    for value, buffer in zip(results, outputs, strict=True):
        value = np.ascontiguousarray(value, dtype=_dtype(buffer.dtype))
        ctypes.memmove(buffer.data, value.ctypes.data, value.nbytes)


def _error(frame: _CallFrame, error: BaseException) -> int | None:
    create = _ERROR_CREATE(frame.api.contents.error_create)
    message = f"{type(error).__name__}: {error}".encode("utf-8", "replace")
    args = _ErrorCreateArgs(ctypes.sizeof(_ErrorCreateArgs), None, message, _INTERNAL)
    return create(ctypes.byref(args))


@_HANDLER
def _handler(frame_pointer):  # noqa: ANN001 - a ctypes pointer
    frame = frame_pointer.contents
    try:
        if frame.extension_start:
            base = ctypes.cast(frame.extension_start, ctypes.POINTER(_ExtensionBase)).contents
            if base.type == _METADATA:
                _metadata(frame)
                return None
        if frame.stage == _EXECUTE:
            _execute(frame)
        return None
    except BaseException as error:  # noqa: BLE001 - every error goes back to XLA
        try:
            return _error(frame, error)
        except BaseException:  # noqa: BLE001 - nothing may escape into XLA
            return None


def _register() -> bool:
    try:
        import jax.ffi

        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(_handler), platform="cpu")
    except Exception:  # noqa: BLE001 - no FFI in this JAX: JAX's callbacks instead
        return False
    return True


AVAILABLE = _register()


def lower(ctx, fn: Callable[..., Sequence[Any]], token, operands: Sequence[Any]):
    """Emit the call of ``fn`` in a lowering rule; return ``(results, token)``.

    ``fn`` receives the operands as NumPy arrays and returns one array-like per result of
    ``ctx.avals_out``. With a ``token`` (an ordered effect's) the call takes it and returns
    the next one. For programs on one device (see ``_primitives._lower_call``)."""
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
    call = jax.ffi.build_ffi_lowering_function(TARGET, has_side_effect=True)(
        ctx, *operands, key=np.int64(key_of(fn)), name=name_of(fn))
    results = list(call.results)
    if token is not None:
        token, *results = results
    return results, token
