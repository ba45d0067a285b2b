"""``CallbackList``: several callbacks acting as one (like ``optax.chain``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Key

from ._callback import (
    AbstractCallback,
    AbstractCallbackState,
    AbstractCallbackStepState,
    IterationContext,
    ResetContext,
    StepContext,
    TrainingContext,
)

__all__ = ["CallbackList", "CallbackListState", "CallbackListStepState", "as_callback"]


class CallbackListState(AbstractCallbackState):
    """The children's states, in order."""

    states: tuple[AbstractCallbackState, ...]


class CallbackListStepState(AbstractCallbackStepState):
    """The children's step states, in order."""

    states: tuple[AbstractCallbackStepState, ...]


def _split(key: Key[Array, ""], n: int) -> list[Key[Array, ""]]:
    return list(jax.random.split(key, n)) if n else []


class CallbackList(AbstractCallback[CallbackListState, CallbackListStepState]):
    """Compose callbacks: every hook calls each child with its own slice of the state.

    Children may themselves be ``CallbackList``s. ``continue_training`` is true only while every
    child says so.
    """

    callbacks: tuple[AbstractCallback, ...]

    def __init__(self, callbacks: Iterable[Any]):
        callbacks = tuple(callbacks)
        for callback in callbacks:
            if not isinstance(callback, AbstractCallback):
                raise TypeError(
                    f"CallbackList takes callax callbacks, got {type(callback).__name__}"
                )
        self.callbacks = callbacks

    def _child_ctx(self, ctx, i: int):
        changes = {"state": ctx.state.states[i]}
        if hasattr(ctx, "step_state"):
            changes["step_state"] = ctx.step_state.states[i]
        return dataclasses.replace(ctx, **changes)

    def reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> CallbackListState:
        keys = _split(key, len(self.callbacks))
        return CallbackListState(tuple(c.reset(ctx, key=k) for c, k in zip(self.callbacks, keys)))

    def step_reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> CallbackListStepState:
        keys = _split(key, len(self.callbacks))
        return CallbackListStepState(
            tuple(c.step_reset(ctx, key=k) for c, k in zip(self.callbacks, keys))
        )

    def on_step(self, ctx: StepContext, *, key: Key[Array, ""]) -> CallbackListStepState:
        keys = _split(key, len(self.callbacks))
        return CallbackListStepState(
            tuple(c.on_step(self._child_ctx(ctx, i), key=k)
                  for i, (c, k) in enumerate(zip(self.callbacks, keys)))
        )

    def _each(self, hook: str, ctx, key) -> CallbackListState:
        keys = _split(key, len(self.callbacks))
        return CallbackListState(
            tuple(getattr(c, hook)(self._child_ctx(ctx, i), key=k)
                  for i, (c, k) in enumerate(zip(self.callbacks, keys)))
        )

    def on_iteration(self, ctx: IterationContext, *, key: Key[Array, ""]) -> CallbackListState:
        return self._each("on_iteration", ctx, key)

    def on_training_start(self, ctx: TrainingContext, *, key: Key[Array, ""]
                          ) -> CallbackListState:
        return self._each("on_training_start", ctx, key)

    def on_training_end(self, ctx: TrainingContext, *, key: Key[Array, ""]) -> CallbackListState:
        return self._each("on_training_end", ctx, key)

    def continue_training(self, ctx: IterationContext, *, key: Key[Array, ""]) -> Bool[Array, ""]:
        keys = _split(key, len(self.callbacks))
        result = jnp.asarray(True)
        for i, (c, k) in enumerate(zip(self.callbacks, keys)):
            result = result & jnp.asarray(c.continue_training(self._child_ctx(ctx, i), key=k),
                                          jnp.bool_)
        return result


def as_callback(
    callback: AbstractCallback | Iterable[AbstractCallback] | None,
) -> AbstractCallback:
    """``None`` → an empty ``CallbackList``; a list → ``CallbackList``; a callback → itself."""
    if callback is None:
        return CallbackList(())
    if isinstance(callback, AbstractCallback):
        return callback
    return CallbackList(callback)
