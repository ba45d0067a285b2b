"""Per-env-step cost of episode tracking: callax's default against PureJaxRL's LogWrapper.

    python benchmarks/bench_step_cost.py [--envs 16,256,2048] [--steps 256] [--rounds 15]
                                         [--iteration-rounds 200]

A jitted CartPole rollout (``callax.envs.CartPole``, auto-reset; ``lax.scan`` over ``--steps``
env steps of ``N`` vmapped envs; a uniformly random policy) in four variants, compiled
first, then timed in interleaved rounds in this one process (load from other processes hits
all variants alike):

- ``none``: the rollout alone;
- ``logwrap``: PureJaxRL's ``LogWrapper`` state (running return and length, the return and
  length of the last finished episode, the env's step count), written here after its
  published description;
- ``logwrap+info``: the same, and the per-step ``info`` stacked over the rollout as
  PureJaxRL's PPO does (``returned_episode``, ``returned_episode_returns``,
  ``returned_episode_lengths``, ``timestep`` as ``scan`` outputs, reduced afterwards);
- ``callax``: a default ``callax.TensorBoardCallback()``'s step state, updated with
  ``jax.vmap(callback.on_step)`` as the README's loop does.

Every variant returns a number that depends on all of its state, so nothing is dead code.
Each timing runs ``max(1, 512 // N)`` rollouts. For each ``N`` it prints the median
time per env step of ``none`` and the ratios of
medians (min-max over rounds of the per-round ratio in brackets), for wall time and for
the process's CPU time (all threads). Then the cost of one ``on_iteration`` of the default
callback after a rollout: jitted alone (median over ``--iteration-rounds`` calls, no flush;
mostly the dispatch of a program holding host calls, which JAX runs through its Python
path), and per iteration inside one jitted ``scan`` of 100 iterations, flushes included.

Nothing here assumes a CPU: the same script runs on a GPU (the device is printed).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import equinox as eqx
import jax
import jax.numpy as jnp
from _logwrap import logwrap_init, logwrap_step

import callax
from callax import IterationContext, ResetContext, StepContext
from callax.envs import CartPole

VARIANTS = ("none", "logwrap", "logwrap+info", "callax")


def total(tree) -> jax.Array:
    """One number depending on every leaf (keeps XLA from dropping any of it)."""
    return sum(jnp.sum(jnp.asarray(x, jnp.float32)) for x in jax.tree_util.tree_leaves(tree))


def make_rollout(variant: str, n_envs: int, n_steps: int, callback):
    env = CartPole()

    def init(key):
        if variant == "callax":
            keys = jax.random.split(key, n_envs)
            return jax.vmap(lambda k: callback.step_reset(ResetContext(), key=k))(keys)
        return None if variant == "none" else logwrap_init(n_envs)

    def track(stats, reward, done, key):
        if variant == "callax":
            ctx = StepContext(state=stats, done=done, reward=reward)
            keys = jax.random.split(key, n_envs)
            return jax.vmap(lambda c, k: callback.on_step(c, key=k))(ctx, keys), None
        if variant == "none":
            return None, None
        stats, info = logwrap_step(stats, reward, done)
        return stats, (info if variant == "logwrap+info" else None)

    def rollout(key, stats):
        k_reset, k_scan = jax.random.split(key)
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_reset, n_envs))

        # The key is carried, as PureJaxRL does: scanning over T pre-split keys would put
        # a buffer of T keys (2 KB at T = 256) in the loop body, over XLA:CPU's 512 bytes.
        def step(carry, _):
            obs, env_state, stats, k = carry
            k, k_act, k_env, k_cb = jax.random.split(k, 4)
            action = jax.random.bernoulli(k_act, 0.5, (n_envs,)).astype(jnp.int32)
            obs, env_state, reward, done, _ = jax.vmap(env.step)(
                jax.random.split(k_env, n_envs), env_state, action)
            stats, info = track(stats, reward, done, k_cb)
            return (obs, env_state, stats, k), info

        (obs, _, stats, _), infos = jax.lax.scan(step, (obs, env_state, stats, k_scan), None,
                                                 length=n_steps)
        out = jnp.sum(obs) + total(stats)
        if infos is not None:  # PureJaxRL's metric: mean return of the finished episodes
            finished = infos["returned_episode"]
            out += (jnp.sum(jnp.where(finished, infos["returned_episode_returns"], 0.0))
                    / jnp.maximum(jnp.sum(finished), 1) + total(infos["timestep"])
                    + total(infos["returned_episode_lengths"]))
        return out, stats

    return jax.jit(init), jax.jit(rollout)


def _fmt(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.3f} [{min(ratios):.2f}-{max(ratios):.2f}]"


def time_rollouts(n_envs: int, n_steps: int, rounds: int, callback) -> None:
    fns = {v: make_rollout(v, n_envs, n_steps, callback) for v in VARIANTS}
    key = jax.random.key(0)
    states = {v: init(key) for v, (init, _) in fns.items()}
    for v, (_, rollout) in fns.items():
        jax.block_until_ready(rollout(key, states[v]))  # compile and warm up
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    repeat = max(1, 512 // n_envs)  # rollouts per timing: a few ms at least
    for r in range(rounds):
        order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
        k = jax.random.fold_in(key, r)
        for v in order:
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(repeat):
                jax.block_until_ready(fns[v][1](k, states[v]))
            wall[v].append(time.perf_counter() - w0)
            cpu[v].append(time.process_time() - c0)
    per_step = n_envs * n_steps * repeat
    cells = []
    for name, times in (("wall", wall), ("cpu", cpu)):
        base = statistics.median(times["none"]) / per_step * 1e6
        ratios = {v: [a / b for a, b in zip(times[v], times["none"], strict=True)]
                  for v in VARIANTS[1:]}
        vs_log = [a / b for a, b in zip(times["callax"], times["logwrap"], strict=True)]
        cells.append(f"{name}: none {base:.3f} us/env-step | "
                     + " | ".join(f"{v}/none {_fmt(ratios[v])}" for v in VARIANTS[1:])
                     + f" | callax/logwrap {_fmt(vs_log)}")
    print(f"N={n_envs:>5}  " + f"\n{'':9}".join(cells), flush=True)


def time_on_iteration(n_envs: int, n_steps: int, rounds: int, callback,
                      per_loop: int = 100) -> tuple[float, float]:
    """Median seconds of one ``on_iteration`` after an ``n_steps`` rollout: jitted alone
    (one call per program: this includes the dispatch of a program that holds host calls,
    which JAX runs through its Python path, not its C++ fast path), and inside one jitted
    ``scan`` of ``per_loop`` iterations as a trainer runs it (per iteration, the buffer's
    flushes included)."""
    init, rollout = make_rollout("callax", n_envs, n_steps, callback)
    key = jax.random.key(1)
    _, step_state = rollout(key, init(key))
    state = callback.reset(ResetContext(), key=key)

    def one(state, step_state):
        ctx = IterationContext(state=state, step_state=step_state,
                               locals={"time_elapsed": 1.0, "num_timesteps": 1})
        return callback.on_iteration(ctx, key=key)

    @jax.jit
    def loop(state, step_state):
        del state  # each call a run of its own (reset inside), so its steps start again

        def body(state, i):  # steps increase from one iteration to the next
            later = eqx.tree_at(lambda s: s.step, step_state, step_state.step + i * n_steps)
            return one(state, later), None

        fresh = callback.reset(ResetContext(), key=key)
        return jax.lax.scan(body, fresh, jnp.arange(1, per_loop + 1))[0]

    def median(fn, calls, divide):
        jax.block_until_ready(fn(state, step_state))
        times = []
        for _ in range(calls):  # alone: always from the same state (the buffer never fills)
            start = time.perf_counter()
            jax.block_until_ready(fn(state, step_state))
            times.append((time.perf_counter() - start) / divide)
        return statistics.median(times)

    return median(jax.jit(one), rounds, 1), median(loop, max(3, rounds // 20), per_loop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", default="16,256,2048", help="comma-separated env counts")
    parser.add_argument("--steps", type=int, default=256, help="env steps per env per rollout")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed rounds")
    parser.add_argument("--iteration-rounds", type=int, default=200,
                        help="timed on_iteration calls per env count (0: skip)")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"jax {jax.__version__}, device {device.platform}: {device.device_kind}, "
          f"T={args.steps}, {args.rounds} interleaved rounds; ratios: median [min-max]")
    with tempfile.TemporaryDirectory() as logdir:
        callback = callax.TensorBoardCallback(name="bench", log_dir=logdir)
        envs = [int(n) for n in args.envs.split(",")]
        for n_envs in envs:
            time_rollouts(n_envs, args.steps, args.rounds, callback)
        if args.iteration_rounds:
            for n_envs in envs:
                alone, in_loop = time_on_iteration(n_envs, args.steps, args.iteration_rounds,
                                                   callback)
                print(f"on_iteration N={n_envs:>5}: {alone * 1e3:.3f} ms jitted alone, "
                      f"{in_loop * 1e3:.3f} ms per iteration in a jitted loop (medians)",
                      flush=True)


if __name__ == "__main__":
    main()
