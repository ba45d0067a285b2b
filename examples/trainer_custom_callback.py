"""PPO on CartPole from Python, with a custom callback next to TensorBoardCallback.

The custom callback counts finished episodes and stops training once the last episode of
every environment returned at least ``threshold`` (SB3's ``StopTrainingOnRewardThreshold``,
written as a pure JAX callback). The whole run, callbacks included, is one jitted program.

    python examples/trainer_custom_callback.py
    tensorboard --logdir runs
"""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, Key

import callax
from callax.envs import make
from callax.train import PPO


class EpisodeStepState(callax.AbstractCallbackStepState):
    """Per environment: the return of the episode in progress and of the last finished one."""

    episodes: Int[Array, ""]
    episode_return: Float[Array, ""]
    last_return: Float[Array, ""]


class StopState(callax.AbstractCallbackState):
    """Per run: episodes finished so far, the latest mean of the envs' last returns, and the
    env step at which the threshold was reached (-1 while it was not)."""

    episodes: Int[Array, ""]
    mean_last_return: Float[Array, ""]
    stopped_at: Int[Array, ""]


class StopOnReturn(callax.AbstractTrainingPassthroughCallback[StopState, EpisodeStepState]):
    """Counts episodes; stops when every env's last episode returned ``>= threshold``."""

    threshold: float

    def reset(self, ctx: callax.ResetContext, *, key: Key[Array, ""]) -> StopState:
        return StopState(jnp.asarray(0), jnp.asarray(jnp.nan), jnp.asarray(-1))

    def step_reset(self, ctx: callax.ResetContext, *, key: Key[Array, ""]) -> EpisodeStepState:
        return EpisodeStepState(jnp.asarray(0), jnp.asarray(0.0), jnp.asarray(-jnp.inf))

    def on_step(self, ctx: callax.StepContext, *, key: Key[Array, ""]) -> EpisodeStepState:
        # Called for every env step (vmapped over envs) with the raw env reward.
        s = ctx.state
        episode_return = s.episode_return + ctx.reward
        return EpisodeStepState(
            episodes=s.episodes + ctx.done,
            episode_return=jnp.where(ctx.done, 0.0, episode_return),
            last_return=jnp.where(ctx.done, episode_return, s.last_return),
        )

    def on_iteration(self, ctx: callax.IterationContext, *, key: Key[Array, ""]) -> StopState:
        # ctx.step_state holds every env's step state (leading axis = envs).
        last = ctx.step_state.last_return
        reached = jnp.all(last >= self.threshold)
        stopped_at = jnp.where((ctx.state.stopped_at < 0) & reached,
                               ctx.locals["num_timesteps"], ctx.state.stopped_at)
        return StopState(jnp.sum(ctx.step_state.episodes), jnp.mean(last), stopped_at)

    def continue_training(self, ctx: callax.IterationContext, *, key: Key[Array, ""]
                          ) -> Bool[Array, ""]:
        # Checked before every iteration, after on_iteration updated the state.
        return ctx.state.stopped_at < 0


def main() -> None:
    env = make("cartpole")
    ppo = PPO()  # defaults tuned for CartPole
    tensorboard = callax.TensorBoardCallback(name="ppo_custom_callback", env=env)
    stop = StopOnReturn(threshold=500.0)

    @jax.jit
    def train(key):
        return ppo.learn(env, total_timesteps=300_000, key=key, callback=[tensorboard, stop])

    start = time.perf_counter()
    result = jax.block_until_ready(train(jax.random.key(0)))
    elapsed = time.perf_counter() - start
    # the callback list's state is a tuple of the children's states, in order
    stop_state = result.callback_state.states[1]
    print(f"stopped after {int(result.iterations)} iterations, {int(result.total_timesteps):,} "
          f"env steps, {int(stop_state.episodes)} episodes ({elapsed:.1f} s with compilation)")
    print(f"mean of the envs' last episode returns: {float(stop_state.mean_last_return):.1f}")

    # The trained policy, greedy, on a fresh episode.
    @eqx.filter_jit
    def evaluate(policy, key):
        obs, state = env.reset(key)

        def step(carry, k):
            obs, state, total, alive = carry
            obs, state, reward, done, _ = env.step(k, state, policy(obs))
            return (obs, state, total + alive * reward, alive & ~done), None

        carry = (obs, state, jnp.asarray(0.0), jnp.asarray(True))
        (_, _, total, _), _ = jax.lax.scan(step, carry, jax.random.split(key, 500))
        return total

    print(f"greedy policy return: {float(evaluate(result.policy, jax.random.key(1))):.0f}")
    jax.effects_barrier()
    callax.flush_all()
    print(f"tensorboard --logdir {tensorboard.tb_writer.log_dir}")


if __name__ == "__main__":
    main()
