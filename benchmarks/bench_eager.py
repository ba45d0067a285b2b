"""Eager writes (a host loop that jits only the update, as CleanRL, sbx or SB3-style loops
do): callax's ``add_scalar``/``add_dict`` against tensorboardX's ``SummaryWriter.add_scalar``,
in one process, interleaved rounds.

    python benchmarks/bench_eager.py [--rounds 7] [--calls 2000] [--scalars 4] [--writes 10000]
                                     [--records 1000] [--cases scalars,records]

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

``records`` (issue 26): a CleanRL/sbx-style loop whose jitted update merges the
``EventRecord`` of five SAC events (critic value and loss, policy loss, entropy
coefficient, timing) into the epoch's, as docs/events.md's "From a Python loop" shows, and
that writes and resets it eagerly after every update. Each write first records an
epoch-level event (``buffer_size``) eagerly and merges it in, as docs/foreign-loops.md's
CleanRL recipe does: 6 events, 7 slots. Per round ``--records`` writes; the update is not
timed, and each step of the write is timed alone: ``record(epoch_end)``, ``merge``,
``write`` (the host reduce and the hand-off to the writer thread), ``reset``; so are six
tensorboardX ``add_scalar`` calls of Python floats (the same values would add their
device-to-host copy). Prints the median and p90 over every write of every round, the
per-round medians' min-max, and the ratio of the ``write``'s median to tensorboardX's six
calls.

``in-jit``: where a Python loop should write a jitted update's loss. Per update (interleaved
rounds of ``--calls`` updates of a toy update over ``--leaves`` parameter arrays): the update
alone, the update returning its loss written eagerly (``add_scalar`` outside the jit), and
the update calling ``add_scalar`` inside the jit. A jitted program that holds a host call has
effects, and JAX dispatches any program with effects through its Python path, not its C++
fast path, at a cost that grows with the number of argument and result arrays.
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


def record_writes(root: str, rounds: int, writes: int) -> None:
    """The ``records`` case: eager ``EventRecord.write`` + ``reset`` per update, against
    tensorboardX writing six scalars (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    from tensorboardX import SummaryWriter

    import callax
    from callax.events import SACEvents, discover, record

    def train_step(x):
        SACEvents.critic_value(0, x)
        SACEvents.critic_value_loss(0, 2.0 * x)
        SACEvents.policy_loss(None, x + 1.0)
        SACEvents.entropy_coef(None, 0.5 * x)
        SACEvents.time_backprob(0.01 * x, 25.0)
        return x + 1.0

    def epoch_end(buffer_size):
        SACEvents.buffer_size(buffer_size)

    @jax.jit
    def update(x, epoch):
        x, rec = record(train_step)(x)
        return x, epoch.merge(rec)

    tbx = SummaryWriter(os.path.join(root, "tbx-records"))
    writer = callax.JITSummaryWriter(os.path.join(root, "callax-records"))
    x, epoch = jnp.float32(0.0), discover(train_step, jnp.float32(0.0))
    step = 0
    names = ("record(epoch_end)", "merge", "write", "reset", "write + reset", "all four",
             "tbx 6 scalars")
    times: dict[str, list[list[float]]] = {name: [] for name in names}
    for round_ in range(rounds + 1):  # round 0 warms up (the update, merge, reset compile)
        per = {name: [] for name in times}
        for _ in range(writes):
            step += 1
            x, epoch = update(x, epoch)
            jax.block_until_ready(epoch)  # the update is not timed
            t0 = time.perf_counter()
            _, end = record(epoch_end)(step)
            t1 = time.perf_counter()
            full = epoch.merge(end)
            t2 = time.perf_counter()
            full.write(writer, step)
            t3 = time.perf_counter()
            epoch = epoch.reset()
            t4 = time.perf_counter()
            values = [float(step + i) for i in range(6)]
            tbx_start = time.perf_counter()
            for tag, value in zip(CLEANRL_TAGS, values, strict=True):
                tbx.add_scalar(tag, value, step)
            tbx_end = time.perf_counter()
            for name, seconds in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t2,
                                             t4 - t0, tbx_end - tbx_start), strict=True):
                per[name].append(seconds * 1e3)
        writer.flush()
        tbx.flush()
        if round_:
            for name in times:
                times[name].append(per[name])
    writer.close()
    tbx.close()
    print(f"EventRecord.write (6 SAC events, 7 slots), {rounds} rounds x {writes} writes; "
          "ms per call: median, p90 over all writes [per-round medians min-max]:")
    flat = {name: sorted(t for r in rounds_ for t in r) for name, rounds_ in times.items()}
    for name, all_ in flat.items():
        medians = [statistics.median(r) for r in times[name]]
        p90 = all_[int(0.9 * (len(all_) - 1))]
        print(f"  {name:17s} median {statistics.median(all_):6.3f} ms  p90 {p90:6.3f} ms  "
              f"[{min(medians):.3f}-{max(medians):.3f}]")
    ratio = statistics.median(flat["write"]) / statistics.median(flat["tbx 6 scalars"])
    print(f"EventRecord.write / tensorboardX 6 x add_scalar = {ratio:.2f}x (medians); "
          f"write + reset: {statistics.median(flat['write + reset']):.3f} ms "
          "(issue 26: at most 2 ms per write)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--scalars", type=int, default=4)
    parser.add_argument("--writes", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=1000,
                        help="EventRecord writes per round (the records case)")
    parser.add_argument("--leaves", type=int, default=20,
                        help="parameter arrays of the in-jit case's update")
    parser.add_argument("--cases", default="scalars,records",
                        help="comma-separated: scalars (add_scalar/add_dict/6 tags), records, "
                             "in-jit")
    args = parser.parse_args()
    cases = set(args.cases.split(","))
    known = {"scalars", "records", "in-jit"}
    if not cases <= known:
        parser.error(f"unknown cases {sorted(cases - known)}")
    if "scalars" in cases:
        scalar_writes(args)
    if "records" in cases:
        record_writes(tempfile.mkdtemp(prefix="callax-bench-records-"), args.rounds,
                      args.records)
    if "in-jit" in cases:
        writes_in_jit(tempfile.mkdtemp(prefix="callax-bench-in-jit-"), args.rounds,
                      args.calls, args.leaves)


def writes_in_jit(root: str, rounds: int, calls: int, leaves: int) -> None:
    """The ``in-jit`` case: a Python loop's jitted update, its loss written eagerly after
    the call or by ``add_scalar`` inside the jitted update, against no writes."""
    import jax
    import jax.numpy as jnp

    import callax

    writer = callax.JITSummaryWriter(os.path.join(root, "in-jit"))
    params = [jnp.full(64, float(i)) for i in range(leaves)]

    def update(params):
        new = [p * 0.99 + 0.01 for p in params]
        return new, sum(jnp.mean(p) for p in new)

    def update_writing(params, step):
        new, loss = update(params)
        writer.add_scalar("inside/loss", loss, step)
        return new, loss

    plain, inside = jax.jit(update), jax.jit(update_writing)
    step = 0

    def no_write():
        return plain(params)

    def eager_write():
        nonlocal step
        step += 1
        new, loss = plain(params)
        writer.add_scalar("eager/loss", loss, step)  # the device-to-host copy included
        return new

    def write_inside():
        nonlocal step
        step += 1
        return inside(params, step)

    arms = {"no write": no_write, "eager add_scalar": eager_write,
            "add_scalar inside jit": write_inside}
    for fn in arms.values():  # compile
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(rounds):
        for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
            fn = arms[name]
            start = time.perf_counter()
            for _ in range(calls):
                jax.block_until_ready(fn())
            times[name].append((time.perf_counter() - start) / calls * 1e3)
    writer.close()
    base = statistics.median(times["no write"])
    print(f"in-jit ({leaves} parameter arrays, {calls} updates x {rounds} rounds):")
    for name, ms in times.items():
        print(f"  {name:22s} {statistics.median(ms):.3f} ms/update "
              f"[{min(ms):.3f}-{max(ms):.3f}] | {statistics.median(ms) / base:.2f}x no write")


def scalar_writes(args: argparse.Namespace) -> None:
    """The ``scalars`` cases: add_scalar, add_dict and the 6-tag loop."""
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
