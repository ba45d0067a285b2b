"""PureJaxRL's ``LogWrapper`` episode state, written here after its published description:
the running return and length of each env, the return and length of its last finished
episode, and its step count, with the per-step ``info`` PureJaxRL's PPO stacks over a
rollout. Shared by ``bench_step_cost.py`` and the PPO-like loop (``_ppo_like.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def logwrap_init(n_envs: int) -> dict[str, jax.Array]:
    zeros_f, zeros_i = jnp.zeros(n_envs, jnp.float32), jnp.zeros(n_envs, jnp.int32)
    return {"episode_returns": zeros_f, "episode_lengths": zeros_i,
            "returned_episode_returns": zeros_f, "returned_episode_lengths": zeros_i,
            "timestep": zeros_i}


def logwrap_step(s: dict[str, jax.Array], reward, done):
    """LogWrapper's update: running sums, reset on done; the finished episode kept."""
    ret = s["episode_returns"] + reward
    length = s["episode_lengths"] + 1
    keep = 1 - done.astype(jnp.int32)
    new = {"episode_returns": ret * keep, "episode_lengths": length * keep,
           "returned_episode_returns": s["returned_episode_returns"] * keep + ret * (1 - keep),
           "returned_episode_lengths": s["returned_episode_lengths"] * keep
           + length * (1 - keep),
           "timestep": s["timestep"] + 1}
    info = {"returned_episode": done, "returned_episode_returns": new["returned_episode_returns"],
            "returned_episode_lengths": new["returned_episode_lengths"],
            "timestep": new["timestep"]}
    return new, info
