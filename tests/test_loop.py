"""``callax.train.run_training``: every hook at its documented point, early stopping,
eager / jit / vmap; and ``ProgressBarCallback`` driven by it."""

from __future__ import annotations

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jaxtyping import Array, Bool, Float, Int, Key

import callax
from callax import (
    AbstractCallbackState,
    AbstractCallbackStepState,
    AbstractContinuingCallback,
    AbstractStatelessCallback,
    AbstractStepStatelessCallback,
    AbstractTrainingPassthroughCallback,
    IterationContext,
    ResetContext,
    StepContext,
    TrainingContext,
)
from callax.callbacks import ProgressBarCallback
from callax.envs import CartPoleParams, make
from callax.train import run_training
from conftest import read_run

N_ENVS, N_STEPS, N_ITERS = 3, 7, 4
MAX_EPISODE = 5  # CartPole truncates after 5 steps: truncations inside every rollout
ENV = make("cartpole")
ENV_PARAMS = CartPoleParams(max_steps_in_episode=MAX_EPISODE)


# --- callbacks built from the core's partial bases -------------------------------------------


class EpisodeStepState(AbstractCallbackStepState):
    steps: Int[Array, ""]
    episodes: Int[Array, ""]
    terminations: Int[Array, ""]
    episode_return: Float[Array, ""]
    max_return: Float[Array, ""]
    mismatches: Int[Array, ""]


class EpisodeCounter(AbstractStatelessCallback[EpisodeStepState], AbstractContinuingCallback):
    """Per env: steps, finished episodes and their raw returns, and checks that ``done`` is
    ``terminated | truncated`` of ``locals``."""

    def step_reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> EpisodeStepState:
        zero = jnp.asarray(0, jnp.int32)
        return EpisodeStepState(zero, zero, zero, jnp.asarray(0.0), jnp.asarray(0.0), zero)

    def on_step(self, ctx: StepContext, *, key: Key[Array, ""]) -> EpisodeStepState:
        s = ctx.state
        done = jnp.asarray(ctx.done)
        ret = s.episode_return + ctx.reward
        expected_done = ctx.locals["terminated"] | ctx.locals["truncated"]
        return EpisodeStepState(
            steps=s.steps + 1,
            episodes=s.episodes + done,
            terminations=s.terminations + ctx.locals["terminated"],
            episode_return=jnp.where(done, 0.0, ret),
            max_return=jnp.where(done, jnp.maximum(s.max_return, ret), s.max_return),
            mismatches=s.mismatches + (done != expected_done),
        )


class HookState(AbstractCallbackState):
    clock: Int[Array, ""]  # run-level hook calls so far
    reset_calls: Int[Array, ""]
    start_at: Int[Array, ""]
    start_iteration_count: Int[Array, ""]
    start_total: Int[Array, ""]
    iterations: Int[Array, ""]
    bad_iteration_counts: Int[Array, ""]  # on_iteration saw iteration_count != its index + 1
    bad_step_counts: Int[Array, ""]  # step states not advanced by n_steps per iteration
    bad_learning_rate: Int[Array, ""]
    loss_sum: Float[Array, ""]
    end_at: Int[Array, ""]
    end_calls: Int[Array, ""]
    end_iteration_count: Int[Array, ""]
    stop_after: Int[Array, ""]


class HookRecorder(AbstractStepStatelessCallback[HookState]):
    """Records when and how often each run-level hook runs; stops after ``stop_after``
    iterations (drawn per seed between ``stop_low`` and ``stop_high`` from the reset key) using
    only its state, so it also checks that ``continue_training`` sees ``on_iteration``'s
    result."""

    stop_low: Int[Array, ""]
    stop_high: Int[Array, ""]

    def __init__(self, stop_low, stop_high):
        self.stop_low = jnp.asarray(stop_low, jnp.int32)
        self.stop_high = jnp.asarray(stop_high, jnp.int32)

    def reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> HookState:
        z = jnp.asarray(0, jnp.int32)
        stop = jax.random.randint(key, (), self.stop_low, self.stop_high + 1, jnp.int32)
        return HookState(z, z + 1, z - 1, z - 1, z - 1, z, z, z, z, jnp.asarray(0.0), z - 1, z,
                         z - 1, stop)

    def on_training_start(self, ctx: TrainingContext, *, key: Key[Array, ""]) -> HookState:
        s = ctx.state
        return eqx.tree_at(
            lambda s: (s.clock, s.start_at, s.start_iteration_count, s.start_total),
            s, (s.clock + 1, s.clock, jnp.asarray(ctx.iteration_count, jnp.int32),
                jnp.asarray(ctx.total_timesteps, jnp.int32)),
        )

    def on_iteration(self, ctx: IterationContext, *, key: Key[Array, ""]) -> HookState:
        s = ctx.state
        iteration = s.iterations + 1
        num = jnp.asarray(ctx.locals["num_timesteps"], jnp.int32)
        lr = callax.callbacks.find_learning_rate(ctx.opt_state)
        return eqx.tree_at(
            lambda s: (s.clock, s.iterations, s.bad_iteration_counts, s.bad_step_counts,
                       s.bad_learning_rate, s.loss_sum),
            s,
            (s.clock + 1, iteration,
             s.bad_iteration_counts + (ctx.iteration_count != iteration),
             s.bad_step_counts + (num != iteration * N_ENVS * N_STEPS),
             s.bad_learning_rate + (jnp.abs(lr - 0.125) > 1e-6),
             s.loss_sum + ctx.training_log["loss"]),
        )

    def on_training_end(self, ctx: TrainingContext, *, key: Key[Array, ""]) -> HookState:
        s = ctx.state
        return eqx.tree_at(
            lambda s: (s.clock, s.end_at, s.end_calls, s.end_iteration_count),
            s, (s.clock + 1, s.clock, s.end_calls + 1,
                jnp.asarray(ctx.iteration_count, jnp.int32)),
        )

    def continue_training(self, ctx: IterationContext, *, key: Key[Array, ""]
                          ) -> Bool[Array, ""]:
        # Before the first iteration the log exists with NaN values.
        log_ok = jnp.isnan(ctx.training_log["loss"]) | (ctx.iteration_count > 0)
        return (ctx.state.iterations < ctx.state.stop_after) & log_ok


class StopWhenIteration(AbstractStatelessCallback, AbstractStepStatelessCallback):
    """No state at all: stops by looking at ``ctx.iteration_count`` only."""

    at: int = eqx.field(static=True)

    def continue_training(self, ctx: IterationContext, *, key: Key[Array, ""]
                          ) -> Bool[Array, ""]:
        return jnp.asarray(ctx.iteration_count < self.at)


# --- a trivial agent: random actions, a fake update with an injected learning rate -----------


class RandomAgent(eqx.Module):
    policy: Array
    opt_state: optax.OptState
    updates: Int[Array, ""]


OPTIMIZER = optax.inject_hyperparams(optax.sgd)(learning_rate=0.125)


def init_fn(key):
    params = jnp.zeros(2)
    return RandomAgent(params, OPTIMIZER.init(params), jnp.asarray(0, jnp.int32))


def act_fn(agent, obs, key):
    action = jax.random.randint(key, (obs.shape[0],), 0, 2, jnp.int32)
    return action, {"obs_sum": obs.sum(-1)}


def update_fn(agent, rollout, key):
    assert rollout.aux["obs_sum"].shape == rollout.reward.shape
    grads = jnp.ones(2)
    updates, opt_state = OPTIMIZER.update(grads, agent.opt_state, agent.policy)
    agent = RandomAgent(optax.apply_updates(agent.policy, updates), opt_state, agent.updates + 1)
    return agent, {"loss": jnp.sum(rollout.reward), "nested": {"x": jnp.asarray(1.0)}}


def train(key, stop_low=N_ITERS + 5, stop_high=N_ITERS + 5, extra=()):
    callbacks = [EpisodeCounter(), HookRecorder(stop_low, stop_high), *extra]
    return run_training(
        ENV, init_fn=init_fn, act_fn=act_fn, update_fn=update_fn, callback=callbacks, key=key,
        n_envs=N_ENVS, n_steps=N_STEPS, n_iterations=N_ITERS, env_params=ENV_PARAMS,
        total_timesteps=N_ITERS * N_ENVS * N_STEPS - 1,
    )


class ActiveWriter(AbstractStepStatelessCallback, AbstractTrainingPassthroughCallback,
                   AbstractContinuingCallback):
    """Writes one point per iteration, only for seeds still training (``locals["active"]``)."""

    writer: callax.JITSummaryWriter

    def reset(self, ctx: ResetContext, *, key: Key[Array, ""]):
        return callax.EmptyCallbackState()

    def on_iteration(self, ctx: IterationContext, *, key: Key[Array, ""]):
        self.writer.write_rows(("iteration",), jnp.asarray(ctx.locals["num_timesteps"])[None],
                               jnp.asarray(ctx.iteration_count, jnp.float32)[None, None],
                               when=ctx.locals["active"])
        return ctx.state


def train_written(key, stop_low, stop_high, writer):
    return train(key, stop_low, stop_high, extra=(ActiveWriter(writer),))


train_jit = jax.jit(train)
# One program for every vmapped test: the writer is an argument, so a new one (another run
# directory) reuses it.
train_vmap = jax.jit(jax.vmap(train_written, in_axes=(0, None, None, None)))


def check_points_of_active_seeds(log_dir, stops):
    """Each seed wrote one point per iteration it trained (``locals["active"]``), no more."""
    for i, stop in enumerate(stops):
        points = read_run(os.path.join(log_dir, f"seed_{i}"))["iteration"]
        assert points == [((n + 1) * N_ENVS * N_STEPS, float(n + 1)) for n in range(stop)]


def check_full_run(result, iterations=N_ITERS):
    hooks = result.callback_state.states[1]
    steps = result.callback_step_state.states[0]
    n = iterations
    assert int(result.iterations) == n
    assert int(result.total_timesteps) == n * N_ENVS * N_STEPS
    assert int(result.agent_state.updates) == n
    # hooks: reset once, start first, n iterations, end last
    assert int(hooks.reset_calls) == 1
    assert int(hooks.start_at) == 0
    assert int(hooks.start_iteration_count) == 0
    assert int(hooks.start_total) == N_ITERS * N_ENVS * N_STEPS - 1
    assert int(hooks.iterations) == n
    assert int(hooks.end_at) == n + 1
    assert int(hooks.end_calls) == 1
    assert int(hooks.end_iteration_count) == n
    assert int(hooks.bad_iteration_counts) == 0
    assert int(hooks.bad_step_counts) == 0
    assert int(hooks.bad_learning_rate) == 0
    # training_log reached on_iteration: sum of rewards = steps (CartPole pays 1 per step)
    assert float(hooks.loss_sum) == pytest.approx(n * N_ENVS * N_STEPS)
    # on_step: once per env step, raw rewards, done = terminated | truncated
    np.testing.assert_array_equal(np.asarray(steps.steps), n * N_STEPS)
    assert int(np.sum(steps.mismatches)) == 0
    assert np.all(np.asarray(steps.episodes) >= (n * N_STEPS) // MAX_EPISODE)
    # returns are raw: never above the episode length (no bootstrapped value added)
    assert np.all(np.asarray(steps.max_return) <= MAX_EPISODE)
    if n * N_STEPS >= MAX_EPISODE:  # truncations happened
        assert np.any(np.asarray(steps.max_return) == MAX_EPISODE)


def test_hooks_eager():
    check_full_run(train(jax.random.key(0)))


def test_hooks_jit_no_retrace():
    check_full_run(train_jit(jax.random.key(1), N_ITERS + 5, N_ITERS + 5))
    # A new callback instance with the same configuration does not recompile.

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def once(key, callbacks):
        return run_training(
            ENV, init_fn=init_fn, act_fn=act_fn, update_fn=update_fn, callback=callbacks,
            key=key, n_envs=N_ENVS, n_steps=N_STEPS, n_iterations=1, env_params=ENV_PARAMS)

    for seed in range(2):
        once(jax.random.key(seed), [EpisodeCounter(), HookRecorder(9, 9)])


def test_hooks_vmap(tmp_path):
    writer = callax.JITSummaryWriter(str(tmp_path / "full"))
    result = train_vmap(jax.random.split(jax.random.key(2), 6), N_ITERS + 5, N_ITERS + 5,
                        writer)
    for i in range(6):
        check_full_run(jax.tree.map(lambda x: x[i], result))
    check_points_of_active_seeds(str(tmp_path / "full"), [N_ITERS] * 6)


@pytest.mark.parametrize("stop", [0, 1, 2])
def test_early_stop(stop):
    result = train_jit(jax.random.key(3), stop, stop)
    check_full_run(result, iterations=stop)


def test_early_stop_per_seed_under_vmap(tmp_path):
    """Seeds stop at different iterations; each keeps exactly its own count."""
    keys = jax.random.split(jax.random.key(4), 6)
    result = train_vmap(keys, 1, 3, callax.JITSummaryWriter(str(tmp_path / "early")))
    stops = np.asarray(result.callback_state.states[1].stop_after)
    assert len(set(stops.tolist())) > 1
    for i in range(6):
        check_full_run(jax.tree.map(lambda x: x[i], result), iterations=int(stops[i]))


def test_active_flag_masks_stopped_seeds(tmp_path):
    """Under vmap the loop body also runs for seeds that already stopped; ``active`` tells
    callbacks with host effects to skip them, so each seed writes exactly its own points."""
    writer = callax.JITSummaryWriter(str(tmp_path / "active"))
    keys = jax.random.split(jax.random.key(4), 6)
    result = train_vmap(keys, 1, 3, writer)
    stops = np.asarray(result.callback_state.states[1].stop_after)
    assert len(set(stops.tolist())) > 1
    check_points_of_active_seeds(str(tmp_path / "active"), stops.tolist())


def test_stop_on_iteration_count_stateless():
    result = jax.jit(lambda k: train(k, extra=(StopWhenIteration(2),)))(jax.random.key(5))
    check_full_run(result, iterations=2)


def test_no_callback_and_empty_list():
    for callback in (None, []):
        result = run_training(
            ENV, init_fn=init_fn, act_fn=act_fn, update_fn=update_fn, callback=callback,
            key=jax.random.key(0), n_envs=2, n_steps=3, n_iterations=2, env_params=ENV_PARAMS)
        assert int(result.iterations) == 2
        assert int(result.total_timesteps) == 12


def test_legacy_key_accepted():
    result = jax.jit(lambda k: run_training(
        ENV, init_fn=init_fn, act_fn=act_fn, update_fn=update_fn, callback=None, key=k,
        n_envs=2, n_steps=3, n_iterations=1, env_params=ENV_PARAMS))(jax.random.PRNGKey(0))
    assert int(result.iterations) == 1


def test_bad_sizes():
    with pytest.raises(ValueError, match="n_envs"):
        run_training(ENV, init_fn=init_fn, act_fn=act_fn, update_fn=update_fn, callback=None,
                     key=jax.random.key(0), n_envs=0, n_steps=3, n_iterations=1)


# --- ProgressBarCallback ----------------------------------------------------------------------


def _progress_one(key, bar):
    return run_training(
        ENV, init_fn=init_fn, act_fn=act_fn, update_fn=update_fn, callback=bar, key=key,
        n_envs=N_ENVS, n_steps=N_STEPS, n_iterations=N_ITERS, env_params=ENV_PARAMS)


# The bar is an argument: new bars (other handles, other `every`) reuse the compiled program.
_progress_jit = jax.jit(_progress_one)
_progress_vmap = jax.jit(jax.vmap(_progress_one, in_axes=(0, None)))


def progress_run(keys, bar):
    return _progress_vmap(keys, bar) if keys.ndim else _progress_jit(keys, bar)


@pytest.mark.parametrize("n_seeds", [0, 2])
def test_progress_bar_prints_once_per_update(capsys, n_seeds):
    total = N_ITERS * N_ENVS * N_STEPS
    bar = ProgressBarCallback(total, every=1, min_interval=0.0)
    keys = jax.random.split(jax.random.key(0), n_seeds) if n_seeds else jax.random.key(0)
    progress_run(keys, bar)
    jax.effects_barrier()
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    # one line per iteration (the last one is the final line), whatever the number of seeds
    assert len(lines) == N_ITERS, lines
    assert lines[-1].startswith(f"callax: {total:,}/{total:,} steps (100%)")
    assert lines[0].startswith(f"callax: {N_ENVS * N_STEPS:,}/{total:,} steps")
    assert ("2 seeds" in lines[0]) == (n_seeds == 2)
    assert all("steps/s" in line for line in lines)


def test_progress_bar_every_and_rate_limit(capsys):
    total = N_ITERS * N_ENVS * N_STEPS
    progress_run(jax.random.key(0), ProgressBarCallback(total, every=2, min_interval=0.0))
    jax.effects_barrier()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == N_ITERS // 2  # iterations 2 and 4; the final line is not repeated
    assert "(100%)" in lines[-1]
    # every=3: iteration 3, then the final line at the end
    progress_run(jax.random.key(0), ProgressBarCallback(total, every=3, min_interval=0.0))
    jax.effects_barrier()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "(75%)" in lines[0] and "(100%)" in lines[1]
    # a long interval: only the final line
    progress_run(jax.random.key(0), ProgressBarCallback(total, every=1, min_interval=3600.0))
    jax.effects_barrier()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "(100%)" in lines[0]


def test_progress_bar_bad_args():
    with pytest.raises(ValueError):
        ProgressBarCallback(0)
    with pytest.raises(ValueError):
        ProgressBarCallback(10, every=0)
