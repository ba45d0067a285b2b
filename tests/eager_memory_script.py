"""Child of tests/test_eager.py: RSS before and after many eager writes and many runs.

    python tests/eager_memory_script.py <log_dir> <writes> <runs>

Prints ``rss_start <bytes>``, ``rss_end <bytes>`` and the points read back.
"""

import gc
import os
import sys

import callax
from callax._writer._read import read_scalars


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


log_dir, writes, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
writer = callax.JITSummaryWriter(os.path.join(log_dir, "main"))
warm = callax.JITSummaryWriter(os.path.join(log_dir, "warm"))
for step in range(3):  # the first write of a layout registers it
    warm.add_scalar("x", 1.0, step)
    warm.add_dict("d", {"a": 1.0, "b": 2.0}, global_step=step)
warm.close()
gc.collect()
start = rss()
for step in range(writes):
    if step % 2:
        writer.add_scalar("x", float(step), step)
    else:
        writer.add_dict("d", {"a": float(step), "b": 2.0}, global_step=step)
writer.close()
for i in range(runs):
    run = callax.JITSummaryWriter(os.path.join(log_dir, "sweep", f"r{i}"))
    for step in range(3):
        run.add_scalar("loss", float(i + step), step)
    run.close()
gc.collect()
print("rss_start", start)
print("rss_end", rss())
main = read_scalars(os.path.join(log_dir, "main"))
print("points", len(main["x"]), len(main["d/a"]),
      sum(len(read_scalars(os.path.join(log_dir, "sweep", f"r{i}"))["loss"])
          for i in range(runs)))
