"""Asynchronous SAC: actor threads step the environments, the learner trains from a queue.

Each actor thread owns ``sac.n_envs`` environments and their callback step states. In a loop it
reads the most recently *published* policy, runs a jitted chunk of ``steps_per_put`` env steps
(``vmap(on_step)`` is called inside, per env step, with the raw reward), waits for the result,
and puts it into a bounded ``queue.Queue`` (blocking while the queue is full: backpressure).

The learner (the calling thread) dequeues one actor output at a time, adds its transitions to
the replay buffer and runs ``steps_per_put * gradient_steps`` gradient steps in one jitted
call, then publishes the new policy. Every ``sac.n_steps * n_envs * num_actors`` ingested env
steps it ends an iteration: ``on_iteration`` (with the step states of every env, as of the
latest output ingested from each actor), the epoch's events, ``continue_training``.

Staleness: an actor acts with the policy published when it started its chunk. Between that
and the learner ingesting the transitions, the learner may have done up to
``(queue_size + num_actors) * steps_per_put * gradient_steps`` further gradient steps (the
queue holds at most ``queue_size`` outputs, and each actor holds one more while it waits to
put). The measured lag (gradient steps between the policy an output was collected with and
the learner's state when ingesting it) is reported in the training log as ``policy_lag``
(mean over the iteration's outputs).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Iterable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree

from .. import _host
from .._callback import (
    AbstractCallback,
    IterationContext,
    ResetContext,
    TrainingContext,
)
from .._list import as_callback
from .._summary_writer import JITSummaryWriter
from .._writer import _interrupt
from ..events._recorder import record
from ..events._sac import SACEvents
from ._loop import TrainingResult, as_key
from ._replay import ReplayBuffer, Transition
from ._sac_base import TRAINING_LOG_KEYS, SACActor, SACState, check_total_timesteps

__all__ = ["learn_async"]


class _ActorOutput(eqx.Module):
    transitions: Transition  # leading axes (steps_per_put, n_envs)
    step_state: PyTree  # the actor's callback step states after the chunk
    actor_id: int = eqx.field(static=True)
    policy_version: int = eqx.field(static=True)


class _PolicySlot:
    """The most recently published policy (JAX arrays are immutable: no copy needed)."""

    def __init__(self, actor: SACActor, version: int, use_policy: bool):
        self._lock = threading.Lock()
        self._value = (actor, version, use_policy)

    def publish(self, actor: SACActor, version: int, use_policy: bool) -> None:
        with self._lock:
            self._value = (actor, version, use_policy)

    def get(self) -> tuple[SACActor, int, bool]:
        with self._lock:
            return self._value


def _strip_buffer(agent: SACState) -> SACState:
    return eqx.tree_at(lambda a: a.buffer, agent, None)


def _with_buffer(agent: SACState, buffer: ReplayBuffer) -> SACState:
    return eqx.tree_at(lambda a: a.buffer, agent, buffer, is_leaf=lambda x: x is None)


def learn_async(
    sac: Any,  # a callax.train.SAC (not imported: _sac imports this module)
    env: Any,
    *,
    total_timesteps: int,
    key: PRNGKeyArray,
    callback: AbstractCallback | Iterable[AbstractCallback] | None = None,
    events: JITSummaryWriter | None = None,
    env_params: Any = None,
    num_actors: int = 2,
    steps_per_put: int = 1,
    queue_size: int = 4,
    timeout: float = 600.0,
) -> TrainingResult:
    """Train ``sac`` asynchronously (see the module docstring and ``docs/sac.md``).

    Not jittable or vmappable (it runs threads); it trains one seed. With ``events`` all 18
    [`callax.SACEvents`][callax.events.SACEvents] are recorded, ``estimated_queue_sizes`` and
    ``time_dequeuing_actors`` from the real queue.

    **Arguments:**

    - `sac`: the [`callax.train.SAC`][] trainer (its hyperparameters and update functions;
      ``n_envs`` is the number of envs *per actor*). Passed in, not imported: this module
      is imported by the trainer's module.
    - `env`, `total_timesteps`, `key`, `callback`, `events`, `env_params`: as in
      [`SAC.learn`][callax.train.SAC.learn].
    - `num_actors`: actor threads.
    - `steps_per_put`: env steps (of each of the actor's envs) per queue item.
    - `queue_size`: capacity of the queue, in items.
    - `timeout`: seconds the learner waits for an item before giving up.

    **Returns:**

    A ``TrainingResult`` (``callback_step_state`` covers all
    ``num_actors * n_envs`` envs, actor by actor); ``training_log`` additionally holds
    ``policy_lag``.
    """
    for name, value in (("num_actors", num_actors), ("steps_per_put", steps_per_put),
                        ("queue_size", queue_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    check_total_timesteps(total_timesteps)
    if sac.n_steps % steps_per_put:
        raise ValueError(f"steps_per_put ({steps_per_put}) must divide n_steps ({sac.n_steps}) "
                         "so that iterations end between queue items")
    if events is not None and not isinstance(events, JITSummaryWriter):
        raise TypeError(f"events must be a callax.JITSummaryWriter or None, got {events!r}")

    cb = as_callback(callback)
    key = as_key(key)
    (action_size,), _, low, high = sac._spaces(env, env_params)
    target_entropy = sac._target_entropy(action_size)
    n_envs = sac.n_envs
    total_envs = num_actors * n_envs
    steps_per_item = steps_per_put * n_envs
    steps_per_iteration = sac.n_steps * total_envs
    n_iterations = -(-total_timesteps // steps_per_iteration)
    updates_per_item = steps_per_put * sac.gradient_steps
    recording = events is not None
    log_keys = (*TRAINING_LOG_KEYS, "policy_lag")

    key, k_init, k_env, k_reset, k_step_reset, k_start, k_continue, k_actors, k_learner = (
        jax.random.split(key, 9))

    # ---- jitted pieces ------------------------------------------------------------------

    @jax.jit
    def setup(k_init, k_env, k_reset, k_step_reset, k_start, k_continue):
        agent = sac.init(env, k_init, env_params)
        obs, env_state = jax.vmap(lambda k: env.reset(k, env_params))(
            jax.random.split(k_env, total_envs))
        cb_state = cb.reset(ResetContext(), key=k_reset)
        step_state = jax.vmap(lambda k: cb.step_reset(ResetContext(), key=k))(
            jax.random.split(k_step_reset, total_envs))
        ctx = TrainingContext(cb_state, step_state, env, agent.actor, total_timesteps,
                              jnp.zeros((), jnp.int32), agent.opt_state,
                              {"agent_state": agent, "num_timesteps": jnp.zeros((), jnp.int32)})
        cb_state = cb.on_training_start(ctx, key=k_start)
        nan_log = {k: jnp.full((), jnp.nan, jnp.float32) for k in log_keys}
        nan_log["n_updates"] = jnp.zeros((), jnp.int32)
        keep_going = cb.continue_training(
            _iteration_ctx(cb_state, step_state, agent, 0, nan_log, 0), key=k_continue)
        return agent, obs, env_state, cb_state, step_state, jnp.asarray(keep_going, jnp.bool_)

    def _iteration_ctx(cb_state, step_state, agent, iteration, log, num_timesteps):
        return IterationContext(
            state=cb_state, step_state=step_state, env=env, policy=agent.actor,
            iteration_count=jnp.asarray(iteration, jnp.int32), opt_state=agent.opt_state,
            training_log=log,
            locals={"agent_state": agent, "num_timesteps": jnp.asarray(num_timesteps, jnp.int32),
                    "active": jnp.asarray(True)},
        )

    @jax.jit
    def actor_chunk(actor, obs, env_state, step_state, key, use_policy):
        keys = jax.random.split(key, steps_per_put * (1 + 2 * n_envs)).reshape(
            steps_per_put, 1 + 2 * n_envs)

        def step(carry, k):
            obs, env_state, step_state = carry
            transition, obs, env_state, step_state = sac._step_envs(
                env, env_params, cb, actor, obs, env_state, step_state, k, use_policy, low,
                high)
            return (obs, env_state, step_state), transition

        (obs, env_state, step_state), transitions = jax.lax.scan(
            step, (obs, env_state, step_state), keys)
        return transitions, obs, env_state, step_state

    def cycle(agent, buffer, acc, sums, count, transitions, before, after, dequeue_time, lag,
              key, learning, *, timed):
        """Ingest one actor output and run its gradient steps (one jitted call)."""
        agent = _with_buffer(agent, buffer)
        flat = jax.tree.map(lambda x: x.reshape((-1, *x.shape[2:])), transitions)
        agent = dataclasses.replace(agent, buffer=agent.buffer.add(flat))
        keys = jax.random.split(key, updates_per_item)
        new_sums = {k: jnp.zeros((), jnp.float32) for k in TRAINING_LOG_KEYS}
        n = jnp.zeros((), jnp.int32)
        if timed:
            agent, acc, s, c = sac._timed_update(agent, acc, keys[0], learning, target_entropy,
                                                 dequeue_time=dequeue_time)
            new_sums = {k: new_sums[k] + s[k] for k in TRAINING_LOG_KEYS}
            n, keys = n + c, keys[1:]
        agent, acc, s, c = sac._plain_updates(agent, acc, keys, learning, target_entropy)
        new_sums = {k: new_sums[k] + s[k] for k in TRAINING_LOG_KEYS}
        if acc is not None:
            _, rec = record(SACEvents.estimated_queue_sizes)(before, after)
            acc = dataclasses.replace(acc, other=acc.other.merge(rec))
        sums = {**{k: sums[k] + new_sums[k] for k in TRAINING_LOG_KEYS},
                "policy_lag": sums["policy_lag"] + lag}
        return _strip_buffer(agent), agent.buffer, acc, sums, count + n + c

    cycle_jit = jax.jit(cycle, static_argnames=("timed",), donate_argnums=(1,))

    @jax.jit
    def end_iteration(cb_state, step_state, agent, acc, sums, count, items, iteration,
                      num_timesteps, key):
        k_on_iteration, k_continue = jax.random.split(key)
        c = count.astype(jnp.float32)
        log = {k: jnp.where(c > 0, sums[k] / jnp.maximum(c, 1.0), jnp.nan)
               for k in TRAINING_LOG_KEYS}
        log["policy_lag"] = sums["policy_lag"] / jnp.maximum(items, 1).astype(jnp.float32)
        log["n_updates"] = agent.n_updates
        ctx = _iteration_ctx(cb_state, step_state, agent, iteration, log, num_timesteps)
        cb_state = cb.on_iteration(ctx, key=k_on_iteration)
        if acc is not None:
            _, rec = record(sac._epoch_events)(agent)
            acc.epoch().merge(rec).write(events, num_timesteps)
            acc = acc.reset()
        ctx = _iteration_ctx(cb_state, step_state, agent, iteration, log, num_timesteps)
        keep_going = cb.continue_training(ctx, key=k_continue)
        return cb_state, acc, jnp.asarray(keep_going, jnp.bool_)

    @jax.jit
    def finish(cb_state, step_state, agent, iteration, num_timesteps, key):
        ctx = TrainingContext(cb_state, step_state, env, agent.actor, total_timesteps,
                              jnp.asarray(iteration, jnp.int32), agent.opt_state,
                              {"agent_state": agent,
                               "num_timesteps": jnp.asarray(num_timesteps, jnp.int32)})
        return cb.on_training_end(ctx, key=key)

    # ---- state ----------------------------------------------------------------------------

    agent, obs, env_state, cb_state, step_state, keep_going = setup(
        k_init, k_env, k_reset, k_step_reset, k_start, k_continue)
    acc = None
    if recording:
        acc = sac._discover_events(agent, k_learner, target_entropy, asynchronous=True)

    def actor_slice(tree, i):
        return jax.tree.map(lambda x: x[i * n_envs:(i + 1) * n_envs], tree)

    step_states = [actor_slice(step_state, i) for i in range(num_actors)]
    slot = _PolicySlot(agent.actor, 0, sac.learning_starts <= 0)
    items: queue.Queue = queue.Queue(maxsize=queue_size)
    stop = threading.Event()
    errors: list[BaseException] = []

    def actor_loop(i: int, obs, env_state, step_state, key) -> None:
        try:
            chunk = 0
            while not stop.is_set():
                actor, version, use_policy = slot.get()
                transitions, obs, env_state, step_state = actor_chunk(
                    actor, obs, env_state, step_state, jax.random.fold_in(key, chunk),
                    jnp.asarray(use_policy))
                jax.block_until_ready(transitions)
                chunk += 1
                output = _ActorOutput(transitions, step_state, i, version)
                while not stop.is_set():
                    try:
                        items.put(output, timeout=0.05)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # noqa: BLE001 - re-raised by the learner
            errors.append(error)
            stop.set()

    # Compile the actor's chunk once before the threads race to do it.
    actor_chunk.lower(agent.actor, actor_slice(obs, 0), actor_slice(env_state, 0),
                      step_states[0], k_actors, jnp.asarray(False)).compile()
    threads = [
        threading.Thread(
            target=actor_loop, name=f"callax-sac-actor-{i}", daemon=True,
            args=(i, actor_slice(obs, i), actor_slice(env_state, i), step_states[i],
                  jax.random.fold_in(k_actors, i)),
        )
        for i in range(num_actors)
    ]

    buffer = agent.buffer
    learner = _strip_buffer(agent)
    zero_sums = {k: jnp.zeros((), jnp.float32) for k in log_keys}
    iteration = 0
    ingested = 0
    n_updates = 0
    learner_key = k_learner
    _host.training_started()  # from now on the first Ctrl-C stops at an iteration boundary
    try:
        for thread in threads:
            thread.start()
        while iteration < n_iterations and bool(keep_going):
            if _interrupt.stop_requested():
                break
            sums, count, n_items = zero_sums, jnp.zeros((), jnp.int32), 0
            target = (iteration + 1) * steps_per_iteration
            first = True
            while ingested < target:
                before = items.qsize()
                start = time.perf_counter()
                output = _dequeue(items, errors, timeout)
                dequeue_time = time.perf_counter() - start
                after = items.qsize()
                learning = ingested + steps_per_item >= sac.learning_starts
                lag = n_updates - output.policy_version
                learner_key, k_cycle = jax.random.split(learner_key)
                learner, buffer, acc, sums, count = cycle_jit(
                    learner, buffer, acc, sums, count, output.transitions,
                    np.int32(before), np.int32(after), np.float32(dequeue_time),
                    np.float32(lag), k_cycle, np.bool_(learning), timed=recording and first)
                first = False
                ingested += steps_per_item
                n_items += 1
                if learning:
                    n_updates += updates_per_item
                step_states[output.actor_id] = output.step_state
                slot.publish(learner.actor, n_updates,
                             ingested >= sac.learning_starts)
            iteration += 1
            step_state = jax.tree.map(lambda *xs: jnp.concatenate(xs), *step_states)
            learner_key, k_end = jax.random.split(learner_key)
            cb_state, acc, keep_going = end_iteration(
                cb_state, step_state, _with_buffer(learner, buffer), acc, sums, count,
                n_items, iteration, ingested, k_end)
    finally:
        interrupted = _interrupt.stop_requested()
        _host.training_ended()
        stop.set()
        _drain(items)
        for thread in threads:
            thread.join(timeout=timeout)
    if errors:
        raise RuntimeError("an actor thread of SAC.learn_async failed") from errors[0]

    agent = _with_buffer(learner, buffer)
    step_state = jax.tree.map(lambda *xs: jnp.concatenate(xs), *step_states)
    cb_state = finish(cb_state, step_state, agent, iteration, ingested,
                      jax.random.split(key)[0])
    return TrainingResult(
        agent_state=agent,
        policy=agent.actor,
        callback_state=cb_state,
        callback_step_state=step_state,
        iterations=jnp.asarray(iteration, jnp.int32),
        total_timesteps=jnp.asarray(ingested, jnp.int32),
        interrupted=jnp.asarray(interrupted),
    )


def _dequeue(items: queue.Queue, errors: list[BaseException], timeout: float) -> _ActorOutput:
    deadline = time.monotonic() + timeout
    while True:
        if errors:
            raise RuntimeError("an actor thread of SAC.learn_async failed") from errors[0]
        try:
            return items.get(timeout=0.05)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no actor output for {timeout} s") from None


def _drain(items: queue.Queue) -> None:
    while True:
        try:
            items.get_nowait()
        except queue.Empty:
            return

