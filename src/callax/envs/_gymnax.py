"""Adapter exposing any gymnax environment through [`AbstractEnv`][callax.envs.AbstractEnv]."""

import importlib
from types import ModuleType
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, PRNGKeyArray, PyTree

from ._base import AbstractEnv, Box, Discrete, Space, StepEnvOutput

__all__ = ["GymnaxEnv"]

_MISSING_GYMNAX = "GymnaxEnv needs the optional extra: pip install 'callax[gymnax]'"


def _import_gymnax() -> ModuleType:
    """Imports gymnax, turning any import failure into an actionable message."""
    try:
        return importlib.import_module("gymnax")
    except ImportError as err:  # gymnax itself, or an undeclared dependency such as `six`
        raise ImportError(f"{_MISSING_GYMNAX} ({err})") from err


def _separates_truncation(env: Any) -> bool:
    """Whether ``env`` follows the newer gymnax API.

    In that API ``step_env`` returns only natural termination and the time limit is
    reported by ``env.is_truncated(state, params)``. In the classic API ``step_env`` returns
    a single ``done`` that already includes the time limit.
    """
    return callable(getattr(env, "is_truncated", None))


def _time_limit_reached(state: Any, params: Any) -> Bool[Array, ""]:
    """``state.time >= params.max_steps_in_episode`` if both exist, else False."""
    time = getattr(state, "time", None)
    limit = getattr(params, "max_steps_in_episode", None)
    if time is None or limit is None:
        return jnp.zeros((), dtype=bool)
    return jnp.asarray(time >= limit, dtype=bool)


def _convert_space(space: Any) -> Space:
    """Converts a gymnax ``Discrete`` or ``Box`` space to ours."""
    spaces = importlib.import_module("gymnax.environments.spaces")
    if isinstance(space, spaces.Discrete):
        return Discrete(int(space.n), dtype=getattr(space, "dtype", jnp.int32))
    if isinstance(space, spaces.Box):
        return Box(space.low, space.high, tuple(space.shape), dtype=space.dtype)
    raise NotImplementedError(
        f"GymnaxEnv only converts gymnax Discrete and Box spaces, got {type(space).__name__}"
    )


class GymnaxEnv(AbstractEnv[Any, Any]):
    """Wraps a gymnax environment in the [`AbstractEnv`][callax.envs.AbstractEnv] interface.

    The adapter calls the gymnax env's non-resetting ``step_env`` and performs the auto-reset
    itself (with the same key split as gymnax), so ``info["final_obs"]`` is the exact
    observation reached before the reset, and obs/state/reward match gymnax's own
    ``env.step`` under the same key.

    Terminated vs truncated:

    - Newer gymnax releases (those whose environments have ``is_truncated``, e.g. the
      gymnax 1.0.1 wheel this was tested against) report both separately; they are used
      as is.
    - Classic gymnax returns a single ``done`` that folds in the time limit. Then the
      adapter uses a heuristic: ``truncated = state.time >= params.max_steps_in_episode``
      (False if the state has no ``time`` or the params no ``max_steps_in_episode``) and
      ``terminated = done & ~truncated``. A natural termination on exactly the last allowed
      step is therefore reported as a truncation.

    gymnax's own ``info`` dict (e.g. ``"discount"``) is not forwarded.

    gymnax is imported lazily; it is an optional extra (``pip install 'callax[gymnax]'``,
    which also installs ``six``, imported by gymnax 1.0.1 without being declared).

    Attributes:
        env: The wrapped gymnax environment (static).
        params: The gymnax params used when ``params=None`` is passed.

    Example:
        ```python
        import gymnax
        from callax.envs import GymnaxEnv

        env = GymnaxEnv(*gymnax.make("CartPole-v1"))
        # or: env = GymnaxEnv("CartPole-v1")
        ```
    """

    env: Any = eqx.field(static=True)
    params: Any

    def __init__(self, env: Any, params: Any = None):
        """Creates the adapter.

        Args:
            env: A gymnax environment instance, or a gymnax environment id (a ``str``)
                passed to ``gymnax.make``.
            params: gymnax params to use by default. ``None`` means the params returned by
                ``gymnax.make`` (for an id) or ``env.default_params``.

        Raises:
            ImportError: If gymnax (or one of its dependencies) cannot be imported.
        """
        gymnax = _import_gymnax()
        if isinstance(env, str):
            env, made_params = gymnax.make(env)
            if params is None:
                params = made_params
        self.env = env
        self.params = env.default_params if params is None else params

    @property
    def name(self) -> str:
        """The gymnax environment's name, e.g. ``"CartPole-v1"``."""
        return self.env.name

    @property
    def default_params(self) -> Any:
        """The gymnax params given at construction."""
        return self.params

    def reset_env(self, key: PRNGKeyArray, params: Any) -> tuple[PyTree, Any]:
        """Calls the gymnax env's ``reset_env``.

        Args:
            key: PRNG key.
            params: gymnax params.

        Returns:
            ``(obs, state)``.
        """
        return self.env.reset_env(key, params)

    def step_env(
        self, key: PRNGKeyArray, state: Any, action: ArrayLike, params: Any
    ) -> StepEnvOutput[Any]:
        """Calls the gymnax env's non-resetting ``step_env`` and splits ``done``.

        Args:
            key: PRNG key.
            state: gymnax env state.
            action: Action.
            params: gymnax params.

        Returns:
            ``(obs, state, reward, terminated, truncated)``.
        """
        obs, new_state, reward, done, _ = self.env.step_env(key, state, action, params)
        done = jnp.asarray(done, dtype=bool)
        if _separates_truncation(self.env):
            terminated = done
            truncated = jnp.asarray(self.env.is_truncated(new_state, params), dtype=bool)
        else:
            truncated = _time_limit_reached(new_state, params)
            terminated = done & ~truncated
        return obs, new_state, jnp.asarray(reward), terminated, truncated

    def observation_space(self, params: Any = None) -> Space:
        """The gymnax observation space, converted.

        Args:
            params: gymnax params; ``None`` means ``default_params``.

        Returns:
            A [`Box`][callax.envs.Box] or [`Discrete`][callax.envs.Discrete].

        Raises:
            NotImplementedError: For gymnax ``Dict``/``Tuple`` spaces.
        """
        return _convert_space(self.env.observation_space(self._params(params)))

    def action_space(self, params: Any = None) -> Space:
        """The gymnax action space, converted.

        Args:
            params: gymnax params; ``None`` means ``default_params``.

        Returns:
            A [`Box`][callax.envs.Box] or [`Discrete`][callax.envs.Discrete].

        Raises:
            NotImplementedError: For gymnax ``Dict``/``Tuple`` spaces.
        """
        return _convert_space(self.env.action_space(self._params(params)))

    def _params(self, params: Any) -> Any:
        return self.params if params is None else params
