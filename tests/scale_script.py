"""Run by tests/test_scale.py in a subprocess with 4 host devices: trains the same scripted
seeds under several layouts and prints every run's points as JSON (one line)."""

from __future__ import annotations

import io
import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))

from scaling import LAYOUTS  # noqa: E402  (examples/scaling.py, shown in docs/scaling.md)

import callax  # noqa: E402
import callax.events  # noqa: E402
from callax import _host  # noqa: E402
from conftest import OLD_JAX_PSUM_INVARIANT_UNDER_VMAP, read_run, run_dirs  # noqa: E402
from minimal_loop import drive  # noqa: E402

DEVICES, PER_DEVICE = 4, 2
SEEDS = DEVICES * PER_DEVICE
ITERS, STEPS, ENVS = 3, 4, 2


def scripted(seed):
    """Rewards and dones of one seed (tests/test_scale.py recomputes them in NumPy)."""
    rewards = (seed + 1.0) * jnp.arange(ITERS * STEPS * ENVS, dtype=jnp.float32).reshape(
        ITERS, STEPS, ENVS) / 10.0
    dones = (jnp.arange(ITERS * STEPS * ENVS).reshape(ITERS, STEPS, ENVS) % 3) == 2
    return rewards, dones


def train(seed, callback):
    rewards, dones = scripted(seed)
    drive(callback, rewards, dones, jax.random.key(0), log_scale=seed + 1.0)
    return jnp.zeros(())


def make_callback(root, name, **options):
    return callax.TensorBoardCallback(name, log_dir=root, flush_every=2, **options)


def collect(root):
    return {d: read_run(os.path.join(root, d)) for d in run_dirs(root)}


def main(root):
    out = {}
    seeds = jnp.arange(SEEDS, dtype=jnp.float32)
    mesh = jax.make_mesh((DEVICES,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(seeds, NamedSharding(mesh, P("d")))
    by_device = seeds.reshape(DEVICES, PER_DEVICE)

    # 1. jit of a vmapped loop over a sharded batch (Auto mesh).
    cb = make_callback(root, "jit")
    jax.jit(jax.vmap(lambda s: train(s, cb)))(sharded).block_until_ready()
    # 2. vmap(2) inside pmap(4).
    cb = make_callback(root, "pmap")
    jax.pmap(jax.vmap(lambda s: train(s, cb)), axis_name="d")(by_device).block_until_ready()
    # 3. vmap(2) inside shard_map(4), check_vma=True (the default).
    cb = make_callback(root, "shard_map")
    jax.jit(jax.shard_map(jax.vmap(lambda s: train(s, cb)), mesh=mesh, in_specs=P("d"),
                          out_specs=P("d")))(sharded).block_until_ready()
    # 4. Explicit mesh (jax.make_mesh's default) set with jax.set_mesh, sharded jit.
    explicit = jax.make_mesh((DEVICES,), ("d",))
    with jax.set_mesh(explicit):
        cb = make_callback(root, "explicit")
        batch = jax.device_put(seeds, NamedSharding(explicit, P("d")))
        jax.jit(jax.vmap(lambda s: train(s, cb)))(batch).block_until_ready()
        # 5. shard_map on the explicit mesh, one seed per device (JAX cannot close over
        #    arrays on an Explicit mesh inside shard_map: the callback is an argument).
        cb = make_callback(root, "explicit_shard_map")
        jax.jit(jax.shard_map(lambda s, c: jax.vmap(lambda x: train(x, c))(s),
                              in_specs=(P("d"), P()), out_specs=P("d")))(
            jax.device_put(jnp.arange(DEVICES, dtype=jnp.float32),
                           NamedSharding(explicit, P("d"))), cb).block_until_ready()
    # 6. pmap without vmap: one seed per device.
    cb = make_callback(root, "pmap_novmap")
    jax.pmap(lambda s: train(s, cb))(jnp.arange(DEVICES, dtype=jnp.float32))
    # 7. Data-parallel single agent: every device sees seed 0's rewards scaled by its index,
    #    reduce="mean" writes the mean, reduce="first" device 0's values.
    for mode in ("mean", "first"):
        cb = make_callback(root, f"reduce_{mode}", reduce=mode)
        jax.pmap(lambda s: train(s, cb), axis_name="d")(jnp.arange(DEVICES, dtype=jnp.float32))
    #    The same with shard_map (check_vma=True), one seed per device.
    cb = make_callback(root, "reduce_mean_shard_map", reduce="mean")
    jax.jit(jax.shard_map(lambda s: train(s[0], cb), mesh=mesh, in_specs=P("d"),
                          out_specs=P()))(jnp.arange(DEVICES, dtype=jnp.float32))
    # 8. JITSummaryWriter.add_scalar under pmap: one point per device in its own seed_<d>.
    writer = callax.JITSummaryWriter(os.path.join(root, "writer_pmap"))
    jax.pmap(lambda x: writer.add_scalar("x", x, 0))(jnp.arange(DEVICES, dtype=jnp.float32))
    # 9. Collision: the devices of a replicated axis without reduce fail at trace time.
    writer = callax.JITSummaryWriter(os.path.join(root, "collide"), axis_names=())
    try:
        jax.pmap(lambda x: writer.add_scalar("x", x, 0), axis_name="d")(
            jnp.arange(DEVICES, dtype=jnp.float32))
        out["collision_error"] = None
    except ValueError as error:
        out["collision_error"] = str(error)
    # 10. _host.send (SACEvents' and ProgressBarCallback's host call) under pmap(vmap) and
    #     shard_map(vmap): one host call with every global seed's row; the clock read too.
    for name, run in (
        ("pmap", lambda f: jax.pmap(jax.vmap(f), axis_name="d")(by_device)),
        ("shard_map", lambda f: jax.jit(jax.shard_map(jax.vmap(f), mesh=mesh, in_specs=P("d"),
                                                      out_specs=P("d")))(sharded)),
    ):
        calls = []

        def host_fn(seed, when, value, calls=calls):
            calls.append([seed.tolist(), when.tolist(), value.tolist()])

        def sent(s):
            stamp = callax.events.timestamp(s)
            _host.send(host_fn, 10.0 * s + 0.0 * stamp[0], when=s >= 0)
            return s

        run(sent)
        jax.effects_barrier()
        out[f"send_{name}"] = calls
    # 11. ProgressBarCallback under shard_map(vmap) (check_vma=True) and under jit(vmap) on
    #     the Explicit mesh: one line per update for all 8 seeds (the host call gathers
    #     every device's rows).
    bar = callax.ProgressBarCallback(ITERS * STEPS * ENVS, every=1, min_interval=0.0)

    def progress(s):
        rewards, dones = scripted(s)
        key = jax.random.fold_in(jax.random.key(0), s.astype(jnp.int32))
        drive(bar, rewards, dones, key)
        return s

    def printed(run):
        saved, captured = sys.stderr, io.StringIO()
        sys.stderr = captured
        try:
            run().block_until_ready()
            jax.effects_barrier()
        finally:
            sys.stderr = saved
        return captured.getvalue().strip().splitlines()

    out["progress_shard_map"] = printed(lambda: jax.jit(jax.shard_map(
        jax.vmap(progress), mesh=mesh, in_specs=P("d"), out_specs=P("d")))(sharded))
    with jax.set_mesh(explicit):
        out["progress_explicit"] = printed(lambda: jax.jit(jax.vmap(progress))(
            jax.device_put(seeds, NamedSharding(explicit, P("d")))))
    # 12. SACEvents recorded per seed and written with EventRecord.write, under
    #     shard_map(vmap) and under jit(vmap) on the Explicit mesh.
    def events(s, writer):
        _, rec = callax.events.record(lambda: callax.events.SACEvents.policy_loss(0, 2.0 * s))()
        rec.write(writer, 1)
        return s

    writer = callax.JITSummaryWriter(os.path.join(root, "sac_shard_map"))
    jax.jit(jax.shard_map(jax.vmap(lambda s: events(s, writer)), mesh=mesh, in_specs=P("d"),
                          out_specs=P("d")))(sharded).block_until_ready()
    with jax.set_mesh(explicit):
        writer = callax.JITSummaryWriter(os.path.join(root, "sac_explicit"))
        jax.jit(jax.vmap(lambda s: events(s, writer)))(
            jax.device_put(seeds, NamedSharding(explicit, P("d")))).block_until_ready()
    # 13. JITSummaryWriter.add_dict of a per-seed and a constant value (different
    #     shardings on the Explicit mesh) under shard_map(vmap) and Explicit jit(vmap);
    #     ScalarBuffer as a scan carry (check_vma=True: it starts varying) flushed at the end.
    def mixed(s, writer):
        writer.add_dict("m", {"seed": s, "one": 1.0}, global_step=0)
        return s

    def buffered(s, writer):
        def row(buffer, i):
            # s * 0 + i: both on the batch sharding (jnp.stack needs one on an Explicit mesh)
            values = jnp.stack([s * i, s * 0.0 + i])
            return buffer.append(writer, ("u", "v"), i, values, jnp.ones(2, bool)), None

        buffer, _ = jax.lax.scan(row, callax.ScalarBuffer.empty(2, 2), jnp.arange(3))
        buffer.flush(writer)
        return s

    for name, fn in (("mixed", mixed), ("buffer", buffered)):
        writer = callax.JITSummaryWriter(os.path.join(root, f"{name}_shard_map"))
        jax.jit(jax.shard_map(jax.vmap(lambda s, w=writer, f=fn: f(s, w)), mesh=mesh,
                              in_specs=P("d"), out_specs=P("d")))(sharded).block_until_ready()
        with jax.set_mesh(explicit):
            writer = callax.JITSummaryWriter(os.path.join(root, f"{name}_explicit"))
            jax.jit(jax.vmap(lambda s, w=writer, f=fn: f(s, w)))(
                jax.device_put(seeds, NamedSharding(explicit, P("d")))).block_until_ready()
    # 14. pmap inside vmap: element [v, d] is global seed d * 2 + v (device-major).
    writer = callax.JITSummaryWriter(os.path.join(root, "vmap_pmap"))
    jax.vmap(jax.pmap(lambda x: writer.add_scalar("x", x, 0), axis_name="d"))(
        seeds.reshape(PER_DEVICE, DEVICES))
    # 15. A large flush (64 rows x 64 tags, ~130 kB) under sharded jit while the devices
    #     also run a collective each iteration: through jax.debug.callback's lowering this
    #     deadlocked (its operand copy waits for a worker thread the other devices hold).
    writer = callax.JITSummaryWriter(os.path.join(root, "large"))
    tags = tuple(f"t{j:02d}" for j in range(64))

    def large(s):
        def body(c, i):
            rows = s + jnp.arange(64 * 64, dtype=jnp.float32).reshape(64, 64) / 64.0
            writer.write_rows(tags, i * 64 + jnp.arange(64), rows + i)
            return c + jnp.tanh(jnp.ones((64, 64)) * s) @ jnp.ones((64, 64)), None

        return jax.lax.scan(body, jnp.zeros((64, 64)), jnp.arange(3))[0].sum()

    jax.jit(jax.vmap(large))(sharded).block_until_ready()
    # 16. The examples of docs/scaling.md (examples/scaling.py), every layout.
    #     seeds_and_data (grad of a vmapped seed with pmean over "data", inside shard_map)
    #     hits a JAX bug before 0.9.1 (psum_invariant's batching rule): record the error.
    out["example_errors"] = {}
    for name, run in LAYOUTS.items():
        try:
            jax.block_until_ready(run(os.path.join(root, "examples")))
        except TypeError as error:
            if name != "seeds_and_data" or OLD_JAX_PSUM_INVARIANT_UNDER_VMAP is False:
                raise
            out["example_errors"][name] = str(error)
    callax.flush_all()
    out["runs"] = collect(root)
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main(sys.argv[1])
