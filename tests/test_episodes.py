"""SB3's rollout/ep_rew_mean and rollout/ep_len_mean: the last `stats_window_size` finished
episodes of all envs, checked against a direct simulation of SB3's deque."""

from collections import deque

import jax
import numpy as np
import pytest

import callax
from callax.callbacks._episodes import EpisodeWindow, window_means
from conftest import read_run
from minimal_loop import drive


def sb3_means(rewards, dones, window):
    """SB3: a deque of finished episodes appended step by step, envs in index order."""
    n_iters, n_steps, n_envs = rewards.shape
    buffer = deque(maxlen=window)
    ret, length = np.zeros(n_envs), np.zeros(n_envs, int)
    out_r, out_l = [], []
    for i in range(n_iters):
        for t in range(n_steps):
            for e in range(n_envs):
                ret[e] += rewards[i, t, e]
                length[e] += 1
                if dones[i, t, e]:
                    buffer.append((ret[e], length[e]))
                    ret[e], length[e] = 0.0, 0
        step = (i + 1) * n_steps * n_envs
        if buffer:
            out_r.append((step, np.mean([r for r, _ in buffer], dtype=np.float64)))
            out_l.append((step, np.mean([n for _, n in buffer], dtype=np.float64)))
    return out_r, out_l


def scripted(seed, n_iters=5, n_steps=6, n_envs=3):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(n_iters, n_steps, n_envs)).astype(np.float32)
    dones = rng.random((n_iters, n_steps, n_envs)) < 0.35
    return rewards, dones


def assert_points(got, expected):
    assert [s for s, _ in got] == [s for s, _ in expected]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=1e-5)


@pytest.mark.parametrize("window", [1, 4, 100])
def test_window_matches_sb3_deque(logdir, window):
    rewards, dones = scripted(window)
    cb = callax.TensorBoardCallback(name="w", log_dir=logdir, flush_every=2,
                                    stats_window_size=window, moving_average=False)
    jax.jit(lambda k: drive(cb, rewards, dones, k))(jax.random.key(0))
    run = read_run(f"{logdir}/w")
    expected_r, expected_l = sb3_means(rewards, dones, window)
    assert len(expected_r) >= 4
    assert_points(run["rollout/ep_rew_mean"], expected_r)
    assert_points(run["rollout/ep_len_mean"], expected_l)
    assert "episode/return" not in run and "episode/length" not in run


def test_window_per_seed_under_vmap(logdir):
    data = [scripted(10 + s) for s in range(2)]
    rewards = np.stack([r for r, _ in data])
    dones = np.stack([d for _, d in data])
    cb = callax.TensorBoardCallback(name="v", log_dir=logdir, flush_every=3,
                                    stats_window_size=5)
    keys = jax.random.split(jax.random.key(1), 2)
    jax.jit(jax.vmap(lambda k, r, d: drive(cb, r, d, k)))(keys, rewards, dones)
    for seed in range(2):
        run = read_run(f"{logdir}/v/seed_{seed}")
        expected_r, expected_l = sb3_means(rewards[seed], dones[seed], 5)
        assert_points(run["rollout/ep_rew_mean"], expected_r)
        assert_points(run["rollout/ep_len_mean"], expected_l)
        assert "episode/return" in run  # lerax's moving average stays available


def test_empty_window_is_nan():
    window = jax.vmap(lambda _: EpisodeWindow.empty(3))(np.arange(2))
    ret, length, count = window_means(window)
    assert np.isnan(ret) and np.isnan(length) and int(count) == 0


def test_window_size_checked(logdir):
    with pytest.raises(ValueError, match="stats_window_size"):
        callax.TensorBoardCallback(name="x", log_dir=logdir, stats_window_size=0)


@pytest.mark.parametrize("seed", range(6))
def test_window_means_take_the_most_recent_episodes_of_all_envs(seed):
    # Random windows (some slots empty, each env's episodes ending at distinct steps, ties
    # between envs) against the plain definition: the W latest episodes over all envs, an
    # env's index breaking ties in end step (later env first).
    rng = np.random.default_rng(seed)
    n_envs, size = int(rng.integers(1, 6)), int(rng.integers(1, 8))
    ends = np.full((n_envs, size), -1, np.int32)
    for env in range(n_envs):
        filled = int(rng.integers(0, size + 1))
        ends[env, :filled] = rng.choice(40, filled, replace=False)
    returns = rng.normal(size=(n_envs, size)).astype(np.float32)
    lengths = rng.integers(1, 500, (n_envs, size)).astype(np.int32)
    window = EpisodeWindow(*(jax.numpy.asarray(a) for a in (
        returns, lengths, ends, np.zeros(n_envs, np.int32))))
    ret, length, count = jax.jit(window_means)(window)
    finished = sorted(((ends[e, i], e, returns[e, i], lengths[e, i])
                       for e in range(n_envs) for i in range(size) if ends[e, i] >= 0),
                      reverse=True)[:size]
    assert int(count) == len(finished)
    if finished:
        np.testing.assert_allclose(float(ret), np.mean([f[2] for f in finished]), rtol=1e-5)
        np.testing.assert_allclose(float(length), np.mean([f[3] for f in finished]),
                                   rtol=1e-6)
    else:
        assert np.isnan(ret) and np.isnan(length)
