"""What SIGKILL loses of the rows already handed to the host (the writer queue at the kill).

Runs ``tests/reliability_child.py loop`` (a real disk, no slow-down) ``--rounds`` times: the
child hands over a burst of 40 rows in batches of 4 from a jitted step and reports
``handed 40``; this script SIGKILLs it the moment it reads that line and counts the rows on
disk with callax's reader. Rows still on *device* are not part of this count (the child has
none left at that point); they are bounded by the buffer size (``flush_every``).

    python benchmarks/bench_sigkill.py --rounds 10
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


def one_round(directory: str) -> int:
    from callax._writer._read import read_scalars

    log_dir = os.path.join(directory, "run")
    out_path = os.path.join(directory, "out")
    with open(out_path, "w") as out:
        proc = subprocess.Popen([sys.executable, CHILD, "loop", log_dir], stdin=subprocess.PIPE,
                                stdout=out, stderr=subprocess.DEVNULL, text=True,
                                env=dict(os.environ, JAX_PLATFORMS="cpu"))
    proc.stdin.write("go\n")
    proc.stdin.flush()
    while True:
        with open(out_path) as out:
            if f"handed {BURST}" in out.read():
                break
        if proc.poll() is not None:
            raise RuntimeError("the child ended early")
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return BURST - len(read_scalars(log_dir).get("a", []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    lost = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as directory:
            lost.append(one_round(directory))
    print(f"rows handed over then lost to SIGKILL, {args.rounds} rounds: {lost}")
    print(f"median {statistics.median(lost)}, max {max(lost)} (batches of 4 rows)")


if __name__ == "__main__":
    main()
