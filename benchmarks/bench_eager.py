"""Eager writes (a host loop that jits only the update, as sbx or SB3-style loops do): callax's
``add_scalar``/``add_dict`` against tensorboardX's ``SummaryWriter.add_scalar``, in one
process, interleaved rounds.

    python benchmarks/bench_eager.py [--rounds 7] [--calls 2000] [--scalars 4]

Per round, each contender makes ``--calls`` calls (new steps every time):

- ``tbx add_scalar``: tensorboardX, one scalar per call (its queue and writer thread);
- ``callax add_scalar``: one scalar per call;
- ``callax add_dict``: ``--scalars`` Python floats per call, reported per call and per
  scalar, against ``--scalars`` tensorboardX calls.

Values are Python floats; a ``jax.Array`` value adds its device-to-host copy (the same for
any logger). The summary prints the median time per call and the ratio of medians to
tensorboardX's ``add_scalar`` (goal ≤ 1.5x, must be ≤ 3x). The writers' threads run in the
same process, so their encoding and file writes count against each contender's own calls
only as far as they compete for the interpreter lock while the calls run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--scalars", type=int, default=4)
    args = parser.parse_args()

    import jax
    from tensorboardX import SummaryWriter

    import callax

    root = tempfile.mkdtemp(prefix="callax-bench-eager-")
    tbx = SummaryWriter(os.path.join(root, "tbx"))
    writer = callax.JITSummaryWriter(os.path.join(root, "callax"))
    keys = [f"k{i}" for i in range(args.scalars)]
    step = [0]

    def tbx_scalar():
        s = step[0]
        for i in range(args.calls):
            tbx.add_scalar("x", float(i), s + i)
        step[0] += args.calls

    def tbx_many():
        s = step[0]
        for i in range(args.calls):
            for key in keys:
                tbx.add_scalar(f"d/{key}", float(i), s + i)
        step[0] += args.calls

    def callax_scalar():
        s = step[0]
        for i in range(args.calls):
            writer.add_scalar("x", float(i), s + i)
        step[0] += args.calls

    def callax_dict():
        s = step[0]
        for i in range(args.calls):
            writer.add_dict("d", {key: float(i) for key in keys}, global_step=s + i)
        step[0] += args.calls

    cases = {"tbx add_scalar": tbx_scalar, f"tbx add_scalar x{args.scalars}": tbx_many,
             "callax add_scalar": callax_scalar, f"callax add_dict ({args.scalars})": callax_dict}
    for fn in cases.values():  # warm up: the first write of a layout checks and registers it
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            tbx.flush()
            callax.flush_all()
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / args.calls * 1e6)
    tbx.close()
    writer.close()
    med = {name: statistics.median(t) for name, t in times.items()}
    base = med["tbx add_scalar"]
    print(f"jax {jax.__version__}, {args.rounds} rounds x {args.calls} calls, "
          f"median µs per call (ratio to tbx add_scalar):")
    for name, value in med.items():
        print(f"  {name:26s} {value:8.1f} µs   {value / base:5.2f}x")
    per = med[f"callax add_dict ({args.scalars})"] / args.scalars
    print(f"  callax add_dict per scalar {per:8.1f} µs   {per / base:5.2f}x")


if __name__ == "__main__":
    main()
