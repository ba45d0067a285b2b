"""Stop conditions on evaluation results: SB3's rules, patience, min_delta, min_evals."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from callax import EvalResult, StopTrainingOnNoModelImprovement, StopTrainingOnRewardThreshold


def feed(stopper, rewards):
    """Run the stopper over evaluations with these mean rewards, as EvalCallback does
    (jitted, with a scan); returns whether training goes on after each evaluation."""

    @jax.jit
    def run(rewards):
        def step(carry, reward):
            state, best, n = carry
            n = n + 1
            result = EvalResult(jnp.asarray(0), n, reward, jnp.asarray(1.0),
                                jnp.maximum(best, reward), reward > best)
            state = stopper.update(state, result)
            return (state, result.best_mean_reward, n), stopper.continue_training(state)

        init = (stopper.init(), jnp.asarray(-jnp.inf), jnp.asarray(0, jnp.int32))
        return jax.lax.scan(step, init, rewards)[1]

    return [bool(x) for x in run(jnp.asarray(rewards, jnp.float32))]


def test_reward_threshold_stops_once_best_reaches_it():
    assert feed(StopTrainingOnRewardThreshold(5.0), [1, 4, 5, 2]) == [True, True, False, False]
    assert feed(StopTrainingOnRewardThreshold(5.0), [1, 4.9]) == [True, True]


def test_no_improvement_patience():
    # Patience 2: the third evaluation in a row without a new best stops training.
    stop = StopTrainingOnNoModelImprovement(2)
    assert feed(stop, [1, 3, 2, 3, 4, 1, 1, 1]) == [True] * 7 + [False]
    assert feed(stop, [1, 3, 2, 3, 0]) == [True] * 4 + [False]  # equal is no improvement
    assert feed(stop, [1, 1, 1, 1]) == [True, True, True, False]


def test_no_improvement_min_delta_and_min_evals():
    # An increase of at most min_delta is no improvement.
    stop = StopTrainingOnNoModelImprovement(1, min_delta=0.5)
    assert feed(stop, [1, 1.4, 1.5]) == [True, True, False]
    assert feed(stop, [1, 1.6, 2.0, 2.05]) == [True, True, True, False]
    # Evaluations up to min_evals never count against the patience.
    stop = StopTrainingOnNoModelImprovement(0, min_evals=3)
    assert feed(stop, [1, 1, 1, 1]) == [True, True, True, False]


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_no_improvement_evals"):
        StopTrainingOnNoModelImprovement(-1)
    with pytest.raises(ValueError, match="min_evals"):
        StopTrainingOnNoModelImprovement(1, min_evals=-1)
    with pytest.raises(ValueError, match="min_delta"):
        StopTrainingOnNoModelImprovement(1, min_delta=-1.0)
    with pytest.raises(TypeError, match="reward_threshold"):
        StopTrainingOnRewardThreshold(True)
