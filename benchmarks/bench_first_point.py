"""Time to the first point, cold and warm: ``callax train`` with JAX's persistent compilation
cache empty (cold: it compiles) and filled by the run before (warm: it loads the program),
the warm run with **another step budget** (the budget is an argument of the program).

    python benchmarks/bench_first_point.py [--rounds 3] [--algo sac] [--env pendulum]
                                           [--budgets 2048 4096]

Each round runs the CLI twice in fresh processes (interleaved: cold, warm): with a new empty
cache directory and the first budget, then with that directory again and the second budget.
Measured from the process start: the first scalar on disk under the run (its event files or
JSON lines polled every 50 ms with callax's own reader), and the process's end. The summary
prints medians and the warm/cold ratios, plus what each run printed as its compile (or load)
time.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


def _first_point(run_dir: str) -> bool:
    from callax._writer._read import is_run_file, read_run

    for directory, _, files in os.walk(run_dir):
        if any(is_run_file(f) for f in files) and read_run(directory):
            return True
    return False


def _run(argv: list[str], run_dir: str) -> tuple[float, float, float]:
    """``(first point, end, printed compile or load time)`` in seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    first = None
    while proc.poll() is None:
        if first is None and _first_point(run_dir):
            first = time.perf_counter() - start
        time.sleep(0.05)
    end = time.perf_counter() - start
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"callax train failed ({proc.returncode}):\n{err[-3000:]}")
    if first is None:  # written between the last poll and the end
        first = end
    match = re.search(r"callax: (?:compiled|loaded from the compilation cache) in ([\d.]+) s",
                      err)
    return first, end, float(match[1]) if match else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--algo", default="sac")
    parser.add_argument("--env", default="pendulum")
    parser.add_argument("--budgets", type=int, nargs=2, default=None, metavar=("COLD", "WARM"),
                        help="--total-timesteps of the cold and of the warm run (default: "
                        "the CLI's default for both)")
    args = parser.parse_args()

    results: dict[str, list[tuple[float, float, float]]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as root:
        for r in range(args.rounds):
            cache = os.path.join(root, f"cache_{r}")
            for kind in ("cold", "warm"):
                name = f"{kind}_{r}"
                argv = [sys.executable, "-m", "callax", "train", "--algo", args.algo,
                        "--env", args.env, "--no-progress", "--logdir", root, "--name", name,
                        "--compilation-cache", cache]
                if args.budgets:
                    budget = args.budgets[0 if kind == "cold" else 1]
                    argv += ["--total-timesteps", str(budget)]
                first, end, compile_s = _run(argv, os.path.join(root, name))
                results[kind].append((first, end, compile_s))
                print(f"round {r} {kind}: first point {first:.1f} s, end {end:.1f} s, "
                      f"compile/load {compile_s:.1f} s", flush=True)

    def median(kind: str, i: int) -> float:
        return statistics.median(v[i] for v in results[kind])

    print(f"\ncallax train --algo {args.algo} --env {args.env}"
          + (f", budgets cold {args.budgets[0]} / warm {args.budgets[1]}" if args.budgets
             else "")
          + f", {args.rounds} rounds, medians:")
    print(f"{'':6} {'first point':>12} {'end':>8} {'compile/load':>13}")
    for kind in ("cold", "warm"):
        print(f"{kind:6} {median(kind, 0):11.1f}s {median(kind, 1):7.1f}s "
              f"{median(kind, 2):12.1f}s")
    print(f"warm/cold: first point {median('warm', 0) / median('cold', 0):.2f}x, "
          f"end {median('warm', 1) / median('cold', 1):.2f}x, "
          f"compile/load {median('warm', 2) / median('cold', 2):.2f}x")


if __name__ == "__main__":
    main()
