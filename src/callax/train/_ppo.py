"""Proximal Policy Optimisation (clipped objective, GAE), driving callax callbacks."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree

from .._callback import AbstractCallback
from ..envs import Box, Discrete
from ._loop import Rollout, TrainingResult, as_key, check_budget, iterations_for, run_training
from ._networks import (
    MLP,
    ActorCritic,
    Categorical,
    CategoricalPolicy,
    DiagGaussian,
    GaussianPolicy,
    RunningMeanStd,
)
from ._traced import check_hparams, with_traced

__all__ = ["PPO", "PPOPolicy", "PPOState"]


class PPOPolicy(eqx.Module):
    """A trained PPO policy: the actor-critic network, the observation statistics (when
    observations are normalised) and the action box (continuous actions).

    Works on one observation; ``jax.vmap`` it for a batch.
    """

    network: ActorCritic
    obs_rms: RunningMeanStd | None
    action_low: Float[Array, " d"] | None
    action_high: Float[Array, " d"] | None

    def _normalize(self, obs: ArrayLike) -> Array:
        obs = jnp.asarray(obs, jnp.float32)
        if self.obs_rms is not None:
            obs = self.obs_rms.normalize(obs)
        return obs.reshape(-1)

    def distribution(self, obs: ArrayLike) -> Categorical | DiagGaussian:
        """The action distribution at ``obs`` (in unit action space for continuous
        actions)."""
        return self.network.actor(self._normalize(obs))

    def value(self, obs: ArrayLike) -> Float[Array, ""]:
        """The value estimate of ``obs``."""
        return self.network.value(self._normalize(obs))

    def to_env_action(self, action: Array) -> Array:
        """Map a sample of the distribution to an action of the environment."""
        if self.action_low is None:
            return action
        actor = self.network.actor
        assert isinstance(actor, GaussianPolicy) and self.action_high is not None  # a box
        return actor.to_env_action(action, self.action_low, self.action_high)

    def sample(self, obs: ArrayLike, key: PRNGKeyArray
               ) -> tuple[Array, Array, Float[Array, ""], Float[Array, ""]]:
        """``(env_action, raw_action, log_prob, value)`` of a sampled action."""
        dist, value = self.network(self._normalize(obs))
        raw = dist.sample(key)
        return self.to_env_action(raw), raw, dist.log_prob(raw), value

    def __call__(self, obs: ArrayLike, *, key: PRNGKeyArray | None = None) -> Array:
        """The environment action at ``obs``: the distribution's mode, or a sample when a
        ``key`` is given."""
        dist = self.distribution(obs)
        raw = dist.mode() if key is None else dist.sample(key)
        return self.to_env_action(raw)


class PPOState(eqx.Module):
    """PPO's agent state: the policy and the optimizer state (``optax.inject_hyperparams``,
    so the current learning rate is ``opt_state.hyperparams["learning_rate"]``)."""

    policy: PPOPolicy
    opt_state: PyTree


def _gae(rollout: Rollout, values: Array, next_values: Array, gamma: float | Array,
         lam: float | Array) -> Array:
    """Generalised advantage estimates, time-major ``[T, N]``.

    ``next_values`` are the values of ``final_obs`` (the state reached by each step, before
    auto-reset); they are zeroed on termination, kept on truncation, and the recursion is
    cut wherever an episode ended.
    """
    not_terminated = 1.0 - rollout.terminated.astype(jnp.float32)
    not_done = 1.0 - rollout.done.astype(jnp.float32)
    deltas = rollout.reward + gamma * not_terminated * next_values - values

    def backward(next_advantage, xs):
        delta, nd = xs
        advantage = delta + gamma * lam * nd * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(deltas[0]), (deltas, not_done),
                                 reverse=True)
    return advantages


class PPO(eqx.Module):
    """Proximal Policy Optimisation with a clipped objective and GAE.

    Hyperparameters follow Stable-Baselines3's names; the defaults are rl-baselines3-zoo's
    CartPole-v1 settings, with the 256-step rollout split over 4 envs x 64 steps (the logged
    mean return reaches 475 after ~70-80k env steps). Discrete actions use a
    categorical policy, continuous actions (``Box``) a Gaussian in ``[-1, 1]`` with a learned
    state-independent log std, clipped and rescaled to the action box.

    Example:
        ```python
        ppo = PPO()
        env = callax.envs.make("cartpole")
        keys = jax.random.split(jax.random.key(0), 2)
        train = jax.jit(jax.vmap(
            lambda k: ppo.learn(env, total_timesteps=100_000, key=k, callback=tb)))
        result = train(keys)
        ```

    **Attributes:**

    - `n_envs`: environments stepped in parallel.
    - `n_steps`: steps per env per iteration (rollout length).
    - `batch_size`: minibatch size; must divide ``n_envs * n_steps``.
    - `n_epochs`: passes over the rollout per iteration.
    - `learning_rate`: Adam learning rate; annealed linearly to 0 if `anneal_lr`.
    - `gamma`, `gae_lambda`: discount and GAE parameter.
    - `clip_range`: PPO's ratio clipping.
    - `clip_range_vf`: clip the value prediction around the old one (``None``: no
      clipping).
    - `ent_coef`, `vf_coef`: entropy bonus and value-loss coefficients.
    - `max_grad_norm`: global gradient-norm clipping.
    - `normalize_advantage`: normalise advantages per minibatch.
    - `normalize_obs`: normalise observations by running mean/std (clipped to ±10).
    - `hidden_sizes`, `activation`: the MLPs of the (separate) actor and critic.
    - `log_std_init`: initial log std of the Gaussian policy.
    """

    n_envs: int = eqx.field(static=True, default=4)
    n_steps: int = eqx.field(static=True, default=64)
    batch_size: int = eqx.field(static=True, default=256)
    n_epochs: int = eqx.field(static=True, default=20)
    learning_rate: float = eqx.field(static=True, default=1e-3)
    anneal_lr: bool = eqx.field(static=True, default=True)
    gamma: float = eqx.field(static=True, default=0.98)
    gae_lambda: float = eqx.field(static=True, default=0.8)
    clip_range: float = eqx.field(static=True, default=0.2)
    clip_range_vf: float | None = eqx.field(static=True, default=None)
    ent_coef: float = eqx.field(static=True, default=0.0)
    vf_coef: float = eqx.field(static=True, default=0.5)
    max_grad_norm: float = eqx.field(static=True, default=0.5)
    normalize_advantage: bool = eqx.field(static=True, default=True)
    normalize_obs: bool = eqx.field(static=True, default=False)
    hidden_sizes: tuple[int, ...] = eqx.field(static=True, default=(64, 64))
    activation: str = eqx.field(static=True, default="tanh")
    log_std_init: float = eqx.field(static=True, default=0.0)

    SWEEPABLE = ("learning_rate", "clip_range", "ent_coef", "vf_coef", "gamma", "gae_lambda",
                 "max_grad_norm")
    """The hyperparameters ``learn(..., hparams=...)`` takes as traced values (a sweep)."""

    def __check_init__(self):
        for name in ("n_envs", "n_steps", "batch_size", "n_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"PPO.{name} must be a positive int, got {value!r}")
        if (self.n_envs * self.n_steps) % self.batch_size:
            raise ValueError(
                f"PPO.batch_size ({self.batch_size}) must divide n_envs * n_steps "
                f"({self.n_envs} * {self.n_steps} = {self.n_envs * self.n_steps})"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"PPO.learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError("PPO.gamma and PPO.gae_lambda must be in [0, 1]")
        if not self.clip_range > 0:
            raise ValueError(f"PPO.clip_range must be positive, got {self.clip_range}")
        if self.clip_range_vf is not None and not self.clip_range_vf > 0:
            raise ValueError(f"PPO.clip_range_vf must be positive or None, got "
                             f"{self.clip_range_vf}")
        if not isinstance(self.hidden_sizes, tuple):
            raise TypeError(f"PPO.hidden_sizes must be a tuple, got {self.hidden_sizes!r}")

    @property
    def steps_per_iteration(self) -> int:
        """``n_envs * n_steps`` env steps per iteration."""
        return self.n_envs * self.n_steps

    def n_iterations(self, total_timesteps: int | Int[Array, ""]) -> int | Int[Array, ""]:
        """Iterations needed for at least ``total_timesteps`` env steps (an ``int32`` array
        for an array)."""
        return iterations_for(total_timesteps, self.steps_per_iteration)

    def init(self, env: Any, key: PRNGKeyArray, env_params: Any = None) -> PPOState:
        """The initial agent state (networks, optimizer, observation statistics)."""
        obs_space = env.observation_space(env_params)
        action_space = env.action_space(env_params)
        obs_size = math.prod(obs_space.shape)
        k_actor, k_critic = jax.random.split(as_key(key))
        if isinstance(action_space, Discrete):
            actor = CategoricalPolicy(obs_size, action_space.n, self.hidden_sizes,
                                      activation=self.activation, key=k_actor)
            low = high = None
        elif isinstance(action_space, Box):
            actor = GaussianPolicy(obs_size, math.prod(action_space.shape), self.hidden_sizes,
                                   activation=self.activation, log_std_init=self.log_std_init,
                                   squash="clip", key=k_actor)
            low = jnp.asarray(action_space.low, jnp.float32).reshape(-1)
            high = jnp.asarray(action_space.high, jnp.float32).reshape(-1)
        else:
            raise TypeError(f"PPO supports Discrete and Box action spaces, got {action_space!r}")
        critic = MLP(obs_size, 1, self.hidden_sizes, activation=self.activation,
                     output_scale=1.0, key=k_critic)
        network = ActorCritic(actor, critic)
        rms = RunningMeanStd.initial(tuple(obs_space.shape)) if self.normalize_obs else None
        policy = PPOPolicy(network, rms, low, high)
        flat_params, _ = ravel_pytree(eqx.filter(network, eqx.is_array))
        # The schedule's length does not change the state's structure or initial values.
        opt_state = self._optimizer(1).init(flat_params)
        return PPOState(policy, opt_state)

    def _optimizer(self, total_timesteps: int | Int[Array, ""]) -> optax.GradientTransformation:
        updates_per_iteration = self.n_epochs * (self.steps_per_iteration // self.batch_size)
        if self.anneal_lr and isinstance(total_timesteps, int):
            learning_rate = optax.linear_schedule(  # pyright: ignore[reportAssignmentType]
                self.learning_rate, 0.0,
                max(1, self.n_iterations(total_timesteps) * updates_per_iteration),  # pyright: ignore[reportArgumentType]
            )
        elif self.anneal_lr:
            # optax.linear_schedule's formula, for a number of updates that is traced.
            n_updates = jnp.maximum(1, self.n_iterations(total_timesteps) * updates_per_iteration)
            initial = self.learning_rate

            def learning_rate(count):
                done = jnp.clip(count, 0, n_updates)
                return initial * (1 - done / n_updates) ** 1 + 0.0
        else:
            learning_rate = self.learning_rate  # pyright: ignore[reportAssignmentType]

        def make(learning_rate):
            return optax.chain(optax.clip_by_global_norm(self.max_grad_norm),
                               optax.adam(learning_rate, eps=1e-5))

        return optax.inject_hyperparams(make)(learning_rate=learning_rate)

    def _act(self, state: PPOState, obs: Array, key: PRNGKeyArray
             ) -> tuple[Array, dict[str, Array]]:
        keys = jax.random.split(key, obs.shape[0])
        action, raw, log_prob, value = jax.vmap(state.policy.sample)(obs, keys)
        return action, {"raw_action": raw, "log_prob": log_prob, "value": value}

    def _loss(self, network: ActorCritic, batch: dict[str, Array]
              ) -> tuple[Array, dict[str, Array]]:
        dist, values = jax.vmap(network)(batch["obs"])
        log_prob = jax.vmap(lambda d, a: d.log_prob(a))(dist, batch["raw_action"])
        entropy = jax.vmap(lambda d: d.entropy())(dist)
        advantages = batch["advantages"]
        if self.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        log_ratio = log_prob - batch["log_prob"]
        ratio = jnp.exp(log_ratio)
        clipped = jnp.clip(ratio, 1.0 - self.clip_range, 1.0 + self.clip_range)
        pg_loss = -jnp.mean(jnp.minimum(ratio * advantages, clipped * advantages))
        if self.clip_range_vf is not None:
            values = batch["values"] + jnp.clip(values - batch["values"], -self.clip_range_vf,
                                                self.clip_range_vf)
        value_loss = jnp.mean((batch["returns"] - values) ** 2)
        entropy_loss = -jnp.mean(entropy)
        loss = pg_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
        stats = {
            "policy_gradient_loss": pg_loss,
            "value_loss": value_loss,
            "entropy_loss": entropy_loss,
            "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
            "clip_fraction": jnp.mean((jnp.abs(ratio - 1.0) > self.clip_range)
                                      .astype(jnp.float32)),
            "loss": loss,
        }
        return loss, stats

    def compute_advantages(self, policy: PPOPolicy, rollout: Rollout) -> tuple[Array, Array]:
        """``(advantages, returns)`` of a rollout, time-major ``[n_steps, n_envs]``.

        GAE(``gamma``, ``gae_lambda``) with ``rollout.aux["value"]`` as the values of
        ``rollout.obs``. Each step bootstraps from the value of ``rollout.final_obs`` (the
        state it reached, before any auto-reset): zero on termination, the value of the final
        observation on truncation (time limit) and of the next observation otherwise. The
        recursion stops at every episode end. Returns are ``advantages + values``.
        """
        n_steps, n_envs = rollout.reward.shape
        final_obs = jnp.reshape(rollout.final_obs, (n_steps * n_envs, *rollout.final_obs.shape[2:]))
        next_values = jax.vmap(policy.value)(final_obs).reshape(n_steps, n_envs)
        values = rollout.aux["value"]
        advantages = _gae(rollout, values, next_values, self.gamma, self.gae_lambda)
        return advantages, advantages + values

    def _update(self, optimizer: optax.GradientTransformation, state: PPOState,
                rollout: Rollout, key: PRNGKeyArray) -> tuple[PPOState, dict[str, Array]]:
        policy = state.policy
        n_steps, n_envs = rollout.reward.shape
        size = n_steps * n_envs

        def flat(x: Array) -> Array:
            return jnp.reshape(x, (size, *x.shape[2:]))

        obs = flat(rollout.obs)
        values = rollout.aux["value"]
        advantages, returns = self.compute_advantages(policy, rollout)
        data = {
            "obs": jax.vmap(policy._normalize)(obs),
            "raw_action": flat(rollout.aux["raw_action"]),
            "log_prob": flat(rollout.aux["log_prob"]),
            "values": flat(values),
            "advantages": flat(advantages),
            "returns": flat(returns),
        }
        n_minibatches = size // self.batch_size
        # The optimizer works on the parameters raveled into one vector: the same maths as on
        # the pytree for Adam, and far fewer operations to compile.
        params, static = eqx.partition(policy.network, eqx.is_array)
        flat_params, unravel = ravel_pytree(params)

        def loss(flat: Array, batch: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
            return self._loss(eqx.combine(unravel(flat), static), batch)

        grad_fn = jax.value_and_grad(loss, has_aux=True)

        def minibatch_step(carry, batch):
            flat, opt_state = carry
            (_, stats), grads = grad_fn(flat, batch)
            updates, opt_state = optimizer.update(grads, opt_state, flat)
            return (flat + updates, opt_state), stats

        def epoch(carry, k):
            if n_minibatches == 1:  # one minibatch: the order does not matter
                return jax.lax.scan(minibatch_step, carry, jax.tree.map(lambda x: x[None], data))
            permutation = jax.random.permutation(k, size)
            batches = jax.tree.map(
                lambda x: jnp.take(x, permutation, axis=0).reshape(
                    (n_minibatches, self.batch_size, *x.shape[1:])
                ),
                data,
            )
            return jax.lax.scan(minibatch_step, carry, batches)

        (flat_params, opt_state), stats = jax.lax.scan(
            epoch, (flat_params, state.opt_state), jax.random.split(key, self.n_epochs)
        )
        network = eqx.combine(unravel(flat_params), static)
        log = {name: jnp.mean(value) for name, value in stats.items()}
        log["loss"] = stats["loss"][-1, -1]
        flat_returns, flat_values = data["returns"], data["values"]
        log["explained_variance"] = 1.0 - jnp.var(flat_returns - flat_values) / (
            jnp.var(flat_returns) + 1e-8
        )
        if isinstance(network.actor, GaussianPolicy):
            log["std"] = jnp.mean(jnp.exp(network.actor.log_std))
        obs_rms = None if policy.obs_rms is None else policy.obs_rms.update(obs)
        policy = PPOPolicy(network, obs_rms, policy.action_low, policy.action_high)
        return PPOState(policy, opt_state), log

    def learn(
        self,
        env: Any,
        *,
        total_timesteps: int | Int[ArrayLike, ""],
        key: PRNGKeyArray,
        callback: AbstractCallback | Iterable[AbstractCallback] | None = None,
        env_params: Any = None,
        hparams: Mapping[str, Float[ArrayLike, ""]] | None = None,
    ) -> TrainingResult:
        """Train on ``env`` for (at least) ``total_timesteps`` env steps, summed over envs.

        Runs ``ceil(total_timesteps / (n_envs * n_steps))`` iterations of rollout + update
        through [`run_training`][callax.train.run_training], which calls the callback hooks
        (see there for the order). The work is compiled with ``eqx.filter_jit``; ``learn``
        can itself be called inside ``jax.jit`` and ``jax.vmap`` (over ``key``, to train
        several seeds at once)::

            train = jax.jit(jax.vmap(
                lambda k: ppo.learn(env, total_timesteps=100_000, key=k, callback=cb)))

        **Arguments:**

        - `env`: a callax (gymnax-API) environment with a ``Discrete`` or ``Box`` action
          space.
        - `total_timesteps`: a Python int (part of the compiled program), or an integer
          scalar array: traced, so one compiled program (and one entry of JAX's persistent
          compilation cache) serves every budget.
        - `key`: PRNG key (``jax.random.key``; a legacy ``PRNGKey`` also works).
        - `callback`: a callback, a list of callbacks, a ``CallbackList`` or ``None``.
        - `env_params`: environment parameters (``None``: the env's defaults).
        - `hparams`: ``{name: value}`` of :attr:`SWEEPABLE` hyperparameters given as
          (traced) scalars instead of this PPO's fields: under ``jax.vmap`` over a
          [`callax.Sweep`][]'s configurations, each trains with its own values in one
          compiled program (the learning rate through ``optax.inject_hyperparams``).

        **Returns:**

        A [`TrainingResult`][callax.train.TrainingResult] whose ``agent_state`` is a
        [`PPOState`][callax.train.PPOState] and ``policy`` a
        [`PPOPolicy`][callax.train.PPOPolicy].
        """
        if isinstance(total_timesteps, bool) or not isinstance(
                total_timesteps, int | jax.Array | np.ndarray | np.integer):
            raise TypeError(f"total_timesteps must be an int, got {total_timesteps!r}")
        if isinstance(total_timesteps, np.ndarray | np.integer):
            total_timesteps = jnp.asarray(total_timesteps)
        total_timesteps = check_budget(total_timesteps, "total_timesteps", minimum=1)
        check_hparams(self, hparams)
        hparams = None if hparams is None else dict(hparams)
        return _learn(self, env, total_timesteps, key, callback, env_params, hparams)  # pyright: ignore[reportArgumentType]


@eqx.filter_jit
def _learn(ppo: PPO, env: Any, total_timesteps: int | Int[Array, ""], key: PRNGKeyArray,
           callback: Any, env_params: Any, hparams: dict[str, Any] | None = None
           ) -> TrainingResult:
    ppo = with_traced(ppo, hparams)  # lives in this trace only: never flattened
    optimizer = ppo._optimizer(total_timesteps)

    def init_fn(k: PRNGKeyArray) -> PPOState:
        return ppo.init(env, k, env_params)

    def update_fn(state: PPOState, rollout: Rollout, k: PRNGKeyArray
                  ) -> tuple[PPOState, dict[str, Array]]:
        return ppo._update(optimizer, state, rollout, k)

    return run_training(
        env,
        init_fn=init_fn,
        act_fn=lambda state, obs, k: ppo._act(state, obs, k),
        update_fn=update_fn,
        callback=callback,
        key=key,
        n_envs=ppo.n_envs,
        n_steps=ppo.n_steps,
        n_iterations=ppo.n_iterations(total_timesteps),
        total_timesteps=total_timesteps,
        env_params=env_params,
    )
