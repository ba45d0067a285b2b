"""The callback interface: states, contexts and ``AbstractCallback`` with its partial bases.

A callback is an Equinox module (its configuration) plus two pytrees of arrays it owns:

- a *state* (``StateType``), one per training run, threaded through iterations;
- a *step state* (``StepStateType``), one per environment, updated every env step inside the
  jitted rollout. Trainers create it with ``jax.vmap(callback.step_reset)`` over envs and
  update it with ``jax.vmap(callback.on_step)``.

Every hook is a pure function of a context and a PRNG key, returning the new state, so the
whole training loop can be jitted, scanned and vmapped over seeds.

``key`` (keyword-only, every hook) is a ``jax.random`` key for the callback's own use: pass
a fresh key split from the loop's key (one per env for ``step_reset``/``on_step``, as the
hook is vmapped). No built-in callback draws random numbers from it; callbacks that call the
host under ``vmap`` (``ConsoleTableCallback``, ``HParamsCallback``) read its bits only so that
their host call is batched over seeds whenever the run is, which is why it should be split
per seed like the rest of the loop's randomness. A loop without randomness may pass
``jax.random.key(0)``.

A trainer calls the hooks in this order::

    state = cb.reset(ResetContext(), key=k)
    step_state = vmap(cb.step_reset)(ResetContext(), key=keys)       # one per env
    state = cb.on_training_start(TrainingContext(state=state, step_state=step_state), key=k)
    while cb.continue_training(IterationContext(state=state, step_state=step_state), key=k):
        for each env step:
            step_state = vmap(cb.on_step)(
                StepContext(state=step_state, done=done, reward=reward), key=keys)
        state = cb.on_iteration(IterationContext(state=state, step_state=step_state,
                                                 training_log=log), key=k)
    state = cb.on_training_end(TrainingContext(state=state, step_state=step_state), key=k)
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

    Build it by keyword; only `state`, `done` and `reward` are needed::

        StepContext(state=step_state, done=done, reward=reward)

    **Attributes:**

    - `state`: this callback's step state for the env (what ``step_reset`` or the previous
      ``on_step`` returned).
    - `env`, `policy`: the environment and the policy, for callbacks that inspect them
      (default ``None``: no built-in callback needs them).
    - `done`: ``terminated | truncated`` after this step (``bool``). Required.
    - `reward`: the raw environment reward of this step (never a bootstrapped value).
      Required.
    - `locals`: trainer-specific extras (e.g. ``obs``, ``action``, ``terminated``;
      default empty).
    """

    state: StepStateType
    env: Any = None
    policy: Any = None
    done: Bool[ArrayLike, "*batch"] | None = None
    reward: Any = None
    locals: dict[str, Any] = eqx.field(default_factory=_empty_locals)

    def __check_init__(self):
        if self.done is None or self.reward is None:
            raise TypeError("StepContext needs done= and reward= (the step's "
                            "terminated | truncated flag and its raw reward)")


class IterationContext(eqx.Module, Generic[StateType, StepStateType]):
    """Context of ``on_iteration`` and ``continue_training``.

    Build it by keyword; a loop passes what it has and the rest keeps its default::

        IterationContext(state=state, step_state=step_state, training_log=log)

    **Attributes:**

    - `state`: this callback's run state (what ``reset`` or the previous hook returned).
      Required.
    - `step_state`: this callback's step states, batched over envs (leading axis), as the
      rollout left them. Required.
    - `env`, `policy`: the environment and the current policy (default ``None``).
    - `iteration_count`: iterations completed so far, this one included (default ``0``;
      callbacks that act "every ``n`` iterations" read it).
    - `opt_state`: the optimizer state (default ``None``). One built with
      ``optax.inject_hyperparams`` exposes the learning rate (``train/learning_rate``).
    - `training_log`: a mapping of name to scalar produced by the update (default empty);
      [`callax.TensorBoardCallback`][] writes each entry as ``train/<name>``.
    - `locals`: trainer-specific extras (default empty). Callax's trainers put
      ``num_timesteps`` (env steps so far, the x-axis of most callbacks) and ``active``
      (false for a vmapped seed that already stopped) there.
    """

    state: StateType
    step_state: StepStateType
    env: Any = None
    policy: Any = None
    iteration_count: Int[ArrayLike, "*batch"] = 0
    opt_state: Any = None
    training_log: dict[str, Any] = eqx.field(default_factory=_empty_locals)
    locals: dict[str, Any] = eqx.field(default_factory=_empty_locals)


class TrainingContext(eqx.Module, Generic[StateType, StepStateType]):
    """Context of ``on_training_start`` and ``on_training_end``.

    Build it by keyword, e.g. ``TrainingContext(state=state, step_state=step_state)``.

    **Attributes:**

    - `state`: this callback's run state. Required.
    - `step_state`: this callback's step states, batched over envs. Required.
    - `env`, `policy`: the environment and the policy (default ``None``).
    - `total_timesteps`: the env steps the run was asked for (default ``0``: unknown);
      progress callbacks read it.
    - `iteration_count`: iterations completed so far (``0`` at the start; default ``0``).
    - `opt_state`: the optimizer state (default ``None``).
    - `locals`: trainer-specific extras (default empty), as for
      [`callax.IterationContext`][].
    """

    state: StateType
    step_state: StepStateType
    env: Any = None
    policy: Any = None
    total_timesteps: Int[ArrayLike, "*batch"] = 0
    iteration_count: Int[ArrayLike, "*batch"] = 0
    opt_state: Any = None
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
