"""The writer thread and its bounded queue.

Host calls (possibly from several XLA threads at once) hand batches to one daemon thread,
which encodes and writes them in the order they were handed over. At most
:data:`MAX_PENDING_ROWS` rows wait at a time: a host call that would go past it waits until
the thread has written enough (backpressure), so a jitted loop that writes faster than the
disk keeps a bounded amount of memory, and a ``SIGKILL`` loses at most that many rows.

An error in a job is kept and re-raised by the next :func:`raise_pending_error` (the
writers' ``flush``/``close``).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

__all__ = ["MAX_PENDING_ROWS", "pending_error", "raise_pending_error", "run_inline", "submit",
           "submit_row", "wait_idle"]

MAX_PENDING_ROWS = 4_096
"""Rows handed over but not yet written, at most (a row is one step of one seed: up to the
writer's width of scalars, ~0.3 kB for 64 scalars). A host call that would hold more waits
for the writer thread; a single batch larger than this is accepted alone."""

_lock = threading.Lock()
_idle = threading.Condition(_lock)
_room = threading.Condition(_lock)
_queue: queue.SimpleQueue = queue.SimpleQueue()
_thread: threading.Thread | None = None
_error: BaseException | None = None
_pending_jobs = 0
_pending_rows = 0


exit_hook: Callable[[], None] | None = None
"""The ``atexit`` hook that writes every run (set by ``_registry``; a writer whose package
registers exit hooks of its own re-registers it after them, see ``_wandb``)."""

on_thread_start: Callable[[], None] | None = None
"""Called (under the queue's lock) whenever a writer thread starts: once per process that
queues anything, forked children included (see ``_registry._register_worker_exit``)."""


def _ensure_thread() -> None:
    global _thread
    if _thread is None or not _thread.is_alive():
        if on_thread_start is not None:
            on_thread_start()
        _thread = threading.Thread(target=_worker, name="callax-writer", daemon=True)
        _thread.start()


def _run(job: Callable[[], object]) -> None:
    global _error
    try:
        job()
    except BaseException as error:  # noqa: BLE001 - re-raised by raise_pending_error
        with _lock:
            if _error is None:
                _error = error


class _RowBatch:
    """A queued job that later rows with the same key join while it waits: consecutive
    eager writes to one run are encoded and written together (one write instead of one
    per call), in the order they were made."""

    def __init__(self, key: object, write: Callable[[list], None]):
        self.key = key
        self.write = write
        self.rows: list = []
        self.started = False

    def __call__(self) -> None:
        with _lock:
            self.started = True  # later rows start a batch of their own
        self.write(self.rows)


_last_job: object = None


def _worker() -> None:
    global _pending_jobs, _pending_rows
    while True:
        job, rows = _queue.get()
        if isinstance(job, _RowBatch):
            rows = len(job.rows)
        try:
            _run(job)
        finally:
            with _lock:
                if isinstance(job, _RowBatch):
                    rows = len(job.rows)  # rows joined until it started
                _pending_jobs -= 1
                _pending_rows -= rows
                _room.notify_all()
                if _pending_jobs == 0:
                    _idle.notify_all()


def _wait_for_room(rows: int) -> None:
    # Called with _lock held.
    while _pending_rows and _pending_rows + rows > MAX_PENDING_ROWS:
        _room.wait()


def submit(job: Callable[[], object], rows: int = 1) -> None:
    """Queue ``job`` (``rows`` rows of data; its result is ignored) for the writer thread;
    wait while the queue holds :data:`MAX_PENDING_ROWS` rows or more."""
    global _pending_jobs, _pending_rows, _last_job
    with _lock:
        _wait_for_room(rows)
        _pending_jobs += 1
        _pending_rows += rows
        _last_job = job
        _ensure_thread()
        # Put while holding the lock: the queue's order is the order of _last_job.
        _queue.put((job, 0 if isinstance(job, _RowBatch) else rows))


def submit_row(key: object, row: object, write: Callable[[list], None]) -> None:
    """Queue one row for ``write(rows)``: it joins the last queued job if that is a batch
    with the same ``key`` not yet started (nothing else was queued since), else it starts
    a new batch. ``write`` receives the rows in the order they were submitted."""
    global _pending_rows
    with _lock:
        last = _last_job
        if isinstance(last, _RowBatch) and last.key == key and not last.started:
            _wait_for_room(1)
            if _last_job is last and not last.started:
                last.rows.append(row)
                _pending_rows += 1
                return
    batch = _RowBatch(key, write)
    batch.rows.append(row)
    submit(batch, 1)


def wait_idle() -> None:
    """Block until every queued job has run."""
    with _lock:
        while _pending_jobs:
            _idle.wait()


def run_inline(job: Callable[[], object]) -> None:
    """Run ``job`` in the calling thread once everything queued before it has run (a
    caller about to wait for the files anyway saves two thread hand-offs)."""
    wait_idle()
    _run(job)


def pending_error() -> BaseException | None:
    return _error


def raise_pending_error() -> None:
    global _error
    with _lock:
        error, _error = _error, None
    if error is not None:
        raise RuntimeError("callax: writing TensorBoard events failed") from error


def _after_fork_in_child() -> None:
    # A forked child has no writer thread, and the parent's lock may have been held at the
    # fork: start from a clean state (the parent's queued jobs are the parent's to write).
    global _lock, _idle, _room, _queue, _thread, _error, _pending_jobs, _pending_rows, _last_job
    _last_job = None
    _lock = threading.Lock()
    _idle = threading.Condition(_lock)
    _room = threading.Condition(_lock)
    _queue = queue.SimpleQueue()
    _thread = None
    _error = None
    _pending_jobs = _pending_rows = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
