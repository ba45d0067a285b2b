"""Soft Actor-Critic for continuous actions: the whole run is one jittable, vmappable function.

Twin critics with Polyak-averaged target networks, a tanh-squashed Gaussian policy, automatic
entropy tuning (target entropy ``-action_dim``) and a uniform replay buffer on device, as in
Stable-Baselines3's ``SAC``. Optimizers are built with ``optax.inject_hyperparams`` so that
callbacks see the learning rate. With ``events=writer`` the trainer records
[`callax.SACEvents`][callax.events.SACEvents] (see ``docs/sac.md``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, Int, Key, PRNGKeyArray, PyTree

from .._callback import AbstractCallback, IterationContext, StepContext
from .._summary_writer import JITSummaryWriter
from ..events._recorder import (
    EventRecord,
    discover,
    elapsed,
    record,
    recording as events_recording,
    sequenced,
    timestamp,
)
from ..events._sac import SACEvents
from ._loop import Rollout, TrainingResult, as_key, check_budget, iterations_for, run_training
from ._replay import ReplayBuffer, Transition
from ._sac_async import learn_async
from ._sac_base import (
    TRAINING_LOG_KEYS,
    SACActor,
    SACCritic,
    SACState,
    td_target,
)
from ._traced import check_hparams, with_traced

__all__ = ["SAC", "SACActor", "SACCritic", "SACState", "td_target"]

_ERROR_SAMPLE = 32
"""``errors_between_critics`` is the mean over the first 32 transitions of each sampled batch
(a uniform sample of the buffer): the target critics' extra forward pass stays small."""


def _ravel(tree: PyTree, members: int | None = None) -> tuple[Array, Any]:
    """The array leaves of ``tree`` in one array: ``[P]``, or ``[members, P]`` when every leaf
    has a leading ensemble axis of that size (each member's parameters contiguous). Returns
    it and the function mapping such an array back to a tree."""
    leaves, treedef = jax.tree.flatten(tree)
    lead = () if members is None else (members,)
    sizes = [math.prod(x.shape[len(lead):]) for x in leaves]
    flat = jnp.concatenate([jnp.reshape(x, (*lead, -1)) for x in leaves], axis=-1)

    def unravel(array: Array) -> PyTree:
        parts = jnp.split(array, np.cumsum(sizes)[:-1].tolist(), axis=-1)
        return jax.tree.unflatten(treedef, [p.reshape(x.shape).astype(x.dtype)
                                            for p, x in zip(parts, leaves, strict=True)])

    return flat, unravel


def _flat_step(opt: optax.GradientTransformation, params: PyTree, grads: PyTree,
               state: Any, members: int | None = None) -> tuple[PyTree, Any, Array]:
    """One optimizer step on the parameters raveled into one array (the same maths as on the
    pytree for element-wise optimizers such as Adam, and far less code to compile).

    Also returns the gradient's norm (per ensemble member when ``members`` is given)."""
    flat_params, unravel = _ravel(params, members)
    flat_grads, _ = _ravel(grads, members)
    updates, state = opt.update(flat_grads, state, flat_params)
    norm = jnp.sqrt(jnp.sum(flat_grads**2, axis=-1))
    return unravel(flat_params + cast(Array, updates)), state, norm


def _select_agent(pred: Array, new: SACState, old: SACState) -> SACState:
    """``new`` where ``pred`` else ``old``; the buffer's data (unchanged by updates, and
    large) is taken from ``old`` without a select."""
    buffer = eqx.tree_at(lambda b: b.total_sampled, old.buffer,
                         jnp.where(pred, new.buffer.total_sampled, old.buffer.total_sampled))
    learner = jax.tree.map(lambda n, o: jnp.where(pred, n, o),
                           eqx.tree_at(lambda a: a.buffer, new, None),
                           eqx.tree_at(lambda a: a.buffer, old, None))
    return eqx.tree_at(lambda a: a.buffer, learner, buffer, is_leaf=lambda x: x is None)


def _cond_without_buffer_data(pred: Array, true_fn, false_fn, agent: SACState, extra: Any):
    """``lax.cond`` over ``(agent, extra)`` whose branches return ``(agent, extra, other)``;
    the replay buffer's arrays are an input of the cond but not an output (no copy)."""
    data = agent.buffer.data

    def strip(a: SACState) -> SACState:
        return eqx.tree_at(lambda a: a.buffer.data, a, None)

    def wrap(fn):
        def branch(operands):
            stripped, extra_, data_ = operands
            full = eqx.tree_at(lambda a: a.buffer.data, stripped, data_,
                               is_leaf=lambda x: x is None)
            new_agent, new_extra, other = fn((full, extra_))
            return strip(new_agent), new_extra, other

        return branch

    stripped, new_extra, other = jax.lax.cond(pred, wrap(true_fn), wrap(false_fn),
                                              (strip(agent), extra, data))
    new_agent = eqx.tree_at(lambda a: a.buffer.data, stripped, data,
                            is_leaf=lambda x: x is None)
    return new_agent, new_extra, other


class _EventAccumulators(eqx.Module):
    """The epoch's events in two records: ``updates`` has exactly the slots of an untimed
    update (so merging one is a few fused element-wise ops, no realignment), ``other`` the
    rest (timing, buffer and queue events), merged once per epoch."""

    updates: EventRecord
    other: EventRecord

    def epoch(self) -> EventRecord:
        return self.other.merge(self.updates)

    def reset(self) -> _EventAccumulators:
        return _EventAccumulators(self.updates.reset(), self.other.reset())


class _Learner(eqx.Module):
    """The agent state [`run_training`][callax.train.run_training] carries for SAC: the
    public ``SACState`` plus the iteration's bookkeeping (training-log sums and the epoch's
    event accumulators). Callbacks see only ``agent``."""

    agent: SACState
    log_sums: dict[str, Array]
    log_count: Int[Array, ""]
    events: _EventAccumulators | None


class _Timer:
    """Marks phase boundaries of one update with host clock reads (or does nothing)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.stamps: list[Array] = []

    def start(self, after: Any, *inputs: Any) -> Any:
        if not self.enabled:
            return inputs
        self.stamps.append(timestamp(after))
        return sequenced(inputs, self.stamps[-1])

    def lap(self, outputs: Any, *inputs: Any) -> Any:
        """Clock read once ``outputs`` exist; ``inputs`` of the next phase wait for it."""
        if not self.enabled:
            return inputs
        self.stamps.append(timestamp(outputs))
        return sequenced(inputs, self.stamps[-1])

    def end(self, outputs: Any) -> None:
        if self.enabled:
            self.stamps.append(timestamp(outputs))

    def durations(self) -> list[Array]:
        return [elapsed(a, b) for a, b in zip(self.stamps[:-1], self.stamps[1:])]


# --------------------------------------------------------------------------------------------
# The trainer.


class SAC(eqx.Module):
    """Soft Actor-Critic (Haarnoja et al. 2018) with the defaults of Stable-Baselines3.

    ``learn`` runs the whole training loop in JAX (jit it, and vmap it over keys to train
    several seeds at once); [`learn_async`][callax.train.SAC.learn_async] runs actor threads
    that feed the learner through a bounded queue.

    One *iteration* is ``n_steps`` steps of each of the ``n_envs`` environments, each step
    followed by ``gradient_steps`` updates once ``learning_starts`` env steps have been taken
    (random uniform actions before that). Callbacks see ``on_iteration`` (and the event
    recorder ends its epoch) once per iteration.
    """

    learning_rate: float = eqx.field(static=True, default=3e-4)
    buffer_size: int = eqx.field(static=True, default=1_000_000)
    learning_starts: int = eqx.field(static=True, default=100)
    batch_size: int = eqx.field(static=True, default=256)
    tau: float = eqx.field(static=True, default=0.005)
    gamma: float = eqx.field(static=True, default=0.99)
    gradient_steps: int = eqx.field(static=True, default=1)
    n_envs: int = eqx.field(static=True, default=1)
    n_steps: int = eqx.field(static=True, default=1000)
    hidden_sizes: tuple[int, ...] = eqx.field(static=True, default=(256, 256))
    n_critics: int = eqx.field(static=True, default=2)
    ent_coef_init: float = eqx.field(static=True, default=1.0)
    target_entropy: float | None = eqx.field(static=True, default=None)

    SWEEPABLE = ("learning_rate", "gamma", "tau")
    """The hyperparameters ``learn(..., hparams=...)`` takes as traced values (a sweep)."""

    def __check_init__(self):
        positive = ("buffer_size", "learning_starts", "batch_size", "gradient_steps", "n_envs",
                    "n_steps", "n_critics")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SAC.{name} must be a positive int, got {value!r}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"SAC.tau must be in (0, 1], got {self.tau}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"SAC.gamma must be in [0, 1], got {self.gamma}")
        if not self.learning_rate > 0 or not self.ent_coef_init > 0:
            raise ValueError("SAC.learning_rate and SAC.ent_coef_init must be > 0")
        if not self.hidden_sizes or any(int(h) < 1 for h in self.hidden_sizes):
            raise ValueError(f"SAC.hidden_sizes must be positive ints, got {self.hidden_sizes}")

    # -- setup --

    def _optimizer(self) -> optax.GradientTransformation:
        return optax.inject_hyperparams(optax.adam)(learning_rate=self.learning_rate)

    @staticmethod
    def _spaces(env: Any, env_params: Any) -> tuple[tuple[int, ...], Any, Array, Array]:
        space = env.action_space(env_params)
        if not (hasattr(space, "low") and hasattr(space, "high")):
            raise TypeError(
                f"SAC needs a continuous (Box) action space, got {type(space).__name__}"
            )
        low = jnp.asarray(space.low, jnp.float32)
        high = jnp.asarray(space.high, jnp.float32)
        shape = tuple(space.shape)
        if len(shape) != 1:
            raise ValueError(f"SAC needs a 1-D action space, got shape {shape}")
        obs = jax.eval_shape(lambda k: env.reset(k, env_params)[0], jax.random.key(0))
        if len(obs.shape) != 1:
            raise ValueError(f"SAC needs flat (1-D) observations, got shape {obs.shape}")
        return shape, obs, low, high

    def init(self, env: Any, key: PRNGKeyArray, env_params: Any = None) -> SACState:
        """Fresh networks, optimizer states and an empty replay buffer for ``env``."""
        (action_size,), obs, _, _ = self._spaces(env, env_params)
        (obs_size,) = obs.shape
        k_actor, k_critic = jax.random.split(as_key(key))
        hidden = tuple(int(h) for h in self.hidden_sizes)
        actor = SACActor(obs_size, action_size, hidden, key=k_actor)
        critic = SACCritic(obs_size, action_size, hidden, n_critics=self.n_critics,
                           key=k_critic)
        log_alpha = jnp.asarray(math.log(self.ent_coef_init), jnp.float32)
        opt = self._optimizer()
        opt_state = {
            "actor": opt.init(_ravel(actor)[0]),
            "critic": opt.init(_ravel(critic, self.n_critics)[0]),
            "ent_coef": opt.init(_ravel(log_alpha)[0]),
        }
        buffer = ReplayBuffer.empty(self.buffer_size, obs.shape, (action_size,), obs.dtype)
        return SACState(actor, critic, critic, log_alpha, opt_state, buffer,
                        jnp.zeros((), jnp.int32))

    def _target_entropy(self, action_size: int) -> float:
        if self.target_entropy is None:
            return -float(action_size)
        return float(self.target_entropy)

    # -- one gradient step, split in phases --

    def _rollout(self, actor: SACActor, target_critic: SACCritic, log_alpha: Array,
                 batch: Transition, key: PRNGKeyArray) -> tuple[Array, Array | None]:
        """The learner's rollout: TD targets from the policy and the target critics, and,
        when events are being recorded, the target critics' values of the first
        ``_ERROR_SAMPLE`` sampled (obs, action) pairs (in the same forward pass)."""
        noise = jax.random.normal(key, batch.action.shape, jnp.float32)
        next_action, next_logp, _ = actor.sample(batch.next_obs, noise)
        q_target_taken = None
        if events_recording():
            n = batch.reward.shape[0]
            m = min(n, _ERROR_SAMPLE)
            q_both = target_critic(jnp.concatenate([batch.next_obs, batch.obs[:m]]),
                                   jnp.concatenate([next_action, batch.action[:m]]))
            q_next, q_target_taken = q_both[:n], jax.lax.stop_gradient(q_both[n:])
        else:
            q_next = target_critic(batch.next_obs, next_action)
        alpha = jnp.exp(log_alpha)
        next_value = jnp.min(q_next, axis=-1) - alpha * next_logp
        target = td_target(batch.reward, batch.terminated, next_value, self.gamma)
        return jax.lax.stop_gradient(target), q_target_taken

    def _loss(self, params: tuple[SACActor, SACCritic, Array], batch: Transition,
              target: Array, key: PRNGKeyArray, target_entropy: float
              ) -> tuple[Array, dict[str, Array]]:
        actor, critic, log_alpha = params
        q = critic(batch.obs, batch.action)  # [B, n_critics]
        critic_losses = 0.5 * jnp.mean((q - target[:, None]) ** 2, axis=0)
        critic_loss = jnp.sum(critic_losses)
        noise = jax.random.normal(key, batch.action.shape, jnp.float32)
        action, logp, entropy = actor.sample(batch.obs, noise)
        frozen_critic = jax.lax.stop_gradient(critic)
        q_pi = frozen_critic(batch.obs, action)
        alpha = jnp.exp(jax.lax.stop_gradient(log_alpha))
        actor_loss = jnp.mean(alpha * logp - jnp.min(q_pi, axis=-1))
        alpha_loss = -jnp.mean(log_alpha * jax.lax.stop_gradient(logp + target_entropy))
        aux = {
            "actor_loss": actor_loss,
            "critic_loss": critic_loss,
            "ent_coef": alpha,
            "ent_coef_loss": alpha_loss,
            "critic_losses": critic_losses,
            # Per-sample statistics reduced together (one reduction) when events use them.
            "per_sample": jnp.concatenate([q, logp[:, None], entropy[:, None]], axis=1),
            "q": q,
        }
        return actor_loss + critic_loss + alpha_loss, aux

    def _update(self, agent: SACState, key: PRNGKeyArray, target_entropy: float, *,
                timed: bool = False, dequeue_time: Array | None = None
                ) -> tuple[SACState, dict[str, Array]]:
        """One gradient step on all networks. Records SACEvents (no-ops unless recorded).

        With ``timed``, the four phases are separated by host clock reads and recorded as the
        ``time_*`` events (see ``docs/sac.md``); ``dequeue_time`` (asynchronous mode, measured
        on the host) is a fifth phase of the update, before the others."""
        timer = _Timer(timed)
        k_sample, k_rollout, k_loss = jax.random.split(key, 3)
        buffer = agent.buffer
        # Phase 1: sampling from the buffer (indices + gather).
        k_sample, size = timer.start(agent, k_sample, buffer.size)
        batch, buffer = dataclasses.replace(buffer, size=size).sample(k_sample, self.batch_size)
        buffer = dataclasses.replace(buffer, size=agent.buffer.size)
        # Phase 2: the learner's rollout (policy + target critics on the batch).
        params = (agent.actor, agent.critic, agent.log_alpha)
        batch, params, target_critic, k_rollout = timer.lap(batch, batch, params,
                                                            agent.target_critic, k_rollout)
        target, q_target_taken = self._rollout(params[0], target_critic, params[2], batch,
                                               k_rollout)
        # Phase 3: loss computation (forward passes, residuals for backprop).
        target, params, k_loss = timer.lap(target, target, params, k_loss)
        _, backward, aux = jax.vjp(
            lambda p: self._loss(p, batch, target, k_loss, target_entropy), params,
            has_aux=True,
        )
        # Phase 4: backprop and optimizer steps (incl. the Polyak update).
        (cotangent,) = timer.lap((aux, backward), jnp.ones((), jnp.float32))
        (actor_grads, critic_grads, alpha_grad) = backward(cotangent)[0]
        opt = self._optimizer()
        opt_state = dict(agent.opt_state)
        actor, opt_state["actor"], actor_norm = _flat_step(
            opt, params[0], actor_grads, opt_state["actor"])
        critic, opt_state["critic"], critic_norms = _flat_step(
            opt, params[1], critic_grads, opt_state["critic"], self.n_critics)
        log_alpha, opt_state["ent_coef"], _ = _flat_step(
            opt, params[2], alpha_grad, opt_state["ent_coef"])
        target_critic = jax.tree.map(
            lambda t, c: (1.0 - self.tau) * t + self.tau * c if eqx.is_array(c) else c,
            agent.target_critic, critic,
        )
        new_agent = SACState(actor, critic, target_critic, log_alpha, opt_state, buffer,
                             agent.n_updates + 1)
        timer.end(new_agent)

        # Events (no-ops, and dead code for XLA, unless the caller records them).
        means = jnp.mean(aux["per_sample"], axis=0)
        q_mean, mean_logp, mean_entropy = means[:-2], means[-2], means[-1]
        # One policy (step key None: no "/0" in the tags). The policy loss, entropy
        # coefficient and its loss are the training log's actor_loss, ent_coef and
        # ent_coef_loss (train/* in TensorBoard): not recorded twice.
        SACEvents.policy_grad_norm(None, actor_norm)
        SACEvents.policy_entropy(None, mean_entropy)
        SACEvents.policy_mean_logp(None, mean_logp)
        errors = None
        if q_target_taken is not None:
            m = q_target_taken.shape[0]
            errors = jnp.mean(jnp.abs(aux["q"][:m] - q_target_taken), axis=0)
        for i in range(self.n_critics):
            SACEvents.critic_value(i, q_mean[i])
            SACEvents.critic_value_loss(i, aux["critic_losses"][i])
            SACEvents.critic_grad_norm(i, critic_norms[i])
            if errors is not None:
                SACEvents.errors_between_critics(i, errors[i])
        if timed:
            sample_t, rollout_t, loss_t, backprop_t = timer.durations()
            total = sample_t + rollout_t + loss_t + backprop_t
            if dequeue_time is not None:
                total = total + dequeue_time
            percent = 100.0 / jnp.maximum(total, 1e-9)
            if dequeue_time is not None:
                SACEvents.time_dequeuing_actors(dequeue_time, dequeue_time * percent)
            SACEvents.time_sampling_from_buffer(sample_t, sample_t * percent)
            SACEvents.time_learner_rollout(rollout_t, rollout_t * percent)
            SACEvents.time_loss_computation(loss_t, loss_t * percent)
            SACEvents.time_backprob(backprop_t, backprop_t * percent)
        log = {k: aux[k] for k in TRAINING_LOG_KEYS}
        return new_agent, log

    def _plain_updates(self, agent: SACState, acc: _EventAccumulators | None,
                       keys: Key[Array, " n"], learning: Array, target_entropy: float
                       ) -> tuple[SACState, _EventAccumulators | None, dict[str, Array], Array]:
        """One untimed update per key if ``learning`` (a ``lax.cond``), recording events into
        ``acc`` unless it is ``None``. Returns the agent, ``acc``, the sums of the training
        log entries and the number of updates done."""
        n = keys.shape[0]
        zeros = {name: jnp.zeros((), jnp.float32) for name in TRAINING_LOG_KEYS}
        if n == 0:
            return agent, acc, zeros, jnp.zeros((), jnp.int32)

        def run(agent_events):
            def one(c, k):
                agent, acc, sums = c
                if acc is not None:
                    (agent, log), rec = record(self._update)(agent, k, target_entropy)
                    acc = dataclasses.replace(acc, updates=acc.updates.merge(rec))
                else:
                    agent, log = self._update(agent, k, target_entropy)
                sums = {name: sums[name] + log[name] for name in TRAINING_LOG_KEYS}
                return (agent, acc, sums), None

            (agent, acc, sums), _ = jax.lax.scan(one, (*agent_events, zeros), keys)
            return agent, acc, sums

        def skip(agent_events):
            return (*agent_events, zeros)

        agent, acc, sums = _cond_without_buffer_data(learning, run, skip, agent, acc)
        return agent, acc, sums, jnp.where(learning, n, 0).astype(jnp.int32)

    def _timed_update(self, agent: SACState, acc: _EventAccumulators, key: PRNGKeyArray,
                      learning: Array, target_entropy: float,
                      dequeue_time: Array | None = None
                      ) -> tuple[SACState, _EventAccumulators, dict[str, Array], Array]:
        """One update whose phases are timed. It always runs (host clock reads cannot sit in
        a cond that vmap may turn into a select) and is discarded unless ``learning``."""
        (new_agent, log), rec = record(self._update)(agent, key, target_entropy, timed=True,
                                                     dequeue_time=dequeue_time)
        agent = _select_agent(learning, new_agent, agent)
        sums = {k: jnp.where(learning, log[k], 0.0) for k in TRAINING_LOG_KEYS}
        acc = dataclasses.replace(acc, other=acc.other.merge(rec.where(learning)))
        return agent, acc, sums, jnp.where(learning, 1, 0).astype(jnp.int32)

    def _discover_events(self, agent: SACState, key: PRNGKeyArray, target_entropy: float, *,
                         asynchronous: bool) -> _EventAccumulators:
        """Empty accumulators with every slot this trainer records (found by tracing)."""
        updates = discover(lambda a, k: self._update(a, k, target_entropy), agent, key)

        def everything(agent, key):
            self._epoch_events(agent)
            if asynchronous:
                SACEvents.estimated_queue_sizes(0, 0)
                dequeue_time = jnp.zeros((), jnp.float32)
            else:
                dequeue_time = None
            return self._update(agent, key, target_entropy, timed=True,
                                dequeue_time=dequeue_time)

        return _EventAccumulators(updates, discover(everything, agent, key))

    @staticmethod
    def _epoch_events(agent: SACState) -> None:
        SACEvents.buffer_size(agent.buffer.size)
        SACEvents.buffer_avg_pick_per_transition(agent.buffer.replay_ratio())

    # -- acting --

    def _act(self, actor: SACActor, obs: Array, key: PRNGKeyArray, use_policy: Array,
             action_size: int) -> Array:
        """Unit-space actions for a batch of observations: the policy's samples, or uniform
        random actions where ``use_policy`` is false (before ``learning_starts``)."""
        # One draw serves both: a standard normal for the policy, mapped through the normal
        # CDF to a uniform in [-1, 1] for random actions.
        noise = jax.random.normal(key, (obs.shape[0], action_size), jnp.float32)
        action, _, _ = actor.sample(obs, noise)
        random_action = jax.scipy.special.erf(noise / math.sqrt(2.0))
        return jnp.where(use_policy, action, random_action)

    def _step_envs(self, env: Any, env_params: Any, cb: AbstractCallback, actor: SACActor,
                   obs: Array, env_state: PyTree, cb_step_state: PyTree, keys: Key[Array, " n"],
                   use_policy: Array, low: Array, high: Array
                   ) -> tuple[Transition, Array, PyTree, PyTree]:
        """Step every env once (``keys``: one for the actions, then ``n`` for ``env.step``,
        then ``n`` for ``on_step``) and call ``vmap(on_step)`` with the raw rewards.

        Returns the transitions (``next_obs`` = the env's ``final_obs``, the observation
        before any auto-reset), the next observations, env states and step states."""
        n = obs.shape[0]
        k_act, k_env, k_cb = keys[0], keys[1:1 + n], keys[1 + n:1 + 2 * n]
        action = self._act(actor, obs, k_act, use_policy, low.shape[-1])
        env_action = self._to_env(action, low, high)
        next_obs, env_state, reward, _, info = jax.vmap(
            lambda k, s, a: env.step(k, s, a, env_params)
        )(k_env, env_state, env_action)
        terminated = jnp.asarray(info["terminated"], jnp.bool_)
        truncated = jnp.asarray(info["truncated"], jnp.bool_)
        final_obs = info["final_obs"]
        step_locals = {"obs": obs, "action": env_action, "next_obs": next_obs,
                       "final_obs": final_obs, "terminated": terminated,
                       "truncated": truncated}

        def on_step(step_state, done, reward_, locals_i, k):
            ctx = StepContext(step_state, env, actor, done, reward_, locals_i)
            return cb.on_step(ctx, key=k)

        cb_step_state = jax.vmap(on_step)(cb_step_state, terminated | truncated, reward,
                                          step_locals, k_cb)
        transition = Transition(obs, action, jnp.asarray(reward, jnp.float32), final_obs,
                                terminated)
        return transition, next_obs, env_state, cb_step_state

    @staticmethod
    def _to_env(action: Array, low: Array, high: Array) -> Array:
        return low + (action + 1.0) * 0.5 * (high - low)

    def predict(self, agent: SACState, env: Any, obs: Array, *, key: PRNGKeyArray | None = None,
                env_params: Any = None) -> Array:
        """The env action for one observation: the squashed mean, or a sample with ``key``."""
        _, _, low, high = self._spaces(env, env_params)
        if key is None:
            action = agent.actor.deterministic(obs)
        else:
            noise = jax.random.normal(as_key(key), low.shape, jnp.float32)
            action, _, _ = agent.actor.sample(obs, noise)
        return self._to_env(action, low, high)

    # -- the training loop --

    def learn(
        self,
        env: Any,
        *,
        total_timesteps: int | Int[ArrayLike, ""],
        key: PRNGKeyArray,
        callback: AbstractCallback | Iterable[AbstractCallback] | None = None,
        events: JITSummaryWriter | None = None,
        env_params: Any = None,
        hparams: Mapping[str, Float[ArrayLike, ""]] | None = None,
    ) -> TrainingResult:
        """Train on ``env`` for at least ``total_timesteps`` env steps (summed over envs).

        Pure JAX, compiled with ``eqx.filter_jit``; ``learn`` can itself be called inside
        ``jax.jit`` and ``jax.vmap`` (over ``key``) to train several seeds at once (each seed
        writes its own ``<run>/seed_<i>``). ``total_timesteps`` is a Python int (part of
        the compiled program) or an integer scalar array (traced: one compiled program
        serves every budget).

        Hook order, as in [`callax.train.run_training`][]: ``reset``, ``vmap(step_reset)``
        over envs, ``on_training_start``, then ``continue_training`` before every iteration
        (training stops early when it is false), ``vmap(on_step)`` after every env step with
        the raw env reward, ``on_iteration`` after every iteration, ``on_training_end``.
        ``IterationContext.training_log`` holds ``actor_loss``, ``critic_loss``,
        ``ent_coef``, ``ent_coef_loss`` (means over the iteration's gradient steps; ``NaN``
        for an iteration without any) and ``n_updates`` (gradient steps so far);
        ``opt_state`` is the dict of optimizer states; ``policy`` the actor; ``locals``
        holds ``agent_state``, ``num_timesteps`` and ``active`` (false only for a seed that
        stopped early while other vmapped seeds go on).

        **Arguments:**

        - `env`: a callax/gymnax-style environment with a ``Box`` action space.
        - `total_timesteps`: env steps to take (rounded up to whole iterations).
        - `key`: PRNG key of the run.
        - `callback`: a callback, a list of callbacks or ``None``.
        - `events`: a [`callax.JITSummaryWriter`][] to record
          [`callax.SACEvents`][callax.events.SACEvents] to (e.g.
          ``TensorBoardCallback(...).tb_writer`` to share its run), or ``None``.
        - `env_params`: environment parameters (``None``: the defaults).
        - `hparams`: ``{name: value}`` of :attr:`SWEEPABLE` hyperparameters given as
          (traced) scalars instead of this SAC's fields: under ``jax.vmap`` over a
          [`callax.Sweep`][]'s configurations, each trains with its own values in one
          compiled program (the learning rate through ``optax.inject_hyperparams``).

        **Returns:**

        A [`callax.train.TrainingResult`][] whose ``agent_state`` is a
        ``SACState`` (networks, optimizer states, replay buffer).
        """
        if isinstance(total_timesteps, np.ndarray | np.integer):
            total_timesteps = jnp.asarray(total_timesteps)
        total_timesteps = check_budget(total_timesteps, "total_timesteps", minimum=0)
        if events is not None and not isinstance(events, JITSummaryWriter):
            raise TypeError(f"events must be a callax.JITSummaryWriter or None, got {events!r}")
        self._spaces(env, env_params)  # fail on a discrete env before compiling anything
        check_hparams(self, hparams)
        hparams = None if hparams is None else dict(hparams)
        return _learn(self, env, total_timesteps, key, callback, events, env_params, hparams)  # pyright: ignore[reportArgumentType]

    def _learn(self, env: Any, total_timesteps: int | Int[Array, ""], key: PRNGKeyArray,
               callback: Any, events: JITSummaryWriter | None, env_params: Any
               ) -> TrainingResult:
        """The run as three functions of a ``_Learner`` given to ``run_training``: acting,
        a per-step function (replay add and gradient steps) and the iteration's end."""
        steps_per_iteration = self.n_envs * self.n_steps
        n_iterations = iterations_for(total_timesteps, steps_per_iteration)
        (action_size,), _, low, high = self._spaces(env, env_params)
        target_entropy = self._target_entropy(action_size)
        recording = events is not None
        zeros = {k: jnp.zeros((), jnp.float32) for k in TRAINING_LOG_KEYS}

        def init_fn(k: PRNGKeyArray) -> _Learner:
            k_init, k_events = jax.random.split(k)
            agent = self.init(env, k_init, env_params)
            acc = None
            if recording:
                acc = self._discover_events(agent, k_events, target_entropy,
                                            asynchronous=False)
            return _Learner(agent, zeros, jnp.zeros((), jnp.int32), acc)

        def act_fn(learner: _Learner, obs: Array, k: PRNGKeyArray) -> tuple[Array, Array]:
            # Random uniform actions until `learning_starts` env steps have been taken.
            use_policy = learner.agent.buffer.total_added >= self.learning_starts
            action = self._act(learner.agent.actor, obs, k, use_policy, action_size)
            return self._to_env(action, low, high), action  # aux: the unit-space action

        def add_log(learner: _Learner, sums: dict[str, Array], n: Array) -> _Learner:
            sums = {k: learner.log_sums[k] + sums[k] for k in TRAINING_LOG_KEYS}
            return dataclasses.replace(learner, log_sums=sums, log_count=learner.log_count + n)

        def plain_updates(learner: _Learner, keys: Key[Array, " n"], learning: Array
                          ) -> _Learner:
            agent, acc, sums, count = self._plain_updates(learner.agent, learner.events, keys,
                                                          learning, target_entropy)
            return add_log(dataclasses.replace(learner, agent=agent, events=acc), sums, count)

        def timed_then_plain(learner: _Learner, keys: Key[Array, " n"], learning: Array
                             ) -> _Learner:
            assert learner.events is not None  # only called when recording
            agent, acc, sums, count = self._timed_update(learner.agent, learner.events,
                                                         keys[0], learning, target_entropy)
            learner = add_log(dataclasses.replace(learner, agent=agent, events=acc), sums,
                              count)
            return plain_updates(learner, keys[1:], learning)

        def step_fn(learner: _Learner, step: Rollout, k: PRNGKeyArray, t: Array) -> _Learner:
            transition = Transition(step.obs, step.aux, jnp.asarray(step.reward, jnp.float32),
                                    step.final_obs, step.terminated)
            agent = learner.agent
            buffer = agent.buffer.add(transition)
            learner = dataclasses.replace(learner, agent=dataclasses.replace(agent,
                                                                             buffer=buffer))
            learning = buffer.total_added >= self.learning_starts
            keys = jax.random.split(k, self.gradient_steps)
            if not recording:
                return plain_updates(learner, keys, learning)

            # The first step of each epoch times its first update (`t` is never batched, so
            # this stays a real branch under vmap).
            def branch(fn):
                def run(operands):
                    agent, rest = operands
                    out = fn(dataclasses.replace(learner, agent=agent), keys, learning)
                    return out.agent, (out.log_sums, out.log_count, out.events), None

                return run

            agent, (sums, count, acc), _ = _cond_without_buffer_data(
                t == 0, branch(timed_then_plain), branch(plain_updates), learner.agent,
                (learner.log_sums, learner.log_count, learner.events))
            return _Learner(agent, sums, count, acc)

        def update_fn(learner: _Learner, rollout: Rollout, k: PRNGKeyArray
                      ) -> tuple[_Learner, dict[str, Array]]:
            # The gradient steps ran after every env step; here the iteration's training log
            # (means over its gradient steps) is read out and the sums start again.
            count = learner.log_count.astype(jnp.float32)
            log = {name: jnp.where(count > 0, v / jnp.maximum(count, 1.0), jnp.nan)
                   for name, v in learner.log_sums.items()}
            log["n_updates"] = learner.agent.n_updates
            return dataclasses.replace(learner, log_sums=zeros,
                                       log_count=jnp.zeros((), jnp.int32)), log

        def end_iteration_fn(learner: _Learner, ctx: IterationContext) -> _Learner:
            # The epoch's events, in one host call at x = total env steps (none for a seed
            # that has stopped while other vmapped seeds go on).
            assert learner.events is not None and events is not None  # only when recording
            _, rec = record(self._epoch_events)(learner.agent)
            learner.events.epoch().merge(rec).write(events, ctx.locals["num_timesteps"],
                                                    when=ctx.locals["active"])
            return dataclasses.replace(learner, events=learner.events.reset())

        return run_training(
            env, init_fn=init_fn, act_fn=act_fn, update_fn=update_fn, callback=callback,
            key=key, n_envs=self.n_envs, n_steps=self.n_steps, n_iterations=n_iterations,
            total_timesteps=total_timesteps, env_params=env_params,
            policy_fn=lambda learner: learner.agent.actor,
            opt_state_fn=lambda learner: learner.agent.opt_state,
            step_fn=step_fn, end_iteration_fn=end_iteration_fn if recording else None,
            agent_state_fn=lambda learner: learner.agent,
        )

    def learn_async(
        self,
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
        """Train with actor threads feeding the learner through a bounded ``queue.Queue``.

        Each of ``num_actors`` threads steps its own ``n_envs`` environments with the most
        recently published policy, ``steps_per_put`` steps per queue item (``vmap(on_step)``
        runs inside its jitted env steps); the learner (the calling thread) dequeues one item
        at a time, adds it to the replay buffer, runs ``steps_per_put * gradient_steps``
        gradient steps and publishes the new policy. An iteration is ``n_steps`` steps of
        every env of every actor. Not jittable and for one seed; ``timeout`` bounds the wait
        for an actor's output. With ``events`` all 18
        [`callax.SACEvents`][callax.events.SACEvents] are recorded, ``estimated_queue_sizes``
        and ``time_dequeuing_actors`` from the real queue. The training log also holds
        ``policy_lag``: gradient steps between the policy an item was collected with and the
        learner when ingesting it. See ``docs/sac.md`` (staleness,
        timing).

        ``callback_step_state`` of the result covers ``num_actors * n_envs`` envs, actor by
        actor, as of the last item ingested from each actor.
        """
        return learn_async(self, env, total_timesteps=total_timesteps, key=key,
                           callback=callback, events=events, env_params=env_params,
                           num_actors=num_actors, steps_per_put=steps_per_put,
                           queue_size=queue_size, timeout=timeout)


@eqx.filter_jit
def _learn(sac: SAC, env: Any, total_timesteps: int | Int[Array, ""], key: PRNGKeyArray,
           callback: Any, events: JITSummaryWriter | None, env_params: Any,
           hparams: dict[str, Any] | None = None) -> TrainingResult:
    sac = with_traced(sac, hparams)  # lives in this trace only: never flattened
    return sac._learn(env, total_timesteps, key, callback, events, env_params)
