"""Pure-JAX classic-control environments with gymnax's functional API.

Environments are stateless `equinox.Module`s; the episode state is an explicit pytree, so
``reset``/``step`` can be jitted, vmapped and scanned. ``step`` auto-resets and reports
``terminated`` and ``truncated`` separately, plus the pre-reset ``final_obs``, in ``info``.
"""

from ._base import AbstractEnv, Box, Discrete
from ._cartpole import CartPole, CartPoleParams, CartPoleState
from ._gymnax import GymnaxEnv
from ._pendulum import Pendulum, PendulumParams, PendulumState

__all__ = [
    "AbstractEnv",
    "Box",
    "CartPole",
    "CartPoleParams",
    "CartPoleState",
    "Discrete",
    "GymnaxEnv",
    "Pendulum",
    "PendulumParams",
    "PendulumState",
    "make",
]

_REGISTRY: dict[str, type[AbstractEnv]] = {
    "cartpole": CartPole,
    "cartpole-v1": CartPole,
    "pendulum": Pendulum,
    "pendulum-v1": Pendulum,
}
_VALID_NAMES = ("cartpole", "CartPole-v1", "pendulum", "Pendulum-v1")


def make(name: str) -> AbstractEnv:
    """Creates a built-in environment by name.

    Args:
        name: ``"cartpole"``, ``"CartPole-v1"``, ``"pendulum"`` or ``"Pendulum-v1"``
            (case-insensitive).

    Returns:
        A new environment instance (use ``env.default_params`` for its parameters).

    Raises:
        ValueError: If ``name`` is not one of the valid names.

    Example:
        ```python
        env = make("CartPole-v1")
        obs, state = env.reset(jax.random.key(0))
        ```
    """
    try:
        cls = _REGISTRY[name.lower()]
    except (KeyError, AttributeError):
        valid = ", ".join(repr(n) for n in _VALID_NAMES)
        raise ValueError(
            f"Unknown environment {name!r}; valid names (case-insensitive): {valid}. "
            "For gymnax environments use GymnaxEnv."
        ) from None
    return cls()
