"""Global steps as a writer takes them: Python ints, integer arrays (traced or not) or a
[`callax.Step`][], checked (negative or too large steps fail naming the tags) and turned into
the ``(hi, lo)`` words that travel to the host."""

from __future__ import annotations

from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

from . import _host, _step as _steps
from ._step import Step

__all__ = ["check_concrete_steps", "host_step", "step_words"]

_Words = TypeVar("_Words", jax.Array, np.ndarray)


def step_words(global_step: ArrayLike | Step | None, tags: tuple[str, ...] = ()) -> jax.Array:
    """The ``(hi, lo)`` words of a scalar global step (see [`callax.Step`][]).

    ``None`` means "continue from the tag's last step". Python and NumPy ints up to
    2**63 - 1 are exact; a traced step may be any integer dtype or a ``Step``. A negative
    step that is known now (a static value, also while tracing) raises here, naming the
    tags; a traced one makes the host call raise.
    """
    if global_step is None:
        return _steps.auto_words()
    if isinstance(global_step, Step):
        if global_step.words.shape != (2,):
            raise TypeError(f"global_step for tag(s) {', '.join(map(repr, tags))} must be a "
                            f"scalar Step, got {global_step!r}")
        return check_concrete_steps(global_step.words, tags)
    if isinstance(global_step, int | np.integer) and not isinstance(global_step, bool):
        return _steps.as_words(_check_python_step(int(global_step), tags))
    step = global_step if isinstance(global_step, jax.Array) else np.asarray(global_step)
    if (step.shape == () and not _host.is_traced(step) and step.dtype != np.bool_
            and jnp.issubdtype(step.dtype, jnp.floating) and float(step).is_integer()):
        return _steps.as_words(_check_python_step(int(step), tags))  # e.g. 1000.0
    if step.shape != () or not jnp.issubdtype(step.dtype, jnp.integer):
        raise TypeError(f"global_step for tag(s) {', '.join(map(repr, tags))} must be an "
                        f"integer scalar or a callax.Step, got {global_step!r}")
    if not _host.is_traced(step):
        return _steps.as_words(_check_python_step(int(step), tags))
    return _steps.as_words(step)


def host_step(global_step: ArrayLike | Step | None, tags: tuple[str, ...]) -> int:
    """A concrete global step as a Python int (:data:`callax._step.AUTO` for ``None``),
    checked as :func:`_step` checks it."""
    if global_step is None:
        return _steps.AUTO
    if isinstance(global_step, int | np.integer) and not isinstance(global_step, bool):
        return _check_python_step(int(global_step), tags)
    return int(_steps.words_to_int64(np.asarray(step_words(global_step, tags))))


def _negative_step_error(step: int, tags: tuple[str, ...]) -> ValueError:
    return ValueError(
        f"negative global_step {step} for tag(s) {', '.join(map(repr, tags))}; steps must "
        "be >= 0 (global_step=None continues from the last step)"
    )


def _check_python_step(step: int, tags: tuple[str, ...]) -> int:
    if step < 0:
        raise _negative_step_error(step, tags)
    if step > 2**63 - 1:
        raise OverflowError(f"global_step {step} for tag(s) {', '.join(map(repr, tags))} "
                            "is above 2**63 - 1, the largest step of an event file")
    return step


def check_concrete_steps(words: _Words, tags: tuple[str, ...]) -> _Words:
    """Eagerly (concrete words), reject negative steps now; traced words pass through."""
    if not _host.is_traced(words):
        steps = _steps.words_to_int64(np.asarray(words))
        negative = steps[(steps < 0) & (steps != _steps.AUTO)]  # AUTO: global_step=None
        if negative.size:
            raise _negative_step_error(int(negative[0]), tags)
    return words
