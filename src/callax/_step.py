"""64-bit global steps on device without ``jax_enable_x64``: two 32-bit words.

Device code cannot hold an ``int64`` unless x64 is enabled, and an ``int32`` step overflows
after 2**31 - 1 (a 10-billion-step run would wrap to negative steps). callax carries every
step as two ``uint32`` words, ``(hi, lo)``, meaning ``hi * 2**32 + lo`` with ``hi`` read as a
signed ``int32`` — the two halves of an ``int64``. They travel through the host-call payload
as they are, and the host reassembles them into a Python/NumPy ``int64``.

[`callax.Step`][] is the public face: a step counter that adds with carry on device.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, ArrayLike, UInt32

__all__ = ["AUTO", "Step", "as_words", "auto_words", "words_to_int64", "wide_sum"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MASK32 = 2**32 - 1

AUTO = _INT64_MIN
"""The payload's step meaning "one more than the tag's last step" (``global_step=None``).
Every other negative step is an error. Only a counter wrapping past 2**63 - 1 by exactly one
step would produce it, and callax's checks refuse steps above 2**63 - 1 everywhere else."""


def _python_words(value: int) -> np.ndarray:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise OverflowError(f"step {value} does not fit in 64 bits (at most 2**63 - 1)")
    return np.array([(value >> 32) & _MASK32, value & _MASK32], np.uint32)


def _add_words(a, b):
    # Two's-complement 64-bit addition from 32-bit halves: add the low words, carry into hi.
    lo = a[..., 1] + b[..., 1]
    carry = (lo < a[..., 1]).astype(jnp.uint32)
    return jnp.stack([a[..., 0] + b[..., 0] + carry, lo], axis=-1)


def _numpy_words(array: np.ndarray) -> np.ndarray:
    # Host values (NumPy) are split exactly here: jnp.asarray would truncate int64 to int32
    # when x64 is off.
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"a step must be an integer, got dtype {array.dtype}")
    if array.dtype == np.uint64 and array.size and int(array.max()) > _INT64_MAX:
        raise OverflowError(f"step {int(array.max())} does not fit in 64 bits "
                            "(at most 2**63 - 1)")
    wide = array.astype(np.int64).view(np.uint64)
    hi = (wide >> np.uint64(32)).astype(np.uint32)
    lo = (wide & np.uint64(_MASK32)).astype(np.uint32)
    return np.stack([hi, lo], axis=-1)


def as_words(step: object) -> UInt32[Array, "*batch 2"]:
    """The ``(hi, lo)`` words of a step: a [`callax.Step`][], a Python int, a NumPy integer
    (array) of any width, or a JAX integer array (``int64`` needs x64; narrower types are
    sign- or zero-extended).

    Raises ``TypeError`` for anything else (floats, bools), naming what it got, and
    ``OverflowError`` above 2**63 - 1.
    """
    if isinstance(step, Step):
        return step.words
    if isinstance(step, bool | np.bool_):
        raise TypeError(f"a step must be an integer, got the bool {step!r}")
    if isinstance(step, int):
        return jnp.asarray(_python_words(step))
    if isinstance(step, list | tuple):
        step = np.asarray(step)
    if isinstance(step, np.ndarray | np.generic):
        if step.dtype == object:
            return jnp.asarray(np.stack([_python_words(int(s)) for s in step.ravel()])
                               .reshape(*step.shape, 2))
        return jnp.asarray(_numpy_words(np.asarray(step)))
    array = jnp.asarray(step)
    if not jnp.issubdtype(array.dtype, jnp.integer):
        raise TypeError(f"a step must be an integer, got dtype {array.dtype} ({step!r})")
    bits = jnp.iinfo(array.dtype).bits
    if bits == 64:
        # Only reachable with jax_enable_x64: split the 64-bit integer into its halves.
        hi = jax.lax.shift_right_logical(array.astype(jnp.uint64), jnp.uint64(32))
        return jnp.stack([hi.astype(jnp.uint32), array.astype(jnp.uint32)], axis=-1)
    # Elementwise only (no freshly made arrays), so the words keep the step's sharding and
    # batching (an Explicit mesh, vmap).
    if jnp.issubdtype(array.dtype, jnp.signedinteger):
        wide = array.astype(jnp.int32)
        hi = jax.lax.bitcast_convert_type(jax.lax.shift_right_arithmetic(wide, jnp.int32(31)),
                                          jnp.uint32)  # the sign, extended
        return jnp.stack([hi, jax.lax.bitcast_convert_type(wide, jnp.uint32)], axis=-1)
    lo = array.astype(jnp.uint32)
    return jnp.stack([lo & jnp.uint32(0), lo], axis=-1)  # (zeros_like loses the sharding)


def auto_words() -> UInt32[Array, " 2"]:
    """The words of [`AUTO`][callax._step.AUTO]."""
    return jnp.asarray(_python_words(AUTO))


def words_to_int64(words: np.ndarray) -> np.ndarray:
    """Host side: ``uint32/int32[..., 2]`` words back to ``int64`` steps."""
    words = np.asarray(words).astype(np.uint32, copy=False)
    hi = words[..., 0].astype(np.uint64)
    lo = words[..., 1].astype(np.uint64)
    return np.asarray((hi << np.uint64(32)) | lo).view(np.int64)


def wide_sum(counts: ArrayLike) -> UInt32[Array, " 2"]:
    """The exact sum of every element of an integer array, as step words (no overflow at
    2**31: the reduction adds 64-bit values held as two words, with carry)."""
    words = as_words(jnp.asarray(counts))
    hi, lo = words[..., 0], words[..., 1]
    axes = tuple(range(hi.ndim))

    def add(a, b):
        (a_hi, a_lo), (b_hi, b_lo) = a, b
        low = a_lo + b_lo
        return a_hi + b_hi + (low < a_lo).astype(jnp.uint32), low

    zero = jnp.zeros((), jnp.uint32)
    total_hi, total_lo = jax.lax.reduce((hi, lo), (zero, zero), add, axes)
    return jnp.stack([total_hi, total_lo])


class Step(eqx.Module):
    """A global step that does not overflow at 2**31, for device code without x64.

    It holds two ``uint32`` words (the halves of an ``int64``) and adds with carry, so a
    jitted loop can count up to 2**63 - 1 steps. Pass it anywhere callax takes a step
    (``global_step=`` of [`callax.JITSummaryWriter`][], ``step`` of
    [`callax.ScalarBuffer.append`][]).

    ```python
    step = callax.Step(2**31 - 5)         # from a Python int (any value below 2**63)

    def body(step, x):
        writer.add_scalar("loss", x, global_step=step)
        return step + 1, None               # an int32/uint32 array or Python int adds too

    jax.lax.scan(body, step, xs)
    ```

    Under ``jax.vmap`` the words carry the batch dimensions in front (``words[..., 2]``).
    """

    words: UInt32[Array, "*batch 2"]

    def __init__(self, value: ArrayLike | Step = 0):
        """**Arguments:**

        - `value`: a Python int (exact up to 2**63 - 1), an integer array (``int32`` and
          narrower, ``uint32``; ``int64`` with x64) or another `Step`.
        """
        words = as_words(value)
        if not isinstance(words, Tracer):
            steps = words_to_int64(np.asarray(words))
            if (steps < 0).any():
                raise ValueError(f"a Step must be >= 0, got {int(steps[steps < 0][0])}")
        self.words = words

    def __add__(self, other: ArrayLike | Step) -> Step:
        words = as_words(other)
        return Step._from_words(_add_words(self.words, words))

    __radd__ = __add__

    @classmethod
    def _from_words(cls, words) -> Step:
        step = object.__new__(cls)
        object.__setattr__(step, "words", words)
        return step

    def __int__(self) -> int:
        """The step as a Python int (eagerly only; not for batched steps)."""
        if isinstance(self.words, Tracer):
            raise TypeError("int(Step) is not available while tracing")
        return int(words_to_int64(np.asarray(self.words)).item())

    __index__ = __int__

    def __repr__(self) -> str:
        if isinstance(self.words, Tracer) or np.ndim(self.words) != 1:
            return f"Step(words={self.words!r})"
        return f"Step({int(self)})"

