"""Base class and space descriptions for pure-JAX environments."""

import abc
from typing import Any, Generic, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, PyTree

__all__ = ["AbstractEnv", "Box", "Discrete", "Space", "StepEnvOutput", "StepInfo"]

StateT = TypeVar("StateT")
ParamsT = TypeVar("ParamsT")

StepEnvOutput = tuple[PyTree, StateT, Array, Bool[Array, ""], Bool[Array, ""]]
"""What [`AbstractEnv.step_env`][callax.envs.AbstractEnv.step_env] returns:
``(obs, state, reward, terminated, truncated)``. ``obs`` is an array for the built-in
environments (a wrapped gymnax environment may use any pytree)."""

StepInfo = dict[str, Any]
"""The ``info`` dict returned by [`AbstractEnv.step`][callax.envs.AbstractEnv.step].

Always holds ``"terminated"`` (bool array), ``"truncated"`` (bool array) and ``"final_obs"``
(the observation reached by the step, before any auto-reset).
"""


class Discrete(eqx.Module):
    """A discrete space ``{0, 1, ..., n - 1}`` of scalar integer actions.

    Attributes:
        n: Number of elements.
        dtype: Integer dtype of samples.
    """

    n: int = eqx.field(static=True, converter=int)
    dtype: Any = eqx.field(static=True, default=jnp.int32, converter=jnp.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one element: always ``()``."""
        return ()

    def sample(self, key: PRNGKeyArray) -> Array:
        """Draws a uniformly random element.

        Args:
            key: PRNG key.

        Returns:
            A scalar integer array in ``[0, n)``.
        """
        return jax.random.randint(key, (), 0, self.n, dtype=self.dtype)

    def contains(self, x: ArrayLike) -> Bool[Array, ""]:
        """Checks whether ``x`` is an element of the space.

        Args:
            x: Candidate element.

        Returns:
            A boolean scalar array.
        """
        x = jnp.asarray(x)
        return jnp.all((x >= 0) & (x < self.n) & (x == jnp.round(x)))


class Box(eqx.Module):
    """A (possibly unbounded) box ``[low, high]`` in ``R^shape``.

    ``low`` and ``high`` are broadcast to ``shape`` and stored as arrays of ``dtype``.
    Infinite bounds are allowed.

    Attributes:
        low: Lower bound, an array of shape ``shape``.
        high: Upper bound, an array of shape ``shape``.
        shape: Shape of one element.
        dtype: Floating dtype of elements.
    """

    low: Float[Array, "..."]
    high: Float[Array, "..."]
    shape: tuple[int, ...] = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)

    def __init__(
        self,
        low: ArrayLike,
        high: ArrayLike,
        shape: tuple[int, ...] | None = None,
        dtype: Any = jnp.float32,
    ):
        """Creates the box.

        Args:
            low: Lower bound, a scalar or an array broadcastable to ``shape``.
            high: Upper bound, a scalar or an array broadcastable to ``shape``.
            shape: Shape of one element. Defaults to the broadcast shape of ``low`` and
                ``high``.
            dtype: Floating dtype of elements.
        """
        low = jnp.asarray(low, dtype=dtype)
        high = jnp.asarray(high, dtype=dtype)
        if shape is None:
            shape = jnp.broadcast_shapes(low.shape, high.shape)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = jnp.dtype(dtype)
        self.low = jnp.broadcast_to(low, self.shape)
        self.high = jnp.broadcast_to(high, self.shape)

    def sample(self, key: PRNGKeyArray) -> Float[Array, "..."]:
        """Draws a uniformly random element (requires finite bounds).

        Args:
            key: PRNG key.

        Returns:
            An array of shape ``shape``.
        """
        return jax.random.uniform(
            key, self.shape, dtype=self.dtype, minval=self.low, maxval=self.high
        )

    def contains(self, x: ArrayLike) -> Bool[Array, ""]:
        """Checks whether ``x`` lies in the box.

        Args:
            x: Candidate element.

        Returns:
            A boolean scalar array.
        """
        x = jnp.asarray(x)
        return jnp.all((x >= self.low) & (x <= self.high))


Space = Discrete | Box


def _select(pred: Bool[Array, ""], on_true: PyTree, on_false: PyTree) -> PyTree:
    """Leafwise ``where(pred, on_true, on_false)`` over two pytrees of the same structure."""
    return jax.tree.map(
        lambda t, f: jnp.where(pred, t, f).astype(jnp.result_type(f)), on_true, on_false
    )


class AbstractEnv(eqx.Module, Generic[StateT, ParamsT]):
    """Abstract pure-JAX environment with gymnax's functional API.

    An environment object holds no mutable state: the episode state is an explicit pytree
    threaded through [`reset`][callax.envs.AbstractEnv.reset] and
    [`step`][callax.envs.AbstractEnv.step], so everything can be `jax.jit`-ed,
    `jax.vmap`-ed and `jax.lax.scan`-ned. The methods are not jitted internally; wrap them
    (or your whole training step) in `jax.jit`.

    `step` auto-resets like gymnax: when an episode ends, the returned observation and state
    are those of a fresh episode. Unlike gymnax's classic API, termination (a terminal MDP
    state: do not bootstrap) and truncation (time limit: do bootstrap from
    ``info["final_obs"]``) are reported separately.

    Subclasses implement [`name`][callax.envs.AbstractEnv.name],
    [`default_params`][callax.envs.AbstractEnv.default_params],
    [`reset_env`][callax.envs.AbstractEnv.reset_env],
    [`step_env`][callax.envs.AbstractEnv.step_env],
    [`observation_space`][callax.envs.AbstractEnv.observation_space] and
    [`action_space`][callax.envs.AbstractEnv.action_space]. The env state should hold the
    step count ``time`` so that `step_env` can report truncation at
    ``params.max_steps_in_episode``.
    """

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Environment id, e.g. ``"CartPole-v1"``."""

    @property
    @abc.abstractmethod
    def default_params(self) -> ParamsT:
        """Parameters used when ``params=None`` is passed."""

    @abc.abstractmethod
    def reset_env(self, key: PRNGKeyArray, params: ParamsT) -> tuple[PyTree, StateT]:
        """Samples an initial state.

        Args:
            key: PRNG key.
            params: Environment parameters.

        Returns:
            ``(obs, state)`` of a fresh episode.
        """

    @abc.abstractmethod
    def step_env(
        self, key: PRNGKeyArray, state: StateT, action: ArrayLike, params: ParamsT
    ) -> StepEnvOutput[StateT]:
        """Advances the dynamics by one step, without auto-reset.

        Args:
            key: PRNG key for stochastic transitions.
            state: Current state.
            action: Action to take.
            params: Environment parameters.

        Returns:
            ``(obs, state, reward, terminated, truncated)`` where ``obs`` and ``state`` are
            those reached by the step.
        """

    @abc.abstractmethod
    def observation_space(self, params: ParamsT | None = None) -> Space:
        """Describes observations.

        Args:
            params: Environment parameters; ``None`` means ``default_params``.

        Returns:
            A [`Box`][callax.envs.Box] or [`Discrete`][callax.envs.Discrete].
        """

    @abc.abstractmethod
    def action_space(self, params: ParamsT | None = None) -> Space:
        """Describes actions.

        Args:
            params: Environment parameters; ``None`` means ``default_params``.

        Returns:
            A [`Box`][callax.envs.Box] or [`Discrete`][callax.envs.Discrete].
        """

    def reset(self, key: PRNGKeyArray, params: ParamsT | None = None) -> tuple[PyTree, StateT]:
        """Starts a new episode.

        Args:
            key: PRNG key.
            params: Environment parameters; ``None`` means ``default_params``.

        Returns:
            ``(obs, state)``.
        """
        if params is None:
            params = self.default_params
        return self.reset_env(key, params)

    def step(
        self,
        key: PRNGKeyArray,
        state: StateT,
        action: ArrayLike,
        params: ParamsT | None = None,
    ) -> tuple[PyTree, StateT, Array, Bool[Array, ""], StepInfo]:
        """Takes one step, auto-resetting when the episode ends.

        The key is split into a step key and a reset key (as gymnax does). When the step
        terminates or truncates the episode, the returned ``obs`` and ``state`` are those of
        a freshly reset episode, and the observation actually reached is in
        ``info["final_obs"]``.

        Args:
            key: PRNG key.
            state: Current state.
            action: Action to take.
            params: Environment parameters; ``None`` means ``default_params``.

        Returns:
            ``(obs, state, reward, done, info)`` with ``reward`` the raw environment reward,
            ``done = terminated | truncated`` and ``info`` a dict with ``"terminated"``,
            ``"truncated"`` and ``"final_obs"``.
        """
        if params is None:
            params = self.default_params
        key_step, key_reset = jax.random.split(key)
        obs_step, state_step, reward, terminated, truncated = self.step_env(
            key_step, state, action, params
        )
        terminated = jnp.asarray(terminated, dtype=bool)
        truncated = jnp.asarray(truncated, dtype=bool)
        done = terminated | truncated
        obs_reset, state_reset = self.reset_env(key_reset, params)
        obs = _select(done, obs_reset, obs_step)
        state = _select(done, state_reset, state_step)
        info: StepInfo = {"terminated": terminated, "truncated": truncated, "final_obs": obs_step}
        return obs, state, reward, done, info
