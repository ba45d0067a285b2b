"""One of two processes started by tests/test_interrupt.py (``jax.distributed`` with gloo on
127.0.0.1, 2 host devices each): ``python interrupt_mp_child.py PORT PROCESS LOG_DIR``.

Both run ONE jitted hand-written loop (tests/minimal_loop.py) with StopOnInterrupt and a
TensorBoardCallback, under ``shard_map`` over the global mesh of 4 devices (one seed per
device: seeds 0-1 on process 0, 2-3 on process 1). Each prints ``ready`` once a point of one
of its own seeds is on disk, and at the end ``result interrupted=<bool>
iterations=<its devices' iteration counts> planned=<n>``.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from two_processes import join  # this script's directory is on sys.path

process, log_dir = join()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import callax  # noqa: E402
from callax._writer._read import read_scalars  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from minimal_loop import drive  # noqa: E402

planned = 20_000
own_seed = os.path.join(log_dir, "devices", f"seed_{2 * process}")


def announce_first_point() -> None:
    while not (os.path.isdir(own_seed) and read_scalars(own_seed).get("episode/return")):
        time.sleep(0.02)
    print("ready", flush=True)


threading.Thread(target=announce_first_point, daemon=True).start()
callbacks = callax.CallbackList([
    callax.TensorBoardCallback("devices", log_dir=log_dir, flush_every=1),
    callax.StopOnInterrupt()])
rewards = jnp.ones((planned, 2, 2), jnp.float32)
dones = jnp.zeros((planned, 2, 2), bool).at[:, -1, :].set(True)


def one(scale):
    return drive(callbacks, rewards * scale[0], dones, jax.random.key(0))[2][None]


mesh = jax.make_mesh((4,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
scales = np.arange(1.0, 5.0, dtype=np.float32)
batch = jax.make_array_from_callback((4,), NamedSharding(mesh, P("d")),
                                     lambda index: scales[index])
iterations = jax.jit(jax.shard_map(one, mesh=mesh, in_specs=P("d"), out_specs=P("d")))(batch)
mine = sorted((shard.index[0].start, int(shard.data[0]))
              for shard in iterations.addressable_shards)
counts = [count for _, count in mine]
print(f"result interrupted={all(c < planned for c in counts)} iterations={counts} "
      f"planned={planned}", flush=True)
callax.flush_all()
jax.distributed.shutdown()
