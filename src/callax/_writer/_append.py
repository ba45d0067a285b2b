"""Appending to a file whole or not at all (event files, JSON lines)."""

from __future__ import annotations

import contextlib
import os

__all__ = ["append_whole"]


def append_whole(file, data: bytes) -> None:
    """Append ``data`` to an unbuffered binary ``file`` whole or not at all: on an error (a
    full disk) the file is cut back to its size before, so a reader never meets a broken
    record or line between good ones."""
    size = os.fstat(file.fileno()).st_size
    view = memoryview(data)
    try:
        while view:
            written = file.write(view)
            view = view[written or 0:]
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(file.fileno(), size)
        raise
