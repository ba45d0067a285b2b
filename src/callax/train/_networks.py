"""Small Equinox networks for the reference trainers: MLPs, action distributions, actor-critic.

Everything here works on **one** observation (no batch axis); batch with ``jax.vmap``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

__all__ = [
    "MLP",
    "ActorCritic",
    "Categorical",
    "CategoricalPolicy",
    "DiagGaussian",
    "GaussianPolicy",
    "RunningMeanStd",
    "activation_fn",
    "orthogonal",
    "orthogonal_linear",
]

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
}


def activation_fn(name: str) -> Callable[[Array], Array]:
    """The activation function called ``name`` (``tanh``, ``relu``, ``elu``, ``gelu``,
    ``silu``)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}"
        ) from None


def orthogonal(key: PRNGKeyArray, shape: tuple[int, int], scale: float = 1.0
               ) -> Float[Array, "rows cols"]:
    """A random (semi-)orthogonal matrix times ``scale``, uniformly distributed.

    Like ``jax.nn.initializers.orthogonal`` but without a QR factorisation: Gram-Schmidt
    (applied twice, for accuracy) on a Gaussian matrix, in plain JAX operations. XLA's CPU
    QR kernel, batched under ``jax.vmap`` (several seeds initialised at once), can deadlock
    its thread pool on machines with few cores; this one cannot.
    """
    rows, cols = shape
    n, m = max(rows, cols), min(rows, cols)
    gaussian = jax.random.normal(key, (n, m), jnp.float32)
    columns = jnp.arange(m)

    def column(j, q):
        v = gaussian[:, j]
        earlier = (columns < j).astype(jnp.float32)
        for _ in range(2):
            v = v - q @ ((q.T @ v) * earlier)
        return q.at[:, j].set(v / jnp.linalg.norm(v))

    q = jax.lax.fori_loop(0, m, column, jnp.zeros((n, m), jnp.float32))
    return scale * (q if rows >= cols else q.T)


def orthogonal_linear(
    in_size: int, out_size: int, *, scale: float, key: PRNGKeyArray
) -> eqx.nn.Linear:
    """A linear layer with orthogonal weights of gain ``scale`` and zero bias (the
    initialisation of Stable-Baselines3 and CleanRL), see ``orthogonal``."""
    k_linear, k_weight = jax.random.split(key)
    linear = eqx.nn.Linear(in_size, out_size, key=k_linear)
    weight = orthogonal(k_weight, (out_size, in_size), scale)
    linear = eqx.tree_at(lambda m: m.weight, linear, weight)
    return eqx.tree_at(lambda m: m.bias, linear, jnp.zeros((out_size,), jnp.float32))


class MLP(eqx.Module):
    """A multi-layer perceptron with orthogonal initialisation.

    Hidden layers get gain ``sqrt(2)``; the output layer gets ``output_scale`` (``0.01`` for a
    policy head, ``1.0`` for a value head, as in Stable-Baselines3).
    """

    layers: tuple[eqx.nn.Linear, ...]
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        hidden_sizes: Sequence[int] = (64, 64),
        *,
        activation: str = "tanh",
        output_scale: float = 1.0,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_size`, `out_size`: input and output widths.
        - `hidden_sizes`: widths of the hidden layers.
        - `activation`: name of the hidden activation (see ``activation_fn``).
        - `output_scale`: orthogonal gain of the last layer.
        - `key`: PRNG key.
        """
        activation_fn(activation)  # validate
        sizes = [int(in_size), *(int(h) for h in hidden_sizes), int(out_size)]
        keys = jax.random.split(key, len(sizes) - 1)
        scales = [math.sqrt(2.0)] * (len(sizes) - 2) + [float(output_scale)]
        self.layers = tuple(
            orthogonal_linear(a, b, scale=s, key=k)
            for a, b, s, k in zip(sizes[:-1], sizes[1:], scales, keys, strict=True)
        )
        self.activation = activation

    def __call__(self, x: Float[Array, " in_size"]) -> Float[Array, " out_size"]:
        act = activation_fn(self.activation)
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)


class Categorical(eqx.Module):
    """A categorical distribution over ``{0, ..., n - 1}`` given by its logits."""

    logits: Float[Array, " n"]

    def __init__(self, logits: Float[ArrayLike, " n"]):
        self.logits = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32))

    def sample(self, key: PRNGKeyArray) -> Int[Array, ""]:
        return jax.random.categorical(key, self.logits).astype(jnp.int32)

    def mode(self) -> Int[Array, ""]:
        return jnp.argmax(self.logits).astype(jnp.int32)

    def log_prob(self, action: Int[ArrayLike, ""]) -> Float[Array, ""]:
        return jnp.take(self.logits, jnp.asarray(action, jnp.int32))

    def entropy(self) -> Float[Array, ""]:
        return -jnp.sum(jnp.exp(self.logits) * self.logits)


class DiagGaussian(eqx.Module):
    """A Gaussian with diagonal covariance (log-probabilities summed over action dims)."""

    mean: Float[Array, " d"]
    log_std: Float[Array, " d"]

    def sample(self, key: PRNGKeyArray) -> Float[Array, " d"]:
        noise = jax.random.normal(key, self.mean.shape, self.mean.dtype)
        return self.mean + jnp.exp(self.log_std) * noise

    def mode(self) -> Float[Array, " d"]:
        return self.mean

    def log_prob(self, action: Float[ArrayLike, " d"]) -> Float[Array, ""]:
        z = (jnp.asarray(action) - self.mean) * jnp.exp(-self.log_std)
        return jnp.sum(-0.5 * z**2 - self.log_std - 0.5 * math.log(2 * math.pi))

    def entropy(self) -> Float[Array, ""]:
        return jnp.sum(self.log_std + 0.5 * (1.0 + math.log(2 * math.pi)))


class CategoricalPolicy(eqx.Module):
    """An MLP giving the logits of a ``Categorical`` distribution (discrete actions)."""

    net: MLP

    def __init__(
        self,
        obs_size: int,
        n_actions: int,
        hidden_sizes: Sequence[int] = (64, 64),
        *,
        activation: str = "tanh",
        key: PRNGKeyArray,
    ):
        self.net = MLP(obs_size, n_actions, hidden_sizes, activation=activation,
                       output_scale=0.01, key=key)

    def __call__(self, obs: Float[Array, " obs_size"]) -> Categorical:
        return Categorical(self.net(obs))


class GaussianPolicy(eqx.Module):
    """An MLP giving the mean of a ``DiagGaussian`` with a learned, state-independent
    log standard deviation (Stable-Baselines3's PPO policy for continuous actions).

    The distribution lives in *unit* action space: ``to_env_action`` clips a sample to
    ``[-1, 1]`` (``squash="clip"``) or applies ``tanh`` (``squash="tanh"``) and rescales it to
    the action box. PPO keeps the log-probability of the unsquashed sample; with ``"clip"``
    the clipping happens only in the environment (as Stable-Baselines3 does).
    """

    net: MLP
    log_std: Float[Array, " d"]
    squash: str = eqx.field(static=True)

    def __init__(
        self,
        obs_size: int,
        action_size: int,
        hidden_sizes: Sequence[int] = (64, 64),
        *,
        activation: str = "tanh",
        log_std_init: float = 0.0,
        squash: str = "clip",
        key: PRNGKeyArray,
    ):
        if squash not in ("clip", "tanh"):
            raise ValueError(f"squash must be 'clip' or 'tanh', got {squash!r}")
        self.net = MLP(obs_size, action_size, hidden_sizes, activation=activation,
                       output_scale=0.01, key=key)
        self.log_std = jnp.full((action_size,), log_std_init, jnp.float32)
        self.squash = squash

    def __call__(self, obs: Float[Array, " obs_size"]) -> DiagGaussian:
        mean = self.net(obs)
        return DiagGaussian(mean, jnp.broadcast_to(self.log_std, mean.shape))

    def to_env_action(
        self, action: Float[Array, " d"], low: Float[ArrayLike, " d"],
        high: Float[ArrayLike, " d"]
    ) -> Float[Array, " d"]:
        """Map an action in unit space to the box ``[low, high]`` (dims with an infinite
        bound are passed through unchanged)."""
        unit = jnp.clip(action, -1.0, 1.0) if self.squash == "clip" else jnp.tanh(action)
        low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)
        finite = jnp.isfinite(low) & jnp.isfinite(high)
        scaled = jnp.where(finite, low + (unit + 1.0) * 0.5 * (high - low), action)
        return scaled.astype(action.dtype)


class ActorCritic(eqx.Module):
    """A policy network and a separate value network (no shared layers).

    ``actor`` is a ``CategoricalPolicy`` or a ``GaussianPolicy``; ``critic`` an
    ``MLP`` with one output.
    """

    actor: CategoricalPolicy | GaussianPolicy
    critic: MLP

    def __call__(self, obs: Float[Array, " obs_size"]
                 ) -> tuple[Categorical | DiagGaussian, Float[Array, ""]]:
        """The action distribution and the value of one observation."""
        return self.actor(obs), self.value(obs)

    def value(self, obs: Float[Array, " obs_size"]) -> Float[Array, ""]:
        return self.critic(obs)[0]


class RunningMeanStd(eqx.Module):
    """Running mean and variance of observations (parallel Welford update), used to
    normalise them as Stable-Baselines3's ``VecNormalize`` does."""

    mean: Float[Array, " *shape"]
    var: Float[Array, " *shape"]
    count: Float[Array, ""]

    @classmethod
    def initial(cls, shape: tuple[int, ...]) -> RunningMeanStd:
        return cls(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32),
                   jnp.asarray(1e-4, jnp.float32))

    def update(self, batch: Float[Array, " batch *shape"]) -> RunningMeanStd:
        """Merge the statistics of ``batch`` (leading axis = samples)."""
        batch = jnp.asarray(batch, jnp.float32)
        batch_mean = jnp.mean(batch, axis=0)
        batch_var = jnp.var(batch, axis=0)
        batch_count = jnp.asarray(batch.shape[0], jnp.float32)
        delta = batch_mean - self.mean
        total = self.count + batch_count
        mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count
        m2 = m2 + delta**2 * self.count * batch_count / total
        return RunningMeanStd(mean, m2 / total, total)

    def normalize(self, obs: Float[ArrayLike, " *batch"], clip: float = 10.0
                  ) -> Float[Array, " *batch"]:
        obs = (jnp.asarray(obs, jnp.float32) - self.mean) / jnp.sqrt(self.var + 1e-8)
        return jnp.clip(obs, -clip, clip)
