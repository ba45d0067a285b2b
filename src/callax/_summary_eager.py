"""What ``JITSummaryWriter`` does outside any trace that has no jitted counterpart, or that
must not compile a program per call: rows written eagerly (an ``EventRecord`` written
between jitted updates), text, and hyperparameters from a plain Python loop."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.core import Tracer

from . import _host, _step as _steps, _writer as host
from ._step import Step
from ._summary_steps import check_concrete_steps, host_step
from ._summary_values import check_host_values, check_tag, tag_layout
from ._writer._registry import write_text

# The writer, by name only: ``_summary_writer`` imports this module (no import cycle).
JITSummaryWriter = Any

__all__ = ["add_hparams", "add_text", "is_eager", "write_rows_eagerly"]


def is_eager(writer: JITSummaryWriter, *arrays: object) -> bool:
    """Whether a call runs outside any trace, to one run (not a batch of them), with host
    or concrete arrays only."""
    handle = writer.handle
    if _host.under_trace() or isinstance(handle, Tracer) or np.ndim(handle):
        return False
    for array in arrays:
        if isinstance(array, Tracer) or (isinstance(array, Step)
                                          and isinstance(array.words, Tracer)):
            return False
    return True


def write_rows_eagerly(writer: JITSummaryWriter, tags: tuple[str, ...], steps: Any,
                       values: Any, valid: Any, when: Any) -> bool:
    """``write_rows`` outside any trace: checked as inside jit, then straight to the writer
    thread (no program compiled or run). Returns ``False`` (nothing done) when the call is
    not eager."""
    if not is_eager(writer, steps, values, valid, when):
        return False
    tag_layout(tags)  # the same checks as inside jit
    values = check_host_values(tags, values)
    if values.ndim != 2 or values.shape[1] != len(tags):
        raise ValueError(f"values must have shape (K, {len(tags)}), got {values.shape}")
    if isinstance(steps, np.ndarray) and np.issubdtype(steps.dtype, np.integer):
        words = _steps._numpy_words(steps)  # host steps stay on the host (no device copy)
    else:
        words = np.asarray(steps.words if isinstance(steps, Step) else _steps.as_words(steps))
    if words.shape != (values.shape[0], 2):
        raise ValueError(f"steps must have shape ({values.shape[0]},), got {words.shape[:-1]}")
    check_concrete_steps(words, tags)
    valid = (np.ones(values.shape, np.bool_) if valid is None
             else np.broadcast_to(np.asarray(valid, np.bool_), values.shape))
    if not bool(np.asarray(when)):
        return True
    _host.write_eager(tags, int(writer.handle), _steps.words_to_int64(words), values,
                      valid, per_process=writer.per_process)
    return True


def _require_eager(writer: JITSummaryWriter, what: str) -> int:
    if not is_eager(writer):
        raise RuntimeError(
            f"JITSummaryWriter.{what} writes from Python (eagerly), not inside jit/vmap: "
            "call it before or after the jitted function (text and hyperparameters are "
            "known on the host)")
    jax.effects_barrier()  # after the points of programs dispatched before it
    return int(writer.handle)


def add_text(writer: JITSummaryWriter, tag: str, text: str,
             global_step: Any = None) -> None:
    """[`JITSummaryWriter.add_text`][callax.JITSummaryWriter.add_text]."""
    check_tag(tag)
    if not isinstance(text, str):
        raise TypeError(f"text for tag {tag!r} must be a str, got {type(text).__name__}")
    step = host_step(global_step, (tag,))
    handle = _require_eager(writer, "add_text")
    write_text(handle, tag, host.AUTO_STEP if step == _steps.AUTO else step, text)


def add_hparams(writer: JITSummaryWriter, hparams: Mapping[str, Any] | Any,
                metrics: Mapping[str, Any] | None, global_step: Any = None) -> None:
    """[`JITSummaryWriter.add_hparams`][callax.JITSummaryWriter.add_hparams]."""
    from ._hparams_of import hparams_of
    from ._writer._tensorboard import hparams_summaries

    values = hparams_of(hparams)
    _, end = hparams_summaries(values)  # bad names or values fail here
    if metrics is not None and not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping of tag to scalar, got {metrics!r}")
    handle = _require_eager(writer, "add_hparams")
    seeds = np.array([host.NO_SEED])
    host.write_hparams(handle, seeds, values)
    if metrics:
        writer.add_dict("", metrics, global_step=global_step)
    host.write_summaries(handle, seeds, (end,))
