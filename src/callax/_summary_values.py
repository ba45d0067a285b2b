"""Checking what a writer is given: tags, scalar values and rows of values, at trace time
(or at an eager call), each error naming the tag."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from . import _host

__all__ = ["check_host_values", "check_tag", "check_values", "flatten_scalars", "scalar_value",
           "stack_scalars", "tag_layout"]


_checked_tags: set[str] = set()
_CHECKED_TAGS_MAX = 65_536


def check_tag(tag: object) -> str:
    """Validate a tag at trace time (or at an eager call): a non-empty str without leading
    or trailing whitespace or ``/``, control characters, empty parts or characters UTF-8
    cannot encode (lone surrogates), each refused naming the tag."""
    if isinstance(tag, str) and tag in _checked_tags:  # checked already (eager hot path)
        return tag
    if not isinstance(tag, str):
        raise TypeError(f"TensorBoard tag must be a str, got {type(tag).__name__}: {tag!r}")
    if not tag or tag.strip() != tag or tag.startswith("/") or tag.endswith("/"):
        raise ValueError(
            f"invalid TensorBoard tag {tag!r}: it must be non-empty, without leading or "
            "trailing whitespace or '/'"
        )
    if any(ord(c) < 32 for c in tag) or "//" in tag:
        raise ValueError(f"invalid TensorBoard tag {tag!r}: control character or empty part")
    try:
        tag.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"invalid TensorBoard tag {tag!r}: {error.reason} at position "
                         f"{error.start} (event files store tags as UTF-8)") from None
    if len(_checked_tags) >= _CHECKED_TAGS_MAX:
        _checked_tags.clear()
    _checked_tags.add(tag)
    return tag


def tag_layout(tags: tuple[object, ...]) -> int:
    """Validate a row's tags at trace time (each tag, no duplicates) and return the layout id
    that carries them to the host."""
    layout = _host.known_layout(tags)
    if layout is not None:  # checked when it was registered
        return layout
    tags = tuple(check_tag(t) for t in tags)
    if len(set(tags)) != len(tags):
        raise ValueError(f"duplicate tags in one write: {tags}")
    return _host.register_layout(tags)


def _value_dtype_error(tags: str | tuple[str, ...], dtype: Any) -> TypeError | None:
    """Why values of ``dtype`` cannot be logged under ``tags`` (``None``: they can)."""
    names = tags if isinstance(tags, str) else ", ".join(map(repr, tags))
    what = f"tag {names!r}" if isinstance(tags, str) else f"tag(s) {names}"
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return TypeError(f"value for {what} is complex ({dtype}); log its real and "
                         "imaginary parts (or its absolute value) under their own tags")
    if not (jnp.issubdtype(dtype, jnp.number) or dtype == jnp.bool_):
        return TypeError(f"value for {what} has non-numeric dtype {dtype}; TensorBoard "
                         "scalars are bool, integer or floating-point numbers")
    return None


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def scalar_value(tag: str, value: object) -> jax.Array | np.ndarray:
    """Convert a scalar to ``float32``, failing at trace time (naming the tag) otherwise.

    Accepted: bool, integer and floating-point scalars of any width (``float16``,
    ``bfloat16``, ``float64``/``int64`` with x64, ...), Python numbers, NumPy scalars, 0-d
    arrays and arrays holding one element (shape ``(1,)``, ``(1, 1)``, ..., as tensorboardX
    takes them: CleanRL's ``info["episode"]["r"]``); NaN and ±Inf are kept as they are.
    Rejected with a ``TypeError``/``ValueError`` naming the tag: complex numbers, strings,
    ``None``, other non-numeric dtypes (PRNG keys, objects) and arrays of several
    elements.
    """
    kind = type(value)
    if kind is float or kind is int or kind is bool:  # the eager hot path
        try:
            number = float(value)  # type: ignore[arg-type]  # a float, int or bool
        except OverflowError:
            number = math.inf
        if -_FLOAT32_MAX <= number <= _FLOAT32_MAX:
            return np.array(number, np.float32)
    if isinstance(value, str | bytes) or value is None:
        raise TypeError(f"value for tag {tag!r} must be a number, got {value!r}")
    on_host = not isinstance(value, Tracer)  # concrete arrays: converted by NumPy
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # any size (jnp.asarray refuses ints beyond int32)
        # Host values are converted by NumPy: without x64, jnp.asarray would truncate an
        # int64 (np.int64(2**40) becomes 0).
        array = value if isinstance(value, jax.Array) else np.asarray(value)
    except (TypeError, ValueError, OverflowError) as error:
        raise TypeError(f"value for tag {tag!r} is not an array-like number: {value!r}") from error
    if array.shape != ():
        if array.size != 1:
            raise ValueError(
                f"value for tag {tag!r} must be a scalar, got shape {array.shape}; reduce it "
                "first (e.g. with .mean()) or log each element under its own tag (an array "
                "of one element is taken, as tensorboardX takes it)"
            )
        array = array.reshape(())  # shape (1,), (1, 1), ...: its one element
    if on_host and array.dtype == object:
        raise TypeError(f"value for tag {tag!r} is not an array-like number: {value!r}")
    error = _value_dtype_error(tag, array.dtype)
    if error is not None:
        raise error
    if on_host:
        with np.errstate(over="ignore"):  # beyond float32's range: ±inf, as TensorBoard shows
            return np.asarray(array).astype(np.float32)
    return array.astype(jnp.float32)


def stack_scalars(values: list, dtype=jnp.float32) -> jax.Array:
    """``jnp.stack`` of scalars that may carry different shardings (an explicit mesh under
    ``jax.set_mesh``: a vmapped value sharded over the batch next to a replicated one, which
    ``jnp.stack`` rejects). Elementwise selects take the sharding of their operands."""
    index = jnp.arange(len(values))
    row = jnp.zeros((len(values),), dtype)
    for i, value in enumerate(values):
        row = jnp.where(index == i, jnp.asarray(value, dtype), row)
    return row


def check_values(tags: tuple[str, ...], values: object) -> jax.Array | np.ndarray:
    """Rows of values for ``tags`` as ``float32``; a non-numeric or complex dtype fails at
    trace time naming the tags."""
    on_host = not isinstance(values, jax.Array)
    array = np.asarray(values) if on_host else values  # NumPy: no int64 truncation
    error = _value_dtype_error(tuple(tags), array.dtype)
    if error is not None:
        raise error
    if on_host:
        with np.errstate(over="ignore"):
            return jnp.asarray(array.astype(np.float32))
    return array.astype(jnp.float32)


def check_host_values(tags: tuple[str, ...], values: object) -> np.ndarray:
    """Rows of host (or concrete) values for ``tags`` as a NumPy ``float32`` array (beyond
    float32's range: ±inf); a non-numeric or complex dtype raises naming the tags."""
    dtype = values.dtype if isinstance(values, jax.Array) else None  # a key: no NumPy
    error = _value_dtype_error(tuple(tags), dtype) if dtype is not None else None
    if error is not None:
        raise error
    array = np.asarray(values)
    error = _value_dtype_error(tuple(tags), array.dtype)
    if error is not None:
        raise error
    with np.errstate(over="ignore"):
        return array.astype(np.float32)


def flatten_scalars(prefix: str, scalars: Mapping) -> dict[str, jax.Array | np.ndarray]:
    """``{"a": x, "b": {"c": y}}`` under ``prefix`` → ``{"prefix/a": x, "prefix/b/c": y}``."""
    if not isinstance(scalars, Mapping):
        raise TypeError(f"expected a mapping of tag to scalar, got {type(scalars).__name__}")
    out: dict[str, jax.Array | np.ndarray] = {}
    for key, value in scalars.items():
        if not isinstance(key, str):
            raise TypeError(f"keys must be str, got {key!r} under prefix {prefix!r}")
        tag = check_tag(f"{prefix}/{key}" if prefix else key)
        if isinstance(value, Mapping):
            out.update(flatten_scalars(tag, value))
        else:
            out[tag] = scalar_value(tag, value)
    return out
