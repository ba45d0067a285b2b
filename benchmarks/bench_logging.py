"""Cost of logging with callax, measured in one process with interleaved rounds.

    python benchmarks/bench_logging.py [--rounds 7] [--quick]

Prints env-steps/s with and without a TensorBoardCallback for:

- ``ppo``: PPO-like CartPole loop jitted whole, 4 envs × 128 steps/iteration, 4 epochs ×
  4 minibatches, ~10 scalars per iteration (target ≤ 1.03×);
- ``tiny``: the same with 1 env × 16 steps/iteration (target ≤ 1.5×);
- ``vmap8``: the ``ppo`` loop vmapped over 8 seeds (target ≤ 1.05×, one host transfer per
  write for all seeds);
- the host writer's cost per scalar against tensorboardX's ``SummaryWriter.add_scalar``
  (target ≤ 3 µs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from _ppo_like import make_train  # noqa: E402

import callax  # noqa: E402
from callax._writer import _host as host  # noqa: E402


def timed(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    jax.effects_barrier()
    return time.perf_counter() - start


def compare(name, n_envs, n_steps, n_iters, rounds, seeds=None, logdir=None):
    def callback():  # a fresh run each time; same pytree structure, so no recompilation
        return callax.TensorBoardCallback(name=name, log_dir=logdir)

    base = make_train(n_envs, n_steps, n_iters)
    logged = make_train(n_envs, n_steps, n_iters, logging=True)
    if seeds:
        base = jax.jit(jax.vmap(base, in_axes=(0, None)))
        logged = jax.jit(jax.vmap(logged, in_axes=(0, None)))
        key = jax.random.split(jax.random.key(0), seeds)
    else:
        key = jax.random.key(0)
    timed(base, key, callback()), timed(logged, key, callback())  # compile
    calls = []
    original = host.write
    host.write = lambda *a: (calls.append(len(a[2])), original(*a))
    try:
        times = {"base": [], "logged": []}
        for r in range(rounds):
            order = ("base", "logged") if r % 2 == 0 else ("logged", "base")
            for which in order:
                times[which].append(timed(base if which == "base" else logged, key, callback()))
    finally:
        host.write = original
    callax.flush_all()
    steps = n_envs * n_steps * n_iters * (seeds or 1)
    ratios = [b / a for a, b in zip(times["base"], times["logged"])]
    med_base, med_logged = statistics.median(times["base"]), statistics.median(times["logged"])
    print(f"{name:6s} no logging {steps / med_base:11,.0f} steps/s | logging "
          f"{steps / med_logged:11,.0f} steps/s | ratio of medians {med_logged / med_base:.3f}"
          f" | median per-round ratio {statistics.median(ratios):.3f}"
          f" | host calls per run {len(calls) // rounds} for {seeds or 1} seed(s)")
    return med_logged / med_base


def writer_cost(n_rows=2000, n_tags=10):
    from tensorboardX import SummaryWriter

    tags = tuple(f"train/metric_{i}" for i in range(n_tags))
    values = np.random.default_rng(0).normal(size=(1, n_rows, n_tags)).astype(np.float32)
    steps = np.arange(n_rows, dtype=np.int64)[None]
    valid = np.ones_like(values, dtype=bool)
    with tempfile.TemporaryDirectory() as d:
        warm = host.open_run(os.path.join(d, "warm-up"))
        host.write(warm, tags, np.array([-1]), steps[:, :10], values[:, :10], valid[:, :10])
        host.flush(warm)
        handle = host.open_run(os.path.join(d, "callax"))
        start = time.perf_counter()
        host.write(handle, tags, np.array([-1]), steps, values, valid)
        host.flush(handle)
        ours = (time.perf_counter() - start) / (n_rows * n_tags) * 1e6
        writer = SummaryWriter(os.path.join(d, "tbx"))
        start = time.perf_counter()
        for row in range(n_rows // 4):
            for column, tag in enumerate(tags):
                writer.add_scalar(tag, float(values[0, row, column]), row)
        writer.flush()
        theirs = (time.perf_counter() - start) / (n_rows // 4 * n_tags) * 1e6
        writer.close()
    print(f"writer  callax {ours:.2f} µs/scalar (encode + write + flush) | "
          f"tensorboardX add_scalar {theirs:.2f} µs/scalar")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    args = parser.parse_args(argv)
    scale = 0.1 if args.quick else 1.0
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores, "
          f"{args.rounds} interleaved rounds")
    with tempfile.TemporaryDirectory() as logdir:
        compare("ppo", 4, 128, max(int(60 * scale), 2), args.rounds, logdir=logdir)
        compare("tiny", 1, 16, max(int(2000 * scale), 2), args.rounds, logdir=logdir)
        compare("vmap8", 4, 128, max(int(20 * scale), 2), args.rounds, seeds=8, logdir=logdir)
    writer_cost()


if __name__ == "__main__":
    main()
