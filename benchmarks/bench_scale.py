"""What logging costs in each multi-device layout, in one process on 4 host devices.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/bench_scale.py \\
        [--rounds 11] [--iterations 64] [--flush-every 8]

One small training program (per seed: ``n_envs`` envs, a ``lax.scan`` of env steps with
synthetic rewards and a little matmul work per iteration) runs 8 seeds on 4 devices in four
layouts, each with and without [`callax.TensorBoardCallback`][]:

- ``jit``: ``jax.jit(jax.vmap(...))`` of a batch sharded over the mesh (``NamedSharding``);
- ``pmap``: ``jax.pmap(jax.vmap(...))``, 2 seeds per device;
- ``shard_map``: ``jax.jit(jax.shard_map(jax.vmap(...)))``, 2 seeds per device;
- ``reduce``: data-parallel training of one agent, ``jax.pmap`` with
  ``reduce="mean"`` (one run).

Every variant is compiled first, then all are timed in interleaved rounds (a fresh run
directory each round: the callback is an argument, nothing recompiles). Prints per layout
the host calls per run (counted on the host; a run makes ``flushes`` flushes plus a final
sync call per device), the collectives that logging adds to the
compiled program (``all-gather``/``all-reduce``/... in the optimized HLO, with vs without
the callback) and the ratio of median times ``with / without``.
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
from callax import IterationContext, ResetContext, StepContext, TrainingContext, _host

DEVICES, PER_DEVICE, ENVS, STEPS = 4, 2, 8, 32
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute",
               "reduce-scatter")


def train(seed, cb, iterations: int):
    """One seed's training: returns a scalar so nothing is dead code."""
    key = jax.random.fold_in(jax.random.key(0), seed.astype(jnp.int32))
    weights = jax.random.normal(key, (32, 32)) * 0.1
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
        weights = jnp.tanh(weights @ weights + rewards.mean())  # the "learning" work
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


def layouts(iterations: int):
    """``{name: (build(with_callback) -> fn(seeds, cb), seeds, options)}``."""
    mesh = jax.make_mesh((DEVICES,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    seeds = jnp.arange(DEVICES * PER_DEVICE, dtype=jnp.float32)
    sharded = jax.device_put(seeds, NamedSharding(mesh, P("d")))
    by_device = seeds.reshape(DEVICES, PER_DEVICE)

    def seeded(with_cb):
        return lambda s, cb: jax.vmap(lambda x: train(x, cb if with_cb else None,
                                                      iterations))(s)

    return {
        "jit": (lambda w: jax.jit(seeded(w)), sharded, {}),
        "pmap": (lambda w: jax.pmap(seeded(w), axis_name="d", in_axes=(0, None)),
                 by_device, {}),
        "shard_map": (lambda w: jax.jit(jax.shard_map(seeded(w), mesh=mesh,
                                                      in_specs=(P("d"), P()),
                                                      out_specs=P("d"))), sharded, {}),
        "reduce": (lambda w: jax.pmap(
            lambda s, cb: train(s, cb if w else None, iterations), axis_name="d",
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
    args = parser.parse_args()
    if jax.device_count() < DEVICES:
        raise SystemExit("needs 4 devices: XLA_FLAGS=--xla_force_host_platform_device_count=4")
    flushes = -(-args.iterations // args.flush_every)

    calls = [0]
    write = _host._host_write

    def counting_write(packed):
        calls[0] += 1
        write(packed)

    _host._host_write = counting_write  # before tracing: the emitter looks it up then

    root = tempfile.mkdtemp(prefix="callax_bench_scale_")

    def callback(name, options):
        return callax.TensorBoardCallback(name, log_dir=root, flush_every=args.flush_every,
                                          **options)

    cases = {}
    for name, (build, seeds, options) in layouts(args.iterations).items():
        with_cb, without = build(True), build(False)
        cb = callback(name, options)
        jax.block_until_ready(with_cb(seeds, cb))
        jax.block_until_ready(without(seeds, cb))
        callax.flush_all()
        gathers = count_collectives(with_cb, seeds, cb) - count_collectives(without, seeds, cb)
        cases[name] = (with_cb, without, seeds, options, gathers)

    times = {(name, v): [] for name in cases for v in ("with", "without")}
    host_calls = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (with_cb, without, seeds, options, _) in cases.items():
            cb = callback(name, options)
            calls[0] = 0
            start = time.perf_counter()
            jax.block_until_ready(with_cb(seeds, cb))
            jax.effects_barrier()
            times[name, "with"].append(time.perf_counter() - start)
            host_calls[name].append(calls[0])
            start = time.perf_counter()
            jax.block_until_ready(without(seeds, cb))
            times[name, "without"].append(time.perf_counter() - start)
        callax.flush_all()

    print(f"jax {jax.__version__}, {DEVICES} host devices, {DEVICES * PER_DEVICE} seeds, "
          f"{args.iterations} iterations, flush_every={args.flush_every} ({flushes} flushes),"
          f" {args.rounds} rounds")
    print(f"{'layout':>10} {'host calls/run':>15} {'added collectives':>18} "
          f"{'median with (ms)':>17} {'without (ms)':>13} {'with/without':>13}")
    for name, (*_, gathers) in cases.items():
        with_t = statistics.median(times[name, "with"]) * 1e3
        without_t = statistics.median(times[name, "without"]) * 1e3
        per_run = statistics.median(host_calls[name])
        print(f"{name:>10} {per_run:>15.0f} {gathers:>18d} {with_t:>17.2f} "
              f"{without_t:>13.2f} {with_t / without_t:>13.3f}")
    print(f"(event files in {root})")


if __name__ == "__main__":
    main()
