"""A child process for tests/test_faults.py: ``python fault_child.py hang LOG_DIR``.

``hang``: every event-file write hangs (sleeps 1000 s); the child writes a few eager points
and exits normally: the exit hook must give up waiting for the writer thread after
``EXIT_FLUSH_TIMEOUT`` seconds.
"""

from __future__ import annotations

import sys
import time

import callax
from callax._writer._event_file import EventFile

mode, log_dir = sys.argv[1], sys.argv[2]
assert mode == "hang", mode


def hanging_write(self, data):
    time.sleep(1000)


EventFile.write = hanging_write
writer = callax.JITSummaryWriter(log_dir)
for i in range(10):
    writer.add_scalar("x", float(i), i)
print("written", flush=True)
