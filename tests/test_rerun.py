"""One run per training: a compiled training executed again writes a new run, never into the
previous one (issue 16, "One run per training")."""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import callax
from conftest import read_run, run_dirs
from minimal_loop import drive

N_ITERS, N_STEPS, N_ENVS = 3, 4, 2


def _inputs(scale: float):
    rewards = scale * np.ones((N_ITERS, N_STEPS, N_ENVS), np.float32)
    dones = np.zeros((N_ITERS, N_STEPS, N_ENVS), bool)
    dones[:, -1, :] = True  # every env ends an episode each iteration
    return rewards, dones


def _expected(scale: float) -> list[tuple[int, float]]:
    # Every episode has return N_STEPS * scale: the moving average stays there.
    return [((i + 1) * N_STEPS * N_ENVS, N_STEPS * scale) for i in range(N_ITERS)]


def make_train(callback):
    """PureJaxRL's style: the callback is closed over by the compiled training function."""

    @jax.jit
    def train(rewards, dones, key):
        return drive(callback, rewards, dones, key)[2]

    return train


def test_closed_over_callback_run_twice_writes_two_runs(tmp_path):
    callback = callax.TensorBoardCallback("ppo", log_dir=str(tmp_path), flush_every=2)
    train = make_train(callback)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no point may be dropped
        for scale in (1.0, 2.0, 3.0):
            train(*map(jnp.asarray, _inputs(scale)), jax.random.key(0))
        callax.flush_all()
    assert run_dirs(str(tmp_path)) == ["ppo", "ppo_1", "ppo_2"]
    for name, scale in (("ppo", 1.0), ("ppo_1", 2.0), ("ppo_2", 3.0)):
        assert read_run(str(tmp_path / name))["episode/return"] == _expected(scale)


def test_vmapped_seeds_run_twice_and_an_eager_second_training(tmp_path):
    # The same under vmap over seeds (one run, a seed_<i> per seed), then the callback
    # driven again eagerly-dispatched by a new jitted function.
    callback = callax.TensorBoardCallback("sac", log_dir=str(tmp_path), flush_every=1)
    rewards, dones = _inputs(1.0)
    seeds = jnp.stack([jnp.asarray(rewards), 2 * jnp.asarray(rewards)])
    train = jax.jit(jax.vmap(lambda r: drive(callback, r, dones, jax.random.key(0))[2]))
    train(seeds)
    train(seeds * 10)
    jax.jit(lambda: drive(callback, rewards, dones, jax.random.key(1))[2])()
    callax.flush_all()
    # The statistics over seeds (runs seeds/mean, ...) move with their run: sac_1/seeds/...
    statistics = ["seeds/band", "seeds/max", "seeds/mean", "seeds/min"]
    assert run_dirs(str(tmp_path)) == [
        *(f"sac/{r}" for r in ["seed_0", "seed_1", *statistics]),
        *(f"sac_1/{r}" for r in ["seed_0", "seed_1", *statistics]), "sac_2"]
    assert read_run(str(tmp_path / "sac_1" / "seeds" / "max"))["rollout/ep_rew_mean"][-1][1] == 80
    for name, scale in (("sac/seed_0", 1), ("sac/seed_1", 2), ("sac_1/seed_0", 10),
                        ("sac_1/seed_1", 20), ("sac_2", 1)):
        assert read_run(str(tmp_path / name))["episode/return"] == _expected(scale), name


def test_names_skip_directories_on_disk_and_a_reset_alone_does_not_move(tmp_path):
    os.makedirs(tmp_path / "run_1")  # someone else's
    callback = callax.TensorBoardCallback("run", log_dir=str(tmp_path), flush_every=1)
    key = jax.random.key(0)
    # reset without any write (e.g. a dry run) keeps the run where it is.
    callback.reset(callax.ResetContext(), key=key)
    train = make_train(callback)
    train(*map(jnp.asarray, _inputs(1.0)), key)
    train(*map(jnp.asarray, _inputs(5.0)), key)
    callax.flush_all()
    assert run_dirs(str(tmp_path)) == ["run", "run_2"]
    assert read_run(str(tmp_path / "run_2"))["episode/return"] == _expected(5.0)
