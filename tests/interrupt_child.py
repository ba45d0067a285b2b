"""A child process for tests/test_interrupt.py: ``python interrupt_child.py MODE LOG_DIR``.

Each mode trains (or writes) inside ONE long jitted call, printing ``ready`` once the first
point is on disk (the parent then sends SIGINT by PID), and at the end ``result ...``.

- ``ppo``: callax's PPO (vmapped over 2 seeds) with a TensorBoardCallback; ``result
  interrupted=<bool> iterations=<i> planned=<n>``.
- ``loop``: a hand-written jitted loop with StopOnInterrupt and a TensorBoardCallback
  (tests/minimal_loop.py), vmapped over 2 seeds; the same result line.
- ``plain``: a jitted scan with a JITSummaryWriter and no stop callback: Ctrl-C must end the
  process with SIGINT's status (the main thread is inside the jitted call).
- ``catch``: eager writes in a Python loop; Ctrl-C raises KeyboardInterrupt, caught:
  prints ``caught`` and exits 0.
- ``compile``: prints ``compiling`` then compiles a big program (Ctrl-C during compilation).
- ``slow``: like ``loop`` (one seed), each iteration taking ~10 s (a host call that sleeps).
- ``devices_pmap``, ``devices_shard_map``: like ``loop`` on 4 host devices, one seed each.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

mode, log_dir = sys.argv[1], sys.argv[2]
if mode.startswith("devices_"):
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import callax  # noqa: E402
from callax._writer._read import read_scalars  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from minimal_loop import drive  # noqa: E402


def announce_first_point(tag: str) -> None:
    """Print ``ready`` from a helper thread once ``tag`` has a point on disk."""

    def watch():
        while True:
            for directory, _, files in os.walk(log_dir):
                if any(f.startswith("events.out") for f in files):
                    if read_scalars(directory).get(tag):
                        print("ready", flush=True)
                        return
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()


def stopping_loop(name: str, planned: int, *others):
    """``(callbacks, rewards, dones)`` of a ``drive`` loop of ``planned`` iterations (2 steps
    x 2 envs, every episode 2 steps) with a TensorBoardCallback, ``others`` and
    StopOnInterrupt; ``ready`` is printed once its first point is on disk."""
    callbacks = callax.CallbackList([
        callax.TensorBoardCallback(name, log_dir=log_dir, flush_every=1), *others,
        callax.StopOnInterrupt()])
    rewards = jnp.ones((planned, 2, 2), jnp.float32)
    dones = jnp.zeros((planned, 2, 2), bool).at[:, -1, :].set(True)
    announce_first_point("episode/return")
    return callbacks, rewards, dones


if mode == "ppo":
    from callax.envs import CartPoleParams, make
    from callax.train import PPO

    ppo = PPO(n_envs=2, n_steps=16, batch_size=16, n_epochs=1, hidden_sizes=(8,))
    planned = 20_000
    callback = callax.TensorBoardCallback("ppo", log_dir=log_dir, flush_every=1)
    announce_first_point("train/learning_rate")

    @jax.jit
    def train(keys):
        return jax.vmap(lambda k: ppo.learn(
            make("cartpole"), total_timesteps=planned * 32, key=k, callback=callback,
            env_params=CartPoleParams(max_steps_in_episode=20)))(keys)

    result = train(jax.random.split(jax.random.key(0), 2))
    print(f"result interrupted={bool(np.all(result.interrupted))} "
          f"iterations={np.asarray(result.iterations).tolist()} planned={planned}", flush=True)
elif mode == "loop":
    planned = 50_000
    callbacks, rewards, dones = stopping_loop("loop", planned)

    @jax.jit
    def train(scales):
        return jax.vmap(lambda s: drive(callbacks, rewards * s, dones,
                                        jax.random.key(0))[2])(scales)

    iterations = train(jnp.arange(1.0, 3.0))
    print(f"result interrupted={bool(np.all(iterations < planned))} "
          f"iterations={np.asarray(iterations).tolist()} planned={planned}", flush=True)
elif mode == "plain":
    writer = callax.JITSummaryWriter(log_dir)
    announce_first_point("x")

    @jax.jit
    def run():
        def body(c, i):
            writer.add_scalar("x", c, i)
            time_waster = jnp.sum(jnp.sin(jnp.arange(20_000.0) * c))
            return c + 1.0 + 0 * time_waster, None

        return jax.lax.scan(body, 0.0, jnp.arange(2_000_000))[0]

    run().block_until_ready()
    print("result not interrupted", flush=True)
elif mode == "catch":
    writer = callax.JITSummaryWriter(log_dir)
    announce_first_point("x")
    try:
        for step in range(10**9):
            writer.add_scalar("x", float(step), step)
            time.sleep(0.001)
    except KeyboardInterrupt:
        writer.close()
        print("caught", flush=True)
elif mode == "compile":
    writer = callax.JITSummaryWriter(log_dir)

    @jax.jit
    def big(x):
        for i in range(3000):  # a long compilation
            x = jnp.sin(x) * (i + 1.0) + jnp.cos(x * 0.5)
            if i % 100 == 0:
                writer.add_scalar("x", x.sum(), i)
        return x

    print("compiling", flush=True)
    big(jnp.ones(8)).block_until_ready()
    print("result compiled", flush=True)
elif mode == "gc":
    # Ctrl-C arriving while a garbage-collector callback runs (JAX registers one): Python
    # would print "Exception ignored" and drop the KeyboardInterrupt, and the program go on.
    import gc

    writer = callax.JITSummaryWriter(log_dir)
    writer.add_scalar("x", 1.0, 0)
    arrived = []

    def slow_callback(phase, info):
        if phase == "start" and not arrived:
            arrived.append(True)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs in here

    gc.callbacks.append(slow_callback)
    gc.collect()
    gc.callbacks.remove(slow_callback)
    time.sleep(1.0)
    print("result swallowed", flush=True)
elif mode == "slow":

    class Slow(callax.AbstractStatelessCallback, callax.AbstractContinuingCallback):
        """Each iteration waits 10 s in a host call (a slow update, seen from the host)."""

        def step_reset(self, ctx, *, key):
            return callax.EmptyCallbackStepState()

        def on_step(self, ctx, *, key):
            return callax.EmptyCallbackStepState()

        def on_iteration(self, ctx, *, key):
            jax.debug.callback(lambda i: time.sleep(10.0), ctx.iteration_count)
            return callax.EmptyCallbackState()

    planned = 10_000
    callbacks, rewards, dones = stopping_loop("slow", planned, Slow())
    iterations = jax.jit(lambda: drive(callbacks, rewards, dones, jax.random.key(0))[2])()
    print(f"result interrupted={bool(iterations < planned)} iterations=[{int(iterations)}] "
          f"planned={planned}", flush=True)
elif mode.startswith("devices_"):
    from jax.sharding import NamedSharding, PartitionSpec as P

    planned = 50_000
    callbacks, rewards, dones = stopping_loop("devices", planned)

    def one(scale):
        return drive(callbacks, rewards * scale[0], dones, jax.random.key(0))[2][None]

    scales = jnp.arange(1.0, 5.0)
    if mode == "devices_pmap":
        iterations = jax.pmap(one)(scales[:, None])[:, 0]
    else:
        mesh = jax.make_mesh((4,), ("d",))
        scales = jax.device_put(scales, NamedSharding(mesh, P("d")))
        iterations = jax.jit(jax.shard_map(one, mesh=mesh, in_specs=P("d"),
                                           out_specs=P("d")))(scales)
    print(f"result interrupted={bool(np.all(iterations < planned))} "
          f"iterations={np.asarray(iterations).tolist()} planned={planned}", flush=True)
