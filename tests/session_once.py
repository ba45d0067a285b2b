"""Run an expensive, JSON-valued fixture body once per pytest session, not once per xdist
worker: a module-scoped fixture is set up again in every worker that runs one of its tests
(test_scale's and test_order's 4-device subprocesses were run by both workers)."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import pytest


def once_per_session(tmp_path_factory: pytest.TempPathFactory, name: str,
                     produce: Callable[[str], Any]) -> Any:
    """``produce(root)``'s JSON result, computed by the first worker that asks for it.

    ``root`` is an empty directory for ``produce``'s files. Under xdist the workers share the
    parent of their base temporary directories: the first one holds a lock while it runs
    ``produce`` and stores the result there; the others wait for the lock and read it back
    (a failed ``produce`` stores nothing, so the next worker runs it again and fails too).
    Without xdist it is ``produce`` on a fresh directory (its result through JSON too).
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return json.loads(json.dumps(produce(str(tmp_path_factory.mktemp(name)))))
    shared = tmp_path_factory.getbasetemp().parent / f"session_once_{name}"
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        done = shared / "result.json"
        if done.exists():
            return json.loads(done.read_text())
        shared.mkdir(exist_ok=True)
        result = produce(tempfile.mkdtemp(dir=shared))  # a fresh one if an attempt failed
        done.write_text(json.dumps(result))
        return result
