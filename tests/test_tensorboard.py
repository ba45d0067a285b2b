import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import callax
from callax import TensorBoardCallback, TensorBoardCallbackStepState, _writer as host
from callax.callbacks import find_learning_rate
from conftest import assert_steps_increase, read_run, run_dirs
from minimal_loop import drive
from test_episodes import sb3_means

ALPHA = 0.9
N_ITERS, N_STEPS, N_ENVS = 6, 5, 3


def expected_log(rewards, dones, alpha=ALPHA):
    """Independent NumPy computation of what TensorBoardCallback should write."""
    n_iters, n_steps, n_envs = rewards.shape
    ret = np.zeros(n_envs)
    length = np.zeros(n_envs)
    avg_r = [None] * n_envs
    avg_l = [None] * n_envs
    out = {"episode/return": [], "episode/length": [], "train/loss": [], "train/iteration": []}
    for i in range(n_iters):
        for t in range(n_steps):
            for e in range(n_envs):
                ret[e] += rewards[i, t, e]
                length[e] += 1
                if dones[i, t, e]:
                    if avg_r[e] is None:
                        avg_r[e], avg_l[e] = ret[e], length[e]
                    else:
                        avg_r[e] = alpha * avg_r[e] + (1 - alpha) * ret[e]
                        avg_l[e] = alpha * avg_l[e] + (1 - alpha) * length[e]
                    ret[e] = length[e] = 0
        step = (i + 1) * n_steps * n_envs
        finished = [e for e in range(n_envs) if avg_r[e] is not None]
        if finished:
            out["episode/return"].append((step, np.mean([avg_r[e] for e in finished])))
            out["episode/length"].append((step, np.mean([avg_l[e] for e in finished])))
        out["train/loss"].append((step, float(i)))
        out["train/iteration"].append((step, float(i)))
    out["rollout/ep_rew_mean"], out["rollout/ep_len_mean"] = sb3_means(rewards, dones, 100)
    return out


def scripted(seed=0, n_iters=N_ITERS):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(1.0, 1.0, size=(n_iters, N_STEPS, N_ENVS)).astype(np.float32)
    dones = rng.random((n_iters, N_STEPS, N_ENVS)) < 0.25
    dones[:2, :, 2] = False  # env 2 finishes nothing in the first iterations
    dones[0, :, :] = False  # nobody finishes in iteration 0: episode/* not written there
    return rewards, dones


def assert_run_matches(run, expected):
    for tag, points in expected.items():
        got = run.get(tag, [])
        assert [s for s, _ in got] == [s for s, _ in points], tag
        np.testing.assert_allclose([v for _, v in got], [v for _, v in points], rtol=1e-5,
                                   err_msg=tag)
    assert_steps_increase(run)


_drive_jit = jax.jit(drive)


# Eager runs every op of every step on its own: 3 iterations (flush_every=2: one flush
# while it runs and the rest at on_training_end, as jit-4 does over 6) cost half of 6.
# jit-32 (the default, every row at on_training_end) is the program of the other tests
# that drive a default callback for N_ITERS iterations: compiled once for all of them.
@pytest.mark.parametrize("mode, flush_every, n_iters", [
    ("eager", 2, 3), ("jit", 1, N_ITERS), ("jit", 4, N_ITERS), ("jit", 32, N_ITERS)])
def test_values_and_steps(logdir, mode, flush_every, n_iters):
    rewards, dones = scripted(n_iters=n_iters)
    callback = TensorBoardCallback(name="run", log_dir=logdir, flush_every=flush_every)
    run_fn = _drive_jit if mode == "jit" else drive
    with jax.disable_jit(mode == "eager"):
        run_fn(callback, rewards, dones, jax.random.key(0))
    run = read_run(os.path.join(logdir, "run"))
    expected = expected_log(rewards, dones)
    assert expected["episode/return"][0][0] == 2 * N_STEPS * N_ENVS
    assert_run_matches(run, expected)
    assert "train/learning_rate" not in run  # no inject_hyperparams state: absent, never NaN


def test_step_state_includes_final_reward_and_has_no_zero_bias():
    state = TensorBoardCallbackStepState.initial()
    assert np.isnan(state.average_return)
    for reward, done in [(1.0, False), (2.0, False), (3.0, True)]:
        state = state.next(reward, done, 0.5)
    assert float(state.average_return) == 6.0  # seeded by the first episode, final reward in
    assert float(state.average_length) == 3.0
    assert bool(state.episode_done) and int(state.episode_length) == 0
    state = state.next(10.0, True, 0.5)
    assert float(state.average_return) == pytest.approx(0.5 * 6 + 0.5 * 10)
    assert float(state.average_length) == pytest.approx(0.5 * 3 + 0.5 * 1)
    assert int(state.step) == 4


def test_step_state_converts_array_likes():
    state = TensorBoardCallbackStepState(np.int64(3), 1.0, 2, np.bool_(False), np.float64(1), 2.0)
    assert state.step.dtype == jnp.int32 and state.episode_return.dtype == jnp.float32
    assert state.episode_done.dtype == jnp.bool_ and state.average_length.dtype == jnp.float32


def test_step_state_fields_are_exact_and_keep_batch_dimensions():
    # Every field gives back exactly what went in (large step counts, NaN, negative and
    # subnormal floats), with the batch dimensions of a vmapped state.
    steps = np.array([[0, 2**30], [7, 2**31 - 1]])
    returns = np.array([[-1.5, 3e38], [np.nan, -0.0]], np.float32)
    state = TensorBoardCallbackStepState(steps, returns, 5, np.array([True, False]), np.nan, 1e-40)
    assert state.step.shape == (2, 2)
    np.testing.assert_array_equal(state.step, steps)
    np.testing.assert_array_equal(state.episode_return, returns)
    np.testing.assert_array_equal(state.episode_length, np.full((2, 2), 5))
    np.testing.assert_array_equal(state.episode_done, [[True, False], [True, False]])
    assert np.isnan(state.average_return).all()
    np.testing.assert_array_equal(state.average_length, np.full((2, 2), 1e-40, np.float32))
    batched = jax.vmap(lambda s, r, d: s.next(r, d, 0.9))(
        jax.vmap(lambda _: TensorBoardCallbackStepState.initial())(jnp.arange(3)),
        jnp.array([1.0, 2.0, 3.0]), jnp.array([True, False, True]),
    )
    np.testing.assert_array_equal(batched.average_return, [1.0, np.nan, 3.0])
    np.testing.assert_array_equal(batched.episode_return, [0.0, 2.0, 0.0])


def test_step_state_is_six_plain_arrays():
    # A plain representation: one array per number in its own dtype (no bit patterns in
    # floats that a backend flushing subnormals to zero could destroy).
    state = jax.vmap(lambda _: TensorBoardCallbackStepState.initial())(jnp.arange(4))
    leaves = jax.tree.leaves(state)
    assert [(x.dtype, x.shape) for x in leaves] == [
        (jnp.dtype(d), (4,)) for d in ("int32", "float32", "int32", "bool", "float32", "float32")
    ]


def test_step_state_counts_stay_exact_in_compiled_updates():
    @jax.jit
    def advance(state, n):
        return jax.lax.fori_loop(0, n, lambda i, s: s.next(0.5, i % 3 == 2, 0.9), state)

    state = advance(TensorBoardCallbackStepState.initial(), 7)
    assert int(state.step) == 7 and int(state.episode_length) == 1
    assert float(state.episode_return) == 0.5 and float(state.average_length) == 3.0
    assert float(state.average_return) == pytest.approx(1.5)
    late = TensorBoardCallbackStepState(2**31 - 3, 0.0, 2**31 - 3, False, np.nan, np.nan)
    late = jax.jit(lambda s: s.next(0.5, False, 0.9).next(0.5, True, 0.9))(late)
    assert int(late.step) == 2**31 - 1 and int(late.episode_length) == 0
    assert float(late.average_length) == float(np.float32(2**31 - 1))


def test_nothing_written_before_first_episode(logdir):
    rewards = np.ones((N_ITERS, N_STEPS, N_ENVS), np.float32)  # the shape of scripted()
    dones = np.zeros_like(rewards, dtype=bool)
    _drive_jit(TensorBoardCallback(name="r", log_dir=logdir), rewards, dones, jax.random.key(0))
    run = read_run(os.path.join(logdir, "r"))
    assert "episode/return" not in run and "episode/length" not in run
    assert [s for s, _ in run["train/loss"]] == [15 * (i + 1) for i in range(N_ITERS)]


def test_learning_rate_from_inject_hyperparams(logdir):
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=3e-4)
    opt_state = optimizer.init({"w": jnp.zeros(2)})
    assert float(find_learning_rate(opt_state)) == pytest.approx(3e-4)
    assert find_learning_rate(optax.adam(1e-3).init({"w": jnp.zeros(2)})) is None
    rewards, dones = scripted()
    _drive_jit(TensorBoardCallback(name="lr", log_dir=logdir), rewards, dones,
               jax.random.key(0), opt_state)
    run = read_run(os.path.join(logdir, "lr"))
    assert [v for _, v in run["train/learning_rate"]] == pytest.approx([3e-4] * N_ITERS)


def test_callback_built_inside_jit_opens_fresh_run_each_execution(logdir):
    rewards, dones = scripted()

    @jax.jit
    def train(key):
        callback = TensorBoardCallback(name="injit", log_dir=logdir)
        return drive(callback, rewards, dones, key)

    for i in range(3):
        train(jax.random.key(i))
    assert run_dirs(logdir) == ["injit", "injit_1", "injit_2"]
    for directory in run_dirs(logdir):
        assert_run_matches(read_run(os.path.join(logdir, directory)),
                           expected_log(rewards, dones))


def test_unnamed_runs_are_named_by_time_env_and_policy(logdir):
    class Policy(eqx.Module):
        pass

    class Env:
        name = "CartPole-v1"

    callback = TensorBoardCallback(env=Env(), policy=Policy(), log_dir=logdir)
    name = os.path.basename(callback.tb_writer.log_dir)
    assert name.endswith("_CartPole-v1_Policy") and name[:4].isdigit()
    other = TensorBoardCallback(env=Env(), policy=Policy(), log_dir=logdir)
    assert other.tb_writer.log_dir != callback.tb_writer.log_dir


def test_new_instance_does_not_recompile(logdir):
    rewards, dones = scripted()
    traced = eqx.debug.assert_max_traces(drive, max_traces=1)
    train = jax.jit(traced)
    for i in range(3):
        train(TensorBoardCallback(log_dir=logdir), rewards, dones, jax.random.key(i))
    assert len(run_dirs(logdir)) == 3


def test_vmap_over_seeds_one_run_per_seed(logdir):
    seeds = [scripted(seed) for seed in range(4)]
    rewards = np.stack([r for r, _ in seeds])
    dones = np.stack([d for _, d in seeds])
    callback = TensorBoardCallback(name="v", log_dir=logdir)
    jax.jit(jax.vmap(lambda r, d, k: drive(callback, r, d, k)))(
        rewards, dones, jax.random.split(jax.random.key(0), 4)
    )
    assert run_dirs(logdir) == [f"v/seed_{i}" for i in range(4)] + [
        f"v/seeds/{s}" for s in ("band", "max", "mean", "min")]
    for i in range(4):
        assert_run_matches(read_run(os.path.join(logdir, "v", f"seed_{i}")),
                           expected_log(rewards[i], dones[i]))


def test_on_training_end_makes_every_point_readable(logdir):
    """No flush_all here: on_training_end alone must make the run readable."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rewards, dones = scripted()
    callback = TensorBoardCallback(name="end", log_dir=logdir)
    jax.block_until_ready(_drive_jit(callback, rewards, dones, jax.random.key(0)))
    jax.effects_barrier()
    accumulator = EventAccumulator(os.path.join(logdir, "end"), size_guidance={"scalars": 0})
    accumulator.Reload()
    assert len(accumulator.Scalars("train/loss")) == N_ITERS


def test_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        TensorBoardCallback(alpha=1.0)
    with pytest.raises(ValueError, match="name"):
        TensorBoardCallback(name="")
    with pytest.raises(ValueError, match="flush_every"):
        TensorBoardCallback(flush_every=0)


def test_buffer_sends_every_flush_every_iterations(logdir, monkeypatch):
    from callax import _writer as host

    calls = []
    original = host.write
    def counting_write(*args, **kwargs):
        calls.append(args[3].shape)
        original(*args, **kwargs)

    monkeypatch.setattr(host, "write", counting_write)
    rewards, dones = scripted(n_iters=10)
    callback = TensorBoardCallback(name="b", log_dir=logdir, flush_every=4)
    _drive_jit(callback, rewards, dones, jax.random.key(0))
    read_run(os.path.join(logdir, "b"))
    # Two full buffers of 4 rows, then the 2 remaining rows at on_training_end.
    assert calls == [(1, 4), (1, 4), (1, 4)]
    assert_run_matches(read_run(os.path.join(logdir, "b")), expected_log(rewards, dones))


def test_too_many_scalars_fails_at_trace_time(logdir):
    rewards, dones = scripted()
    callback = TensorBoardCallback(name="m", log_dir=logdir, max_scalars=3)
    with pytest.raises(ValueError, match="max_scalars"):
        jax.jit(drive).trace(callback, rewards, dones, jax.random.key(0))


class _StopState(callax.AbstractCallbackState):
    iterations: jax.Array


class _StopAfter(callax.AbstractStepStatelessCallback[_StopState],
                 callax.AbstractTrainingPassthroughCallback[_StopState,
                                                            callax.EmptyCallbackStepState]):
    limit: jax.Array

    def reset(self, ctx, *, key):
        return _StopState(jnp.zeros((), jnp.int32))

    def on_iteration(self, ctx, *, key):
        return _StopState(ctx.state.iterations + 1)

    def continue_training(self, ctx, *, key):
        return ctx.state.iterations < self.limit


@pytest.mark.parametrize("flush_every", [1, 3])
def test_seeds_stopping_early_under_vmap_write_nothing_more(logdir, flush_every):
    """A vmapped while_loop runs the body for stopped seeds too; they must not write."""
    rewards, dones = scripted()
    tensorboard = TensorBoardCallback(name="early", log_dir=logdir, flush_every=flush_every)
    limits = jnp.array([2, 5, 6])

    def train(limit, key):
        return drive(callax.CallbackList([tensorboard, _StopAfter(limit)]), rewards, dones, key)

    _, _, iterations = jax.jit(jax.vmap(train))(limits, jax.random.split(jax.random.key(0), 3))
    np.testing.assert_array_equal(iterations, limits)
    full = expected_log(rewards, dones)
    for seed, limit in enumerate(limits.tolist()):
        run = read_run(os.path.join(logdir, "early", f"seed_{seed}"))
        expected = {tag: [p for p in points if p[0] <= limit * N_STEPS * N_ENVS]
                    for tag, points in full.items()}
        assert_run_matches(run, expected)
    # Nothing had to be dropped on the host: stopped seeds sent no points at all.
    assert host.get_run(int(tensorboard.tb_writer.handle)).dropped == {}
