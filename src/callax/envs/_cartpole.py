"""CartPole-v1 in pure JAX, matching gymnasium's ``CartPole-v1``."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._base import AbstractEnv, Box, Discrete, StepEnvOutput

__all__ = ["CartPole", "CartPoleParams", "CartPoleState"]


def _f32(x: ArrayLike) -> Array:
    return jnp.asarray(x, dtype=jnp.float32)


def _i32(x: ArrayLike) -> Array:
    return jnp.asarray(x, dtype=jnp.int32)


class CartPoleParams(eqx.Module):
    """Physical constants and limits of [`CartPole`][callax.envs.CartPole].

    Defaults are gymnasium's ``CartPole-v1``. ``total_mass`` and ``polemass_length`` are
    derived from the masses and the length, as in gymnasium.

    Attributes:
        gravity: Gravitational acceleration.
        masscart: Mass of the cart.
        masspole: Mass of the pole.
        length: Half the pole's length.
        force_mag: Magnitude of the force applied by an action.
        tau: Seconds between state updates (explicit Euler step).
        theta_threshold_radians: Pole angle beyond which the episode terminates.
        x_threshold: Cart position beyond which the episode terminates.
        max_steps_in_episode: Time limit; the episode is truncated at this step.
    """

    gravity: float | Float[Array, "*batch"] = 9.8
    masscart: float | Float[Array, "*batch"] = 1.0
    masspole: float | Float[Array, "*batch"] = 0.1
    length: float | Float[Array, "*batch"] = 0.5
    force_mag: float | Float[Array, "*batch"] = 10.0
    tau: float | Float[Array, "*batch"] = 0.02
    theta_threshold_radians: float | Float[Array, "*batch"] = 12 * 2 * math.pi / 360
    x_threshold: float | Float[Array, "*batch"] = 2.4
    max_steps_in_episode: int | Int[Array, "*batch"] = 500

    @property
    def total_mass(self) -> float | Float[Array, "*batch"]:
        """``masspole + masscart``."""
        return self.masspole + self.masscart

    @property
    def polemass_length(self) -> float | Float[Array, "*batch"]:
        """``masspole * length``."""
        return self.masspole * self.length


class CartPoleState(eqx.Module):
    """State of [`CartPole`][callax.envs.CartPole].

    Fields are converted to float32 / int32 arrays on construction, so a state can be built
    from Python numbers (e.g. ``CartPoleState(0.0, 0.0, 0.1, 0.0, time=499)``).

    Attributes:
        x: Cart position.
        x_dot: Cart velocity.
        theta: Pole angle (radians, 0 is upright).
        theta_dot: Pole angular velocity.
        time: Number of steps taken in the current episode.
    """

    x: Float[Array, ""] = eqx.field(converter=_f32)
    x_dot: Float[Array, ""] = eqx.field(converter=_f32)
    theta: Float[Array, ""] = eqx.field(converter=_f32)
    theta_dot: Float[Array, ""] = eqx.field(converter=_f32)
    time: Int[Array, ""] = eqx.field(converter=_i32, default=0)


class CartPole(AbstractEnv[CartPoleState, CartPoleParams]):
    """Pure-JAX CartPole matching gymnasium's ``CartPole-v1``.

    - Observation: ``float32[4]`` = ``[x, x_dot, theta, theta_dot]``.
    - Action: ``Discrete(2)``; 0 pushes left, 1 pushes right.
    - Dynamics: explicit Euler, as gymnasium's default ``kinematics_integrator="euler"``.
    - Reward: 1.0 on every step, including the terminating one.
    - Terminated when ``|x| > 2.4`` or ``|theta| > 12°``.
    - Truncated after ``max_steps_in_episode`` (500) steps.
    - Reset: all four state variables ``~ U(-0.05, 0.05)``.

    Computation is float32 whereas gymnasium integrates in float64, so trajectories agree to
    about 1e-6 per step.
    """

    @property
    def name(self) -> str:
        """``"CartPole-v1"``."""
        return "CartPole-v1"

    @property
    def default_params(self) -> CartPoleParams:
        """``CartPoleParams()``, gymnasium's constants."""
        return CartPoleParams()

    def reset_env(
        self, key: PRNGKeyArray, params: CartPoleParams
    ) -> tuple[Float[Array, "4"], CartPoleState]:
        """Samples ``[x, x_dot, theta, theta_dot] ~ U(-0.05, 0.05)``.

        Args:
            key: PRNG key.
            params: Environment parameters (unused).

        Returns:
            ``(obs, state)``.
        """
        init = jax.random.uniform(key, (4,), dtype=jnp.float32, minval=-0.05, maxval=0.05)
        state = CartPoleState(init[0], init[1], init[2], init[3], time=0)
        return self._obs(state), state

    def step_env(
        self,
        key: PRNGKeyArray,
        state: CartPoleState,
        action: ArrayLike,
        params: CartPoleParams,
    ) -> StepEnvOutput[CartPoleState]:
        """One Euler step of the cart-pole dynamics.

        Args:
            key: PRNG key (unused, the dynamics are deterministic).
            state: Current state.
            action: 0 (push left) or 1 (push right), a scalar or shape ``(1,)``.
            params: Environment parameters.

        Returns:
            ``(obs, state, reward, terminated, truncated)``.
        """
        del key
        action = jnp.reshape(jnp.asarray(action), ())
        x, x_dot, theta, theta_dot = state.x, state.x_dot, state.theta, state.theta_dot
        force = jnp.where(action == 1, params.force_mag, -params.force_mag)
        costheta = jnp.cos(theta)
        sintheta = jnp.sin(theta)
        # Same expression order as gymnasium, to stay as close as float32 allows.
        temp = (
            force + params.polemass_length * jnp.square(theta_dot) * sintheta
        ) / params.total_mass
        thetaacc = (params.gravity * sintheta - costheta * temp) / (
            params.length * (4.0 / 3.0 - params.masspole * jnp.square(costheta) / params.total_mass)
        )
        xacc = temp - params.polemass_length * thetaacc * costheta / params.total_mass

        x = x + params.tau * x_dot
        x_dot = x_dot + params.tau * xacc
        theta = theta + params.tau * theta_dot
        theta_dot = theta_dot + params.tau * thetaacc
        new_state = CartPoleState(x, x_dot, theta, theta_dot, time=state.time + 1)

        terminated = (
            (x < -params.x_threshold)
            | (x > params.x_threshold)
            | (theta < -params.theta_threshold_radians)
            | (theta > params.theta_threshold_radians)
        )
        truncated = new_state.time >= params.max_steps_in_episode
        reward = jnp.ones((), dtype=jnp.float32)
        return self._obs(new_state), new_state, reward, terminated, truncated

    def observation_space(self, params: CartPoleParams | None = None) -> Box:
        """``Box`` of shape ``(4,)`` with gymnasium's bounds.

        Args:
            params: Environment parameters; ``None`` means ``default_params``.

        Returns:
            Bounds ``±[2 * x_threshold, inf, 2 * theta_threshold_radians, inf]``.
        """
        if params is None:
            params = self.default_params
        high = jnp.stack(
            [
                _f32(params.x_threshold * 2),
                _f32(jnp.inf),
                _f32(params.theta_threshold_radians * 2),
                _f32(jnp.inf),
            ]
        )
        return Box(-high, high, (4,))

    def action_space(self, params: CartPoleParams | None = None) -> Discrete:
        """``Discrete(2)``.

        Args:
            params: Environment parameters (unused).

        Returns:
            ``Discrete(2)``.
        """
        return Discrete(2)

    @staticmethod
    def _obs(state: CartPoleState) -> Float[Array, "4"]:
        return jnp.stack([state.x, state.x_dot, state.theta, state.theta_dot])
