"""TensorBoard event files: one per run directory and seed, exclusively named, appended and
flushed after every batch; and the records that begin a restarted (resumed) run."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import time

import numpy as np

from ._append import append_whole
from ._encode import encode_file_version, encode_scalar_rows, encode_session_start

__all__ = ["EventFile", "event_file_name"]

_file_counter = itertools.count()


def event_file_name() -> str:
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
    from tensorboardX.proto.event_pb2 import Event  # pyright: ignore[reportAttributeAccessIssue]

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


class EventFile:
    """One event file, created exclusively, written without a buffer: every :meth:`write`
    reaches the operating system whole or not at all (a failed write is cut back off the
    file, so a disk that fills up never leaves a broken record between good ones)."""

    def __init__(self, directory: str, purge_step: int | None = None):
        self.last_steps: dict[str, int] = {}
        header = encode_file_version()
        if purge_step is not None:
            restart, self.last_steps = _restart_records(directory, purge_step)
            header += restart
        os.makedirs(directory, exist_ok=True)
        while True:
            self.path = os.path.join(directory, event_file_name())
            try:
                # Exclusive: never append to a file another writer made (a reused pid).
                self._file = open(self.path, "xb", buffering=0)  # noqa: SIM115 - closed by close()
                break
            except FileExistsError:
                continue
        try:
            self.write(header)
        except OSError:
            self._file.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # a file without its header is no event file
            raise

    def write(self, data: bytes) -> None:
        """Append ``data``; on an error (a full disk) cut the file back to where it was."""
        append_whole(self._file, data)

    def deleted(self) -> bool:
        """Whether the file was removed from its directory (or the directory itself)."""
        try:
            return os.fstat(self._file.fileno()).st_nlink == 0
        except OSError:  # pragma: no cover - a file closed under us
            return True

    def flush(self) -> None:
        """Nothing to do: every write goes to the operating system at once."""

    def close(self) -> None:
        self._file.close()
