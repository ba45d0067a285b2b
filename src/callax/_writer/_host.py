"""Host half of the writer: a thread-safe registry of runs and one background writing thread.

Nothing here touches JAX. Device code refers to a run by an integer *handle*; the registry maps
handles to :class:`Run` objects, each owning one run directory (and, for vmapped seeds, one
sub-directory ``seed_<i>`` per batch position). Batches of scalars arrive from host callbacks
(possibly from several XLA threads at once), are queued, and are encoded and written by a
single daemon thread, which flushes the file after every batch so that a killed process keeps
everything already handed over. An error in the writing thread is re-raised by the next
:func:`flush` or :func:`close` (and reported as a warning by the next write).
"""

from __future__ import annotations

import atexit
import itertools
import os
import queue
import socket
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np

from ._encode import encode_file_version, encode_scalar_rows

__all__ = [
    "NO_SEED",
    "AUTO_STEP",
    "Run",
    "close",
    "flush",
    "flush_all",
    "get_run",
    "open_run",
    "write",
]

NO_SEED = -1
"""Seed index of a payload that was not produced under ``jax.vmap``."""
AUTO_STEP = -1
"""Step value meaning "one more than the last step of this tag"."""

_file_counter = itertools.count()


class _EventFile:
    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        # The counter makes names unique even for files opened within the same second.
        name = (
            f"events.out.tfevents.{int(time.time()):d}.{socket.gethostname()}"
            f".{os.getpid()}.{next(_file_counter)}.callax"
        )
        self.path = os.path.join(directory, name)
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed by close()
        self._file.write(encode_file_version())
        self._file.flush()

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Run:
    """One run directory, with one event file per seed position (created on first write)."""

    def __init__(self, handle: int, log_dir: str):
        self.handle = handle
        self.log_dir = log_dir
        self._files: dict[int, _EventFile] = {}
        self._last_step: dict[tuple[int, str], int] = {}
        self._last_flush_time: dict[int, float] = {}
        self.dropped = 0
        self._warned = False
        # Batches are written by the writer thread, or inline by a waiting caller: one at a
        # time per run.
        self._lock = threading.Lock()

    def directory(self, seed: int) -> str:
        """The directory written for a seed position (``NO_SEED`` = the run itself)."""
        if seed == NO_SEED:
            return self.log_dir
        return os.path.join(self.log_dir, f"seed_{seed}")

    def _file(self, seed: int) -> _EventFile:
        file = self._files.get(seed)
        if file is None:
            file = self._files[seed] = _EventFile(self.directory(seed))
        return file

    def write(self, tags: tuple[str, ...], seed: int, steps: np.ndarray, values: np.ndarray,
              valid: np.ndarray, now: float) -> None:
        """Write rows ``steps[K]``, ``values[K, n]`` where ``valid[K, n]``."""
        with self._lock:
            self._write(tags, seed, steps, values, valid, now)

    def _write(self, tags, seed, steps, values, valid, now) -> None:
        rows = np.flatnonzero(valid.any(axis=1))
        if rows.size == 0:
            return
        steps = steps[rows].astype(np.int64)
        values = values[rows]
        valid = valid[rows]
        if (steps == AUTO_STEP).any():
            steps = self._auto_steps(tags, seed, steps, valid)
        valid = self._drop_non_increasing(tags, seed, steps, valid)
        rows = np.flatnonzero(valid.any(axis=1))
        if rows.size == 0:
            return
        steps, values, valid = steps[rows], values[rows], valid[rows]
        # Rows of a batch were recorded between the previous batch and now: spread their
        # wall times evenly over that interval (TensorBoard's "relative" axis stays sensible).
        start = self._last_flush_time.get(seed, now)
        self._last_flush_time[seed] = now
        wall = np.linspace(start, now, len(rows) + 1)[1:]
        if valid.all():
            data = encode_scalar_rows(tags, steps, values, wall)
        else:
            data = self._encode_masked(tags, steps, values, valid, wall)
        self._file(seed).write(data)

    def _drop_non_increasing(self, tags, seed, steps, valid) -> np.ndarray:
        """Keep a point only if its step is above every earlier step of its tag.

        TensorBoard's data server discards earlier points when a tag's step goes back, so a
        repeated or decreasing step would cost more than the point itself. Such points are
        dropped, counted, and reported once per run.
        """
        lowest = np.iinfo(np.int64).min
        last = np.array([self._last_step.get((seed, tag), lowest) for tag in tags], np.int64)
        # Per column, the highest step of every earlier valid point (or of earlier batches).
        seen = np.where(valid, steps[:, None], lowest)
        before = np.maximum.accumulate(np.concatenate([last[None], seen[:-1]]), axis=0)
        keep = valid & (steps[:, None] > before)
        dropped = valid & ~keep
        if dropped.any():
            self.dropped += int(dropped.sum())
            if not self._warned:
                self._warned = True
                column = int(np.flatnonzero(dropped.any(axis=0))[0])
                warnings.warn(
                    f"callax: run {self.log_dir!r}: dropped {int(dropped[:, column].sum())} "
                    f"point(s) of tag {tags[column]!r} whose step did not increase "
                    "(TensorBoard would discard earlier points); each tag needs strictly "
                    "increasing steps", RuntimeWarning, stacklevel=1)
        newest = np.where(keep, steps[:, None], lowest).max(axis=0)
        for column in np.flatnonzero(newest > last).tolist():
            self._last_step[(seed, tags[column])] = int(newest[column])
        return keep

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

    @staticmethod
    def _encode_masked(tags, steps, values, valid, wall) -> bytes:
        # Consecutive rows sharing a validity pattern are encoded together with the tags
        # present; segments stay in row order so every tag's steps keep increasing.
        change = np.flatnonzero((valid[1:] != valid[:-1]).any(axis=1)) + 1
        bounds = [0, *change.tolist(), len(steps)]
        out = []
        for start, stop in itertools.pairwise(bounds):
            columns = np.flatnonzero(valid[start])
            out.append(encode_scalar_rows(tuple(tags[c] for c in columns), steps[start:stop],
                                          values[start:stop][:, columns], wall[start:stop]))
        return b"".join(out)

    def flush(self) -> None:
        # Every batch is already flushed to the OS (readable by TensorBoard, kept if the
        # process dies); no fsync: that guards only against an OS crash and costs milliseconds.
        with self._lock:
            for file in self._files.values():
                file._file.flush()

    def close(self) -> None:
        with self._lock:
            for file in self._files.values():
                file.close()
            self._files.clear()


# --------------------------------------------------------------------------------------------
# Registry and writing thread.

_lock = threading.Lock()
_runs: dict[int, Run] = {}
_opened_dirs: set[str] = set()
_next_handle = itertools.count(1)
_queue: queue.SimpleQueue = queue.SimpleQueue()
_thread: threading.Thread | None = None
_error: BaseException | None = None
_pending = 0
_idle = threading.Condition(_lock)


def _unique_dir(log_dir: str, avoid_existing: bool) -> str:
    candidate = log_dir
    suffix = 0
    while candidate in _opened_dirs or (avoid_existing and os.path.exists(candidate)):
        suffix += 1
        candidate = f"{log_dir}_{suffix}"
    return candidate


def open_run(log_dir: str | Callable[[], str], *, avoid_existing: bool = False) -> int:
    """Register a new run and return its handle.

    A directory already opened by this process gets a suffix ``_1``, ``_2``, ... so that two
    runs never share one (TensorBoard would merge them); with ``avoid_existing`` directories
    already on disk are skipped too. ``log_dir`` may be a function, called now (so that a run
    opened from inside a jitted function is named when it executes, not when it is traced).
    """
    directory = log_dir() if callable(log_dir) else log_dir
    directory = os.path.abspath(os.fspath(directory))
    with _lock:
        directory = _unique_dir(directory, avoid_existing)
        _opened_dirs.add(directory)
        handle = next(_next_handle)
        _runs[handle] = Run(handle, directory)
    return handle


def get_run(handle: int) -> Run:
    with _lock:
        try:
            return _runs[int(handle)]
        except KeyError:
            raise KeyError(f"no callax run with handle {int(handle)}") from None


def _ensure_thread() -> None:
    global _thread
    if _thread is None or not _thread.is_alive():
        _thread = threading.Thread(target=_worker, name="callax-writer", daemon=True)
        _thread.start()


def _run_job(job: Callable[[], None]) -> None:
    global _error
    try:
        job()
    except BaseException as error:  # noqa: BLE001 - re-raised on the next flush/close
        with _lock:
            if _error is None:
                _error = error


def _worker() -> None:
    global _pending
    while True:
        job = _queue.get()
        try:
            _run_job(job)
        finally:
            with _lock:
                _pending -= 1
                if _pending == 0:
                    _idle.notify_all()


def _submit(job: Callable[[], None]) -> None:
    global _pending
    with _lock:
        _pending += 1
        _ensure_thread()
    _queue.put(job)


def _raise_pending_error() -> None:
    global _error
    with _lock:
        error, _error = _error, None
    if error is not None:
        raise RuntimeError("callax: writing TensorBoard events failed") from error


def write(handle: int, tags: tuple[str, ...], seeds: np.ndarray, steps: np.ndarray,
          values: np.ndarray, valid: np.ndarray, *, wait: bool = False) -> None:
    """Queue a batch: ``seeds[B]``, ``steps[B, K]``, ``values[B, K, n]``, ``valid[B, K, n]``.

    Returns at once; the arrays must not be modified afterwards (callers pass copies). With
    ``wait``, the batch is written in the calling thread once everything queued before it is
    written (a caller about to wait for the files anyway saves two thread hand-offs). Either
    way an error is raised by the next :func:`flush` or :func:`close`.
    """
    if _error is not None:
        warnings.warn(f"callax: an earlier write failed: {_error!r}", RuntimeWarning,
                      stacklevel=2)
    run = get_run(handle)
    now = time.time()

    def job() -> None:
        for b, seed in enumerate(seeds.tolist()):
            run.write(tags, seed, steps[b], values[b], valid[b], now)

    if wait:
        _wait_idle()
        _run_job(job)
    else:
        _submit(job)


def _wait_idle() -> None:
    with _lock:
        while _pending:
            _idle.wait()


def flush(handle: int) -> None:
    """Block until every queued batch is written, then flush the run's files to disk."""
    _wait_idle()
    get_run(handle).flush()
    _raise_pending_error()


def close(handle: int) -> None:
    """Flush and close a run's files. Later writes to the run open new event files."""
    _wait_idle()
    get_run(handle).close()
    _raise_pending_error()


def flush_all() -> None:
    """Write everything handed over and flush every open file (also done at interpreter exit).

    Call it eagerly, after ``jax.effects_barrier()`` (or after jitted functions returned and
    their results were awaited) to be sure every host callback has handed its data over.
    """
    _wait_idle()
    with _lock:
        runs = list(_runs.values())
    for run in runs:
        run.flush()
    _raise_pending_error()


@atexit.register
def _close_all_at_exit() -> None:
    try:
        _wait_idle()
        with _lock:
            runs = list(_runs.values())
        for run in runs:
            run.close()
    finally:
        if _error is not None:
            warnings.warn(f"callax: writing TensorBoard events failed: {_error!r}",
                          RuntimeWarning, stacklevel=1)


# --------------------------------------------------------------------------------------------
# Histograms.


def _write_histograms(run: Run, tags: tuple[str, ...], seed: int, step: int,
                      stats: np.ndarray, counts: np.ndarray, now: float) -> None:
    # ``stats[n, 6]``: min, max, num, sum, sum of squares, bucket width; ``counts[n, B]``.
    from ._encode import encode_histogram

    out = []
    with run._lock:
        for tag, row, bucket in zip(tags, stats.tolist(), counts, strict=True):
            key = (seed, ("histogram", tag))
            if step <= run._last_step.get(key, -1) or row[2] <= 0:
                continue  # TensorBoard would purge earlier points of a repeated step
            run._last_step[key] = step
            minimum, maximum, num, total, squares, width = row
            limits = minimum + width * np.arange(1, len(bucket) + 1, dtype=np.float64)
            limits[-1] = max(maximum, limits[-1])
            out.append(encode_histogram(tag, step, now, minimum, maximum, num, total, squares,
                                        limits, bucket))
        if out:
            run._file(seed).write(b"".join(out))


def write_histograms(handle: int, tags: tuple[str, ...], seeds: np.ndarray, steps: np.ndarray,
                     stats: np.ndarray, counts: np.ndarray) -> None:
    """Queue histograms: for each row ``b``, ``tags[j]`` at ``steps[b]`` from ``stats[b, j]``
    (min, max, num, sum, sum of squares, bucket width) and ``counts[b, j]`` (per bucket), to
    seed position ``seeds[b]`` of run ``handle``. Written by the writer thread, in order with
    the run's scalars; errors surface at the next flush, like scalars'."""
    run = get_run(handle)
    now = time.time()

    def job() -> None:
        for b, seed in enumerate(seeds.tolist()):
            _write_histograms(run, tags, seed, int(steps[b]), stats[b], counts[b], now)

    _submit(job)


# --------------------------------------------------------------------------------------------
# Prebuilt summaries (hyperparameters).


def write_summaries(handle: int, seeds: np.ndarray, summaries: tuple[bytes, ...],
                    step: int = 0) -> None:
    """Queue serialized ``Summary`` protos, each as one event at ``step``, to every seed
    position of ``seeds`` in run ``handle`` (written by the writer thread, in order with the
    run's scalars)."""
    import struct

    from ._encode import frame, varint

    run = get_run(handle)
    now = time.time()
    records = b"".join(
        frame(b"\x09" + struct.pack("<d", now) + b"\x10" + varint(step)
              + b"\x2a" + varint(len(summary)) + summary)
        for summary in summaries
    )

    def job() -> None:
        with run._lock:
            for seed in seeds.tolist():
                run._file(seed).write(records)

    _submit(job)
