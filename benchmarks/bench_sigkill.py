"""What SIGKILL loses of the rows already handed to the host (the writer queue at the kill).

Runs ``tests/reliability_child.py`` (a real disk, no slow-down) ``--rounds`` times and
SIGKILLs the child the moment it reports ``handed <n>``, then counts the rows on disk with
callax's reader:

- ``buffered`` (default): the child hands over a burst of 40 rows in batches of 4 from a
  jitted step (a device buffer, as TensorBoardCallback does);
- ``--per-step N``: one jitted ``scan`` of ``N`` steps writing one row per step (one host
  call per step, no device buffer): the worst case, bounded by the writer queue
  (``callax._writer.MAX_PENDING_ROWS`` rows wait at most).

Rows still on *device* are not part of this count (the child has none left at that point);
they are bounded by the buffer size (``flush_every``).

    python benchmarks/bench_sigkill.py --rounds 10 [--per-step 200000]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "..", "tests", "reliability_child.py")
BURST = 40


def one_round(directory: str, per_step: int = 0) -> int:
    from callax._writer._read import read_scalars

    log_dir = os.path.join(directory, "run")
    out_path = os.path.join(directory, "out")
    with open(out_path, "w") as out:
        mode = ["perstep", log_dir, str(per_step)] if per_step else ["loop", log_dir]
        proc = subprocess.Popen([sys.executable, CHILD, *mode], stdin=subprocess.PIPE,
                                stdout=out, stderr=subprocess.DEVNULL, text=True,
                                env=dict(os.environ, JAX_PLATFORMS="cpu"))
    proc.stdin.write("go\n")
    proc.stdin.flush()
    while True:
        with open(out_path) as out:
            if f"handed {per_step or BURST}" in out.read():
                break
        if proc.poll() is not None:
            raise RuntimeError("the child ended early")
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return (per_step or BURST) - len(read_scalars(log_dir).get("a", []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-step", type=int, default=0, metavar="N")
    args = parser.parse_args()
    lost = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as directory:
            lost.append(one_round(directory, args.per_step))
    handed = args.per_step or BURST
    how = f"{handed} per-step rows" if args.per_step else f"{BURST} rows in batches of 4"
    print(f"rows handed over then lost to SIGKILL, {args.rounds} rounds of {how}: {lost}")
    print(f"median {statistics.median(lost)}, max {max(lost)} "
          f"({100 * max(lost) / handed:.1f}% of {handed})")


if __name__ == "__main__":
    main()
