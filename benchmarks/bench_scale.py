"""What logging costs in each multi-device layout, in one process on 4 host devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/bench_scale.py \\
        [--rounds 11] [--iterations 64] [--flush-every 8] [--width 128]

One small training program (per seed: ``ENVS`` envs, a ``lax.scan`` of ``STEPS`` env steps
with synthetic rewards, then a few ``width x width`` matmuls as the "learning" work) runs 8
seeds on 4 devices in four layouts, each with and without [`callax.TensorBoardCallback`][]:

- ``jit``: ``jax.jit(jax.vmap(...))`` of a batch sharded over the mesh (``NamedSharding``);
- ``pmap``: ``jax.pmap(jax.vmap(...))``, 2 seeds per device;
- ``shard_map``: ``jax.jit(jax.shard_map(jax.vmap(...)))``, 2 seeds per device;
- ``reduce``: data-parallel training of one agent, ``jax.pmap`` with ``reduce="mean"``
  (one run; every device computes the same here).

Every variant is compiled first, then all are timed in interleaved rounds (a fresh run
directory each round: the callback is an argument, nothing recompiles). Prints per layout:

- host calls per flush that carry rows (counted on the host), and the calls of the final
  ``sync`` flush at the end of training (one per device that makes host calls);
- the collectives logging adds to the compiled program (``all-gather``, ``all-reduce``, ...
  in the optimized HLO, with minus without the callback): the gathers to one device. Most
  sit inside the flush's conditional and run only when a flush happens; ``reduce`` also has
  one scalar all-reduce per iteration deciding whether any device flushes;
- median wall time per run without the callback, and the ratios to it of the run with the
  callback (``flush_every``) and with one flush only (``flush_every=iterations``: the step
  state's updates, one transfer and the final sync);
- the time one more flush adds: ``(every - once) / (iterations - 1)`` with ``every`` a run
  with ``flush_every=1`` (a host transfer every iteration), the median over rounds of the
  per-round differences.

The program is small (a few milliseconds per iteration for all 8 seeds: ``without ms`` /
``iterations``), so the ratios are an upper bound of what logging costs in real training;
the time per flush is the number to compare with your iterations. On a shared machine the
time columns are noisy: run several times and compare the medians.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

import callax
from callax import IterationContext, ResetContext, StepContext, TrainingContext, _writer as host

DEVICES, PER_DEVICE, ENVS, STEPS, MATMULS = 4, 2, 8, 32, 4
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute",
               "reduce-scatter")


def train(seed, cb, iterations: int, width: int):
    """One seed's training: returns a scalar so nothing is dead code."""
    key = jax.random.fold_in(jax.random.key(0), seed.astype(jnp.int32))
    weights = jax.random.normal(key, (width, width)) / width
    if cb is not None:
        state = cb.reset(ResetContext(), key=key)
        step_state = jax.vmap(lambda _: cb.step_reset(ResetContext(), key=key))(
            jnp.arange(ENVS))
        state = cb.on_training_start(
            TrainingContext(state, step_state, None, None, iterations * STEPS * ENVS, 0, None),
            key=key)

    def iteration(carry, i):
        weights, state, step_state = carry
        k = jax.random.fold_in(key, i)
        rewards = jax.random.uniform(k, (STEPS, ENVS)) + seed
        dones = jax.random.uniform(jax.random.fold_in(k, 1), (STEPS, ENVS)) < 0.1
        if cb is not None:
            def step(s, xs):
                ctx = StepContext(s, None, None, xs[1], xs[0])
                return jax.vmap(lambda c: cb.on_step(c, key=key))(ctx), None

            step_state, _ = jax.lax.scan(step, step_state, (rewards, dones))
        for _ in range(MATMULS):  # the "learning" work
            weights = jnp.tanh(weights @ weights + rewards.mean())
        loss = jnp.mean(weights ** 2)
        if cb is not None:
            ctx = IterationContext(state, step_state, None, None, i + 1, None,
                                   {"loss": loss}, {})
            state = cb.on_iteration(ctx, key=key)
        return (weights, state, step_state), loss

    carry = (weights, state, step_state) if cb is not None else (weights, None, None)
    (weights, state, step_state), losses = jax.lax.scan(iteration, carry,
                                                        jnp.arange(iterations))
    if cb is not None:
        cb.on_training_end(TrainingContext(state, step_state, None, None,
                                           iterations * STEPS * ENVS, iterations, None),
                           key=key)
    return jnp.sum(losses) + jnp.sum(weights)


def layouts(iterations: int, width: int):
    """``{name: (build(with_callback) -> fn(seeds, cb), seeds, options)}``."""
    mesh = jax.make_mesh((DEVICES,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    seeds = jnp.arange(DEVICES * PER_DEVICE, dtype=jnp.float32)
    sharded = jax.device_put(seeds, NamedSharding(mesh, P("d")))
    by_device = seeds.reshape(DEVICES, PER_DEVICE)

    def seeded(with_cb):
        return lambda s, cb: jax.vmap(lambda x: train(x, cb if with_cb else None,
                                                      iterations, width))(s)

    return {
        "jit": (lambda w: jax.jit(seeded(w)), sharded, {}),
        "pmap": (lambda w: jax.pmap(seeded(w), axis_name="d", in_axes=(0, None)),
                 by_device, {}),
        "shard_map": (lambda w: jax.jit(jax.shard_map(seeded(w), mesh=mesh,
                                                      in_specs=(P("d"), P()),
                                                      out_specs=P("d"))), sharded, {}),
        "reduce": (lambda w: jax.pmap(
            lambda s, cb: train(s, cb if w else None, iterations, width), axis_name="d",
            in_axes=(0, None)), jnp.zeros((DEVICES,)), {"reduce": "mean"}),
    }


def count_collectives(fn, *args) -> int:
    try:
        text = fn.lower(*args).compile().as_text()
    except (AttributeError, TypeError):  # jax.pmap objects lower too; be safe anyway
        return -1
    return sum(len(re.findall(rf"\b{name}(-start)?\(", text)) for name in COLLECTIVES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11, help="interleaved timed rounds")
    parser.add_argument("--iterations", type=int, default=64, help="iterations per run")
    parser.add_argument("--flush-every", type=int, default=8, help="TensorBoardCallback's")
    parser.add_argument("--width", type=int, default=128, help="matmul size of the work")
    args = parser.parse_args()
    if jax.device_count() < DEVICES:
        raise SystemExit("needs 4 devices: XLA_FLAGS=--xla_force_host_platform_device_count=4")
    flushes = -(-args.iterations // args.flush_every)

    # Count on the host side of callax (no JAX there): a host call that carries rows queues
    # them with host.write; the final sync call flushes its run with host.flush.
    counts = {"rows": 0, "sync": 0}
    write, flush = host.write, host.flush

    def counting_write(*a, **k):
        counts["rows"] += 1
        return write(*a, **k)

    def counting_flush(handle, **options):
        counts["sync"] += 1
        return flush(handle, **options)

    host.write, host.flush = counting_write, counting_flush
    root = tempfile.mkdtemp(prefix="callax_bench_scale_")

    def callback(name, options, flush_every):
        return callax.TensorBoardCallback(name, log_dir=root, flush_every=flush_every,
                                          **options)

    variants = {"with": args.flush_every, "once": args.iterations, "every": 1}
    cases = {}
    for name, (build, seeds, options) in layouts(args.iterations, args.width).items():
        with_cb, without = build(True), build(False)
        for every in variants.values():
            jax.block_until_ready(with_cb(seeds, callback(name, options, every)))
        cb = callback(name, options, args.flush_every)
        jax.block_until_ready(without(seeds, cb))
        jax.effects_barrier()
        added = count_collectives(with_cb, seeds, cb) - count_collectives(without, seeds, cb)
        cases[name] = (with_cb, without, seeds, options, added)

    times = {(name, v): [] for name in cases for v in (*variants, "without")}
    calls = {(name, kind): [] for name in cases for kind in counts}
    for _ in range(args.rounds):
        for name, (with_cb, without, seeds, options, _) in cases.items():
            for variant, every in variants.items():
                cb = callback(name, options, every)
                counts.update(rows=0, sync=0)
                start = time.perf_counter()
                jax.block_until_ready(with_cb(seeds, cb))
                jax.effects_barrier()
                times[name, variant].append(time.perf_counter() - start)
                if variant == "with":
                    for kind, n in counts.items():
                        calls[name, kind].append(n)
            start = time.perf_counter()
            jax.block_until_ready(without(seeds, cb))
            times[name, "without"].append(time.perf_counter() - start)
        callax.flush_all()

    print(f"jax {jax.__version__}, {DEVICES} host devices, {DEVICES * PER_DEVICE} seeds, "
          f"{args.iterations} iterations of {STEPS} steps x {ENVS} envs, width {args.width},"
          f" flush_every={args.flush_every} ({flushes} flushes), {args.rounds} rounds")
    print(f"{'layout':>10} {'calls/flush':>12} {'final sync':>11} {'collectives':>12} "
          f"{'without ms':>11} {'with/without':>13} {'once/without':>13} {'ms/flush':>9}")
    for name, (*_, added) in cases.items():
        t = {v: statistics.median(times[name, v]) * 1e3 for v in (*variants, "without")}
        per_flush = statistics.median(calls[name, "rows"]) / flushes
        sync = statistics.median(calls[name, "sync"])
        extra = statistics.median(
            (e - o) * 1e3 / max(args.iterations - 1, 1)
            for e, o in zip(times[name, "every"], times[name, "once"], strict=True))
        print(f"{name:>10} {per_flush:>12.2f} {sync:>11.0f} {added:>12d} "
              f"{t['without']:>11.2f} {t['with'] / t['without']:>13.3f} "
              f"{t['once'] / t['without']:>13.3f} {extra:>9.2f}")
    print(f"(event files in {root})")


if __name__ == "__main__":
    main()
