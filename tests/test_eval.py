"""EvalCallback with its stop conditions and best model, and ProgressBarCallback's total and
early stops: tiny PPO runs on CartPole, results read back from event files and checkpoints."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import callax
from callax import (
    EvalCallback,
    ProgressBarCallback,
    StopTrainingOnNoModelImprovement,
    StopTrainingOnRewardThreshold,
    evaluate_policy,
    load_checkpoint,
)
from callax.envs import CartPoleParams, make
from callax.train import PPO
from conftest import read_run, run_dirs
from quick_jit import quick_jit

CARTPOLE = make("cartpole")
SHORT = CartPoleParams(max_steps_in_episode=20)
TINY = PPO(n_envs=2, n_steps=16, batch_size=16, n_epochs=2, hidden_sizes=(16,))
PER_ITERATION = TINY.n_envs * TINY.n_steps  # 32
TOTAL = 8 * PER_ITERATION


def learn(key, callback):
    return TINY.learn(CARTPOLE, total_timesteps=TOTAL, key=key, callback=callback,
                      env_params=SHORT)


def eval_callback(logdir, stopper=None, after_eval=None, **kwargs):
    return EvalCallback(CARTPOLE, eval_freq=2 * PER_ITERATION, n_eval_episodes=3,
                        eval_env_params=SHORT, writer=str(logdir / "run"),
                        best_model_save_path=logdir / "best", callback_on_new_best=stopper,
                        callback_after_eval=after_eval, **kwargs)


def never_stop():
    # Same structure as the stopping configurations (no recompilation), never reached.
    return StopTrainingOnRewardThreshold(1e9), StopTrainingOnNoModelImprovement(10_000)


def left(policy, obs, key, deterministic):
    return jnp.asarray(0, jnp.int32)


def test_evaluate_policy_counts_each_episode_until_it_ends():
    returns, lengths = quick_jit(lambda k: evaluate_policy(
        None, CARTPOLE, k, n_eval_episodes=4, act=left, env_params=SHORT))(jax.random.key(0))
    lengths = np.asarray(lengths)
    assert lengths.shape == (4,) and np.all((lengths > 3) & (lengths < 20)), lengths
    np.testing.assert_array_equal(np.asarray(returns), lengths)  # CartPole: reward 1 a step
    _, capped = evaluate_policy(None, CARTPOLE, jax.random.key(0), n_eval_episodes=4,
                                act=left, env_params=SHORT, max_episode_steps=3)
    np.testing.assert_array_equal(np.asarray(capped), 3)


def test_eval_every_n_steps_logs_means_and_saves_best_model(tmp_path):
    cb = eval_callback(tmp_path, *never_stop())
    # The list structure of the stopping tests: one compilation for all of them.
    result = quick_jit(learn)(jax.random.key(1),
                              [cb, ProgressBarCallback(TOTAL, min_interval=60.0)])
    run = read_run(str(tmp_path / "run"))
    assert set(run) == {"eval/mean_reward", "eval/mean_ep_length"}
    steps = [s for s, _ in run["eval/mean_reward"]]
    assert steps == [64, 128, 192, 256]
    rewards = np.array([v for _, v in run["eval/mean_reward"]])
    lengths = np.array([v for _, v in run["eval/mean_ep_length"]])
    assert np.all((lengths >= 1) & (lengths <= 20)), lengths
    np.testing.assert_allclose(rewards, lengths)  # CartPole: reward 1 a step
    state = result.callback_state.states[0]
    assert int(state.evaluations) == 4
    assert float(state.best_mean_reward) == pytest.approx(rewards.max())
    assert float(state.last_mean_reward) == pytest.approx(rewards[-1])
    # The best model is the agent state of the first evaluation reaching the best mean.
    best = load_checkpoint(cb.best_model_path(), result.agent_state)
    leaves = jax.tree.leaves(best)
    assert leaves and all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    if rewards.argmax() == len(rewards) - 1:  # set at the end: the final agent state
        for a, b in zip(leaves, jax.tree.leaves(result.agent_state), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_reward_threshold_stops_at_first_evaluation_and_progress_bar_says_so(tmp_path,
                                                                             capsys):
    # Every policy lasts at least one step: a threshold of 1 is met at the first evaluation.
    callbacks = [eval_callback(tmp_path, StopTrainingOnRewardThreshold(1.0),
                               StopTrainingOnNoModelImprovement(10_000)),
                 ProgressBarCallback(TOTAL, every=1, min_interval=0.0)]
    result = quick_jit(learn)(jax.random.key(2), callbacks)
    assert int(result.iterations) == 2 and int(result.total_timesteps) == 64
    assert [s for s, _ in read_run(str(tmp_path / "run"))["eval/mean_reward"]] == [64]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"callax: 64/{TOTAL} steps (25%)"), lines


def test_no_improvement_stops_after_patience_and_full_run_reaches_total(tmp_path, capsys):
    # Patience 0 with min_delta 1e9: no evaluation improves; the first counted evaluation
    # (after min_evals=1) already stops training: two evaluations, at 64 and 128 steps.
    callbacks = [eval_callback(tmp_path, StopTrainingOnRewardThreshold(1e9),
                               StopTrainingOnNoModelImprovement(0, min_evals=1,
                                                                min_delta=1e9)),
                 ProgressBarCallback(TOTAL, every=1, min_interval=0.0)]
    result = quick_jit(learn)(jax.random.key(3), callbacks)
    assert int(result.total_timesteps) == 128
    assert int(result.callback_state.states[0].after_eval.no_improvement_evals) == 1
    assert [s for s, _ in read_run(str(tmp_path / "run"))["eval/mean_reward"]] == [64, 128]
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"callax: 128/{TOTAL} steps (50%)")
    # Without a stop, the bar's total is reached exactly.
    callbacks = [eval_callback(tmp_path / "full", *never_stop()),
                 ProgressBarCallback(TOTAL, every=1, min_interval=0.0)]
    quick_jit(learn)(jax.random.key(3), callbacks)
    callax.flush_all()
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"callax: {TOTAL}/{TOTAL} steps (100%)")


def test_vmapped_seeds_evaluate_and_stop_independently(tmp_path):
    # Seed-dependent thresholds: seed 0 stops at its first evaluation, seed 1 never.
    cb = eval_callback(tmp_path, *never_stop())
    keys = jax.random.split(jax.random.key(4), 2)

    def run(key, threshold):
        return learn(key, eqx.tree_at(lambda c: c.callback_on_new_best.reward_threshold, cb,
                                      threshold))

    result = quick_jit(jax.vmap(run))(keys, jnp.array([1.0, 1e9], jnp.float32))
    assert np.asarray(result.total_timesteps).tolist() == [64, TOTAL]
    assert run_dirs(str(tmp_path / "run")) == ["seed_0", "seed_1"]
    assert [s for s, _ in read_run(str(tmp_path / "run" / "seed_0"))["eval/mean_reward"]] == [64]
    assert [s for s, _ in read_run(str(tmp_path / "run" / "seed_1"))["eval/mean_reward"]] == [
        64, 128, 192, 256]
    for seed in (0, 1):
        best = load_checkpoint(cb.best_model_path(seed),
                               jax.tree.map(lambda x: x[seed], result.agent_state))
        assert jax.tree.leaves(best)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="eval_freq"):
        EvalCallback(CARTPOLE, eval_freq=0)
    with pytest.raises(ValueError, match="n_eval_episodes"):
        EvalCallback(CARTPOLE, n_eval_episodes=0)
    with pytest.raises(TypeError, match="callback_on_new_best"):
        EvalCallback(CARTPOLE, callback_on_new_best=ProgressBarCallback(10))
    with pytest.raises(TypeError, match="eval_env"):
        EvalCallback(object())
    with pytest.raises(TypeError, match="writer"):
        EvalCallback(CARTPOLE, writer=3)
    with pytest.raises(TypeError, match="act="):  # e.g. SAC's actor: give an `act`
        evaluate_policy(object(), CARTPOLE, jax.random.key(0))
    with pytest.raises(ValueError, match="best_model_save_path"):
        EvalCallback(CARTPOLE).best_model_path()
