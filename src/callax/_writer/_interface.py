"""The host writer interface: what a run hands to each of its outputs (TensorBoard event
files, JSON lines, Weights & Biases, or one's own).

A :class:`~._run.Run` keeps everything that does not depend on the output: increasing steps
per tag (points whose step goes back are dropped and reported), ``AUTO`` steps, wall times,
a new directory per training, and the bookkeeping of write errors. Each seed position of a
run (``<run>/seed_<i>``, or the run itself) gets one writer per configured output, made by
a *factory* called with a :class:`Destination` when that seed first writes; the run then
hands it only the points it kept, in order, from the writer thread (never from inside a
jitted program). A writer that raises loses its own points (counted, warned about, raised by
the run's ``flush()``/``close()`` as :class:`~callax.WriteError`); the other writers of the
run go on, and the failed one is replaced by a fresh one at the next write.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

__all__ = ["AbstractWriter", "DEFAULT_WRITERS", "Destination", "WriterSpec"]


@dataclasses.dataclass(frozen=True)
class Destination:
    """Where one writer writes: one seed position of one run.

    **Attributes:**

    - `directory`: the seed's directory, ``<run>/seed_<i>`` (or the run directory itself
      when the data was not vmapped over seeds). Not created yet.
    - `run_dir`: the run directory (a W&B *group*: the seeds of one run).
    - `seed`: the seed position ``i``, or ``None`` for the run itself.
    - `purge_step`: set when the run continues a restarted one: points written there before
      at steps ``>= purge_step`` should be hidden (``None`` otherwise).
    - `configuration`: in a hyperparameter sweep ([`callax.Sweep`][]), the name of the
      seed's configuration (``learning_rate=3e-4,clip_range=0.2``, its directory
      ``<run>/<configuration>/seed_<i>``); `seed` is then the seed within it. ``None``
      otherwise.
    - `config`: the configuration's values (``{"learning_rate": 3e-4, ...}``) or ``None``.
    """

    directory: str
    run_dir: str
    seed: int | None = None
    purge_step: int | None = None
    configuration: str | None = None
    config: Mapping[str, float] | None = None


class AbstractWriter(abc.ABC):
    """One output of one seed position of a run (see :class:`Destination`).

    Made by a factory (usually the class itself, ``MyWriter(destination)``) when the seed
    first writes; called from callax's writer thread, one call at a time per run. Every
    method may raise: the error is the run's (counted, warned about once, raised by its
    ``flush()``/``close()``), this writer is closed and a new one made at the next write,
    and the run's other writers are not affected.

    Implement :meth:`write_scalars` and :meth:`close`; the others default to doing nothing.
    """

    path: str = ""
    """What this writer writes (a file or directory), named in error messages."""

    @abc.abstractmethod
    def write_scalars(self, tags: tuple[str, ...], steps: np.ndarray, values: np.ndarray,
                      valid: np.ndarray, wall_times: np.ndarray) -> None:
        """Write ``K`` rows: ``values[k, j]`` (``float32``) of ``tags[j]`` at step
        ``steps[k]`` (``int64``) where ``valid[k, j]``, recorded at ``wall_times[k]``
        (seconds since the epoch, ``float64``). Every row has a valid point; per tag, steps
        strictly increase over all calls. Values may be ``NaN`` or infinite."""

    def write_histograms(self, tags: tuple[str, ...], step: int, stats: np.ndarray,
                         counts: np.ndarray, wall_time: float) -> None:
        """Write one histogram per tag at ``step``: ``stats[j]`` = min, max, count, sum, sum
        of squares and bucket width; ``counts[j, b]`` per bucket (bucket ``b`` ends at
        ``min + (b + 1) * width``, the last one at ``max``). Per tag, steps increase."""
        del tags, step, stats, counts, wall_time

    def write_hparams(self, hparams: Mapping[str, bool | int | float | str],
                      wall_time: float) -> None:
        """Record the run's hyperparameters (:class:`~callax.HParamsCallback`)."""
        del hparams, wall_time

    def write_text(self, tag: str, step: int, text: str, wall_time: float) -> None:
        """Write ``text`` (Markdown for TensorBoard's text dashboard) under ``tag`` at
        ``step`` (:meth:`callax.JITSummaryWriter.add_text`). Per tag, steps increase."""
        del tag, step, text, wall_time

    def flush(self) -> None:
        """Make everything written so far readable (called by the run's ``flush()``)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release the output. Writing again to the seed makes a new writer."""


WriterSpec = str | Callable[[Destination], AbstractWriter]
"""A writer by name (``"tensorboard"``, ``"jsonl"``, ``"wandb"``) or a factory called with a
:class:`Destination` (an :class:`AbstractWriter` subclass, or a ``functools.partial`` of one
with options)."""

DEFAULT_WRITERS: tuple[str, ...] = ("tensorboard",)
