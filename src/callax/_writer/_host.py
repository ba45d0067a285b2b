"""Host half of the writer: a thread-safe registry of runs and one background writing thread.

Nothing here touches JAX. Device code refers to a run by an integer *handle*; the registry maps
handles to :class:`Run` objects, each owning one run directory (and, for vmapped seeds, one
sub-directory ``seed_<i>`` per batch position). Batches of scalars arrive from host callbacks
(possibly from several XLA threads at once), are queued, and are encoded and written by a
single daemon thread, which flushes the file after every batch so that a killed process keeps
everything already handed over. An error in the writing thread is re-raised by the next
:func:`flush` or :func:`close` (and reported as a warning by the next write).

Exit paths: at interpreter exit (normal end, an uncaught exception, ``KeyboardInterrupt``)
everything handed over is written by an ``atexit`` hook. ``SIGTERM`` and ``SIGHUP`` end a
Python process without running ``atexit``: when the first run opens in the main thread,
callax installs a handler for each of them that writes everything handed over, then calls the
handler that was there before (a user's own) or, if that was the default, restores the
default and re-sends the signal, so the process still ends with the signal's status.
Ignored signals and handlers installed outside Python are left alone.

Run directories are checked when a run opens (:func:`check_log_dir`); every event file has a
name of its own (time, host, process id, a per-process counter), created exclusively, so two
writers, in one process or in several, never share a file.
"""

from __future__ import annotations

import atexit
import errno
import itertools
import os
import queue
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np

from ._encode import encode_file_version, encode_scalar_rows, encode_session_start

__all__ = [
    "NO_SEED",
    "AUTO_STEP",
    "Run",
    "check_log_dir",
    "check_run_name",
    "close",
    "flush",
    "flush_all",
    "get_run",
    "open_run",
    "prepare_log_dir",
    "write",
]

NO_SEED = -1
"""Seed index of a payload that was not produced under ``jax.vmap``."""
AUTO_STEP = -1
"""Step value meaning "one more than the last step of this tag"."""

_file_counter = itertools.count()

# Room a run directory must leave for what callax puts in it: ``/seed_<i>`` and an event
# file name (``events.out.tfevents.<time>.<host>.<pid>.<n>.callax``).
_FILE_NAME_ROOM = 1 + len("seed_") + 10 + 1 + len("events.out.tfevents..callax") + 10 + 64 + 30


def _event_file_name() -> str:
    # Time, host and process id tell writers of different processes apart, the counter
    # writers of one process (zero-padded: files of one process sort in creation order, as
    # TensorBoard reads them).
    return (f"events.out.tfevents.{int(time.time()):d}.{socket.gethostname()}"
            f".{os.getpid()}.{next(_file_counter):06d}.callax")


def _restart_records(directory: str, purge_step: int) -> tuple[bytes, dict[str, int]]:
    """The records that begin a restarted run's first file in ``directory``, and the last
    step they write per tag.

    ``EventAccumulator`` (and callax's reader) drop every point at a step ``>= q`` written
    before a ``SessionLog.START`` at step ``q``; TensorBoard's data server ignores that
    event and drops a tag's points at steps ``>= s`` when that tag receives a point at step
    ``s`` again. So that both show the same thing: for every tag with points at or after
    ``purge_step`` (the lost tail), ``q`` goes back to the tag's last point before
    ``purge_step``, and every point before ``purge_step`` from ``q`` on is written again
    (same step, value and wall time) after the ``START``: the accumulator purges from ``q``
    and reads them back, the data server replaces each tag's points from its first copy on.
    A tag whose points all lie in the lost tail cannot be dropped by the data server this
    way (it has no point to write again); the accumulator drops it.
    """
    from ._read import event_files, read_records, read_scalars

    if not os.path.isdir(directory):
        return encode_session_start(purge_step), {}
    kept = read_scalars(directory)
    start = purge_step
    for points in kept.values():
        before = [step for step, _ in points if step < purge_step]
        if before and len(before) < len(points):
            start = min(start, before[-1])
    again = {tag: [(s, v) for s, v in points if start <= s < purge_step]
             for tag, points in kept.items()}
    again = {tag: points for tag, points in again.items() if points}
    if not again:
        return encode_session_start(purge_step), {}
    wall: dict[tuple[str, int], float] = {}
    from tensorboardX.proto.event_pb2 import Event

    for path in event_files(directory):
        for record in read_records(path):
            event = Event.FromString(record)
            for value in event.summary.value:
                wall[(value.tag, event.step)] = event.wall_time
    now = time.time()
    out = [encode_session_start(start)]
    for tag, points in again.items():
        steps = np.array([s for s, _ in points], np.int64)
        values = np.array([[v] for _, v in points], np.float64)
        walls = np.array([wall.get((tag, s), now) for s, _ in points], np.float64)
        out.append(encode_scalar_rows((tag,), steps, values, walls))
    return b"".join(out), {tag: points[-1][0] for tag, points in again.items()}


class _EventFile:
    def __init__(self, directory: str, purge_step: int | None = None):
        self.last_steps: dict[str, int] = {}
        header = encode_file_version()
        if purge_step is not None:
            restart, self.last_steps = _restart_records(directory, purge_step)
            header += restart
        os.makedirs(directory, exist_ok=True)
        while True:
            self.path = os.path.join(directory, _event_file_name())
            try:
                # Exclusive: never append to a file another writer made (a reused pid).
                self._file = open(self.path, "xb")  # noqa: SIM115 - closed by close()
                break
            except FileExistsError:
                continue
        self._file.write(header)
        self._file.flush()

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# --------------------------------------------------------------------------------------------
# Checks of run names and directories, made when a writer is constructed.


def _limits(path: str) -> tuple[int, int]:
    """``(NAME_MAX, PATH_MAX)`` of the file system holding ``path`` (or its nearest
    existing ancestor), with the POSIX defaults where the OS does not say."""
    probe = path
    while probe and not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    try:
        return os.pathconf(probe, "PC_NAME_MAX"), os.pathconf(probe, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        return 255, 4096


def check_run_name(name: object) -> str:
    """Check that ``name`` is one directory name: a non-empty str, not ``.`` or ``..``,
    without a path separator or NUL, at most ``NAME_MAX`` bytes. A run name can therefore
    never point outside its parent ``log_dir``.

    **Arguments:**

    - `name`: a run name (a directory under ``log_dir``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"run name must be a non-empty str, got {name!r}")
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if name in (".", "..") or any(sep in name for sep in separators) or "\0" in name:
        raise ValueError(
            f"invalid run name {name!r}: a run name is one directory under log_dir, without "
            "'/', '..' or an absolute path (put sub-directories into log_dir instead)"
        )
    name_max, _ = _limits(os.getcwd())
    if len(os.fsencode(name)) > name_max:
        raise ValueError(f"run name is {len(os.fsencode(name))} bytes long, more than the "
                         f"file system allows ({name_max}): {name[:40]!r}...")
    return name


def check_log_dir(path: str | os.PathLike) -> str:
    """Check, without creating anything, that a run directory can be created and written;
    return its absolute path.

    Raises ``ValueError`` for a path too long for the file system (a component over
    ``NAME_MAX`` bytes, or the whole over ``PATH_MAX`` with room for callax's own files) or
    holding a NUL, ``NotADirectoryError`` if the path or one of its parents is an existing
    file, and ``PermissionError`` if its nearest existing ancestor is not writable by this
    process (a read-only file system included).

    **Arguments:**

    - `path`: the run directory.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"log_dir must be a path, got {path!r}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text:
        raise ValueError("log_dir must not be empty")
    if "\0" in text:
        raise ValueError(f"log_dir contains a NUL character: {text!r}")
    directory = os.path.abspath(text)
    name_max, path_max = _limits(directory)
    for part in directory.split(os.sep):
        if len(os.fsencode(part)) > name_max:
            raise ValueError(
                f"log_dir {text!r} has a component of {len(os.fsencode(part))} bytes, more than "
                f"the file system allows ({name_max}): {part[:40]!r}...")
    if len(os.fsencode(directory)) + _FILE_NAME_ROOM >= path_max:
        raise ValueError(
            f"log_dir is too long: {len(os.fsencode(directory))} bytes, and its event files "
            f"need about {_FILE_NAME_ROOM} more within the system's limit of {path_max} "
            f"(log_dir starts with {directory[:60]!r})")
    probe = directory
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        what = "is a file" if probe == directory else f"is inside the file {probe!r}"
        raise NotADirectoryError(errno.ENOTDIR, f"log_dir {text!r} {what}, not a directory")
    effective = os.access in os.supports_effective_ids
    if not os.access(probe, os.W_OK | os.X_OK, effective_ids=effective):
        where = "" if probe == directory else f" (its nearest existing parent {probe!r})"
        raise PermissionError(errno.EACCES,
                              f"log_dir {text!r}{where} is not writable by this process")
    return directory


def prepare_log_dir(path: str | os.PathLike) -> str:
    """What a writer's constructor does with its directory: :func:`check_log_dir`, and (in
    the main thread, once per process) installing the exit-signal handlers."""
    directory = check_log_dir(path)
    _install_signal_handlers()
    return directory


class Run:
    """One run directory, with one event file per seed position (created on first write)."""

    def __init__(self, handle: int, log_dir: str, purge_step: int | None = None):
        self.handle = handle
        self.log_dir = log_dir
        self.purge_step = purge_step
        self._files: dict[int, _EventFile] = {}
        self._purged: set[int] = set()
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
            # A resumed run marks the restart in the first file of each of its directories
            # only: a later file (after close) must not hide the resumed points.
            purge = None if seed in self._purged else self.purge_step
            file = self._files[seed] = _EventFile(self.directory(seed), purge)
            self._purged.add(seed)
            # Points written again by the restart count as this run's: steps go on after them.
            for tag, step in file.last_steps.items():
                key = (seed, tag)
                self._last_step[key] = max(self._last_step.get(key, step), step)
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
        self._file(seed)  # first, so that a restarted run knows the steps written again
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
    _install_signal_handlers()
    with _lock:
        if purge_step is None:
            directory = _unique_dir(directory, avoid_existing)
        _opened_dirs.add(directory)
        handle = next(_next_handle)
        _runs[handle] = Run(handle, directory, purge_step)
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


# --------------------------------------------------------------------------------------------
# Signals that end the process without running ``atexit``.

EXIT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                     if hasattr(signal, name))
"""The signals after which callax writes everything handed over before the process ends."""
EXIT_FLUSH_TIMEOUT = 10.0
"""Seconds a signal handler waits at most for the writer thread before the process ends."""
MAIN_THREAD_GRACE = 0.5
"""Seconds the signal watcher gives the main thread to end the process itself."""

_signals_installed = False
_previous_handlers: dict[int, object] = {}


def _install_signal_handlers() -> None:
    """Install :func:`_on_exit_signal` for every signal of :data:`EXIT_SIGNALS` whose handler
    is Python's default or a Python function (kept, and called after the flush). Only the
    main thread may install handlers: elsewhere this does nothing (and is tried again at the
    next run opened in the main thread)."""
    global _signals_installed
    if _signals_installed or threading.current_thread() is not threading.main_thread():
        return
    _signals_installed = True
    for signum in EXIT_SIGNALS:
        try:
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN or previous is None:
                continue  # ignored on purpose, or a handler installed outside Python
            _previous_handlers[signum] = previous
            signal.signal(signum, _on_exit_signal)
        except (ValueError, OSError):  # pragma: no cover - an embedded interpreter
            _previous_handlers.pop(signum, None)
    if _previous_handlers:
        _start_signal_watcher()


def _start_signal_watcher() -> None:
    """Also act on the signals while the main thread runs no Python code.

    Python runs a signal handler in the main thread, between two bytecodes: a main thread
    waiting for a long jitted computation (a whole training run in one ``while_loop``)
    would run it only when the computation ends. Python also writes the number of every
    handled signal to its *wakeup fd*; a watcher thread reading it writes everything handed
    over at once and, if the signal's action is the default one, ends the process with
    that signal when the main thread has not done so within :data:`MAIN_THREAD_GRACE`.
    Used only if no one else (``asyncio``) has set the wakeup fd; if someone replaces it
    later, the handler in the main thread still does the work.
    """
    try:
        read_end, write_end = socket.socketpair()
        write_end.setblocking(False)
        previous = signal.set_wakeup_fd(write_end.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platform
        return
    if previous != -1:  # someone else's: leave it to them
        signal.set_wakeup_fd(previous)
        read_end.close()
        write_end.close()
        return
    _watcher_sockets.extend([read_end, write_end])  # kept open for the process's life
    threading.Thread(target=_watch_signals, args=(read_end,), name="callax-signals",
                     daemon=True).start()


_watcher_sockets: list[socket.socket] = []
_in_forked_child = False


def _after_fork_in_child() -> None:
    # A forked child (multiprocessing) shares the parent's wakeup socket: a signal to the
    # child must not reach the parent's watcher, so the child's end now writes to
    # /dev/null. Its runs are the parent's (no writer thread survives a fork): the child's
    # handler does not wait for them either.
    global _in_forked_child
    _in_forked_child = True
    if len(_watcher_sockets) == 2:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, _watcher_sockets[1].fileno())
        finally:
            os.close(devnull)


@atexit.register
def _stop_signal_watcher() -> None:
    # At exit the main thread runs Python code (the exit hook writing the runs), so the
    # handler there acts on a signal; the watcher's socket is closed cleanly.
    if len(_watcher_sockets) == 2 and not _in_forked_child:
        try:
            if threading.current_thread() is threading.main_thread():
                signal.set_wakeup_fd(-1)
                for sock in _watcher_sockets:
                    sock.close()
                _watcher_sockets.clear()
        except (ValueError, OSError):  # pragma: no cover
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _watch_signals(read_end: socket.socket) -> None:
    while True:
        try:
            data = read_end.recv(64)
        except OSError:  # pragma: no cover - closed at shutdown
            return
        if not data:  # pragma: no cover
            return
        for signum in data:
            # Only while callax's handler is the signal's handler (a user may replace it).
            if signum in _previous_handlers and signal.getsignal(signum) is _on_exit_signal:
                _flush_before_exit(EXIT_FLUSH_TIMEOUT)
                if _previous_handlers[signum] is signal.SIG_DFL:
                    # The main thread ends the process as soon as it runs Python code again
                    # (the flush is done); if it is stuck in a computation, end it here.
                    time.sleep(MAIN_THREAD_GRACE)
                    _die(signum)


def _die(signum: int) -> None:
    """End the process with ``signum``'s default action, from any thread (``signal.signal``
    works only in the main thread: the C library's ``signal`` restores the default)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.signal.restype = ctypes.c_void_p
        libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.signal(signum, None)  # SIG_DFL
        os.kill(os.getpid(), signum)
    finally:
        os._exit(128 + signum)  # only if the signal did not end the process


def _flush_before_exit(timeout: float) -> bool:
    """Write everything handed over; ``False`` if that took longer than ``timeout``.

    Every batch is flushed to the operating system as soon as it is written, so what is
    left is to wait for the writer thread. That waiting runs in a helper thread: a signal
    handler runs in the main thread between two bytecodes, possibly while the main thread
    itself holds the writer's lock (for microseconds; the timeout bounds the rare case).
    """
    done = threading.Event()

    def work() -> None:
        try:
            _wait_idle()
        finally:
            done.set()

    threading.Thread(target=work, name="callax-exit-flush", daemon=True).start()
    finished = done.wait(timeout)
    if not finished:
        print(f"callax: the event files were not all written within {timeout:g} s of the "
              "exit signal; points still queued may be lost", file=sys.stderr)
    return finished


def _on_exit_signal(signum: int, frame) -> None:
    if not _in_forked_child:
        _flush_before_exit(EXIT_FLUSH_TIMEOUT)
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    # The default action (end the process), with the signal's own exit status.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
