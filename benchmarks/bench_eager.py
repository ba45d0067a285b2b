"""Eager writes (a host loop that jits only the update, as CleanRL, sbx or SB3-style loops
do): callax's ``add_scalar``/``add_dict`` against tensorboardX's ``SummaryWriter.add_scalar``,
in one process, interleaved rounds.

    python benchmarks/bench_eager.py [--rounds 7] [--calls 2000] [--scalars 4] [--writes 10000]

Per round, each contender makes ``--calls`` calls (new steps every time):

- ``tbx add_scalar``: tensorboardX, one scalar per call (its queue and writer thread);
- ``callax add_scalar``: one scalar per call;
- ``callax add_dict``: ``--scalars`` Python floats per call, reported per call and per
  scalar, against ``--scalars`` tensorboardX calls;
- ``6 tags``: ``--writes`` ``add_scalar`` calls cycling over CleanRL's six tags (each call a
  different tag from the one before, a new step every six calls), tensorboardX and callax.

Values are Python floats; a ``jax.Array`` value adds its device-to-host copy (the same for
any logger). The summary prints the median time per call (min-max over rounds) and the
ratio of medians to tensorboardX's ``add_scalar`` (6 tags: to tensorboardX's 6-tag loop;
goal ≤ 1.0x, must be ≤ 1.5x). Each 6-tag round ends once the writer has written every
point (``flush``), so a writer thread that falls behind shows in its time.

``writer thread µs per row`` is the writer thread's own cost: the time it takes, in the
calling thread with nothing else running, to encode and write 10,000 queued 6-tag rows
(what the thread does with them). Below the calling loop's cost per call, the queue never
fills and a call never waits for the thread.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

CLEANRL_TAGS = ("charts/episodic_return", "charts/episodic_length", "losses/qf1_values",
                "losses/qf1_loss", "losses/actor_loss", "charts/SPS")


def writer_thread_cost(root: str, rows: int) -> float:
    """µs per row of the writer thread's job for ``rows`` eager 6-tag rows."""
    import numpy as np

    import callax
    from callax._writer import _registry

    writer = callax.JITSummaryWriter(os.path.join(root, "thread"))
    handle = int(writer.handle)
    run = _registry.get_run(handle)
    now = time.time()
    prepared = [((CLEANRL_TAGS[i % 6],), i // 6, np.array([float(i)], np.float32), now)
                for i in range(rows)]
    job = _registry.row_job(handle)
    start = time.perf_counter()
    job(prepared)
    elapsed = time.perf_counter() - start
    run.close()
    return elapsed / rows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--scalars", type=int, default=4)
    parser.add_argument("--writes", type=int, default=10_000)
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

    def six_tags(add_scalar, flush):
        s = step[0]
        for i in range(args.writes):
            add_scalar(CLEANRL_TAGS[i % 6], float(i), s + i // 6)
        flush()
        step[0] += args.writes

    cases = {"tbx add_scalar": tbx_scalar, f"tbx add_scalar x{args.scalars}": tbx_many,
             "callax add_scalar": callax_scalar, f"callax add_dict ({args.scalars})": callax_dict,
             "tbx 6 tags": functools.partial(six_tags, tbx.add_scalar, tbx.flush),
             "callax 6 tags": functools.partial(six_tags, writer.add_scalar, writer.flush)}
    per_case = {name: args.writes if "6 tags" in name else args.calls for name in cases}
    for fn in cases.values():  # warm up: the first write of a layout checks and registers it
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            tbx.flush()
            callax.flush_all()
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / per_case[name] * 1e6)
    tbx.close()
    writer.close()
    thread = [writer_thread_cost(root, args.writes) for _ in range(3)]
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"jax {jax.__version__}, {args.rounds} rounds; median µs per call [min-max] "
          f"(ratio of medians):")
    for name, value in med.items():
        base = med["tbx 6 tags" if "6 tags" in name else "tbx add_scalar"]
        print(f"  {name:26s} {value:8.1f} µs [{min(times[name]):.1f}-{max(times[name]):.1f}]"
              f"   {value / base:5.2f}x")
    per = med[f"callax add_dict ({args.scalars})"] / args.scalars
    print(f"  callax add_dict per scalar {per:8.1f} µs   {per / med['tbx add_scalar']:5.2f}x")
    print(f"  writer thread µs per row   {statistics.median(thread):8.1f} µs "
          f"[{min(thread):.1f}-{max(thread):.1f}] (6 tags, {args.writes} rows)")
    print(f"6 tags: callax / tensorboardX = {med['callax 6 tags'] / med['tbx 6 tags']:.2f}x "
          "(goal <= 1.0x, must <= 1.5x)")


if __name__ == "__main__":
    main()
