"""Scaling out: the same 8 seeds on 4 devices with sharded ``jax.jit``, ``jax.pmap`` or
``shard_map``; data-parallel training of one model; seeds x data parallelism on a 2 x 2 mesh.
See docs/scaling.md, which shows these functions.

    python examples/scaling.py [jit|pmap|shard_map|data_parallel|seeds_and_data|all] \\
        [--logdir runs/scaling]
    tensorboard --logdir runs/scaling

On a machine without 4 accelerators the devices are simulated on the CPU (``XLA_FLAGS``,
set below before JAX is imported).
"""

from __future__ import annotations

# --8<-- [start:setup]
import os

# Without 4 accelerators: simulate 4 CPU devices (before JAX is imported).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import callax  # noqa: E402

SEEDS, DEVICES, STEPS, POINTS, LR = 8, 4, 40, 32, 0.1
# --8<-- [end:setup]


# --8<-- [start:fit]
def loss_fn(w, x, y):
    return jnp.mean((w[0] * x + w[1] - y) ** 2)


def fit(seed, w, writer):
    """One seed's training from parameters ``w``: gradient descent on y = (1 + seed) * x +
    0.5. The loss of every step is written once at the end (one host call per run, not one
    per step)."""
    x = jnp.linspace(-1.0, 1.0, POINTS)
    y = (1.0 + seed) * x + 0.5

    def step(w, _):
        loss, grad = jax.value_and_grad(loss_fn)(w, x, y)
        return w - LR * grad, loss

    w, losses = jax.lax.scan(step, w, None, length=STEPS)
    writer.write_rows(("train/loss",), jnp.arange(STEPS), losses[:, None])
    return w
# --8<-- [end:fit]


# --8<-- [start:jit]
def sharded_jit(log_dir):
    mesh = jax.make_mesh((DEVICES,), ("devices",))  # Explicit axes (the default)
    writer = callax.JITSummaryWriter(os.path.join(log_dir, "jit"))
    with jax.set_mesh(mesh):
        seeds = jax.device_put(jnp.arange(SEEDS, dtype=jnp.float32), P("devices"))
        train = jax.jit(jax.vmap(lambda s: fit(s, jnp.zeros(2), writer)))
        return train(seeds)  # jit/seed_0 ... seed_7
# --8<-- [end:jit]


# --8<-- [start:pmap]
def pmap(log_dir):
    writer = callax.JITSummaryWriter(os.path.join(log_dir, "pmap"))
    seeds = jnp.arange(SEEDS, dtype=jnp.float32).reshape(DEVICES, SEEDS // DEVICES)
    train = jax.pmap(jax.vmap(lambda s: fit(s, jnp.zeros(2), writer)))
    return train(seeds)  # pmap/seed_0 ... seed_7
# --8<-- [end:pmap]


# --8<-- [start:shard_map]
def shard_map(log_dir):
    mesh = jax.make_mesh((DEVICES,), ("devices",))
    writer = callax.JITSummaryWriter(os.path.join(log_dir, "shard_map"))
    seeds = jax.device_put(jnp.arange(SEEDS, dtype=jnp.float32),
                           NamedSharding(mesh, P("devices")))

    def per_device(seeds, writer):
        # check_vma=True (the default): parameters that start equal on every device but are
        # trained per device must be marked varying, or JAX sums their gradients over the
        # devices (the transpose of an implicit broadcast).
        w = jax.lax.pcast(jnp.zeros(2), "devices", to="varying")
        return jax.vmap(lambda s: fit(s, w, writer))(seeds)

    train = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("devices"), P()),
                                  out_specs=P("devices")))
    return train(seeds, writer)  # shard_map/seed_0 ... seed_7
# --8<-- [end:shard_map]


# --8<-- [start:data_parallel]
def data_parallel(log_dir):
    """One model; each device holds a quarter of the data, gradients are averaged."""
    writer = callax.JITSummaryWriter(os.path.join(log_dir, "data_parallel"), reduce="mean")
    x = jnp.linspace(-1.0, 1.0, POINTS).reshape(DEVICES, POINTS // DEVICES)

    def train(x):
        y = 2.0 * x + 0.5

        def step(w, _):
            loss, grad = jax.value_and_grad(loss_fn)(w, x, y)
            return w - LR * jax.lax.pmean(grad, "devices"), loss

        w, losses = jax.lax.scan(step, jnp.zeros(2), None, length=STEPS)
        # reduce="mean": the mean of the 4 devices' losses, written once (no seed_<i>)
        writer.write_rows(("train/loss",), jnp.arange(STEPS), losses[:, None])
        return w

    return jax.pmap(train, axis_name="devices")(x)
# --8<-- [end:data_parallel]


# --8<-- [start:seeds_and_data]
def seeds_and_data(log_dir):
    """A 2 x 2 mesh: 2 seeds per device along "seeds" (vmap), each seed's data split over
    "data". axis_names says which manual axis holds different seeds; reduce="mean" writes
    the mean over the other one."""
    mesh = jax.make_mesh((2, 2), ("seeds", "data"))
    writer = callax.JITSummaryWriter(os.path.join(log_dir, "seeds_and_data"),
                                     axis_names=("seeds",), reduce="mean")
    x = jnp.linspace(-1.0, 1.0, POINTS).reshape(2, POINTS // 2)

    def train(seeds, x, writer):
        def one_seed(seed):
            y = (1.0 + seed) * x + 0.5

            def step(w, _):
                loss, grad = jax.value_and_grad(loss_fn)(w, x, y)
                return w - LR * jax.lax.pmean(grad, "data"), loss

            w = jax.lax.pcast(jnp.zeros(2), ("seeds", "data"), to="varying")  # as above
            w, losses = jax.lax.scan(step, w, None, length=STEPS)
            writer.write_rows(("train/loss",), jnp.arange(STEPS), losses[:, None])
            return jax.lax.pmean(w, "data")  # equal on the "data" devices: tell check_vma

        return jax.vmap(one_seed)(seeds)

    seeds = jax.device_put(jnp.arange(4, dtype=jnp.float32), NamedSharding(mesh, P("seeds")))
    x = jax.device_put(x, NamedSharding(mesh, P("data")))
    train = jax.jit(jax.shard_map(train, mesh=mesh, in_specs=(P("seeds"), P("data"), P()),
                                  out_specs=P("seeds")))
    return train(seeds, x, writer)  # seeds_and_data/seed_0 ... seed_3
# --8<-- [end:seeds_and_data]


LAYOUTS = {"jit": sharded_jit, "pmap": pmap, "shard_map": shard_map,
           "data_parallel": data_parallel, "seeds_and_data": seeds_and_data}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layout", nargs="?", default="all", choices=[*LAYOUTS, "all"])
    parser.add_argument("--logdir", default=os.path.join("runs", "scaling"))
    args = parser.parse_args()
    for name, run in LAYOUTS.items():
        if args.layout in (name, "all"):
            jax.block_until_ready(run(args.logdir))
    callax.flush_all()
    print(f"wrote {args.logdir}")


if __name__ == "__main__":
    main()
