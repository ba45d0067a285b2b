"""Soft Actor-Critic's networks, agent state and TD target.

Shared by the synchronous trainer (``_sac.py``) and the asynchronous driver
(``_sac_async.py``); imports neither of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._replay import ReplayBuffer

__all__ = ["SACActor", "SACCritic", "SACState", "td_target"]

_LOG_2 = math.log(2.0)
TRAINING_LOG_KEYS = ("actor_loss", "critic_loss", "ent_coef", "ent_coef_loss")
"""The training-log entries of one gradient step (means over an iteration's steps)."""


# --------------------------------------------------------------------------------------------
# Networks.


def _uniform_layers(key: PRNGKeyArray, sizes: Sequence[int], ensemble: tuple[int, ...] = ()
                    ) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """Dense layers ``sizes[i] -> sizes[i + 1]`` with PyTorch's default initialisation
    (weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))), as Stable-Baselines3's SAC.
    All values come from one random draw (one RNG call keeps compilation fast)."""
    shapes = [((*ensemble, b, a), (*ensemble, b)) for a, b in zip(sizes[:-1], sizes[1:])]
    total = sum(math.prod(w) + math.prod(b) for w, b in shapes)
    flat = jax.random.uniform(key, (total,), jnp.float32, minval=-1.0, maxval=1.0)
    weights, biases, offset = [], [], 0
    for (w_shape, b_shape), fan_in in zip(shapes, sizes[:-1], strict=True):
        bound = 1.0 / math.sqrt(fan_in)
        for shape, out in ((w_shape, weights), (b_shape, biases)):
            size = math.prod(shape)
            out.append(flat[offset:offset + size].reshape(shape) * bound)
            offset += size
    return tuple(weights), tuple(biases)


class SACActor(eqx.Module):
    """A tanh-squashed diagonal Gaussian policy in the *unit* action space ``[-1, 1]``.

    A ReLU MLP outputs the mean and the log standard deviation (clipped to
    ``[log_std_min, log_std_max]``) of the Gaussian before the ``tanh``.
    """

    weights: tuple[Array, ...]
    biases: tuple[Array, ...]
    log_std_min: float = eqx.field(static=True)
    log_std_max: float = eqx.field(static=True)

    def __init__(self, obs_size: int, action_size: int, hidden_sizes: Sequence[int], *,
                 key: PRNGKeyArray, log_std_min: float = -20.0, log_std_max: float = 2.0):
        sizes = (obs_size, *hidden_sizes, 2 * action_size)
        self.weights, self.biases = _uniform_layers(key, sizes)
        self.log_std_min = float(log_std_min)
        self.log_std_max = float(log_std_max)

    def distribution(self, obs: Float[Array, "*batch obs_size"]
                     ) -> tuple[Float[Array, "*batch d"], Float[Array, "*batch d"]]:
        """``(mean, log_std)`` of the Gaussian before the squashing ``tanh``, for one flat
        observation or a batch of them (leading axes)."""
        x = jnp.asarray(obs, jnp.float32)
        for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            x = jax.nn.relu(x @ w.T + b)
        out = x @ self.weights[-1].T + self.biases[-1]
        mean, log_std = jnp.split(out, 2, axis=-1)
        return mean, jnp.clip(log_std, self.log_std_min, self.log_std_max)

    def sample(self, obs: Float[Array, "*batch obs_size"], noise: Float[Array, "*batch d"]
               ) -> tuple[Float[Array, "*batch d"], Float[Array, "*batch"],
                          Float[Array, "*batch"]]:
        """``(action, log_prob, gaussian_entropy)`` for observations and standard normal
        ``noise``: reparameterised samples squashed into ``[-1, 1]``, their log-probability
        (with the tanh correction), and the closed-form entropy of the Gaussian before
        squashing."""
        mean, log_std = self.distribution(obs)
        pre_tanh = mean + jnp.exp(log_std) * noise
        gaussian_logp = jnp.sum(-0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi), -1)
        # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), numerically stable.
        correction = jnp.sum(2.0 * (_LOG_2 - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh)), -1)
        entropy = jnp.sum(log_std + 0.5 * (1.0 + math.log(2 * math.pi)), -1)
        return jnp.tanh(pre_tanh), gaussian_logp - correction, entropy

    def deterministic(self, obs: Float[Array, "*batch obs_size"]) -> Float[Array, "*batch d"]:
        """The squashed mean action (for evaluation)."""
        mean, _ = self.distribution(obs)
        return jnp.tanh(mean)


class SACCritic(eqx.Module):
    """An ensemble of ReLU Q networks; every weight has a leading critic axis."""

    weights: tuple[Array, ...]
    biases: tuple[Array, ...]

    def __init__(self, obs_size: int, action_size: int, hidden_sizes: Sequence[int], *,
                 n_critics: int, key: PRNGKeyArray):
        sizes = (obs_size + action_size, *hidden_sizes, 1)
        self.weights, self.biases = _uniform_layers(key, sizes, (n_critics,))

    @property
    def n_critics(self) -> int:
        return self.weights[0].shape[0]

    def __call__(self, obs: Float[Array, "*batch obs_size"], action: Float[Array, "*batch d"]
                 ) -> Float[Array, "*batch n_critics"]:
        """Every critic's Q value of (flat observation, unit action) pairs (any leading
        batch axes)."""
        x = jnp.concatenate([jnp.asarray(obs, jnp.float32), action], axis=-1)
        h = jnp.einsum("coi,...i->...co", self.weights[0], x) + self.biases[0]
        for w, b in zip(self.weights[1:], self.biases[1:], strict=True):
            h = jnp.einsum("coi,...ci->...co", w, jax.nn.relu(h)) + b
        return h[..., 0]


class SACState(eqx.Module):
    """The agent state of [`SAC`][callax.train.SAC] (``TrainingResult.agent_state``).

    **Attributes:**

    - `actor`, `critic`, `target_critic`: the networks (the target is a Polyak average).
    - `log_alpha`: log of the entropy coefficient.
    - `opt_state`: ``{"actor": ..., "critic": ..., "ent_coef": ...}``, each an
      ``optax.inject_hyperparams`` state (so ``hyperparams["learning_rate"]`` is visible).
    - `buffer`: the replay buffer.
    - `n_updates`: gradient steps done.
    """

    actor: SACActor
    critic: SACCritic
    target_critic: SACCritic
    log_alpha: Float[Array, ""]
    opt_state: dict[str, Any]
    buffer: ReplayBuffer
    n_updates: Int[Array, ""]

    @property
    def policy(self) -> SACActor:
        """The actor (what callbacks see as ``policy``)."""
        return self.actor


def td_target(reward: ArrayLike, terminated: ArrayLike, next_value: ArrayLike,
              gamma: float | ArrayLike) -> Array:
    """``reward + gamma * (1 - terminated) * next_value``.

    ``next_value`` is the soft value of the observation the step *reached* (before any
    auto-reset), so a truncated step bootstraps from its true last state while a terminated
    step does not bootstrap at all.
    """
    not_done = 1.0 - jnp.asarray(terminated, jnp.float32)
    return jnp.asarray(reward, jnp.float32) + gamma * not_done * jnp.asarray(next_value)


def check_total_timesteps(total_timesteps: Any) -> None:
    if (not isinstance(total_timesteps, int) or isinstance(total_timesteps, bool)
            or total_timesteps < 0):
        raise ValueError(
            f"total_timesteps must be a non-negative Python int, got {total_timesteps!r}")


