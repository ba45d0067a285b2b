"""XLA's FFI C structs as callax's host-call handler reads them, and checked views of them.

The layouts are those of ``xla/ffi/api/c_api.h`` at XLA FFI API version **0.2** (the header
of jaxlib 0.8.2), which are also those of 0.3 (jaxlib 0.10.2) for every struct read here.
The handler tells XLA it was written for :data:`API_VERSION` (XLA refuses to register a
handler whose version it does not support), and never reads a struct XLA hands it before
checking that the struct is at least as large as what callax reads of it
(:func:`checked`): every struct of the C API starts with its ``struct_size``, and XLA only
ever appends fields (a new minor version), so a larger struct is still read correctly and a
smaller one is an ABI mismatch (:class:`AbiMismatch`), never an out-of-bounds read.
"""

from __future__ import annotations

import ctypes
from typing import TypeVar

API_VERSION = (0, 2)
"""The XLA FFI API version (major, minor) the structs below were written for."""

TOKEN = 17  # XLA_FFI_DataType_TOKEN
S64 = 5  # XLA_FFI_DataType_S64
METADATA = 1  # XLA_FFI_Extension_Metadata
EXECUTE = 3  # XLA_FFI_ExecutionStage_EXECUTE
SCALAR = 3  # XLA_FFI_AttrType_SCALAR
STRING = 4  # XLA_FFI_AttrType_STRING
FAILED_PRECONDITION = 9  # XLA_FFI_Error_Code_FAILED_PRECONDITION
INTERNAL = 13  # XLA_FFI_Error_Code_INTERNAL

_size_t = ctypes.c_size_t
_ptr = ctypes.c_void_p


class ExtensionBase(ctypes.Structure):
    _fields_ = [("struct_size", _size_t), ("type", ctypes.c_int), ("next", _ptr)]


class ApiVersion(ctypes.Structure):
    _fields_ = [("struct_size", _size_t), ("extension_start", _ptr),
                ("major_version", ctypes.c_int), ("minor_version", ctypes.c_int)]


class Api(ctypes.Structure):  # the first fields of XLA_FFI_Api (all that callax reads)
    _fields_ = [("struct_size", _size_t), ("extension_start", _ptr),
                ("api_version", ApiVersion), ("internal_api", _ptr),
                ("error_create", _ptr)]


class Metadata(ctypes.Structure):
    _fields_ = [("struct_size", _size_t), ("api_version", ApiVersion),
                ("traits", ctypes.c_uint32)]


class MetadataExtension(ctypes.Structure):
    _fields_ = [("extension_base", ExtensionBase), ("metadata", _ptr)]


class Buffer(ctypes.Structure):
    _fields_ = [("struct_size", _size_t), ("extension_start", _ptr), ("dtype", ctypes.c_int),
                ("data", _ptr), ("rank", ctypes.c_int64),
                ("dims", ctypes.POINTER(ctypes.c_int64))]


class List(ctypes.Structure):  # XLA_FFI_Args and XLA_FFI_Rets
    _fields_ = [("struct_size", _size_t), ("extension_start", _ptr), ("size", ctypes.c_int64),
                ("types", ctypes.POINTER(ctypes.c_int)), ("items", ctypes.POINTER(_ptr))]


class ByteSpan(ctypes.Structure):
    _fields_ = [("ptr", _ptr), ("len", _size_t)]


class Attrs(ctypes.Structure):
    _fields_ = [("struct_size", _size_t), ("extension_start", _ptr), ("size", ctypes.c_int64),
                ("types", ctypes.POINTER(ctypes.c_int)),
                ("names", ctypes.POINTER(ctypes.POINTER(ByteSpan))),
                ("attrs", ctypes.POINTER(_ptr))]


class Scalar(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_int), ("value", _ptr)]


class FrameHead(ctypes.Structure):
    """The first fields of a call frame, the same in every version of the API: what the
    handler needs to answer XLA (with an error) even when the rest of the frame differs."""
    _fields_ = [("struct_size", _size_t), ("extension_start", _ptr), ("api", _ptr)]


class CallFrame(ctypes.Structure):
    _fields_ = [("struct_size", _size_t), ("extension_start", _ptr),
                ("api", _ptr), ("ctx", _ptr), ("stage", ctypes.c_int),
                ("args", List), ("rets", List), ("attrs", Attrs)]


class ErrorCreateArgs(ctypes.Structure):
    _fields_ = [("struct_size", _size_t), ("extension_start", _ptr),
                ("message", ctypes.c_char_p), ("errc", ctypes.c_int)]


ERROR_CREATE = ctypes.CFUNCTYPE(_ptr, ctypes.POINTER(ErrorCreateArgs))
HANDLER = ctypes.CFUNCTYPE(_ptr, _ptr)  # XLA_FFI_Error* (*)(XLA_FFI_CallFrame*)


def _through_last_field(struct: type[ctypes.Structure]) -> int:
    """The C API's ``XLA_FFI_STRUCT_SIZE``: the offset of the last field plus its size."""
    name, kind = struct._fields_[-1][:2]
    return getattr(struct, name).offset + ctypes.sizeof(kind)


S = TypeVar("S", bound=ctypes.Structure)

# What callax reads of each struct (XLA reports the call frame's size through ``attrs``).
SIZES: dict[type, int] = {s: _through_last_field(s) for s in (
    ExtensionBase, ApiVersion, Api, Metadata, MetadataExtension, Buffer, List, Attrs,
    FrameHead, CallFrame)}


class AbiMismatch(Exception):
    """A struct XLA passed is smaller than what callax reads of it, or XLA's FFI API has
    another major version: callax does not read it (the host call fails instead)."""


def checked(address: int | None, struct: type[S], what: str) -> S:
    """A view of the ``struct`` at ``address``, once its ``struct_size`` (the first field of
    every struct of the C API) says it holds every field callax reads."""
    if not address:
        raise AbiMismatch(f"XLA passed no {what} (a null pointer)")
    size = _size_t.from_address(address).value
    if size < SIZES[struct]:
        raise AbiMismatch(
            f"XLA's {what} ({struct.__name__}) is {size} bytes, but callax reads "
            f"{SIZES[struct]} of it (XLA FFI API {API_VERSION[0]}.{API_VERSION[1]} layout)")
    return struct.from_address(address)


def checked_api(address: int | None) -> Api:
    """XLA's API table, once its size and major version match what callax was written for."""
    api = checked(address, Api, "API table")
    version = api.api_version
    if version.struct_size < SIZES[ApiVersion]:
        raise AbiMismatch(f"XLA's API version struct is {version.struct_size} bytes, "
                          f"callax reads {SIZES[ApiVersion]}")
    if version.major_version != API_VERSION[0]:
        raise AbiMismatch(f"XLA's FFI API is version {version.major_version}."
                          f"{version.minor_version}; callax's handler was written for major "
                          f"version {API_VERSION[0]}")
    return api


def create_error(address: int | None, message: str, code: int) -> int | None:
    """An ``XLA_FFI_Error*`` holding ``message``, made by XLA's ``error_create`` (the API
    table's fifth field, where it has been in every version of the API); ``None`` when the
    table itself is too small to hold it."""
    api = checked(address, Api, "API table")
    if not api.error_create:
        return None
    args = ErrorCreateArgs(ctypes.sizeof(ErrorCreateArgs), None,
                           message.encode("utf-8", "replace"), code)
    return ERROR_CREATE(api.error_create)(ctypes.byref(args))
