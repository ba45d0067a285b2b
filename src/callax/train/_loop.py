"""The shared training driver: environment rollouts, updates and every callback hook.

[`run_training`][callax.train.run_training] owns the environment loop and the callback
protocol; an algorithm supplies three pure functions (``init_fn``, ``act_fn``, ``update_fn``).
The whole run is one ``lax.while_loop``, so it can be jitted and vmapped over seeds.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from .. import _host
from .._callback import (
    AbstractCallback,
    IterationContext,
    ResetContext,
    StepContext,
    TrainingContext,
)
from .._list import as_callback
from ..events._recorder import elapsed, timestamp

__all__ = ["Rollout", "TrainingResult", "as_key", "check_budget", "iterations_for",
           "run_training"]


class Rollout(eqx.Module):
    """The transitions of one iteration, time-major: every array has leading axes
    ``(n_steps, n_envs)``.

    **Attributes:**

    - `obs`: the observation each action was taken at.
    - `action`: the action sent to the environment.
    - `reward`: the raw environment reward.
    - `terminated`, `truncated`: how the step ended the episode (if it did).
    - `final_obs`: the observation the step reached, *before* any auto-reset (bootstrap from
      it on truncation). Equal to `next_obs` where the episode goes on.
    - `next_obs`: the observation after the step (the first one of a new episode after an
      auto-reset); ``next_obs[-1]`` is where the next iteration starts.
    - `aux`: whatever ``act_fn`` returned next to the action (log-probabilities, values, ...).
    """

    obs: PyTree
    action: PyTree
    reward: Array
    terminated: Array
    truncated: Array
    final_obs: PyTree
    next_obs: PyTree
    aux: PyTree

    @property
    def done(self) -> Array:
        """``terminated | truncated``."""
        return self.terminated | self.truncated


class TrainingResult(eqx.Module):
    """What [`run_training`][callax.train.run_training] (and ``PPO.learn``) return.

    Under ``jax.vmap`` over seeds every field gets a leading seed axis.

    **Attributes:**

    - `agent_state`: the algorithm's final state (parameters, optimizer state, ...).
    - `policy`: the trained policy (``policy_fn(agent_state)``).
    - `callback_state`: the callback's final run state (after ``on_training_end``).
    - `callback_step_state`: the callback's per-env step states (leading axis ``n_envs``).
    - `iterations`: iterations done (fewer than planned after an early stop).
    - `total_timesteps`: env steps done, summed over envs.
    - `interrupted`: whether Ctrl-C (``SIGINT``) ended the training early (at the boundary
      of iteration `iterations`, after `total_timesteps` env steps).
    """

    agent_state: PyTree
    policy: PyTree
    callback_state: PyTree
    callback_step_state: PyTree
    iterations: Int[Array, ""]
    total_timesteps: Int[Array, ""]
    interrupted: Bool[Array, ""]


class _Carry(eqx.Module):
    agent_state: PyTree
    env_state: PyTree
    obs: PyTree
    cb_state: PyTree
    cb_step_state: PyTree
    iteration: Int[Array, ""]
    keep_going: Bool[Array, ""]
    interrupted: Bool[Array, ""]
    key: PRNGKeyArray
    start_time: Int[Array, 2]
    time_elapsed: Float[Array, ""]


def as_key(key: PRNGKeyArray) -> PRNGKeyArray:
    """A typed PRNG key (``jax.random.key``); a legacy ``uint32[2]`` key is wrapped."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def _default_policy(agent_state: Any) -> Any:
    return getattr(agent_state, "policy", None)


def _default_opt_state(agent_state: Any) -> Any:
    return getattr(agent_state, "opt_state", None)


def _identity(agent_state: Any) -> Any:
    return agent_state


def _placeholder(shape: jax.ShapeDtypeStruct) -> Array:
    # The training log seen by the first ``continue_training`` check, before any update.
    if jnp.issubdtype(shape.dtype, jnp.inexact):
        return jnp.full(shape.shape, jnp.nan, shape.dtype)
    return jnp.zeros(shape.shape, shape.dtype)


def run_training(
    env: Any,
    *,
    init_fn: Callable[[PRNGKeyArray], Any],
    act_fn: Callable[[Any, PyTree, PRNGKeyArray], tuple[PyTree, PyTree]],
    update_fn: Callable[[Any, Rollout, PRNGKeyArray], tuple[Any, dict[str, Any]]],
    callback: AbstractCallback | Iterable[AbstractCallback] | None,
    key: PRNGKeyArray,
    n_envs: int,
    n_steps: int,
    n_iterations: int | Int[Array, ""],
    total_timesteps: int | Int[Array, ""] | None = None,
    env_params: Any = None,
    policy_fn: Callable[[Any], Any] = _default_policy,
    opt_state_fn: Callable[[Any], Any] = _default_opt_state,
    step_fn: Callable[[Any, Rollout, PRNGKeyArray, Int[Array, ""]], Any] | None = None,
    end_iteration_fn: Callable[[Any, IterationContext], Any] | None = None,
    agent_state_fn: Callable[[Any], Any] = _identity,
) -> TrainingResult:
    """Run ``n_iterations`` iterations of (rollout of ``n_steps`` steps of ``n_envs`` envs,
    update), calling every callback hook at its documented point.

    The algorithm is given as three pure functions of an *agent state* (any pytree):

    - ``init_fn(key) -> agent_state``.
    - ``act_fn(agent_state, obs, key) -> (action, aux)``: actions for a **batch** of
      ``n_envs`` observations; ``aux`` (any pytree with leading axis ``n_envs``) is stored
      in [`Rollout.aux`][callax.train.Rollout].
    - ``update_fn(agent_state, rollout, key) -> (agent_state, training_log)``, with
      ``training_log`` a dict of scalars (passed to ``on_iteration``).

    Off-policy algorithms (SAC) also give ``step_fn(agent_state, transition, key, t) ->
    agent_state``, called after every env step (after the callbacks' ``on_step``) with that
    step's transitions (a [`Rollout`][callax.train.Rollout] whose arrays have leading axis
    ``n_envs``) and ``t``, the step's index in the iteration (an ``int32`` scalar that
    ``vmap`` never batches: branch on it with ``lax.cond``); the next step acts with the
    agent state it returns (replay-buffer adds, gradient steps). Optionally
    ``end_iteration_fn(agent_state, ctx) -> agent_state`` runs after ``on_iteration`` with
    the same [`IterationContext`][callax.IterationContext] (an algorithm's own logging, e.g.
    its events; skip side effects where ``ctx.locals["active"]`` is false).

    Hook order (all hooks receive their own PRNG key)::

        state = cb.reset(ResetContext())
        step_state = vmap(cb.step_reset)(ResetContext())                  # one per env
        state = cb.on_training_start(TrainingContext(iteration_count=0))
        keep_going = cb.continue_training(IterationContext(iteration_count=0))
        while iteration < n_iterations and keep_going:
            repeat n_steps times (lax.scan):
                action = act_fn(...); env.step (vmapped, auto-reset)
                step_state = vmap(cb.on_step)(StepContext(reward=raw reward,
                                                          done=terminated | truncated))
                agent_state = step_fn(agent_state, transition, key, t)   # if given
            agent_state, log = update_fn(agent_state, rollout)
            iteration += 1
            state = cb.on_iteration(IterationContext(iteration_count=iteration,
                                                     training_log=log))
            agent_state = end_iteration_fn(agent_state, IterationContext(...))  # if given
            keep_going = cb.continue_training(IterationContext(...same iteration...))
        state = cb.on_training_end(TrainingContext(iteration_count=iteration))

    Ctrl-C: the first ``SIGINT`` during the loop ends it at the next iteration boundary as
    an early stop (``on_training_end`` runs, the result says ``interrupted``): next to
    ``continue_training`` the loop reads a host flag once per iteration (see
    [`callax.StopOnInterrupt`][], which does the same for a loop of your own).

    ``continue_training`` is thus checked before every iteration, including the first (where
    ``training_log`` has the structure of ``update_fn``'s log, filled with ``NaN``), and it
    sees the state ``on_iteration`` just returned. ``on_training_end`` runs after an early
    stop too.

    Contexts: ``env`` is ``env``; ``policy`` is ``policy_fn(agent_state)`` (by default the
    state's ``policy`` attribute; with ``step_fn``, that of the current step); ``opt_state``
    is ``opt_state_fn(agent_state)`` (by default its ``opt_state`` attribute).
    ``locals["agent_state"]`` and the result's ``agent_state`` are
    ``agent_state_fn(agent_state)`` (by default the agent state itself: an algorithm can keep
    bookkeeping in its agent state and show callbacks only the public part).
    ``StepContext.locals`` holds ``obs`` (where the action was
    taken), ``action``, ``next_obs``, ``final_obs``, ``terminated`` and ``truncated`` of the
    env. ``IterationContext.locals`` holds ``rollout``, ``agent_state``, ``num_timesteps``
    (env steps so far, over all envs), ``time_elapsed`` (seconds since training
    started, from the host clock read once per iteration after the update; compilation
    excluded: SB3's ``time/fps`` is ``num_timesteps / time_elapsed``) and ``active``: ``False``
    only for a seed that has already stopped while other seeds of a ``jax.vmap`` batch go
    on (the loop body then runs for it too and its results are discarded; callbacks with
    host side effects should skip them). ``TrainingContext.locals`` holds ``agent_state``
    and ``num_timesteps``.

    This function is not jitted itself: call it inside ``jax.jit`` / ``eqx.filter_jit``
    (``n_envs`` and ``n_steps`` must be Python ints; ``n_iterations`` may be an integer
    array, so that one compiled program serves every budget). Vmap it over ``key`` to train
    several seeds at once.

    **Arguments:**

    - `env`: a gymnax-style environment (``reset``, ``step`` with ``info["terminated"]``,
      ``info["truncated"]`` and ``info["final_obs"]``).
    - `init_fn`, `act_fn`, `update_fn`: the algorithm (see above).
    - `callback`: a callback, a list of callbacks, a ``CallbackList`` or ``None``.
    - `key`: PRNG key of the run.
    - `n_envs`, `n_steps`: envs stepped in parallel, and steps per env per iteration.
    - `n_iterations`: the maximum number of iterations: a Python int, or an integer scalar
      array (traced: the while loop's bound, not part of the compiled program).
    - `total_timesteps`: reported in ``TrainingContext.total_timesteps``; defaults to
      ``n_iterations * n_steps * n_envs``.
    - `env_params`: environment parameters (``None``: the env's defaults).
    - `policy_fn`, `opt_state_fn`: what the contexts show as ``policy`` and ``opt_state``.
    - `step_fn`, `end_iteration_fn`: the optional per-step and end-of-iteration functions
      (see above).
    - `agent_state_fn`: what ``locals["agent_state"]`` and the result show as the agent
      state.

    **Returns:**

    A [`TrainingResult`][callax.train.TrainingResult].
    """
    for name, value in (("n_envs", n_envs), ("n_steps", n_steps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive Python int, got {value!r}")
    n_iterations = check_budget(n_iterations, "n_iterations", minimum=0)
    if total_timesteps is None:
        total_timesteps = n_iterations * (n_envs * n_steps)
    driver = _Driver(env, env_params, as_callback(callback), init_fn, act_fn, update_fn,
                     step_fn, end_iteration_fn, policy_fn, opt_state_fn, agent_state_fn,
                     n_envs, n_steps, total_timesteps)
    carry, key = driver.start(as_key(key))

    def cond(carry: _Carry) -> Bool[Array, ""]:
        return (carry.iteration < n_iterations) & carry.keep_going

    def body(carry: _Carry) -> _Carry:
        return driver.iteration(carry, cond(carry))

    carry = jax.lax.while_loop(cond, body, carry)
    return driver.end(carry, key)


def check_budget(value: Any, name: str, *, minimum: int) -> Any:
    """`value` if it is a Python int (not a bool) or an integer scalar array (a traced
    budget: one compiled program serves every value) of at least `minimum`; raises
    otherwise (a traced value is not checked)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if isinstance(value, int):
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
        return value
    dtype = getattr(value, "dtype", None)
    if dtype is None or jnp.ndim(value) != 0 or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{name} must be a Python int or an integer scalar array, got "
                         f"{value!r}")
    if not isinstance(value, jax.core.Tracer) and int(value) < minimum:  # pyright: ignore[reportAttributeAccessIssue]
        raise ValueError(f"{name} must be >= {minimum}, got {int(value)}")
    return jnp.asarray(value, jnp.int32)


def iterations_for(total_timesteps: Any, steps_per_iteration: int) -> Any:
    """``ceil(total_timesteps / steps_per_iteration)``: a Python int for a Python int, an
    ``int32`` array for an array (traced budgets)."""
    return -(-total_timesteps // steps_per_iteration)


@dataclasses.dataclass(frozen=True)
class _Driver:
    """The pieces of one :func:`run_training` call and its loop's steps (trace time only)."""

    env: Any
    env_params: Any
    cb: AbstractCallback
    init_fn: Callable
    act_fn: Callable
    update_fn: Callable
    step_fn: Callable | None
    end_iteration_fn: Callable | None
    policy_fn: Callable
    opt_state_fn: Callable
    agent_state_fn: Callable
    n_envs: int
    n_steps: int
    total_timesteps: Any

    def num_timesteps(self, iteration: Array) -> Array:
        return iteration * jnp.int32(self.n_envs * self.n_steps)

    def training_ctx(self, carry: _Carry) -> TrainingContext:
        return TrainingContext(
            state=carry.cb_state,
            step_state=carry.cb_step_state,
            env=self.env,
            policy=self.policy_fn(carry.agent_state),
            total_timesteps=self.total_timesteps,
            iteration_count=carry.iteration,
            opt_state=self.opt_state_fn(carry.agent_state),
            locals={"agent_state": self.agent_state_fn(carry.agent_state),
                    "num_timesteps": self.num_timesteps(carry.iteration)},
        )

    def iteration_ctx(self, carry: _Carry, log: dict[str, Any], rollout: Rollout | None,
                      active: Bool[Array, ""]) -> IterationContext:
        return IterationContext(
            state=carry.cb_state,
            step_state=carry.cb_step_state,
            env=self.env,
            policy=self.policy_fn(carry.agent_state),
            iteration_count=carry.iteration,
            opt_state=self.opt_state_fn(carry.agent_state),
            training_log=log,
            locals={"rollout": rollout, "agent_state": self.agent_state_fn(carry.agent_state),
                    "num_timesteps": self.num_timesteps(carry.iteration), "active": active,
                    "time_elapsed": carry.time_elapsed},
        )

    def env_step(self, carry: _Carry, fixed_policy: Any, inner: tuple, xs: tuple
                 ) -> tuple[tuple, Rollout]:
        """One step of every env, the callbacks' ``on_step`` and ``step_fn``."""
        env, env_params, n_envs, step_fn, cb = (self.env, self.env_params, self.n_envs,
                                                self.step_fn, self.cb)
        agent_state, env_state, obs, step_state = inner
        k, t = xs
        if step_fn is None:  # the agent state is a constant of the rollout
            agent_state, policy = carry.agent_state, fixed_policy
        else:
            policy = self.policy_fn(agent_state)
        # One random draw for all keys of the step (each draw is compiled code).
        keys = jax.random.split(k, 2 * n_envs + (1 if step_fn is None else 2))
        k_act, k_env, k_cb = keys[0], keys[1:n_envs + 1], keys[n_envs + 1:2 * n_envs + 1]
        action, aux = self.act_fn(agent_state, obs, k_act)
        next_obs, env_state, reward, done, info = jax.vmap(
            lambda k_, s, a: env.step(k_, s, a, env_params)
        )(k_env, env_state, action)
        terminated = jnp.asarray(info["terminated"], jnp.bool_)
        truncated = jnp.asarray(info["truncated"], jnp.bool_)
        locals_ = {"obs": obs, "action": action, "next_obs": next_obs,
                   "final_obs": info["final_obs"], "terminated": terminated,
                   "truncated": truncated}

        def on_step(step_state, done, reward, locals_, k):
            ctx = StepContext(step_state, env, policy, done, reward, locals_)
            return cb.on_step(ctx, key=k)

        step_state = jax.vmap(on_step)(step_state, terminated | truncated, reward, locals_,
                                       k_cb)
        transition = Rollout(obs, action, reward, terminated, truncated,
                             info["final_obs"], next_obs, aux)
        if step_fn is None:
            agent_state = None
        else:
            agent_state = step_fn(agent_state, transition, keys[-1], t)
        return (agent_state, env_state, next_obs, step_state), transition

    def rollout_and_update(self, carry: _Carry, key: PRNGKeyArray
                           ) -> tuple[_Carry, Rollout, dict[str, Any]]:
        k_rollout, k_update = jax.random.split(key)
        fixed_policy = self.policy_fn(carry.agent_state)
        first = None if self.step_fn is None else carry.agent_state
        (agent_state, env_state, obs, cb_step_state), rollout = jax.lax.scan(
            functools.partial(self.env_step, carry, fixed_policy),
            (first, carry.env_state, carry.obs, carry.cb_step_state),
            (jax.random.split(k_rollout, self.n_steps),
             jnp.arange(self.n_steps, dtype=jnp.int32)),
        )
        if self.step_fn is None:
            agent_state = carry.agent_state
        agent_state, log = self.update_fn(agent_state, rollout, k_update)
        carry = dataclasses.replace(
            carry, agent_state=agent_state, env_state=env_state, obs=obs,
            cb_step_state=cb_step_state, iteration=carry.iteration + 1,
        )
        return carry, rollout, log

    def keep_going_after(self, carry: _Carry, keep_going: Any) -> _Carry:
        # Ctrl-C, read once per iteration next to the callbacks' decision.
        stop = _host.stop_requested(carry.iteration)
        return dataclasses.replace(
            carry, keep_going=jnp.asarray(keep_going, jnp.bool_) & ~stop,
            interrupted=carry.interrupted | stop)

    def start(self, key: PRNGKeyArray) -> tuple[_Carry, PRNGKeyArray]:
        """Initial states, ``reset``, ``on_training_start`` and the first
        ``continue_training``; returns the carry and the key left for the end."""
        cb, n_envs = self.cb, self.n_envs
        key, k_init, k_env, k_reset, k_step_reset, k_start, k_continue, k_loop = (
            jax.random.split(key, 8))
        agent_state = self.init_fn(k_init)
        obs, env_state = jax.vmap(lambda k: self.env.reset(k, self.env_params))(
            jax.random.split(k_env, n_envs))
        cb_state = cb.reset(ResetContext(), key=k_reset)
        cb_step_state = jax.vmap(lambda k: cb.step_reset(ResetContext(), key=k))(
            jax.random.split(k_step_reset, n_envs))
        carry = _Carry(agent_state, env_state, obs, cb_state, cb_step_state,
                       jnp.asarray(0, jnp.int32), jnp.asarray(True), jnp.asarray(False),
                       k_loop, jnp.zeros(2, jnp.int32), jnp.asarray(0.0, jnp.float32))
        carry = dataclasses.replace(
            carry, cb_state=cb.on_training_start(self.training_ctx(carry), key=k_start))
        _host.training_started(carry.iteration)
        # The host clock once at the start and once per iteration (after the update): SB3's
        # ``time/fps`` and ``time_elapsed`` for every callback from the same reading.
        carry = dataclasses.replace(carry, start_time=timestamp((carry.cb_state, carry.obs)))
        # The first check sees a training log of the right structure (filled with NaN).
        _, _, log_shape = eqx.filter_eval_shape(self.rollout_and_update, carry, carry.key)
        first_log = jax.tree.map(_placeholder, log_shape)
        keep_going = cb.continue_training(
            self.iteration_ctx(carry, first_log, None, jnp.asarray(True)), key=k_continue)
        return self.keep_going_after(carry, keep_going), key

    def iteration(self, carry: _Carry, active: Bool[Array, ""]) -> _Carry:
        """One iteration: rollout, update, ``on_iteration``, ``end_iteration_fn`` and
        ``continue_training``."""
        key, k_iter, k_on_iteration, k_continue = jax.random.split(carry.key, 4)
        carry, rollout, log = self.rollout_and_update(carry, k_iter)
        now = timestamp((log, carry.obs))
        carry = dataclasses.replace(carry, time_elapsed=elapsed(carry.start_time, now))
        cb_state = self.cb.on_iteration(self.iteration_ctx(carry, log, rollout, active),
                                        key=k_on_iteration)
        carry = dataclasses.replace(carry, cb_state=cb_state)
        if self.end_iteration_fn is not None:
            agent_state = self.end_iteration_fn(carry.agent_state,
                                                self.iteration_ctx(carry, log, rollout, active))
            carry = dataclasses.replace(carry, agent_state=agent_state)
        keep_going = self.cb.continue_training(self.iteration_ctx(carry, log, rollout, active),
                                               key=k_continue)
        return dataclasses.replace(self.keep_going_after(carry, keep_going), key=key)

    def end(self, carry: _Carry, key: PRNGKeyArray) -> TrainingResult:
        key, k_end = jax.random.split(key)
        cb_state = self.cb.on_training_end(self.training_ctx(carry), key=k_end)
        _host.training_ended(carry.iteration)
        return TrainingResult(
            agent_state=self.agent_state_fn(carry.agent_state),
            policy=self.policy_fn(carry.agent_state),
            callback_state=cb_state,
            callback_step_state=carry.cb_step_state,
            iterations=carry.iteration,
            total_timesteps=self.num_timesteps(carry.iteration),
            interrupted=carry.interrupted,
        )
