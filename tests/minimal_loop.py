"""A hand-written training loop driving callbacks on scripted rewards and dones.

Scripted inputs let the tests compute every expected value independently in NumPy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from callax import IterationContext, ResetContext, StepContext, TrainingContext


def drive(callback, rewards, dones, key, opt_state=None, log_scale=1.0):
    """Run ``rewards.shape[0]`` iterations of ``rewards.shape[1]`` steps over
    ``rewards.shape[2]`` envs. Stops early when ``continue_training`` is false.

    Returns ``(state, step_state, iterations_done)``.
    """
    rewards, dones = jnp.asarray(rewards), jnp.asarray(dones)
    n_iters, n_steps, n_envs = rewards.shape
    env_keys = jax.random.split(key, n_envs)
    state = callback.reset(ResetContext(), key=key)
    step_state = jax.vmap(lambda k: callback.step_reset(ResetContext(), key=k))(env_keys)
    total = n_iters * n_steps * n_envs
    state = callback.on_training_start(
        TrainingContext(state, step_state, None, None, total, 0, opt_state), key=key
    )

    def iteration_ctx(state, step_state, i, log, active=True):
        return IterationContext(state, step_state, None, None, i, opt_state, log,
                                {"active": active})

    def keep_going(state, step_state, i):
        # Asked once per iteration (a host-read stop flag may change between two asks).
        ctx = iteration_ctx(state, step_state, i, {})
        return (i < n_iters) & callback.continue_training(ctx, key=key)

    def cond(carry):
        return carry[3]

    def body(carry):
        state, step_state, i, _ = carry
        # Under vmap the body also runs for seeds whose loop already ended: tell callbacks.
        active = cond(carry)

        def step(step_state, xs):
            reward, done = xs
            ctx = StepContext(step_state, None, None, done, reward)
            return jax.vmap(lambda c, k: callback.on_step(c, key=k))(ctx, env_keys), None

        step_state, _ = jax.lax.scan(step, step_state, (rewards[i], dones[i]))
        log = {"loss": log_scale * i.astype(jnp.float32), "iteration": i}
        state = callback.on_iteration(iteration_ctx(state, step_state, i + 1, log, active),
                                      key=key)
        return state, step_state, i + 1, keep_going(state, step_state, i + 1)

    first = keep_going(state, step_state, jnp.int32(0))
    state, step_state, i, _ = jax.lax.while_loop(cond, body,
                                                 (state, step_state, jnp.int32(0), first))
    state = callback.on_training_end(
        TrainingContext(state, step_state, None, None, total, i, opt_state), key=key
    )
    return state, step_state, i
