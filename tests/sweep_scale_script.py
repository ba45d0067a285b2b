"""Run by tests/test_sweep_scale.py in a subprocess with 4 host devices: one sweep of 2
configurations x 4 seeds, its 8 elements spread over the devices (pmap, shard_map, sharded
jit), and prints every run's points as JSON (one line)."""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

import callax  # noqa: E402
from conftest import read_run, run_dirs  # noqa: E402
from minimal_loop import drive  # noqa: E402

DEVICES, CONFIGS, SEEDS = 4, 2, 4
ITERS, STEPS, ENVS, EPISODE = 3, 4, 2, 4
SWEEP = {"learning_rate": [0.5, 0.25], "clip_range": [0.1, 0.2]}


def reward(position):
    """Each element's constant reward: its configuration's values and its seed (the test
    recomputes it)."""
    config, seed = position // SEEDS, position % SEEDS
    table = jnp.asarray([SWEEP["learning_rate"], SWEEP["clip_range"]], jnp.float32)
    return 10.0 * table[0, config] + table[1, config] + seed.astype(jnp.float32)


def train(position, callback):
    rewards = jnp.broadcast_to(reward(position), (ITERS, STEPS, ENVS))
    dones = jnp.broadcast_to((jnp.arange(STEPS) % EPISODE == EPISODE - 1)[None, :, None],
                             (ITERS, STEPS, ENVS))
    key = jax.random.fold_in(jax.random.key(0), position)  # varies over every element
    drive(callback, rewards, dones, key)
    return position


def main(root):
    sweep = callax.Sweep(SWEEP, seeds=SEEDS)

    def make(name):
        return callax.TensorBoardCallback(name, log_dir=root, flush_every=2, sweep=sweep)

    positions = jnp.arange(CONFIGS * SEEDS, dtype=jnp.int32)  # configurations outer
    mesh = jax.make_mesh((DEVICES,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(positions, NamedSharding(mesh, P("d")))
    cb = make("pmap")
    jax.pmap(jax.vmap(lambda p: train(p, cb)), axis_name="d")(
        positions.reshape(DEVICES, -1)).block_until_ready()
    cb = make("shard_map")
    jax.jit(jax.shard_map(jax.vmap(lambda p: train(p, cb)), mesh=mesh, in_specs=P("d"),
                          out_specs=P("d")))(sharded).block_until_ready()
    cb = make("jit")
    jax.jit(jax.vmap(lambda p: train(p, cb)))(sharded).block_until_ready()
    callax.flush_all()
    runs = {d: read_run(os.path.join(root, d)) for d in run_dirs(root)}
    print("RESULT " + json.dumps(runs))


if __name__ == "__main__":
    main(sys.argv[1])
