"""Contexts by keyword: a foreign loop passes what it has, every other field has a default."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import callax
from callax import IterationContext, ResetContext, StepContext, TrainingContext
from conftest import read_run

S, SS = callax.EmptyCallbackState(), callax.EmptyCallbackStepState()


def test_defaults():
    ctx = IterationContext(state=S, step_state=SS, training_log={"loss": 0.5})
    assert (ctx.env, ctx.policy, ctx.opt_state, ctx.iteration_count, ctx.locals) == (
        None, None, None, 0, {})
    assert TrainingContext(state=S, step_state=SS).total_timesteps == 0
    assert IterationContext(state=S, step_state=SS).training_log == {}
    step = StepContext(state=SS, done=True, reward=1.0)
    assert (step.env, step.policy, step.locals) == (None, None, {})


def test_step_context_needs_done_and_reward():
    with pytest.raises(TypeError, match="done= and reward="):
        StepContext(state=SS, reward=1.0)
    with pytest.raises(TypeError, match="done= and reward="):
        StepContext(state=SS, done=True)


def test_keyword_only_loop_writes_episode_and_train_tags(logdir):
    """A loop that knows nothing of env/policy/opt_state: every value read back matches a
    NumPy computation of the scripted episodes."""
    callback = callax.TensorBoardCallback(name="kw", log_dir=logdir, flush_every=1)
    key = jax.random.key(0)
    n_envs = 2
    rewards = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)  # [step, env]
    dones = np.array([[False, True], [True, False], [False, True]])

    @jax.jit
    def run(key):
        keys = jax.random.split(key, n_envs)
        state = callback.reset(ResetContext(), key=key)
        step_state = jax.vmap(lambda k: callback.step_reset(ResetContext(), key=k))(keys)
        state = callback.on_training_start(
            TrainingContext(state=state, step_state=step_state), key=key)

        def step(step_state, xs):
            reward, done = xs
            return jax.vmap(lambda s, d, r, k: callback.on_step(
                StepContext(state=s, done=d, reward=r), key=k))(
                step_state, done, reward, keys), None

        step_state, _ = jax.lax.scan(step, step_state, (jnp.asarray(rewards),
                                                        jnp.asarray(dones)))
        state = callback.on_iteration(IterationContext(
            state=state, step_state=step_state, training_log={"loss": jnp.float32(0.25)}),
            key=key)
        return callback.on_training_end(TrainingContext(state=state, step_state=step_state),
                                        key=key)

    run(key)
    scalars = read_run(f"{logdir}/kw")
    # env 0: one episode 1 + 3 = 4 (length 2); env 1: episodes 2 (len 1) and 4 + 6 = 10 (len 2)
    assert scalars["train/loss"] == [(6, 0.25)]
    assert scalars["rollout/ep_rew_mean"] == [(6, pytest.approx((4 + 2 + 10) / 3))]
    assert scalars["rollout/ep_len_mean"] == [(6, pytest.approx((2 + 1 + 2) / 3))]
