"""The callback interface: states, contexts and ``AbstractCallback`` with its partial bases.

A callback is an Equinox module (its configuration) plus two pytrees of arrays it owns:

- a *state* (``StateType``), one per training run, threaded through iterations;
- a *step state* (``StepStateType``), one per environment, updated every env step inside the
  jitted rollout. Trainers create it with ``jax.vmap(callback.step_reset)`` over envs and
  update it with ``jax.vmap(callback.on_step)``.

Every hook is a pure function of a context and a PRNG key, returning the new state, so the
whole training loop can be jitted, scanned and vmapped over seeds.

A trainer calls the hooks in this order::

    state = cb.reset(ResetContext(), key=k)
    step_state = vmap(cb.step_reset)(ResetContext(), key=keys)       # one per env
    state = cb.on_training_start(TrainingContext(state, step_state, ...), key=k)
    while cb.continue_training(IterationContext(state, step_state, ...), key=k):
        for each env step:
            step_state = vmap(cb.on_step)(StepContext(step_state, ..., done, reward), key=keys)
        state = cb.on_iteration(IterationContext(state, step_state, ...), key=k)
    state = cb.on_training_end(TrainingContext(state, step_state, ...), key=k)
"""

from __future__ import annotations

import abc
from typing import Any, Generic, TypeVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Int, Key

__all__ = [
    "AbstractCallback",
    "AbstractCallbackState",
    "AbstractCallbackStepState",
    "AbstractContinuingCallback",
    "AbstractStatelessCallback",
    "AbstractStepStatelessCallback",
    "AbstractTrainingPassthroughCallback",
    "EmptyCallbackState",
    "EmptyCallbackStepState",
    "IterationContext",
    "ResetContext",
    "StepContext",
    "TrainingContext",
]


class AbstractCallbackState(eqx.Module):
    """Base class of the per-run state of a callback (a pytree of arrays)."""


class AbstractCallbackStepState(eqx.Module):
    """Base class of the per-environment step state of a callback (a pytree of arrays)."""


class EmptyCallbackState(AbstractCallbackState):
    """The state of a callback that keeps none."""


class EmptyCallbackStepState(AbstractCallbackStepState):
    """The step state of a callback that keeps none."""


StateType = TypeVar("StateType", bound=AbstractCallbackState)
StepStateType = TypeVar("StepStateType", bound=AbstractCallbackStepState)


def _empty_locals() -> dict[str, Any]:
    return {}


class ResetContext(eqx.Module):
    """Context of ``reset`` and ``step_reset``. ``locals`` carries trainer-specific extras."""

    locals: dict[str, Any] = eqx.field(default_factory=_empty_locals)


class StepContext(eqx.Module, Generic[StepStateType]):
    """Context of ``on_step``, for one environment (trainers vmap over envs).

    **Attributes:**

    - `state`: this callback's step state for the env.
    - `env`, `policy`: the environment and policy (either may be ``None``).
    - `done`: ``terminated | truncated`` after this step.
    - `reward`: the raw environment reward of this step (never a bootstrapped value).
    - `locals`: trainer-specific extras (e.g. ``obs``, ``action``, ``terminated``).
    """

    state: StepStateType
    env: Any
    policy: Any
    done: Bool[ArrayLike, "*batch"]
    reward: Any
    locals: dict[str, Any] = eqx.field(default_factory=_empty_locals)


class IterationContext(eqx.Module, Generic[StateType, StepStateType]):
    """Context of ``on_iteration`` and ``continue_training``.

    **Attributes:**

    - `state`: this callback's state.
    - `step_state`: this callback's step states, batched over envs (leading axis).
    - `env`, `policy`, `opt_state`: may be ``None``. An optimizer state built with
      ``optax.inject_hyperparams`` exposes the learning rate.
    - `iteration_count`: iterations completed so far.
    - `training_log`: a mapping of name to scalar produced by the update.
    - `locals`: trainer-specific extras.
    """

    state: StateType
    step_state: StepStateType
    env: Any
    policy: Any
    iteration_count: Int[ArrayLike, "*batch"]
    opt_state: Any
    training_log: dict[str, Any]
    locals: dict[str, Any] = eqx.field(default_factory=_empty_locals)


class TrainingContext(eqx.Module, Generic[StateType, StepStateType]):
    """Context of ``on_training_start`` and ``on_training_end``."""

    state: StateType
    step_state: StepStateType
    env: Any
    policy: Any
    total_timesteps: Int[ArrayLike, "*batch"]
    iteration_count: Int[ArrayLike, "*batch"]
    opt_state: Any
    locals: dict[str, Any] = eqx.field(default_factory=_empty_locals)


class AbstractCallback(eqx.Module, Generic[StateType, StepStateType]):
    """A training callback: pure hooks from a context to a new state.

    Implement every hook, or inherit the partial bases that implement some of them:
    [`callax.AbstractStepStatelessCallback`][] (no step state),
    [`callax.AbstractStatelessCallback`][] (no run state),
    [`callax.AbstractTrainingPassthroughCallback`][] (nothing at training start/end) and
    [`callax.AbstractContinuingCallback`][] (never stops training).
    """

    @abc.abstractmethod
    def reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> StateType:
        """The initial run state."""

    @abc.abstractmethod
    def step_reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> StepStateType:
        """The initial step state of one environment."""

    @abc.abstractmethod
    def on_step(self, ctx: StepContext, *, key: Key[Array, ""]) -> StepStateType:
        """Called after every env step, per env, inside the rollout."""

    @abc.abstractmethod
    def on_iteration(self, ctx: IterationContext, *, key: Key[Array, ""]) -> StateType:
        """Called after every training iteration (rollout + update)."""

    @abc.abstractmethod
    def on_training_start(self, ctx: TrainingContext, *, key: Key[Array, ""]) -> StateType:
        """Called once before the first iteration."""

    @abc.abstractmethod
    def on_training_end(self, ctx: TrainingContext, *, key: Key[Array, ""]) -> StateType:
        """Called once after the last iteration (also after an early stop)."""

    @abc.abstractmethod
    def continue_training(self, ctx: IterationContext, *, key: Key[Array, ""]) -> Bool[Array, ""]:
        """Whether training goes on; checked before every iteration."""


class AbstractStepStatelessCallback(AbstractCallback[StateType, EmptyCallbackStepState]):
    """A callback with no per-env step state: ``step_reset`` and ``on_step`` do nothing."""

    def step_reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> EmptyCallbackStepState:
        return EmptyCallbackStepState()

    def on_step(self, ctx: StepContext, *, key: Key[Array, ""]) -> EmptyCallbackStepState:
        return EmptyCallbackStepState()


class AbstractTrainingPassthroughCallback(AbstractCallback[StateType, StepStateType]):
    """A callback that does nothing at training start and end (the state passes through)."""

    def on_training_start(self, ctx: TrainingContext, *, key: Key[Array, ""]) -> StateType:
        return ctx.state

    def on_training_end(self, ctx: TrainingContext, *, key: Key[Array, ""]) -> StateType:
        return ctx.state


class AbstractStatelessCallback(AbstractTrainingPassthroughCallback[EmptyCallbackState,
                                                                    StepStateType]):
    """A callback with no run state: ``reset``, ``on_iteration`` and the training hooks do
    nothing."""

    def reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> EmptyCallbackState:
        return EmptyCallbackState()

    def on_iteration(self, ctx: IterationContext, *, key: Key[Array, ""]) -> EmptyCallbackState:
        return EmptyCallbackState()


class AbstractContinuingCallback(AbstractCallback[StateType, StepStateType]):
    """A callback that never stops training."""

    def continue_training(self, ctx: IterationContext, *, key: Key[Array, ""]) -> Bool[Array, ""]:
        return jnp.asarray(True)
