"""Run by tests/test_order.py in a subprocess with 4 host devices: runs each program of a JSON
file (tests/order_model.py's trees) under pmap, shard_map, pmap(vmap) and a sharded jit of a
vmap, and prints every run's points as JSON (one line, ``RESULT {...}``).

Usage: order_script.py ROOT PROGRAMS_JSON
"""

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
from order_model import build, writers_of  # noqa: E402

DEVICES, PER_DEVICE = 4, 2

# The seed positions each layout gives the whole program (tests/test_order.py's model uses
# the same table): device-major, then the vmap position.
TOP_SEEDS = {
    "pmap": DEVICES,
    "shard_map": DEVICES,
    "pmap_vmap": DEVICES * PER_DEVICE,
    "jit_vmap": DEVICES * PER_DEVICE,
}


def run(layout: str, program, counter0: int, writers) -> None:
    f = build(program, writers, counter0)
    mesh = jax.make_mesh((DEVICES,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    seeds = jnp.arange(TOP_SEEDS[layout], dtype=jnp.float32)
    if layout == "pmap":
        out = jax.pmap(f)(seeds)
    elif layout == "shard_map":
        out = jax.jit(jax.shard_map(lambda s: f(s[0]) + 0 * s.astype(jnp.int32), mesh=mesh,
                                    in_specs=P("d"), out_specs=P("d")))(
            jax.device_put(seeds, NamedSharding(mesh, P("d"))))
    elif layout == "pmap_vmap":
        out = jax.pmap(jax.vmap(f))(seeds.reshape(DEVICES, PER_DEVICE))
    else:
        assert layout == "jit_vmap"
        out = jax.jit(jax.vmap(f))(jax.device_put(seeds, NamedSharding(mesh, P("d"))))
    jax.block_until_ready(out)


def main(root: str, programs_path: str) -> None:
    assert jax.device_count() == DEVICES, jax.devices()
    with open(programs_path) as file:
        programs = json.load(file)
    result: dict[str, dict] = {}
    for layout in TOP_SEEDS:
        for name, (program, counter0) in programs.items():
            case = os.path.join(root, layout, name)
            count = max(writers_of(program)) + 1
            writers = [callax.JITSummaryWriter(os.path.join(case, f"w{k}"))
                       for k in range(count)]
            run(layout, program, counter0, writers)
            result[f"{layout}/{name}"] = {
                d: read_run(os.path.join(case, d)) for d in run_dirs(case)}
    # The case: pmap(vmap(f)), f writing 3 points (no data dependency between them).
    case = os.path.join(root, "issue_pmap_vmap")
    writer = callax.JITSummaryWriter(case)

    def f(s):
        for i in range(3):
            writer.add_scalar("x", s + i, global_step=i)
        return s

    jax.block_until_ready(jax.pmap(jax.vmap(f))(
        jnp.arange(DEVICES * PER_DEVICE, dtype=jnp.float32).reshape(DEVICES, PER_DEVICE)))
    result["issue_pmap_vmap"] = {d: read_run(os.path.join(case, d)) for d in run_dirs(case)}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
