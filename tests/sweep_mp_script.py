"""One of two processes started by tests/test_sweep_mp.py (``jax.distributed`` with gloo on
127.0.0.1, 2 host devices each): a sweep of 2 configurations x 4 seeds, shard_map x vmap over
the 4 global devices (each process holds one configuration's seeds)."""

from __future__ import annotations

import os
import sys

from two_processes import join  # this script's directory is on sys.path

process, root = join()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

import callax  # noqa: E402
from sweep_scale_script import CONFIGS, SEEDS, SWEEP, train  # noqa: E402

sweep = callax.Sweep(SWEEP, seeds=SEEDS)
callback = callax.TensorBoardCallback("sweep", log_dir=root, flush_every=2, sweep=sweep,
                                      writers=("tensorboard", "jsonl"))
mesh = jax.make_mesh((4,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
sharding = NamedSharding(mesh, P("d"))
positions = np.arange(CONFIGS * SEEDS, dtype=np.int32)
batch = jax.make_array_from_callback(positions.shape, sharding, lambda i: positions[i])
step = jax.jit(jax.shard_map(jax.vmap(lambda p: train(p, callback)), mesh=mesh,
                             in_specs=P("d"), out_specs=P("d")))
step(batch).block_until_ready()
callax.flush_all()
print("DONE", process, flush=True)
jax.distributed.shutdown()
