"""Cost of the per-step episode statistics: plain vs packed step state, in one process.

    python benchmarks/bench_step_state.py [--envs 4,64,1024] [--rounds 15] [--steps 2048]

A jitted CartPole rollout (``lax.scan`` over env steps of ``n_envs`` vmapped envs, actions
from a linear policy) in three variants, compiled first and then timed in interleaved
rounds (so load from other processes hits all alike):

- ``none``: no step state (the rollout alone);
- ``plain``: [`callax.TensorBoardCallbackStepState`][] as it is (six arrays, one per number);
- ``packed``: the former representation (all six numbers in one ``complex64[..., 3]`` array,
  the two counts as ``int32`` bit patterns stored in floats), kept here for the comparison.

Prints the median env steps/s of each variant and the ratios of median times
``plain / packed``, ``plain / none`` and ``packed / none`` per env count. This is the worst
case for the step state: a rollout without any learning work to hide its cost.

Run it pinned to one core (``taskset -c 0 python benchmarks/bench_step_state.py``) for
ratios that agree within ~2 % from one process to the next; on all cores XLA:CPU's thread
hand-offs make them vary by several percent (see ``docs/performance.md``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp

from callax import TensorBoardCallbackStepState
from callax.envs import CartPole

_RETURN, _LENGTH, _STEP = 0, 1, 2
ALPHA = 0.9


class PackedStepState(eqx.Module):
    """The packed step state callax used before (for comparison only)."""

    packed: jax.Array

    @classmethod
    def initial(cls) -> PackedStepState:
        bits = jax.lax.bitcast_convert_type(jnp.int32(0), jnp.float32)
        return cls(jnp.stack([jax.lax.complex(jnp.float32(0), jnp.float32(jnp.nan)),
                              jax.lax.complex(bits, jnp.float32(jnp.nan)),
                              jax.lax.complex(bits, jnp.float32(0))]))

    def next(self, reward, done, alpha) -> PackedStepState:
        packed = self.packed
        field = jnp.arange(3, dtype=jnp.int32)
        is_return, is_length, is_step = field == _RETURN, field == _LENGTH, field == _STEP
        reward = jnp.asarray(reward, jnp.float32)[..., None]
        done = jnp.asarray(done, jnp.bool_)[..., None]
        real, average = jnp.real(packed), jnp.imag(packed)
        count = jax.lax.bitcast_convert_type(real, jnp.int32) + 1
        episode_return = jnp.where(is_return, real, 0.0) + reward
        finished = jnp.where(is_return, episode_return,
                             jnp.where(is_length, count, 0).astype(jnp.float32))
        updated = jnp.where(jnp.isnan(average), finished,
                            alpha * average + (1 - alpha) * finished)
        new_average = jnp.where(is_step, done.astype(jnp.float32),
                                jnp.where(done, updated, average))
        new_count = jnp.where(is_length & done, 0, count)
        new_real = jnp.where(is_return, jnp.where(done, 0.0, episode_return),
                             jax.lax.bitcast_convert_type(new_count, jnp.float32))
        return PackedStepState(jax.lax.complex(new_real, new_average))

    @property
    def average_return(self):
        return jnp.imag(self.packed[..., _RETURN])


VARIANTS = {"none": None, "plain": TensorBoardCallbackStepState, "packed": PackedStepState}


def make_rollout(n_envs: int, n_steps: int, variant: str):
    env = CartPole()
    state_class = VARIANTS[variant]

    @jax.jit
    def rollout(key):
        k_reset, k_w, k_scan = jax.random.split(key, 3)
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_reset, n_envs))
        weights = jax.random.normal(k_w, (4,))
        stats = None
        if state_class is not None:
            stats = jax.vmap(lambda _: state_class.initial())(jnp.arange(n_envs))

        def step(carry, k):
            obs, env_state, stats = carry
            action = (obs @ weights > 0).astype(jnp.int32)
            obs, env_state, reward, done, _ = jax.vmap(env.step)(
                jax.random.split(k, n_envs), env_state, action)
            if stats is not None:
                stats = jax.vmap(lambda s, r, d: s.next(r, d, ALPHA))(stats, reward, done)
            return (obs, env_state, stats), None

        (obs, _, stats), _ = jax.lax.scan(step, (obs, env_state, stats),
                                          jax.random.split(k_scan, n_steps))
        # Both the observations and the statistics are results: nothing is dead code.
        return jnp.sum(obs) + (0.0 if stats is None else jnp.nansum(stats.average_return))

    return rollout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", default="4,64,1024", help="comma-separated env counts")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed rounds")
    parser.add_argument("--steps", type=int, default=2048, help="env steps per env per run")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {args.steps} steps/env, "
          f"{args.rounds} rounds")
    print(f"{'envs':>6} {'none':>12} {'plain':>12} {'packed':>12}   "
          f"{'plain/packed':>12} {'plain/none':>10} {'packed/none':>11}")
    for n_envs in (int(n) for n in args.envs.split(",")):
        # Fewer steps for many envs keeps every run near the same wall time.
        n_steps = max(64, args.steps * 4 // max(n_envs, 4)) if n_envs > 64 else args.steps
        fns = {v: make_rollout(n_envs, n_steps, v) for v in VARIANTS}
        key = jax.random.key(0)
        for fn in fns.values():
            fn(key).block_until_ready()  # compile and warm up
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for v in order:
                start = time.perf_counter()
                fns[v](jax.random.fold_in(key, r)).block_until_ready()
                times[v].append(time.perf_counter() - start)
        med = {v: statistics.median(t) for v, t in times.items()}
        rate = {v: n_envs * n_steps / med[v] for v in VARIANTS}
        print(f"{n_envs:>6} {rate['none']:>12,.0f} {rate['plain']:>12,.0f} "
              f"{rate['packed']:>12,.0f}   {med['plain'] / med['packed']:>12.3f} "
              f"{med['plain'] / med['none']:>10.3f} {med['packed'] / med['none']:>11.3f}",
              flush=True)


if __name__ == "__main__":
    main()
