"""A uniform replay buffer kept on device (a ring of transitions) for off-policy trainers."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Int, PRNGKeyArray

__all__ = ["ReplayBuffer", "Transition"]


class Transition(eqx.Module):
    """One transition (or a batch of them, with leading axes).

    **Attributes:**

    - `obs`: where the action was taken.
    - `action`: the action, in the *unit* action space ``[-1, 1]``.
    - `reward`: the raw environment reward.
    - `next_obs`: the observation the step reached, **before** any auto-reset (the env's
      ``info["final_obs"]``), so that a truncated episode bootstraps from its real last state.
    - `terminated`: whether the step reached a terminal state (no bootstrapping). A truncated
      step has ``terminated = False``.
    """

    obs: Array
    action: Array
    reward: Array
    next_obs: Array
    terminated: Array


class ReplayBuffer(eqx.Module):
    """A ring buffer of up to ``capacity`` transitions, sampled uniformly.

    **Attributes:**

    - `data`: a [`Transition`][callax.train.Transition] whose arrays have leading axis
      ``capacity``.
    - `position`: where the next transition goes.
    - `size`: transitions currently stored (``min(total_added, capacity)``).
    - `total_added`: transitions ever added.
    - `total_sampled`: indices ever sampled (``batch_size`` per sample).

    Counters are ``int32`` (at most 2**31 - 1 transitions or sampled indices per run).
    """

    data: Transition
    position: Int[Array, ""]
    size: Int[Array, ""]
    total_added: Int[Array, ""]
    total_sampled: Int[Array, ""]

    @classmethod
    def empty(cls, capacity: int, obs_shape: tuple[int, ...], action_shape: tuple[int, ...],
              obs_dtype=jnp.float32) -> ReplayBuffer:
        """An empty buffer for ``capacity`` transitions of the given shapes."""
        if int(capacity) < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        capacity = int(capacity)
        data = Transition(
            obs=jnp.zeros((capacity, *obs_shape), obs_dtype),
            action=jnp.zeros((capacity, *action_shape), jnp.float32),
            reward=jnp.zeros((capacity,), jnp.float32),
            next_obs=jnp.zeros((capacity, *obs_shape), obs_dtype),
            terminated=jnp.zeros((capacity,), jnp.bool_),
        )
        zero = jnp.zeros((), jnp.int32)
        return cls(data, zero, zero, zero, zero)

    @property
    def capacity(self) -> int:
        """The number of transitions the buffer holds when full."""
        return self.data.reward.shape[-1]

    def add(self, batch: Transition) -> ReplayBuffer:
        """Add a batch of ``n`` transitions (leading axis ``n <= capacity``), overwriting the
        oldest ones when full."""
        n = batch.reward.shape[0]
        if n > self.capacity:
            raise ValueError(f"cannot add {n} transitions to a buffer of {self.capacity}")
        index = (self.position + jnp.arange(n, dtype=jnp.int32)) % self.capacity
        data = jax.tree.map(
            lambda stored, new: stored.at[index].set(new.astype(stored.dtype)),
            self.data, batch,
        )
        return ReplayBuffer(
            data=data,
            position=(self.position + n) % self.capacity,
            size=jnp.minimum(self.size + n, self.capacity),
            total_added=self.total_added + n,
            total_sampled=self.total_sampled,
        )

    def sample(self, key: PRNGKeyArray, batch_size: int) -> tuple[Transition, ReplayBuffer]:
        """``batch_size`` transitions drawn uniformly (with replacement) among those stored,
        and the buffer with ``total_sampled`` increased. The buffer must not be empty."""
        index = jax.random.randint(key, (batch_size,), 0, jnp.maximum(self.size, 1))
        batch = jax.tree.map(lambda stored: stored[index], self.data)
        return batch, eqx.tree_at(lambda b: b.total_sampled, self,
                                  self.total_sampled + batch_size)

    def replay_ratio(self) -> Array:
        """Total sampled indices / total transitions ever added (``0`` before any add):
        how many times, on average, a transition has been sampled."""
        return self.total_sampled.astype(jnp.float32) / jnp.maximum(
            self.total_added, 1).astype(jnp.float32)
