"""A hand-written, fully jitted rollout loop driving callax callbacks.

Runs a simple REINFORCE-style agent on callax's pure-JAX CartPole for a few iterations,
with a TensorBoardCallback and a small custom callback that stops training once the mean
episode return passes a threshold. Every hook is called where a trainer would call it.

    python examples/custom_loop.py [--iterations 300] [--logdir runs]
    tensorboard --logdir runs
"""

from __future__ import annotations

import argparse
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Key

import callax
from callax import (
    AbstractStepStatelessCallback,
    AbstractTrainingPassthroughCallback,
    IterationContext,
    ResetContext,
    StepContext,
    TrainingContext,
)
from callax.envs import CartPole

N_ENVS, N_STEPS = 8, 64


class StopAtReturnState(callax.AbstractCallbackState):
    best: Float[Array, ""]


class StopAtReturn(
    AbstractStepStatelessCallback[StopAtReturnState],
    AbstractTrainingPassthroughCallback[StopAtReturnState, callax.EmptyCallbackStepState],
):
    """Stops training when the iteration's mean reward-to-go proxy passes a threshold.

    It reads the TensorBoardCallback's step state through ``ctx.locals`` (what a trainer
    may pass to callbacks) and keeps the best mean episode return seen so far.
    """

    threshold: float

    def reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> StopAtReturnState:
        return StopAtReturnState(jnp.asarray(-jnp.inf))

    def on_iteration(self, ctx: IterationContext, *, key: Key[Array, ""]) -> StopAtReturnState:
        mean_return = jnp.nanmean(ctx.locals["average_return"])
        return StopAtReturnState(jnp.fmax(ctx.state.best, mean_return))

    def continue_training(self, ctx: IterationContext, *, key: Key[Array, ""]
                          ) -> Bool[Array, ""]:
        return ~(ctx.state.best >= self.threshold)


class Policy(eqx.Module):
    mlp: eqx.nn.MLP

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(4, 2, 32, 2, activation=jnp.tanh, key=key)

    def __call__(self, obs):
        return self.mlp(obs)


def train(key, iterations: int, tensorboard: callax.TensorBoardCallback, threshold: float):
    env = CartPole()
    stop = StopAtReturn(threshold)
    callback = callax.CallbackList([tensorboard, stop])
    key, policy_key = jax.random.split(key)
    params, static = eqx.partition(Policy(policy_key), eqx.is_array)
    policy = eqx.combine(params, static)
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=1e-2)
    opt_state = optimizer.init(params)
    obs, env_state = jax.vmap(env.reset)(jax.random.split(key, N_ENVS))

    cb_state = callback.reset(ResetContext(), key=key)
    step_state = jax.vmap(lambda k: callback.step_reset(ResetContext(), key=k))(
        jax.random.split(key, N_ENVS)
    )
    total = iterations * N_ENVS * N_STEPS
    cb_state = callback.on_training_start(
        TrainingContext(cb_state, step_state, env, policy, total, 0, opt_state), key=key
    )

    def locals_of(step_state):
        return {"average_return": step_state.states[0].average_return}

    def rollout(policy, obs, env_state, step_state, key):
        def step(carry, key):
            obs, env_state, step_state = carry
            k_act, k_env = jax.random.split(key)
            logits = jax.vmap(policy)(obs)
            action = jax.random.categorical(k_act, logits)
            next_obs, env_state, reward, done, info = jax.vmap(env.step)(
                jax.random.split(k_env, N_ENVS), env_state, action
            )
            # One step state per env: vmap over (state, done, reward); env/policy are shared.
            step_state = jax.vmap(
                lambda s, d, r: callback.on_step(StepContext(s, env, policy, d, r), key=key)
            )(step_state, done, reward)  # the raw env reward
            return (next_obs, env_state, step_state), (obs, action, reward, done)

        keys = jax.random.split(key, N_STEPS)
        return jax.lax.scan(step, (obs, env_state, step_state), keys)

    def loss_fn(policy, obs, action, reward, done):
        def discounted(carry, x):
            r, d = x
            carry = r + 0.99 * carry * (1 - d)
            return carry, carry

        _, returns = jax.lax.scan(discounted, jnp.zeros(N_ENVS), (reward, done), reverse=True)
        advantage = (returns - returns.mean()) / (returns.std() + 1e-8)
        logp = jax.nn.log_softmax(jax.vmap(jax.vmap(policy))(obs))
        taken = jnp.take_along_axis(logp, action[..., None], -1)[..., 0]
        entropy = -(jnp.exp(logp) * logp).sum(-1).mean()
        return -(taken * advantage).mean() - 0.01 * entropy, entropy

    def cond(carry):
        params, opt_state, obs, env_state, cb_state, step_state, i, key = carry
        ctx = IterationContext(cb_state, step_state, env, None, i, opt_state, {},
                               locals_of(step_state))
        return (i < iterations) & callback.continue_training(ctx, key=key)

    def body(carry):
        params, opt_state, obs, env_state, cb_state, step_state, i, key = carry
        policy = eqx.combine(params, static)
        key, k_roll = jax.random.split(key)
        (obs, env_state, step_state), batch = rollout(policy, obs, env_state, step_state, k_roll)
        (loss, entropy), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(policy, *batch)
        updates, opt_state = optimizer.update(grads, opt_state)
        params = eqx.apply_updates(params, updates)
        log = {"loss": loss, "entropy": entropy}
        ctx = IterationContext(cb_state, step_state, env, policy, i + 1, opt_state, log,
                               locals_of(step_state))
        cb_state = callback.on_iteration(ctx, key=key)
        return params, opt_state, obs, env_state, cb_state, step_state, i + 1, key

    carry = (params, opt_state, obs, env_state, cb_state, step_state, jnp.int32(0), key)
    params, opt_state, obs, env_state, cb_state, step_state, i, key = jax.lax.while_loop(
        cond, body, carry
    )
    cb_state = callback.on_training_end(
        TrainingContext(cb_state, step_state, env, eqx.combine(params, static), total, i,
                        opt_state), key=key
    )
    return i, cb_state.states[1].best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--threshold", type=float, default=200.0)
    parser.add_argument("--logdir", default="runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tensorboard = callax.TensorBoardCallback(env=CartPole(), policy="reinforce",
                                             log_dir=args.logdir)
    run = jax.jit(train, static_argnums=(1, 3))
    start = time.perf_counter()
    iterations, best = run(jax.random.key(args.seed), args.iterations, tensorboard,
                           args.threshold)
    jax.block_until_ready(best)
    print(f"{int(iterations)} iterations ({int(iterations) * N_ENVS * N_STEPS} env steps) in "
          f"{time.perf_counter() - start:.1f} s; best mean episode return {float(best):.1f}")
    print(f"TensorBoard run: {tensorboard.tb_writer.log_dir}")
    print(f"View it with: tensorboard --logdir {args.logdir}")


if __name__ == "__main__":
    main()
