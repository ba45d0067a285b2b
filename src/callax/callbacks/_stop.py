"""Stop conditions acting on [`callax.EvalCallback`][]'s results (SB3's
``StopTrainingOnRewardThreshold`` and ``StopTrainingOnNoModelImprovement``)."""

from __future__ import annotations

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree

__all__ = [
    "AbstractEvalStopper",
    "EvalResult",
    "NoImprovementState",
    "StopTrainingOnNoModelImprovement",
    "StopTrainingOnRewardThreshold",
]


class EvalResult(eqx.Module):
    """What one evaluation of [`callax.EvalCallback`][] hands to its stop conditions.

    **Attributes:**

    - `step`: the env step (total over envs) of the evaluation.
    - `evaluations`: evaluations done so far, this one included (SB3's ``n_calls``).
    - `mean_reward`, `mean_ep_length`: of this evaluation.
    - `best_mean_reward`: the best mean reward so far, this evaluation included.
    - `is_new_best`: whether this evaluation set a new best.
    """

    step: Int[Array, ""]
    evaluations: Int[Array, ""]
    mean_reward: Float[Array, ""]
    mean_ep_length: Float[Array, ""]
    best_mean_reward: Float[Array, ""]
    is_new_best: Bool[Array, ""]


class AbstractEvalStopper(eqx.Module):
    """A stop condition driven by evaluation results, pure and jit/vmap-safe.

    Pass instances to [`callax.EvalCallback`][] as ``callback_on_new_best`` (updated only
    by evaluations that set a new best, as in SB3) or ``callback_after_eval`` (updated by
    every evaluation). The EvalCallback keeps their states in its own state and stops
    training (``continue_training``) once any of them says so.
    """

    @abc.abstractmethod
    def init(self) -> PyTree:
        """The condition's initial state (a pytree of arrays)."""

    @abc.abstractmethod
    def update(self, state: PyTree, result: EvalResult) -> PyTree:
        """The state after one evaluation."""

    @abc.abstractmethod
    def continue_training(self, state: PyTree) -> Bool[Array, ""]:
        """Whether training goes on."""


class StopTrainingOnRewardThreshold(AbstractEvalStopper):
    """Stops training once the best mean evaluation reward reaches `reward_threshold`
    (SB3: training goes on while ``best_mean_reward < reward_threshold``).

    The threshold is an array, so changing it does not recompile the trainer.
    """

    reward_threshold: Float[Array, ""]

    def __init__(self, reward_threshold: float):
        """**Arguments:**

        - `reward_threshold`: the mean episode return (of the deterministic evaluation
          episodes) at which to stop.
        """
        if isinstance(reward_threshold, bool) or not isinstance(reward_threshold, int | float):
            raise TypeError(f"reward_threshold must be a number, got {reward_threshold!r}")
        self.reward_threshold = jnp.asarray(reward_threshold, jnp.float32)

    def init(self) -> Bool[Array, ""]:
        return jnp.asarray(True)

    def update(self, state: Bool[Array, ""], result: EvalResult) -> Bool[Array, ""]:
        return state & (result.best_mean_reward < self.reward_threshold)

    def continue_training(self, state: Bool[Array, ""]) -> Bool[Array, ""]:
        return state


class NoImprovementState(eqx.Module):
    """State of [`callax.StopTrainingOnNoModelImprovement`][].

    **Attributes:**

    - `reference`: the best mean reward that counted as an improvement (``-inf`` at first).
    - `no_improvement_evals`: evaluations in a row without improvement.
    - `keep_going`: false once the patience ran out.
    """

    reference: Float[Array, ""]
    no_improvement_evals: Int[Array, ""]
    keep_going: Bool[Array, ""]


class StopTrainingOnNoModelImprovement(AbstractEvalStopper):
    """Stops training when the mean evaluation reward has not improved for more than
    `max_no_improvement_evals` evaluations in a row (SB3's semantics; use it as
    ``callback_after_eval``).

    An evaluation improves when its mean reward exceeds the reference (the best mean reward
    that last counted as an improvement) by more than `min_delta`. The first `min_evals`
    evaluations never count against the patience (they may still set the reference). With
    ``min_delta=0`` this is exactly SB3's rule "``best_mean_reward`` did not increase".
    Parameters are arrays: changing them does not recompile the trainer.
    """

    max_no_improvement_evals: Int[Array, ""]
    min_evals: Int[Array, ""]
    min_delta: Float[Array, ""]

    def __init__(self, max_no_improvement_evals: int, min_evals: int = 0,
                 min_delta: float = 0.0):
        """**Arguments:**

        - `max_no_improvement_evals`: the patience: training stops at the evaluation that
          makes it ``max_no_improvement_evals + 1`` evaluations in a row without improvement.
        - `min_evals`: evaluations before the count starts.
        - `min_delta`: the least increase of the mean reward that counts as an improvement.
        """
        for name, value in (("max_no_improvement_evals", max_no_improvement_evals),
                            ("min_evals", min_evals)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, int | float) or not (
            min_delta >= 0
        ):
            raise ValueError(f"min_delta must be a non-negative number, got {min_delta!r}")
        self.max_no_improvement_evals = jnp.asarray(max_no_improvement_evals, jnp.int32)
        self.min_evals = jnp.asarray(min_evals, jnp.int32)
        self.min_delta = jnp.asarray(min_delta, jnp.float32)

    def init(self) -> NoImprovementState:
        return NoImprovementState(jnp.asarray(-jnp.inf, jnp.float32), jnp.asarray(0, jnp.int32),
                                  jnp.asarray(True))

    def update(self, state: NoImprovementState, result: EvalResult) -> NoImprovementState:
        improved = result.mean_reward > state.reference + self.min_delta
        counting = result.evaluations > self.min_evals
        count = jnp.where(counting, jnp.where(improved, 0, state.no_improvement_evals + 1),
                          state.no_improvement_evals)
        return NoImprovementState(
            reference=jnp.where(improved, result.mean_reward, state.reference),
            no_improvement_evals=count,
            keep_going=state.keep_going & ~(counting & (count > self.max_no_improvement_evals)),
        )

    def continue_training(self, state: NoImprovementState) -> Bool[Array, ""]:
        return state.keep_going
