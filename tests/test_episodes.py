"""SB3's rollout/ep_rew_mean and rollout/ep_len_mean: the last `stats_window_size` finished
episodes of all envs, checked against a direct simulation of SB3's deque."""

import os
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
    window = jax.vmap(lambda k: EpisodeWindow.empty(3, k))(np.arange(2))
    ret, length, count = window_means(window)
    assert np.isnan(ret) and np.isnan(length) and int(count) == 0


def test_window_size_checked(logdir):
    with pytest.raises(ValueError, match="stats_window_size"):
        callax.TensorBoardCallback(name="x", log_dir=logdir, stats_window_size=0)


@pytest.mark.parametrize(("n_envs", "size", "spread"),
                         [(1, 5, True), (3, 4, True), (7, 3, True), (16, 100, True),
                          (4, 6, False), (5, 2, False),
                          (130, 7, True), (200, 300, True), (128, 100, False)])
def test_ring_holds_the_last_episodes_of_all_envs(n_envs, size, spread):
    # Many episodes end at once (more than the window at some steps when n_envs > size):
    # the ring keeps SB3's deque, envs appended in index order. ``spread``: the window is
    # shared out over the vmapped envs (``like``); otherwise one whole ring takes the envs
    # as a leading axis (an env vectorised without vmap).
    rng = np.random.default_rng(n_envs * 100 + size)
    n_steps = 40
    rewards = rng.normal(size=(n_steps, n_envs)).astype(np.float32)
    dones = rng.random((n_steps, n_envs)) < 0.6
    lengths = rng.integers(1, 9, (n_steps, n_envs)).astype(np.int32)
    like = jax.numpy.arange(n_envs) if spread else None

    @jax.jit
    def run(rewards, dones, lengths):
        window = (jax.vmap(lambda k: EpisodeWindow.empty(size, k))(like) if spread
                  else EpisodeWindow.empty(size))

        def step(window, xs):
            window = jax.vmap(EpisodeWindow.add)(window, *xs) if spread else window.add(*xs)
            return window, window_means(window)

        return jax.lax.scan(step, window, (dones, rewards, lengths))

    window, (got_r, got_l, got_n) = run(rewards, dones, lengths)
    # One guard slot over the window (see _episodes._capacity).
    assert window.returns.shape == ((n_envs, -(-(size + 1) // n_envs)) if spread
                                    else (size + 1,))
    deque_ = deque(maxlen=size)
    for t in range(n_steps):
        deque_.extend((rewards[t, e], lengths[t, e]) for e in range(n_envs) if dones[t, e])
        assert int(got_n[t]) == len(deque_)
        if deque_:
            np.testing.assert_allclose(float(got_r[t]), np.mean([r for r, _ in deque_]),
                                       rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(float(got_l[t]), np.mean([n for _, n in deque_]),
                                       rtol=1e-6)
        else:
            assert np.isnan(got_r[t]) and np.isnan(got_l[t])


def test_step_state_holds_one_window_per_seed(logdir):
    # The seed's window (100 slots and a guard slot) is shared out over its envs: 16 envs
    # hold ceil(101 / 16) = 7 slots each (two arrays of 448 bytes: under XLA:CPU's 512-byte
    # threshold for running a loop body in order), not 100 each.
    cb = callax.TensorBoardCallback(name="s", log_dir=logdir)
    keys = jax.random.split(jax.random.key(0), 16)
    state = jax.jit(jax.vmap(lambda k: cb.step_reset(callax.ResetContext(), key=k)))(keys)
    assert state.window.returns.shape == state.window.lengths.shape == (16, 7)
    seeds = jax.vmap(jax.vmap(lambda k: cb.step_reset(callax.ResetContext(), key=k)))(
        jax.random.split(jax.random.key(1), (3, 200)))
    assert seeds.window.returns.shape == (3, 200, 1)


def test_window_off_with_none(logdir):
    data = [scripted(20 + s) for s in range(2)]
    rewards = np.stack([r for r, _ in data])
    dones = np.stack([d for _, d in data])
    cb = callax.TensorBoardCallback(name="off", log_dir=logdir, flush_every=2,
                                    stats_window_size=None)
    assert not cb.seeds_run
    keys = jax.random.split(jax.random.key(2), 2)
    _, step_state, _ = jax.jit(jax.vmap(lambda k, r, d: drive(cb, r, d, k)))(
        keys, rewards, dones)
    assert step_state.window is None
    for seed in range(2):
        run = read_run(f"{logdir}/off/seed_{seed}")
        assert "rollout/ep_rew_mean" not in run and "rollout/ep_len_mean" not in run
        assert len(run["episode/return"]) >= 4 and len(run["train/loss"]) == 5
    assert not os.path.exists(f"{logdir}/off/seeds")


def drive_unvmapped_envs(callback, rewards, dones, key):
    """A foreign loop that does not vmap envs: ``step_reset`` once, ``on_step`` given the
    step's rewards as they are (a scalar for one env, ``[N]`` for an env vectorised
    without vmap: the step state then takes that shape at the first step, so the loop is
    unrolled), ``on_iteration`` after each iteration."""
    from callax import IterationContext, ResetContext, StepContext

    state = callback.reset(ResetContext(), key=key)
    step_state = callback.step_reset(ResetContext(), key=key)
    for i in range(rewards.shape[0]):
        for t in range(rewards.shape[1]):
            ctx = StepContext(step_state, None, None, dones[i, t], rewards[i, t])
            step_state = callback.on_step(ctx, key=key)
        ctx = IterationContext(state, step_state, None, None, i + 1, None, {}, {})
        state = callback.on_iteration(ctx, key=key)
    return callback.on_training_end(
        callax.TrainingContext(state, step_state, None, None, 0, 0, None), key=key)


def test_window_of_an_env_vectorised_without_vmap(logdir):
    # ``on_step`` gets ``[N]`` rewards and dones (no vmap): the step state's one ring takes
    # the envs in index order, as SB3's deque.
    rewards, dones = scripted(30, n_envs=4)
    cb = callax.TensorBoardCallback(name="vec", log_dir=logdir, flush_every=2,
                                    stats_window_size=4, moving_average=False)
    jax.jit(lambda k: drive_unvmapped_envs(cb, rewards, dones, k))(jax.random.key(3))
    run = read_run(f"{logdir}/vec")
    expected_r, expected_l = sb3_means(rewards, dones, 4)
    assert len(expected_r) >= 4
    assert_points(run["rollout/ep_rew_mean"], expected_r)
    assert_points(run["rollout/ep_len_mean"], expected_l)


@pytest.mark.parametrize(("n_envs", "window"), [(None, 1), (None, 4), (2, 1), (2, 100)])
def test_seeds_vmapped_around_unbatched_envs_refused(logdir, n_envs, window):
    # vmap over seeds with no vmap over envs (one env per seed, or envs vectorised without
    # vmap): ``step_reset``'s key is batched over the seeds, so the innermost vmap is the
    # seeds' and the ring would be shared out over them, mixing the seeds' episodes (before
    # the check, with one env per seed and a window of 1: seed 0 logged the other seeds'
    # episodes and seeds 1 and 2 logged 0.0; larger windows failed with a shape error).
    # Refused at trace time instead, with the fix in the message.
    data = [scripted(40 + s, n_envs=n_envs or 1) for s in range(3)]
    rewards = np.stack([r if n_envs else r[..., 0] for r, _ in data])
    dones = np.stack([d if n_envs else d[..., 0] for _, d in data])
    cb = callax.TensorBoardCallback(name="mix", log_dir=logdir, flush_every=2,
                                    stats_window_size=window)
    keys = jax.random.split(jax.random.key(4), 3)
    run = jax.jit(jax.vmap(lambda k, r, d: drive_unvmapped_envs(cb, r, d, k)))
    with pytest.raises(ValueError, match="innermost vmap"):
        run(keys, rewards, dones)


def test_seeds_vmapped_around_one_vmapped_env(logdir):
    # The fix the error names: an env axis of one env under the vmap over seeds.
    data = [scripted(50 + s, n_envs=1) for s in range(3)]
    rewards = np.stack([r for r, _ in data])
    dones = np.stack([d for _, d in data])
    assert len({float(r.sum()) for r in rewards}) == 3
    cb = callax.TensorBoardCallback(name="one", log_dir=logdir, flush_every=2,
                                    stats_window_size=4)
    keys = jax.random.split(jax.random.key(5), 3)
    jax.jit(jax.vmap(lambda k, r, d: drive(cb, r, d, k)))(keys, rewards, dones)
    for seed in range(3):
        run = read_run(f"{logdir}/one/seed_{seed}")
        expected_r, expected_l = sb3_means(rewards[seed], dones[seed], 4)
        assert len(expected_r) >= 3
        assert_points(run["rollout/ep_rew_mean"], expected_r)
        assert_points(run["rollout/ep_len_mean"], expected_l)


def test_whole_rings_under_a_vmap_over_envs_refused():
    # Built without ``like`` (one whole ring per element), then updated under vmap over
    # envs: each env would keep its own episodes. Refused rather than averaged.
    window = jax.vmap(lambda _: EpisodeWindow.empty(3))(np.arange(4))
    window = jax.vmap(EpisodeWindow.add)(window, np.ones(4, bool), np.ones(4), np.ones(4, int))
    with pytest.raises(ValueError, match="like"):
        window_means(window)
