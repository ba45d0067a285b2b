"""One run: a directory, its writers per seed position, and what keeps each tag's steps
increasing (TensorBoard's data server discards earlier points when a tag's step goes back,
W&B charts need it too)."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings
from collections.abc import Callable

import numpy as np

from ._choice import resolve_writers
from ._interface import AbstractWriter, Destination
from ._sweep import SweepLayout
from ._tensorboard import TensorBoardWriter

__all__ = ["AUTO_STEP", "NO_SEED", "Run", "WriteError"]

NO_SEED = -1
"""Seed index of a payload that was not produced under ``jax.vmap``."""
AUTO_STEP = -1
"""Step value meaning "one more than the last step of this tag"."""


class WriteError(RuntimeError):
    """Writing a run's event files failed (a full disk, a removed or unwritable directory):
    raised by that run's ``flush()``/``close()`` (and ``callax.flush_all()``), never inside
    a jitted program. The training went on; ``lost`` points were not written.

    **Attributes:** `run` (the run directory), `path` (the file or directory that failed),
    `lost` (points not written), `__cause__` (the ``OSError``).
    """

    def __init__(self, run: str, path: str, error: BaseException, lost: int):
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        super().__init__(f"callax: run {run!r}: writing {path!r} failed: {reason}; "
                         f"{lost} point(s) not written")
        self.run, self.path, self.lost = run, path, lost


class Run:
    """One run directory, with one set of writers per seed position (made on first write).

    The run owns what does not depend on the output: increasing steps per tag (points
    whose step goes back are dropped and reported), ``AUTO`` steps, wall times, a new
    directory per training and write errors; it hands each batch it keeps to every writer
    of the seed (:class:`~._interface.AbstractWriter`: TensorBoard event files by default).
    Batches are written by the writer thread, or inline by a waiting caller: one at a time
    per run (``_lock``).

    Faults cost points, never the training: a writer that fails (a full disk, a removed
    directory, an error of its own) loses its points, counted and warned about once
    (naming the run, the file and the error) and kept for this run's ``flush()``/``close()``
    to raise; that writer is closed and the next write makes a new one (so writing goes on
    once space is freed), and the seed's other writers go on meanwhile.
    """

    def __init__(self, handle: int, log_dir: str, purge_step: int | None = None,
                 writers: tuple[Callable[[Destination], AbstractWriter], ...] | None = None):
        self.handle = handle
        self.log_dir = log_dir
        self.base_dir = log_dir  # what later trainings' directories are named after
        self.children: list[Run] = []  # runs inside this one that move with it (``seeds``)
        self.purge_step = purge_step
        self.factories = resolve_writers(None) if writers is None else tuple(writers)
        self.trainings = 0
        self.sweep: SweepLayout | None = None  # set by a sweep's declaration (queued)
        self._writers: dict[int, list[AbstractWriter | None]] = {}
        self._purged: set[tuple[int, int]] = set()
        self._last_step: dict[tuple[int, str], int] = {}
        self._last_histogram_step: dict[tuple[int, str], int] = {}
        self._last_text_step: dict[tuple[int, str], int] = {}
        self._last_flush_time: dict[int, float] = {}
        self._written = False
        # Points dropped per tag (steps that went back): total, and the part not yet reported.
        self.dropped: dict[str, int] = {}
        self._unreported: dict[str, int] = {}
        # Write errors: the first of the current episode, its path, points lost since.
        self.error: BaseException | None = None
        self.error_path = ""
        self.lost = 0
        self._failing: set[int] = set()  # writers (by position) whose last write failed
        self._lock = threading.Lock()

    def directory(self, seed: int) -> str:
        """The directory written for a seed position (``NO_SEED`` = the run itself):
        ``<run>/seed_<i>``, or in a sweep ``<run>/<configuration>/seed_<s>``."""
        if seed == NO_SEED:
            return self.log_dir
        if self.sweep is not None:
            config, local = self.sweep.locate(seed)
            return os.path.join(self.log_dir, self.sweep.name(config), f"seed_{local}")
        return os.path.join(self.log_dir, f"seed_{seed}")

    def _destination(self, seed: int, purge: int | None) -> Destination:
        if seed == NO_SEED:
            return Destination(self.log_dir, self.log_dir, None, purge)
        if self.sweep is None:
            return Destination(self.directory(seed), self.log_dir, seed, purge)
        config, local = self.sweep.locate(seed)
        return Destination(self.directory(seed), self.log_dir, local, purge,
                           configuration=self.sweep.name(config),
                           config=self.sweep.config(config))

    def set_sweep(self, layout: SweepLayout) -> None:
        """Name the seed positions' directories by `layout` from now on (a sweep declared
        at a training's start); writers made under another layout are closed first."""
        with self._lock:
            if self.sweep is not None and self.sweep.same_as(layout):
                return
            self._close_writers()
            self.sweep = layout

    def _writer(self, seed: int, index: int) -> AbstractWriter:
        slots = self._writers.get(seed)
        if slots is None:
            slots = self._writers[seed] = [None] * len(self.factories)
        writer = slots[index]
        if writer is None:
            # A resumed run marks the restart in the first output of each of its seeds
            # only: a later one (after close) must not hide the resumed points.
            purge = None if (seed, index) in self._purged else self.purge_step
            destination = self._destination(seed, purge)
            writer = slots[index] = self.factories[index](destination)
            self._purged.add((seed, index))
            # Points written again by the restart count as this run's: steps go on after them.
            for tag, step in getattr(writer, "last_steps", {}).items():
                key = (seed, tag)
                self._last_step[key] = max(self._last_step.get(key, step), step)
        return writer

    def _each(self, seed: int, points: int, call: Callable[[AbstractWriter], None]) -> None:
        """``call(writer)`` for every writer of the seed: an error costs that writer's
        ``points`` and is recorded (never raised); the other writers go on."""
        for index in range(len(self.factories)):
            path = self.directory(seed)
            try:
                writer = self._writer(seed, index)
                path = writer.path or path
                call(writer)
            except Exception as error:  # noqa: BLE001 - kept for this run's flush()/close()
                self._failed(path, error, points, seed, index)
                continue
            if index in self._failing:
                self._failing.discard(index)
                warnings.warn(f"callax: run {self.log_dir!r}: writing again, in {path!r}; "
                              f"{self.lost} point(s) were not written", RuntimeWarning,
                              stacklevel=1)

    def _all_writers(self) -> list[AbstractWriter]:
        return [w for slots in self._writers.values() for w in slots if w is not None]

    def _close_writers(self) -> None:
        """Close every writer; an error is recorded (the run stays usable: writers are
        made again on the next write)."""
        writers, self._writers = self._writers, {}
        for slots in writers.values():
            for writer in slots:
                if writer is None:
                    continue
                try:
                    writer.close()
                except Exception as error:  # noqa: BLE001
                    self._failed(writer.path or self.log_dir, error, 0)

    # ----------------------------------------------------------------------------------------
    # A new training in the same run object.

    def begin_training(self, next_directory) -> str | None:
        """A training begins: if this run already holds points of an earlier one, move on to
        the directory ``next_directory()`` returns (writers closed, steps start afresh) and
        return it; otherwise keep writing here (``None``)."""
        with self._lock:
            self.trainings += 1
            if not self._written:
                return None
            self._close_writers()
            self._last_step.clear()
            self._last_histogram_step.clear()
            self._last_text_step.clear()
            self._last_flush_time.clear()
            self._purged.clear()
            self.purge_step = None
            self._written = False
            self.log_dir = next_directory()
            for child in self.children:  # e.g. <run>/seeds/mean: into the new run directory
                name = os.path.relpath(child.base_dir, self.base_dir)
                child.begin_training(lambda name=name: os.path.join(self.log_dir, name))
            return self.log_dir

    # ----------------------------------------------------------------------------------------
    # Scalars.

    def write(self, tags: tuple[str, ...], seed: int, steps: np.ndarray, values: np.ndarray,
              valid: np.ndarray, now: float, wall: np.ndarray | None = None) -> None:
        """Write rows ``steps[K]``, ``values[K, n]`` where ``valid[K, n]``, handed over at
        time ``now``; ``wall[K]``: each row's own wall time, where it is known (eager
        writes)."""
        with self._lock:
            self._write(tags, seed, steps, values, valid, now, wall)

    def _write(self, tags, seed, steps, values, valid, now, wall=None) -> None:
        rows = np.flatnonzero(valid.any(axis=1))
        if rows.size == 0:
            return
        if self.purge_step is not None:
            # First, so that a restarted run knows the steps it writes again.
            for index in range(len(self.factories)):
                if (seed, index) not in self._purged:
                    self._each_one(seed, index, int(valid[rows].sum()))
        steps = steps[rows].astype(np.int64)
        values = values[rows]
        valid = valid[rows]
        wall = None if wall is None else wall[rows]
        if (steps == AUTO_STEP).any():
            steps = self._auto_steps(tags, seed, steps, valid)
        valid = self._drop_non_increasing(tags, seed, steps, valid)
        rows = np.flatnonzero(valid.any(axis=1))
        if rows.size == 0:
            return
        steps, values, valid = steps[rows], values[rows], valid[rows]
        if wall is not None:
            wall = wall[rows]
        else:
            # Rows of a device batch were recorded between the previous batch and now:
            # spread their wall times evenly over that interval (TensorBoard's "relative"
            # axis stays sensible).
            start = self._last_flush_time.get(seed, float(now))
            wall = np.linspace(start, float(now), len(rows) + 1)[1:]
        self._last_flush_time[seed] = now
        self._written = True  # a training's points: the next training writes a new run
        self._each(seed, int(valid.sum()),
                   lambda writer: writer.write_scalars(tags, steps, values, valid, wall))

    def _each_one(self, seed: int, index: int, points: int) -> None:
        """Make writer ``index`` of the seed (an error is recorded, not raised)."""
        try:
            self._writer(seed, index)
        except Exception as error:  # noqa: BLE001
            self._failed(self.directory(seed), error, points, seed, index)

    # ----------------------------------------------------------------------------------------
    # Faults.

    def _failed(self, path: str, error: BaseException, points: int, seed: int | None = None,
                index: int | None = None) -> None:
        self.lost += points
        if seed is not None and index is not None:
            slots = self._writers.get(seed)
            writer = slots[index] if slots else None
            if slots and writer is not None:
                slots[index] = None
                with contextlib.suppress(Exception):
                    writer.close()
        if self.error is None:
            self.error, self.error_path = error, path
        key = -1 if index is None else index
        if key not in self._failing:
            self._failing.add(key)
            reason = getattr(error, "strerror", None) or error
            warnings.warn(f"callax: run {self.log_dir!r}: writing {path!r} failed: {reason}; "
                          "its points are lost until writing works again (the training goes "
                          "on)", RuntimeWarning, stacklevel=1)

    def guarded(self, job, points: int) -> None:
        """Run ``job`` (a write of ``points`` points): any error it raises is this run's
        (recorded and warned about like a failed write), never the writer thread's."""
        try:
            job()
        except Exception as error:  # noqa: BLE001 - kept for this run's flush()/close()
            with self._lock:
                self._failed(self.log_dir, error, points)

    def take_error(self) -> WriteError | None:
        """The run's write error since the last call (``None`` if none), as a
        :class:`WriteError` counting the points lost; cleared."""
        with self._lock:
            return self._take_error()

    def _take_error(self) -> WriteError | None:
        # With the lock held.
        if self.error is None:
            return None
        error = WriteError(self.log_dir, self.error_path, self.error, self.lost)
        error.__cause__ = self.error
        self.error, self.lost = None, 0
        return error

    def _drop_non_increasing(self, tags, seed, steps, valid) -> np.ndarray:
        """Keep a point only if its step is above every earlier step of its tag.

        Writes arrive in program order, so a step that does not increase really goes back
        (a training run again into the same run, a restarted step counter). TensorBoard's
        data server would then discard the earlier points, which would cost more than the
        point itself: such points are dropped, counted per tag and reported (see
        :meth:`_report_drops`).
        """
        lowest = np.iinfo(np.int64).min
        last = np.array([self._last_step.get((seed, tag), lowest) for tag in tags], np.int64)
        # Per column, the highest step of every earlier valid point (or of earlier batches).
        seen = np.where(valid, steps[:, None], lowest)
        before = np.maximum.accumulate(np.concatenate([last[None], seen[:-1]]), axis=0)
        keep = valid & (steps[:, None] > before)
        dropped = valid & ~keep
        if dropped.any():
            self._count_drops(tags, seed, steps, dropped, before)
        newest = np.where(keep, steps[:, None], lowest).max(axis=0)
        for column in np.flatnonzero(newest > last).tolist():
            self._last_step[(seed, tags[column])] = int(newest[column])
        return keep

    def _count_drops(self, tags, seed, steps, dropped, before) -> None:
        first_time = not self.dropped
        for column in np.flatnonzero(dropped.any(axis=0)).tolist():
            tag = tags[column]
            count = int(dropped[:, column].sum())
            self.dropped[tag] = self.dropped.get(tag, 0) + count
            self._unreported[tag] = self._unreported.get(tag, 0) + count
        if first_time:
            # At once for the first drop of the run; later ones at flush/close, counted.
            column = int(np.flatnonzero(dropped.any(axis=0))[0])
            row = int(np.flatnonzero(dropped[:, column])[0])
            self._warn_drops(f"step {int(steps[row])} of tag {tags[column]!r} (seed "
                             f"{seed if seed != NO_SEED else '-'}) is not above the tag's "
                             f"last step {int(before[row, column])}")

    def _warn_drops(self, first: str | None = None) -> None:
        counts, self._unreported = self._unreported, {}
        if not counts:
            return
        listed = ", ".join(f"{n} of {tag!r}" for tag, n in sorted(counts.items()))
        cause = f" ({first})" if first else ""
        warnings.warn(
            f"callax: run {self.log_dir!r}: dropped {sum(counts.values())} point(s) whose step "
            f"did not increase{cause}: {listed}. TensorBoard would discard the earlier "
            "points. Each training should write a run of its own: build the writer inside "
            "the jitted function, or use TensorBoardCallback (a new run each time its reset "
            "runs); a restarted run continues with resume_from_step/purge_step.",
            RuntimeWarning, stacklevel=1)

    def _report_drops(self) -> None:
        """Warn about the points dropped since the last report, with exact counts."""
        with self._lock:
            self._warn_drops()

    def _auto_steps(self, tags, seed, steps, valid) -> np.ndarray:
        """Replace ``AUTO_STEP`` by one more than the last step of the row's tags."""
        steps = steps.copy()
        last = {tag: self._last_step.get((seed, tag), -1) for tag in tags}
        for row in range(len(steps)):
            present = [tag for tag, ok in zip(tags, valid[row], strict=True) if ok]
            if steps[row] == AUTO_STEP:
                steps[row] = max(last[tag] for tag in present) + 1
            for tag in present:
                last[tag] = max(last[tag], int(steps[row]))
        return steps

    # ----------------------------------------------------------------------------------------
    # Histograms, hyperparameters and prebuilt records.

    def write_histograms(self, tags: tuple[str, ...], seed: int, step: int,
                         stats: np.ndarray, counts: np.ndarray, now: float) -> None:
        """``stats[n, 6]``: min, max, num, sum, sum of squares, bucket width; ``counts[n, B]``."""
        with self._lock:
            keep = []
            for column, (tag, num) in enumerate(zip(tags, stats[:, 2].tolist(), strict=True)):
                key = (seed, tag)
                if step <= self._last_histogram_step.get(key, -1) or num <= 0:
                    continue  # TensorBoard would purge earlier points of a repeated step
                self._last_histogram_step[key] = step
                keep.append(column)
            if not keep:
                return
            kept = tuple(tags[c] for c in keep)
            self._written = True
            self._each(seed, len(keep), lambda writer: writer.write_histograms(
                kept, step, stats[keep], counts[keep], now))

    def write_hparams(self, seeds, hparams, now: float) -> None:
        """The hyperparameters, to every writer of every seed position in ``seeds``."""
        with self._lock:
            for seed in seeds:
                self._each(seed, 1, lambda writer: writer.write_hparams(hparams, now))

    def write_text(self, seed: int, tag: str, step: int, text: str, now: float) -> None:
        """``text`` under ``tag`` at ``step`` (``AUTO_STEP``: one more than the tag's last
        text), to every writer of the seed; a step that does not increase is dropped and
        reported like a scalar's."""
        with self._lock:
            last = self._last_text_step.get((seed, tag), -1)
            at = last + 1 if step == AUTO_STEP else step
            if at <= last:
                self.dropped[tag] = self.dropped.get(tag, 0) + 1
                self._unreported[tag] = self._unreported.get(tag, 0) + 1
                return
            self._last_text_step[(seed, tag)] = at
            self._written = True
            self._each(seed, 1, functools.partial(_text_to, tag, at, text, now))

    def write_records(self, seeds, records: bytes) -> None:
        """Append encoded event records to the TensorBoard files of every seed position in
        ``seeds`` (other writers have no use for them)."""
        with self._lock:
            for seed in seeds:
                self._each(seed, 1, lambda writer: writer.write_records(records)
                           if isinstance(writer, TensorBoardWriter) else None)

    # ----------------------------------------------------------------------------------------

    def flush(self) -> None:
        # Every batch is already handed to the OS by the file writers (readable by
        # TensorBoard, kept if the process dies); no fsync: that guards only against an OS
        # crash and costs milliseconds.
        with self._lock:
            for seed, slots in list(self._writers.items()):
                for index, writer in enumerate(slots):
                    if writer is None:
                        continue
                    try:
                        writer.flush()
                    except Exception as error:  # noqa: BLE001
                        self._failed(writer.path or self.log_dir, error, 0, seed, index)
            self._warn_drops()

    def close(self) -> None:
        with self._lock:
            self._close_writers()
            self._warn_drops()

    def close_quietly(self, timeout: float = -1) -> WriteError | None:
        """At exit: close every writer and return the run's error (never raised). A write
        that hangs (a dead network file system) holds the lock: after ``timeout`` seconds
        the run's writers are left to the OS (every batch written is already handed to
        it)."""
        if not self._lock.acquire(timeout=timeout):
            return None
        try:
            self._close_writers()
            return self._take_error()
        finally:
            self._lock.release()

    def forget_files(self) -> None:
        """In a forked child: drop the parent's writers without writing to them (this
        process writes files of its own) and take a fresh lock."""
        self._lock = threading.Lock()
        self._writers = {}


def _text_to(tag: str, step: int, text: str, now: float, writer: AbstractWriter) -> None:
    writer.write_text(tag, step, text, now)
