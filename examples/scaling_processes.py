"""Scaling out over several processes (``jax.distributed``): 8 seeds on the 4 devices of
2 processes, and process-local data. See docs/scaling.md.

Start one command per process (here both on one machine, 2 simulated CPU devices each):

    python examples/scaling_processes.py 0 & python examples/scaling_processes.py 1
    tensorboard --logdir runs/scaling

Options: ``--processes 2 --coordinator 127.0.0.1:12355 --logdir runs/scaling``.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import argparse  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
from scaling import SEEDS, fit  # noqa: E402  (examples/scaling.py)

import callax  # noqa: E402


# --8<-- [start:processes]
def processes(log_dir):
    """Every process runs this after ``jax.distributed.initialize``."""
    mesh = jax.make_mesh((jax.device_count(),), ("devices",))  # the devices of all processes
    # One run directory for all processes (named by process 0 and shared).
    writer = callax.JITSummaryWriter(os.path.join(log_dir, "processes"))
    sharding = NamedSharding(mesh, P("devices"))
    seeds = jax.make_array_from_callback(  # each process provides its own devices' seeds
        (SEEDS,), sharding, lambda index: np.arange(SEEDS, dtype=np.float32)[index])

    def per_device(seeds, writer):
        w = jax.lax.pcast(jnp.zeros(2), "devices", to="varying")  # trained per device
        return jax.vmap(lambda s: fit(s, w, writer))(seeds)

    train = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("devices"), P()),
                                  out_specs=P("devices")))
    w = train(seeds, writer)  # processes/seed_0 ... seed_7, each written by one process
    # Data of this process only: written under processes_local/process_<p>. Without
    # per_process=True only process 0 would write it (as for replicated data).
    local = callax.JITSummaryWriter(os.path.join(log_dir, "processes_local"),
                                    per_process=True)
    local.add_scalar("host/process_index", float(jax.process_index()), 0)
    return w
# --8<-- [end:processes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("process_id", type=int)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--coordinator", default="127.0.0.1:12355")
    parser.add_argument("--logdir", default=os.path.join("runs", "scaling"))
    args = parser.parse_args()
    # --8<-- [start:initialize]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices only
    jax.distributed.initialize(args.coordinator, num_processes=args.processes,
                               process_id=args.process_id)
    # --8<-- [end:initialize]
    jax.block_until_ready(processes(args.logdir))
    callax.flush_all()
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
