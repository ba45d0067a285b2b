"""A tiny PPO on a short CartPole, vmapped over seeds and jitted once, shared by the callback
tests that only need a few real training iterations (console table, hyperparameters)."""

from __future__ import annotations

import jax

from callax.envs import CartPoleParams, make
from callax.train import PPO

TINY = PPO(n_envs=2, n_steps=16, batch_size=16, n_epochs=1, hidden_sizes=(8,))
SHORT = CartPoleParams(max_steps_in_episode=20)


def learn(key, callbacks):
    """Four PPO iterations of `TINY` on `SHORT` CartPole with `callbacks`."""
    return TINY.learn(make("cartpole"), total_timesteps=4 * 32, key=key, callback=callbacks,
                      env_params=SHORT)


learn_vmap = jax.jit(jax.vmap(learn, in_axes=(0, None)))
