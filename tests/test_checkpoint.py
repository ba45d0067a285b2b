"""CheckpointCallback: Equinox files written from inside jit/vmap, restored with
load_checkpoint."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from callax import CheckpointCallback, load_checkpoint
from callax.envs import CartPoleParams, make
from callax.train import PPO
from quick_jit import quick_jit

CARTPOLE = make("cartpole")
SHORT = CartPoleParams(max_steps_in_episode=20)
TINY = PPO(n_envs=2, n_steps=16, batch_size=16, n_epochs=2, hidden_sizes=(16,))
TOTAL = 4 * TINY.n_envs * TINY.n_steps  # 4 iterations of 32 steps


def learn(key, callback):
    return TINY.learn(CARTPOLE, total_timesteps=TOTAL, key=key, callback=callback,
                      env_params=SHORT)


learn_vmap = quick_jit(jax.vmap(learn, in_axes=(0, None)))


def assert_same(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_saves_every_save_freq_steps_and_restores(tmp_path):
    cb = CheckpointCallback(save_freq=64, save_path=tmp_path / "ckpt", name_prefix="ppo")
    result = quick_jit(learn)(jax.random.key(0), cb)
    jax.effects_barrier()
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["ppo_128_steps.eqx", "ppo_64_steps.eqx"]
    assert int(result.callback_state.saves) == 2
    # Restored into a fresh agent state of the same configuration: the trained one.
    fresh = TINY.init(CARTPOLE, jax.random.key(99))
    restored = load_checkpoint(cb.checkpoint_path(128), fresh)
    assert_same(restored, result.agent_state)
    # The restored policy acts like the trained one.
    obs = np.zeros(4, np.float32)
    assert int(restored.policy(obs)) == int(result.policy(obs))
    earlier = load_checkpoint(cb.checkpoint_path(64), fresh)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(earlier), jax.tree.leaves(result.agent_state), strict=True))


def test_vmapped_seeds_one_directory_each(tmp_path):
    cb = CheckpointCallback(save_freq=TOTAL, save_path=str(tmp_path))
    result = learn_vmap(jax.random.split(jax.random.key(1), 2), cb)
    jax.effects_barrier()
    assert sorted(os.listdir(tmp_path)) == ["seed_0", "seed_1"]
    fresh = TINY.init(CARTPOLE, jax.random.key(0))
    for seed in (0, 1):
        assert os.listdir(tmp_path / f"seed_{seed}") == [f"rl_model_{TOTAL}_steps.eqx"]
        restored = load_checkpoint(cb.checkpoint_path(TOTAL, seed), fresh)
        assert_same(restored, jax.tree.map(lambda x, s=seed: x[s], result.agent_state))
    # A second callback to another directory reuses the compiled trainer and writes there.
    other = CheckpointCallback(save_freq=TOTAL, save_path=tmp_path / "other")
    learn_vmap(jax.random.split(jax.random.key(1), 2), other)
    jax.effects_barrier()
    assert os.path.exists(other.checkpoint_path(TOTAL, 1))
    assert learn_vmap._cache_size() == 1


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="save_freq"):
        CheckpointCallback(save_freq=0, save_path=tmp_path)
    with pytest.raises(ValueError, match="name_prefix"):
        CheckpointCallback(save_freq=1, save_path=tmp_path, name_prefix="a/b")
    with pytest.raises(TypeError, match="save_path"):
        CheckpointCallback(save_freq=1, save_path="")
