"""Cost of logging with callax: with and without logging in one process, interleaved rounds.

    python benchmarks/bench_logging.py [--rounds 15] [--processes 3] [--quick]
                                       [--cores 1|all|both]
                                       [--cases ppo,ppo-nolog,ppo-stop,ffi,ffi-tiny,tiny,
                                                vmap8,writer,writers,writers8,sweep,
                                                ppo-parts]

Prints env-steps/s with and without a TensorBoardCallback for:

- ``ppo``: PPO-like CartPole loop jitted whole, 4 envs × 128 steps/iteration, 4 epochs ×
  4 minibatches, ~10 scalars per iteration (target ≤ 1.03×); ``ppo-nolog`` is the same
  against a baseline that discards its training log (XLA then skips computing it);
  ``ppo-stop`` logs on both sides and adds, on one, the read of the Ctrl-C stop flag once
  per iteration that callax's trainers and ``StopOnInterrupt`` make (its cost alone);
  ``ffi`` (and ``ffi-tiny``, the ``tiny`` loop) logs on both sides, host calls lowered to
  callax's FFI target (cacheable) against JAX's ``emit_python_callback`` target;
- ``tiny``: the same with 1 env × 16 steps/iteration (target ≤ 1.5×);
- ``vmap8``: the ``ppo`` loop vmapped over 8 seeds (target ≤ 1.05×, one host transfer per
  write for all seeds);
- ``writers`` (and ``writers8``, vmapped over 8 seeds): the ``ppo`` loop with no
  logging, TensorBoard alone, and TensorBoard + JSON lines + W&B offline
  (``writers=("tensorboard", "jsonl", "wandb")``, needs ``callax[wandb]``), in interleaved
  rounds of one process: ratios all three / TensorBoard and all three / no logging, and
  how long closing the run takes after the training returned (the writer thread's
  remaining work: W&B starts one run per seed and finishes it at close). Not in the
  default set;
- ``sweep``: the ``ppo`` loop as a ``callax.Sweep`` of 4 configurations x 4 seeds against
  16 plain vmapped seeds, both logging (target ≤ 1.05×: a sweep logs at the cost of its
  seeds). Not in the default set;
- ``ppo-parts``: where the ``ppo`` case's cost goes, in interleaved rounds of one process:
  the default callback, the same without SB3's episode window, the same without
  ``on_step`` (``on_iteration`` and the flushes only), and PureJaxRL's ``LogWrapper`` state
  instead of callax, each against no logging. Not in the default set;
- the host writer's cost per scalar against tensorboardX's ``SummaryWriter.add_scalar``
  (target ≤ 3 µs).

``--cores 1`` pins the process to one core before JAX starts. XLA:CPU then runs every
program's operations in order on one thread. With more cores it runs independent operations
of a loop body concurrently on a thread pool; for loops of many tiny operations (this one)
the hand-offs cost more than they gain, and their cost depends on how busy the other cores
are. On a shared 2-core machine that makes even two *baselines* of equal work differ by up
to ±10–25 % from one compilation to another, which hides a 3 % effect; pinned, repeated
runs agree within a few percent. ``--cores both`` (the default) runs both.

Every measurement runs in ``--processes`` fresh processes per core setting: a compiled
program's speed also varies by a few percent from one compilation (process) to the next,
which interleaved rounds inside one process cannot average out. The summary gives, per case,
the median over processes of each process's ratio of medians.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys

CASES = ("ppo", "ppo-nolog", "ppo-stop", "ffi", "ffi-tiny", "tiny", "vmap8", "writer")
EXTRA_CASES = ("writers", "writers8",  # only when asked for (W&B: the callax[wandb] extra)
               "sweep", "ppo-parts")


def _cases(text: str) -> list[str]:
    cases = text.split(",")
    unknown = sorted(set(cases) - set(CASES) - set(EXTRA_CASES))
    if unknown:
        choices = ",".join(CASES)
        raise argparse.ArgumentTypeError(f"unknown case(s) {unknown}; choose from {choices}")
    return cases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per process")
    parser.add_argument("--processes", type=int, default=3,
                        help="fresh processes per core setting (each compiles anew)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    parser.add_argument("--cores", choices=("1", "all", "both"), default="both")
    parser.add_argument("--cases", type=_cases, default=list(CASES),
                        help="comma-separated subset of: " + ",".join(CASES))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.cores == "1":
            # Before JAX starts: XLA sizes its thread pool from the affinity mask.
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import _logging_cases

        _logging_cases.run(rounds=args.rounds, quick=args.quick, cores=args.cores,
                           cases=args.cases)
        return
    results = collections.defaultdict(list)
    for cores in ("1", "all") if args.cores == "both" else (args.cores,):
        for _ in range(args.processes):
            command = [sys.executable, os.path.abspath(__file__), "--child", "--cores", cores,
                       "--rounds", str(args.rounds), "--cases", ",".join(args.cases)]
            # stdout is parsed for the summary; stderr (warnings, errors) goes to the terminal.
            child = subprocess.run(command + (["--quick"] if args.quick else []), check=True,
                                   stdout=subprocess.PIPE, text=True)
            for line in child.stdout.splitlines():
                if line.startswith("RESULT "):
                    _, case, ratio = line.split()
                    results[(cores, case)].append(float(ratio))
                else:
                    print(line, flush=True)
    print("\nSummary: ratio of medians (logging / no logging) per process; median of processes")
    width = max((len(case) for _, case in results), default=9)
    for (cores, case), ratios in results.items():
        where = "1 core (pinned)" if cores == "1" else "all cores"
        print(f"  {case:{width}s} {where:16s} median {statistics.median(ratios):.3f}"
              f"  (processes: {', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
