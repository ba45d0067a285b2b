"""Pendulum-v1 in pure JAX, matching gymnasium's ``Pendulum-v1``."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._base import AbstractEnv, Box, StepEnvOutput

__all__ = ["Pendulum", "PendulumParams", "PendulumState", "angle_normalize"]


def _f32(x: ArrayLike) -> Array:
    return jnp.asarray(x, dtype=jnp.float32)


def _i32(x: ArrayLike) -> Array:
    return jnp.asarray(x, dtype=jnp.int32)


def angle_normalize(x: ArrayLike) -> Array:
    """Wraps an angle to ``[-pi, pi)``.

    Args:
        x: Angle in radians.

    Returns:
        ``((x + pi) mod 2 pi) - pi``.
    """
    return ((jnp.asarray(x) + jnp.pi) % (2 * jnp.pi)) - jnp.pi


class PendulumParams(eqx.Module):
    """Physical constants and limits of [`Pendulum`][callax.envs.Pendulum].

    Defaults are gymnasium's ``Pendulum-v1``.

    Attributes:
        max_speed: Angular velocity is clipped to ``[-max_speed, max_speed]``.
        max_torque: Torque (action) is clipped to ``[-max_torque, max_torque]``.
        dt: Time step.
        g: Gravitational acceleration.
        m: Mass.
        l: Length.
        max_steps_in_episode: Time limit; the episode is truncated at this step.
    """

    max_speed: float | Float[Array, "*batch"] = 8.0
    max_torque: float | Float[Array, "*batch"] = 2.0
    dt: float | Float[Array, "*batch"] = 0.05
    g: float | Float[Array, "*batch"] = 10.0
    m: float | Float[Array, "*batch"] = 1.0
    l: float | Float[Array, "*batch"] = 1.0  # noqa: E741
    max_steps_in_episode: int | Int[Array, "*batch"] = 200


class PendulumState(eqx.Module):
    """State of [`Pendulum`][callax.envs.Pendulum].

    Fields are converted to float32 / int32 arrays on construction.

    Attributes:
        theta: Angle in radians (0 is upright). Not wrapped, as in gymnasium.
        theta_dot: Angular velocity.
        time: Number of steps taken in the current episode.
    """

    theta: Float[Array, ""] = eqx.field(converter=_f32)
    theta_dot: Float[Array, ""] = eqx.field(converter=_f32)
    time: Int[Array, ""] = eqx.field(converter=_i32, default=0)


class Pendulum(AbstractEnv[PendulumState, PendulumParams]):
    """Pure-JAX inverted pendulum swing-up matching gymnasium's ``Pendulum-v1``.

    - Observation: ``float32[3]`` = ``[cos(theta), sin(theta), theta_dot]``.
    - Action: ``Box(-2, 2, (1,))`` torque; a scalar or an array of shape ``(1,)`` is
      accepted, and it is clipped to ``[-max_torque, max_torque]``.
    - Reward: ``-(angle_normalize(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2)`` with the
      pre-step state and the clipped torque ``u``; in ``[-16.27, 0]``.
    - Never terminates; truncated after ``max_steps_in_episode`` (200) steps.
    - Reset: ``theta ~ U(-pi, pi)``, ``theta_dot ~ U(-1, 1)``.
    """

    @property
    def name(self) -> str:
        """``"Pendulum-v1"``."""
        return "Pendulum-v1"

    @property
    def default_params(self) -> PendulumParams:
        """``PendulumParams()``, gymnasium's constants."""
        return PendulumParams()

    def reset_env(
        self, key: PRNGKeyArray, params: PendulumParams
    ) -> tuple[Float[Array, "3"], PendulumState]:
        """Samples ``theta ~ U(-pi, pi)`` and ``theta_dot ~ U(-1, 1)``.

        Args:
            key: PRNG key.
            params: Environment parameters (unused).

        Returns:
            ``(obs, state)``.
        """
        high = jnp.array([jnp.pi, 1.0], dtype=jnp.float32)
        init = jax.random.uniform(key, (2,), dtype=jnp.float32, minval=-high, maxval=high)
        state = PendulumState(init[0], init[1], time=0)
        return self._obs(state), state

    def step_env(
        self,
        key: PRNGKeyArray,
        state: PendulumState,
        action: ArrayLike,
        params: PendulumParams,
    ) -> StepEnvOutput[PendulumState]:
        """One semi-implicit Euler step of the pendulum.

        Args:
            key: PRNG key (unused, the dynamics are deterministic).
            state: Current state.
            action: Torque, a scalar or shape ``(1,)``.
            params: Environment parameters.

        Returns:
            ``(obs, state, reward, terminated, truncated)``; ``terminated`` is always False.
        """
        del key
        th, thdot = state.theta, state.theta_dot
        u = jnp.reshape(jnp.asarray(action, dtype=jnp.float32), ())
        u = jnp.clip(u, -params.max_torque, params.max_torque)
        costs = angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * (u**2)

        g, m, length, dt = params.g, params.m, params.l, params.dt
        newthdot = thdot + (3 * g / (2 * length) * jnp.sin(th) + 3.0 / (m * length**2) * u) * dt
        newthdot = jnp.clip(newthdot, -params.max_speed, params.max_speed)
        newth = th + newthdot * dt
        new_state = PendulumState(newth, newthdot, time=state.time + 1)

        terminated = jnp.zeros((), dtype=bool)
        truncated = new_state.time >= params.max_steps_in_episode
        return self._obs(new_state), new_state, _f32(-costs), terminated, truncated

    def observation_space(self, params: PendulumParams | None = None) -> Box:
        """``Box`` of shape ``(3,)``: ``±[1, 1, max_speed]``.

        Args:
            params: Environment parameters; ``None`` means ``default_params``.

        Returns:
            The observation box.
        """
        if params is None:
            params = self.default_params
        high = jnp.stack([_f32(1.0), _f32(1.0), _f32(params.max_speed)])
        return Box(-high, high, (3,))

    def action_space(self, params: PendulumParams | None = None) -> Box:
        """``Box(-max_torque, max_torque, (1,))``.

        Args:
            params: Environment parameters; ``None`` means ``default_params``.

        Returns:
            The action box.
        """
        if params is None:
            params = self.default_params
        return Box(-params.max_torque, params.max_torque, (1,))

    @staticmethod
    def _obs(state: PendulumState) -> Float[Array, "3"]:
        return jnp.stack([jnp.cos(state.theta), jnp.sin(state.theta), state.theta_dot])
