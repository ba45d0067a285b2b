"""One of two processes started by tests/test_scale_mp.py (``jax.distributed`` with gloo on
127.0.0.1, 2 host devices each): shard_map x vmap training over 4 global devices, and
process-local writes with and without ``per_process``."""

from __future__ import annotations

import os
import sys
import time

from two_processes import join  # this script's directory is on sys.path

process, root = join()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))

from scaling import fit  # noqa: E402
from scaling_processes import processes  # noqa: E402  (docs/scaling.md's example)

import callax  # noqa: E402
from scale_script import train  # noqa: E402

SEEDS = 8
if process == 1:
    time.sleep(1.5)  # a different time stamp: the run name must still be process 0's
# No name: "<date>_<time>" decided once, by process 0.
# Every writer at once: each global seed's TensorBoard file, JSON lines and W&B run (offline)
# come from the one process that holds it.
os.environ.update(WANDB_MODE="offline", WANDB_DIR=root, WANDB_SILENT="true")
callback = callax.TensorBoardCallback(log_dir=os.path.join(root, "train"), flush_every=2,
                                      writers=("tensorboard", "jsonl", "wandb"))
mesh = jax.make_mesh((4,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
sharding = NamedSharding(mesh, P("d"))
seeds = np.arange(SEEDS, dtype=np.float32)
batch = jax.make_array_from_callback((SEEDS,), sharding, lambda index: seeds[index])
step = jax.jit(jax.shard_map(jax.vmap(lambda s: train(s, callback)), mesh=mesh,
                             in_specs=P("d"), out_specs=P("d")))
step(batch).block_until_ready()

# Process-local data: by default only process 0 writes; per_process=True gives each process
# its own sub-directory.
shared = callax.JITSummaryWriter(os.path.join(root, "local"))
shared.add_scalar("process", float(process), 0)
mine = callax.JITSummaryWriter(os.path.join(root, "per_process"), per_process=True)
mine.add_scalar("process", float(process), 0)
# The same for writes through _host.send (histograms here): process 0 only.
callax.add_histograms(shared, {"process": jax.numpy.full((3,), float(process))}, 1)
# Sharded jit over both processes' devices: XLA runs the host call once, on device 0
# (process 0), with every seed's rows gathered there.
writer = callax.JITSummaryWriter(os.path.join(root, "jit"))
jax.block_until_ready(jax.jit(jax.vmap(lambda s: fit(s, jax.numpy.zeros(2), writer)))(batch))
# The multi-process example of docs/scaling.md (examples/scaling_processes.py).
jax.block_until_ready(processes(os.path.join(root, "examples")))
callax.flush_all()
print("DONE", process, flush=True)
jax.distributed.shutdown()
