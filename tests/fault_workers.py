"""Worker functions for the forked-worker tests of tests/test_faults.py (an importable
module: the forkserver start method imports it in the worker)."""

from __future__ import annotations

import os

import callax

WRITER: callax.JITSummaryWriter | None = None
"""A writer the parent created before forking (used when a worker gets no log_dir)."""


def write_points(log_dir: str | None, tag: str, n: int) -> int:
    """Write ``n`` eager points ``(i, i)`` of ``tag`` to a writer of its own (``log_dir``)
    or to the parent's :data:`WRITER`, and return without closing it."""
    writer = WRITER if log_dir is None else callax.JITSummaryWriter(log_dir)
    assert writer is not None
    for i in range(n):
        writer.add_scalar(tag, float(i), i)
    return os.getpid()
