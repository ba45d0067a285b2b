"""The run registry: runs by integer handle, and what device code asks of them (write,
flush, close, begin a training), handed to the writer thread.

Nothing here touches JAX. Device code refers to a run by its *handle*; the registry maps
handles to :class:`~._run.Run` objects, each owning one run directory (and, for vmapped
seeds, one sub-directory ``seed_<i>`` per batch position). Everything handed over is written
by the writer thread (:mod:`._queue`) and flushed after every batch, so a killed process
keeps everything already written; at interpreter exit every run is written and closed.
"""

from __future__ import annotations

import atexit
import itertools
import os
import struct
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np

from . import _queue, _signals
from ._encode import frame, varint
from ._paths import check_log_dir
from ._run import NO_SEED, Run

__all__ = ["begin_training", "close", "flush", "flush_all", "get_run", "open_run",
           "prepare_log_dir", "write", "write_histograms", "write_row", "write_summaries"]

_lock = threading.Lock()
_runs: dict[int, Run] = {}
_opened_dirs: set[str] = set()
_next_handle = itertools.count(1)


def prepare_log_dir(path: str | os.PathLike) -> str:
    """What a writer's constructor does with its directory: :func:`check_log_dir`, and (in
    the main thread, once per process) installing the exit-signal handlers."""
    directory = check_log_dir(path)
    _signals.install_signal_handlers()
    return directory


def unique_dir(log_dir: str, avoid_existing: bool) -> str:
    """``log_dir``, or the first of ``log_dir_1``, ``log_dir_2``, ... that this process has
    not opened (nor, with ``avoid_existing``, exists on disk); recorded as opened."""
    with _lock:
        candidate = log_dir
        suffix = 0
        while candidate in _opened_dirs or (avoid_existing and os.path.exists(candidate)):
            suffix += 1
            candidate = f"{log_dir}_{suffix}"
        _opened_dirs.add(candidate)
        return candidate


def open_run(log_dir: str | Callable[[], str], *, avoid_existing: bool = False,
             purge_step: int | None = None) -> int:
    """Register a new run and return its handle.

    A directory already opened by this process gets a suffix ``_1``, ``_2``, ... so that two
    runs never share one (TensorBoard would merge them); with ``avoid_existing`` directories
    already on disk are skipped too. ``log_dir`` may be a function, called now (so that a run
    opened from inside a jitted function is named when it executes, not when it is traced).
    The directory is checked (:func:`check_log_dir`) before the run is registered.

    With ``purge_step`` the run continues ``log_dir`` itself (no suffix): the first event
    file of each of its directories starts with a ``SessionLog.START`` at ``purge_step``, so
    TensorBoard hides the points at steps ``>= purge_step`` written there before.
    """
    directory = log_dir() if callable(log_dir) else log_dir
    directory = check_log_dir(directory)
    if purge_step is not None:
        purge_step = int(purge_step)
        if purge_step < 0:
            raise ValueError(f"purge_step must be >= 0, got {purge_step}")
        with _lock:
            _opened_dirs.add(directory)
    else:
        directory = unique_dir(directory, avoid_existing)
    _signals.install_signal_handlers()
    with _lock:
        handle = next(_next_handle)
        _runs[handle] = Run(handle, directory, purge_step)
    return handle


def get_run(handle: int) -> Run:
    with _lock:
        try:
            return _runs[int(handle)]
        except KeyError:
            raise KeyError(f"no callax run with handle {int(handle)}") from None


def begin_training(handle: int, name: Callable[[Run], str] | None = None) -> None:
    """A training begins writing to run ``handle`` (a callback's ``reset``). If the run holds
    points of an earlier training (the same compiled function run again, a callback reused),
    the run moves on to a directory of its own: ``name(run)`` or the next free
    ``<directory>_<n>``. Queued, in order with the run's writes."""
    run = get_run(handle)

    def next_directory() -> str:
        return name(run) if name is not None else unique_dir(run.base_dir, True)

    def job() -> None:
        run.begin_training(next_directory)

    _queue.submit(job)


def write(handle: int, tags: tuple[str, ...], seeds: np.ndarray, steps: np.ndarray,
          values: np.ndarray, valid: np.ndarray, *, wait: bool = False) -> None:
    """Queue a batch: ``seeds[B]``, ``steps[B, K]``, ``values[B, K, n]``, ``valid[B, K, n]``.

    Returns at once (or once the queue has room, see :data:`._queue.MAX_PENDING_ROWS`); the
    arrays must not be modified afterwards (callers pass copies). With ``wait``, the batch is
    written in the calling thread once everything queued before it is written. Either way an
    error is raised by the next :func:`flush` or :func:`close`.
    """
    error = _queue.pending_error()
    if error is not None:
        warnings.warn(f"callax: an earlier write failed: {error!r}", RuntimeWarning,
                      stacklevel=2)
    run = get_run(handle)
    now = time.time()

    def job() -> None:
        for b, seed in enumerate(seeds.tolist()):
            run.write(tags, seed, steps[b], values[b], valid[b], now)

    if wait:
        _queue.run_inline(job)
    else:
        _queue.submit(job, rows=int(np.size(steps)))


def write_row(handle: int, tags: tuple[str, ...], step: int, values: np.ndarray) -> None:
    """Queue one eager row: ``values[n]`` for ``tags`` at ``step`` (``AUTO_STEP``: the next
    step) of the run itself. Consecutive rows of one run and tag set queued while the writer
    thread is busy are written together, in order, each with the wall time of its call."""
    run = get_run(handle)

    def write(rows: list) -> None:
        steps = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        values = np.stack([r[1] for r in rows])
        walls = np.fromiter((r[2] for r in rows), np.float64, len(rows))
        run.write(tags, NO_SEED, steps, values, np.ones(values.shape, np.bool_),
                  float(walls[-1]), wall=walls)

    _queue.submit_row((handle, tags), (step, values, time.time()), write)


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
            run.write_histograms(tags, seed, int(steps[b]), stats[b], counts[b], now)

    _queue.submit(job, rows=len(seeds))


def write_summaries(handle: int, seeds: np.ndarray, summaries: tuple[bytes, ...],
                    step: int = 0) -> None:
    """Queue serialized ``Summary`` protos, each as one event at ``step``, to every seed
    position of ``seeds`` in run ``handle`` (written by the writer thread, in order with the
    run's scalars)."""
    run = get_run(handle)
    now = time.time()
    records = b"".join(
        frame(b"\x09" + struct.pack("<d", now) + b"\x10" + varint(step)
              + b"\x2a" + varint(len(summary)) + summary)
        for summary in summaries
    )
    seeds = seeds.tolist()
    _queue.submit(lambda: run.write_records(seeds, records), rows=len(seeds))


def flush(handle: int) -> None:
    """Block until every queued batch is written, then flush the run's files to disk."""
    _queue.wait_idle()
    get_run(handle).flush()
    _queue.raise_pending_error()


def close(handle: int) -> None:
    """Flush and close a run's files. Later writes to the run open new event files."""
    _queue.wait_idle()
    get_run(handle).close()
    _queue.raise_pending_error()


def _all_runs() -> list[Run]:
    with _lock:
        return list(_runs.values())


def flush_all() -> None:
    """Write everything handed over and flush every open file (also done at interpreter exit).

    Call it eagerly, after ``jax.effects_barrier()`` (or after jitted functions returned and
    their results were awaited) to be sure every host callback has handed its data over.
    """
    _queue.wait_idle()
    for run in _all_runs():
        run.flush()
    _queue.raise_pending_error()


@atexit.register
def _close_all_at_exit() -> None:
    try:
        _queue.wait_idle()
        for run in _all_runs():
            run.close()
    finally:
        error = _queue.pending_error()
        if error is not None:
            warnings.warn(f"callax: writing TensorBoard events failed: {error!r}",
                          RuntimeWarning, stacklevel=1)
