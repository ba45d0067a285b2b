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
import functools
import itertools
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np

from . import _queue, _signals
from ._choice import resolve_writers
from ._encode import encode_summaries
from ._paths import check_log_dir
from ._run import NO_SEED, Run
from ._sweep import SweepLayout, set_layout

__all__ = ["begin_training", "close", "close_all_before_exit", "flush", "flush_all", "get_run",
           "open_run", "prepare_log_dir", "row_job", "set_sweep", "write", "write_hparams",
           "write_histograms", "write_row", "write_summaries", "write_text"]

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
             purge_step: int | None = None, writers=None) -> int:
    """Register a new run and return its handle.

    A directory already opened by this process gets a suffix ``_1``, ``_2``, ... so that two
    runs never share one (TensorBoard would merge them); with ``avoid_existing`` directories
    already on disk are skipped too. ``log_dir`` may be a function, called now (so that a run
    opened from inside a jitted function is named when it executes, not when it is traced).
    The directory is checked (:func:`check_log_dir`) before the run is registered.

    With ``purge_step`` the run continues ``log_dir`` itself (no suffix): the first event
    file of each of its directories starts with a ``SessionLog.START`` at ``purge_step``, so
    TensorBoard hides the points at steps ``>= purge_step`` written there before.

    ``writers``: the outputs of the run (names or factories, see
    :func:`~._choice.resolve_writers`; default TensorBoard alone).
    """
    factories = resolve_writers(writers)
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
    _register_worker_exit()
    with _lock:
        handle = next(_next_handle)
        _runs[handle] = Run(handle, directory, purge_step, factories)
    return handle


def get_run(handle: int) -> Run:
    with _lock:
        try:
            return _runs[int(handle)]
        except KeyError:
            raise KeyError(f"no callax run with handle {int(handle)}") from None


# Host calls run these on XLA's threads, eager calls on the caller's: none defines a
# function per call. Under an import hook that type-checks callax (e.g. jaxtyping's with
# beartype), decorating one enters warnings.catch_warnings(record=True), which is
# process-wide and would swallow a warning the writer thread gives meanwhile. Jobs are
# functools.partial objects of the module-level functions below.


def begin_training(handle: int, name: Callable[[Run], str] | None = None) -> None:
    """A training begins writing to run ``handle`` (a callback's ``reset``). If the run holds
    points of an earlier training (the same compiled function run again, a callback reused),
    the run moves on to a directory of its own: ``name(run)`` or the next free
    ``<directory>_<n>``. Queued, in order with the run's writes."""
    run = get_run(handle)
    _queue.submit(functools.partial(run.begin_training,
                                    functools.partial(_next_directory, run, name)))


def _next_directory(run: Run, name: Callable[[Run], str] | None) -> str:
    return name(run) if name is not None else unique_dir(run.base_dir, True)


def write(handle: int, tags: tuple[str, ...], seeds: np.ndarray, steps: np.ndarray,
          values: np.ndarray, valid: np.ndarray, *, wait: bool = False) -> None:
    """Queue a batch: ``seeds[B]``, ``steps[B, K]``, ``values[B, K, n]``, ``valid[B, K, n]``.

    Returns at once (or once the queue has room, see :data:`._queue.MAX_PENDING_ROWS`); the
    arrays must not be modified afterwards (callers pass copies). With ``wait``, the batch is
    written in the calling thread once everything queued before it is written. Either way an
    error is raised by the next :func:`flush` or :func:`close`.
    """
    run = get_run(handle)
    batch = functools.partial(_write_batch, run, tags, seeds, steps, values, valid,
                              time.time())
    job = functools.partial(run.guarded, batch, int(valid.sum()))
    if wait:
        _queue.run_inline(job)
    else:
        _queue.submit(job, rows=int(np.size(steps)))


def _write_batch(run: Run, tags: tuple[str, ...], seeds: np.ndarray, steps: np.ndarray,
                 values: np.ndarray, valid: np.ndarray, now: float) -> None:
    for b, seed in enumerate(seeds.tolist()):
        run.write(tags, seed, steps[b], values[b], valid[b], now)


def write_row(handle: int, tags: tuple[str, ...], step: int, values: np.ndarray) -> None:
    """Queue one eager row: ``values[n]`` for ``tags`` at ``step`` (``AUTO_STEP``: the next
    step) of the run itself. Consecutive rows of one run queued while the writer thread is
    busy are written together (one file write), in order, each with the wall time of its
    call, whatever their tags (a loop alternating over several tags batches as well as one
    writing a single tag)."""
    _queue.submit_row(handle, (tags, step, values, time.time()), row_job(handle))


def row_job(handle: int) -> functools.partial:
    """What the writer thread runs for a batch of eager rows ``(tags, step, values, wall
    time)`` of run ``handle`` (see :func:`write_row`)."""
    return functools.partial(_write_rows, get_run(handle))


def _write_rows(run: Run, rows: list) -> None:
    """Write eager rows ``(tags, step, values, wall time)`` of one run (the writer thread)."""
    run.guarded(functools.partial(_write_rows_now, run, rows), sum(len(r[0]) for r in rows))


def _write_rows_now(run: Run, rows: list) -> None:
    tags = rows[0][0]
    walls = np.fromiter((r[3] for r in rows), np.float64, len(rows))
    steps = np.fromiter((r[1] for r in rows), np.int64, len(rows))
    if all(r[0] == tags for r in rows):
        values = np.stack([r[2] for r in rows])
        valid = np.ones(values.shape, np.bool_)
    else:  # rows of several tag sets: one matrix over every tag, masked per row
        tags, values, valid = _union_rows(rows)
    run.write(tags, NO_SEED, steps, values, valid, float(walls[-1]), wall=walls)


def _union_rows(rows: list) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Rows ``(tags, step, values, wall time)`` of different tag sets as one matrix over the
    union of their tags (in order of first appearance) and the mask of each row's tags."""
    columns: dict[str, int] = {}
    positions: dict[tuple[str, ...], list[int]] = {}
    where: list[int] = []
    for row in rows:
        position = positions.get(row[0])
        if position is None:
            position = positions[row[0]] = [columns.setdefault(t, len(columns)) for t in row[0]]
        where += position
    width = len(columns)
    lengths = np.fromiter((len(row[0]) for row in rows), np.int64, len(rows))
    flat = np.repeat(np.arange(len(rows)) * width, lengths) + np.array(where, np.int64)
    values = np.zeros(len(rows) * width, np.float32)
    valid = np.zeros(len(rows) * width, np.bool_)
    values[flat] = np.concatenate([row[2] for row in rows])
    valid[flat] = True
    values, valid = values.reshape(len(rows), width), valid.reshape(len(rows), width)
    return tuple(columns), values, valid


def write_histograms(handle: int, tags: tuple[str, ...], seeds: np.ndarray, steps: np.ndarray,
                     stats: np.ndarray, counts: np.ndarray) -> None:
    """Queue histograms: for each row ``b``, ``tags[j]`` at ``steps[b]`` from ``stats[b, j]``
    (min, max, num, sum, sum of squares, bucket width) and ``counts[b, j]`` (per bucket), to
    seed position ``seeds[b]`` of run ``handle``. Written by the writer thread, in order with
    the run's scalars; errors surface at the next flush, like scalars'."""
    run = get_run(handle)
    histograms = functools.partial(_write_histograms, run, tags, seeds, steps, stats, counts,
                                   time.time())
    _queue.submit(functools.partial(run.guarded, histograms, len(seeds) * len(tags)),
                  rows=len(seeds))


def _write_histograms(run: Run, tags: tuple[str, ...], seeds: np.ndarray, steps: np.ndarray,
                      stats: np.ndarray, counts: np.ndarray, now: float) -> None:
    for b, seed in enumerate(seeds.tolist()):
        run.write_histograms(tags, seed, int(steps[b]), stats[b], counts[b], now)


def write_summaries(handle: int, seeds: np.ndarray, summaries: tuple[bytes, ...],
                    step: int = 0) -> None:
    """Queue serialized ``Summary`` protos, each as one event at ``step``, to every seed
    position of ``seeds`` in run ``handle`` (written by the writer thread, in order with the
    run's scalars)."""
    run = get_run(handle)
    records = encode_summaries(summaries, time.time(), step)
    positions = seeds.tolist()
    write_records = functools.partial(run.write_records, positions, records)
    _queue.submit(functools.partial(run.guarded, write_records, len(positions)),
                  rows=len(positions))


def write_text(handle: int, tag: str, step: int, text: str) -> None:
    """Queue ``text`` under ``tag`` at ``step`` (``AUTO_STEP``: the tag's next text step)
    for every writer of run ``handle`` itself, in order with the run's scalars."""
    run = get_run(handle)
    job = functools.partial(run.write_text, NO_SEED, tag, step, text, time.time())
    _queue.submit(functools.partial(run.guarded, job, 1))


def write_hparams(handle: int, seeds: np.ndarray, hparams: dict) -> None:
    """Queue the run's hyperparameters for every writer of every seed position of
    ``seeds`` (TensorBoard: an HParams session start; JSON lines: a line; W&B: the config),
    in order with the run's scalars."""
    run = get_run(handle)
    positions = seeds.tolist()
    write_hparams = functools.partial(run.write_hparams, positions, dict(hparams), time.time())
    _queue.submit(functools.partial(run.guarded, write_hparams, len(positions)),
                  rows=len(positions))


def set_sweep(handle: int, layout: SweepLayout) -> None:
    """Declare run `handle` a sweep of `layout`: host calls made after this one find it at
    once (:func:`~._sweep.layout_of`), and the run's seed positions are written to
    ``<run>/<configuration>/seed_<s>`` from the next queued write on."""
    run = get_run(handle)
    set_layout(run.handle, layout)
    _queue.submit(functools.partial(run.guarded, functools.partial(run.set_sweep, layout), 0))


def _raise_for(runs: list[Run]) -> None:
    errors = [error for error in (run.take_error() for run in runs) if error is not None]
    _queue.raise_pending_error()
    if errors:
        first = errors[0]
        for other in errors[1:]:
            first.add_note(str(other))
        raise first


def flush(handle: int, *, report: bool = True) -> None:
    """Block until every queued batch is written, then flush the run's files to disk.

    Raises :class:`~._run.WriteError` if writing this run failed since the last
    ``flush``/``close`` (errors of other runs are theirs). ``report=False`` (host calls
    made from a jitted program) never raises: the error waits for the next eager call."""
    _queue.wait_idle()
    run = get_run(handle)
    run.flush()
    if report:
        _raise_for([run])


def close(handle: int, *, report: bool = True) -> None:
    """Flush and close a run's files. Later writes to the run open new event files (also
    after a ``close`` that failed). Raises like :func:`flush`."""
    _queue.wait_idle()
    run = get_run(handle)
    run.close()
    if report:
        _raise_for([run])


def _all_runs() -> list[Run]:
    with _lock:
        return list(_runs.values())


def flush_all() -> None:
    """Write everything handed over and flush every open file (also done at interpreter exit).

    Call it eagerly, after ``jax.effects_barrier()`` (or after jitted functions returned and
    their results were awaited) to be sure every host callback has handed its data over.
    Raises the :class:`~._run.WriteError` of the first run whose writing failed, the others
    attached as notes.
    """
    _queue.wait_idle()
    runs = _all_runs()
    for run in runs:
        run.flush()
    _raise_for(runs)


def close_all_before_exit() -> None:
    """At interpreter exit (and when a forked worker ends): write what was handed over,
    waiting at most :data:`~._signals.EXIT_FLUSH_TIMEOUT` seconds, close every file and
    warn about every run whose writing failed (exit never raises)."""
    deadline = time.monotonic() + _signals.EXIT_FLUSH_TIMEOUT
    _signals.flush_before_exit(_signals.EXIT_FLUSH_TIMEOUT)
    for run in _all_runs():
        # A write that hangs holds its run's lock: wait for it within the same bound.
        error = run.close_quietly(timeout=max(0.0, deadline - time.monotonic()))
        if error is not None:
            warnings.warn(str(error), RuntimeWarning, stacklevel=1)
    error = _queue.pending_error()
    if error is not None:
        warnings.warn(f"callax: writing TensorBoard events failed: {error!r}",
                      RuntimeWarning, stacklevel=1)


atexit.register(close_all_before_exit)
_queue.exit_hook = close_all_before_exit


# --------------------------------------------------------------------------------------------
# Forked and spawned worker processes (multiprocessing).

_exit_registered_pid = 0


def _register_worker_exit() -> None:
    """A ``multiprocessing`` worker ends with ``os._exit`` (no ``atexit``): have
    multiprocessing's own exit hook write this process's runs when the worker returns."""
    global _exit_registered_pid
    if _exit_registered_pid == os.getpid():
        return
    mp = sys.modules.get("multiprocessing")
    if mp is None or mp.parent_process() is None:
        return
    _exit_registered_pid = os.getpid()
    import multiprocessing.util

    multiprocessing.util.Finalize(None, close_all_before_exit, exitpriority=100)


# Also when a process starts its writer thread: a forked worker writing to a run its parent
# opened calls no open_run, and a hook registered at the fork itself would be lost
# (multiprocessing clears its exit hooks in the child before running the worker).
_queue.on_thread_start = _register_worker_exit


def _after_fork_in_child() -> None:
    # The child writes its own files (the parent's stay the parent's): fresh locks, no
    # inherited open files; the queue starts empty (see _queue), and its writer thread,
    # started at the child's first write, registers the child's exit hook.
    global _lock
    _lock = threading.Lock()
    for run in _runs.values():
        run.forget_files()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
