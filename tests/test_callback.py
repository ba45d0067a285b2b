"""AbstractCallback partial bases, CallbackList, and continue_training in a minimal loop."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import callax
from callax import (
    AbstractCallbackState,
    AbstractContinuingCallback,
    AbstractStatelessCallback,
    AbstractStepStatelessCallback,
    AbstractTrainingPassthroughCallback,
    CallbackList,
    EmptyCallbackState,
    EmptyCallbackStepState,
    ResetContext,
)
from callax._list import as_callback
from conftest import read_run
from minimal_loop import drive


class CountState(AbstractCallbackState):
    iterations: jax.Array
    starts: jax.Array
    ends: jax.Array


class Counter(AbstractStepStatelessCallback[CountState], AbstractContinuingCallback):
    """Counts hook calls in its state."""

    def reset(self, ctx, *, key):
        z = jnp.zeros((), jnp.int32)
        return CountState(z, z, z)

    def on_iteration(self, ctx, *, key):
        return CountState(ctx.state.iterations + 1, ctx.state.starts, ctx.state.ends)

    def on_training_start(self, ctx, *, key):
        return CountState(ctx.state.iterations, ctx.state.starts + 1, ctx.state.ends)

    def on_training_end(self, ctx, *, key):
        return CountState(ctx.state.iterations, ctx.state.starts, ctx.state.ends + 1)


class StopAfter(AbstractStepStatelessCallback[CountState],
                AbstractTrainingPassthroughCallback[CountState, EmptyCallbackStepState]):
    """Stops training once `limit` iterations ran."""

    limit: int

    def reset(self, ctx, *, key):
        z = jnp.zeros((), jnp.int32)
        return CountState(z, z, z)

    def on_iteration(self, ctx, *, key):
        return CountState(ctx.state.iterations + 1, ctx.state.starts, ctx.state.ends)

    def continue_training(self, ctx, *, key):
        return ctx.state.iterations < self.limit


class StepCounterState(callax.AbstractCallbackStepState):
    steps: jax.Array
    episodes: jax.Array


class StepCounter(AbstractStatelessCallback[StepCounterState], AbstractContinuingCallback):
    def step_reset(self, ctx, *, key):
        return StepCounterState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def on_step(self, ctx, *, key):
        return StepCounterState(ctx.state.steps + 1, ctx.state.episodes + ctx.done)


REWARDS = np.ones((8, 3, 2), np.float32)
DONES = np.zeros((8, 3, 2), bool)
DONES[:, -1, 0] = True  # env 0 ends an episode at the end of every iteration
_drive = jax.jit(drive)


@pytest.mark.parametrize("jit", [False, True])
def test_continue_training_false_stops_training(jit, logdir):
    tensorboard = callax.TensorBoardCallback(name="stop", log_dir=logdir)
    callback = CallbackList([Counter(), StopAfter(3), tensorboard])
    run = _drive if jit else drive
    state, _, iterations = run(callback, REWARDS, DONES, jax.random.key(0))
    assert int(iterations) == 3
    counter, stopper, _ = state.states
    assert int(counter.iterations) == 3 and int(stopper.iterations) == 3
    assert int(counter.starts) == 1 and int(counter.ends) == 1  # on_training_end after stop
    assert [s for s, _ in read_run(os.path.join(logdir, "stop"))["train/loss"]] == [6, 12, 18]


def test_step_state_is_per_env_and_nests():
    inner = CallbackList([StepCounter(), Counter()])
    callback = CallbackList([inner, StepCounter()])
    state, step_state, iterations = _drive(callback, REWARDS, DONES, jax.random.key(1))
    assert int(iterations) == 8
    (first, _), second = step_state.states[0].states, step_state.states[1]
    for counter in (first, second):
        np.testing.assert_array_equal(counter.steps, [24, 24])
        np.testing.assert_array_equal(counter.episodes, [8, 0])
    assert int(state.states[0].states[1].iterations) == 8
    assert isinstance(state.states[1], EmptyCallbackState)


def test_vmapped_seeds():
    callback = CallbackList([StepCounter(), StopAfter(5)])
    keys = jax.random.split(jax.random.key(0), 3)
    _, step_state, iterations = jax.vmap(lambda k: drive(callback, REWARDS, DONES, k))(keys)
    np.testing.assert_array_equal(iterations, [5, 5, 5])
    np.testing.assert_array_equal(step_state.states[0].steps, [[15, 15]] * 3)


def test_as_callback_and_errors():
    counter = Counter()
    assert as_callback(counter) is counter
    assert isinstance(as_callback(None), CallbackList)
    assert isinstance(as_callback([counter]), CallbackList)
    with pytest.raises(TypeError, match="CallbackList takes callax callbacks"):
        CallbackList([object()])
    empty = CallbackList([])
    ctx = callax.IterationContext(empty.reset(ResetContext(), key=jax.random.key(0)),
                                  callax.CallbackListStepState(()), None, None, 0, None, {})
    assert bool(empty.continue_training(ctx, key=jax.random.key(0)))
    assert empty.reset(ResetContext(), key=jax.random.key(0)).states == ()


def test_abstract_callback_cannot_be_instantiated():
    with pytest.raises(TypeError):
        callax.AbstractCallback()
