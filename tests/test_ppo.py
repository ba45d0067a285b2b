"""PPO: bootstrapping, discrete and continuous actions, jit/vmap, and learning CartPole."""

from __future__ import annotations

import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import callax
from callax import TensorBoardCallback
from callax.envs import CartPoleParams, make
from callax.train import PPO, PPOPolicy, Rollout
from conftest import assert_steps_increase, read_run, run_dirs
from quick_jit import quick_jit

CARTPOLE = make("cartpole")
PENDULUM = make("pendulum")
SHORT_EPISODES = CartPoleParams(max_steps_in_episode=20)
TINY = PPO(n_envs=2, n_steps=16, batch_size=16, n_epochs=2, hidden_sizes=(16,))
TINY_STEPS = 3 * TINY.n_envs * TINY.n_steps
TRAIN_TAGS = ("policy_gradient_loss", "value_loss", "entropy_loss", "approx_kl",
              "clip_fraction", "loss", "explained_variance")


def tiny_learn(key, callback=None, ppo=TINY, env=CARTPOLE, env_params=SHORT_EPISODES):
    return ppo.learn(env, total_timesteps=TINY_STEPS, key=key, callback=callback,
                     env_params=env_params)


tiny_learn_vmap = quick_jit(jax.vmap(tiny_learn, in_axes=(0, None)))


@pytest.fixture(scope="module")
def tiny_logdir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


TRACES = []


class TraceCounter(callax.AbstractStatelessCallback, callax.AbstractStepStatelessCallback):
    """Does nothing at run time; counts how often the trainer is traced."""

    def continue_training(self, ctx, *, key):
        TRACES.append(1)  # Python: runs when tracing only (twice per trace: before/in loop)
        return jnp.asarray(True)


@pytest.fixture(scope="module")
def tiny_run(tiny_logdir):
    """One tiny eager run (``learn`` compiles itself), shared by several tests."""
    callback = [TensorBoardCallback(name="eager", log_dir=tiny_logdir), TraceCounter()]
    return tiny_learn(jax.random.key(7), callback)


def test_new_callback_instances_do_not_recompile(tiny_run, tiny_logdir):
    traces = len(TRACES)
    assert traces > 0
    callback = [TensorBoardCallback(name="again", log_dir=tiny_logdir), TraceCounter()]
    result = tiny_learn(jax.random.key(8), callback)
    assert len(TRACES) == traces
    assert int(result.iterations) == 3
    assert len(read_run(str(tiny_logdir / "again"))["train/loss"]) == 3


# --- advantages --------------------------------------------------------------------------


def reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Per env, plain Python: bootstrap from the final obs unless terminated; cut at ends."""
    n_steps, n_envs = rewards.shape
    advantages = np.zeros((n_steps, n_envs))
    for e in range(n_envs):
        running = 0.0
        for t in reversed(range(n_steps)):
            done = terminated[t, e] or truncated[t, e]
            bootstrap = 0.0 if terminated[t, e] else next_values[t, e]
            delta = rewards[t, e] + gamma * bootstrap - values[t, e]
            running = delta + gamma * lam * (0.0 if done else running)
            advantages[t, e] = running
    return advantages


def test_advantages_bootstrap_from_final_obs_on_truncation(tiny_run):
    ppo = PPO(gamma=0.9, gae_lambda=0.8)
    policy = tiny_run.policy
    advantages_fn = jax.jit(ppo.compute_advantages)
    n_steps, n_envs = 6, 2
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n_steps, n_envs, 4)).astype(np.float32)
    final_obs = rng.normal(size=(n_steps, n_envs, 4)).astype(np.float32)
    terminated = np.zeros((n_steps, n_envs), bool)
    truncated = np.zeros((n_steps, n_envs), bool)
    terminated[1, 0] = True
    truncated[3, 0] = True
    truncated[2, 1] = terminated[4, 1] = True
    rewards = rng.normal(size=(n_steps, n_envs)).astype(np.float32)
    values = rng.normal(size=(n_steps, n_envs)).astype(np.float32)

    def rollout(final_obs):
        return Rollout(obs=jnp.asarray(obs), action=jnp.zeros((n_steps, n_envs), jnp.int32),
                       reward=jnp.asarray(rewards), terminated=jnp.asarray(terminated),
                       truncated=jnp.asarray(truncated), final_obs=jnp.asarray(final_obs),
                       next_obs=jnp.asarray(obs), aux={"value": jnp.asarray(values)})

    advantages, returns = advantages_fn(policy, rollout(final_obs))
    next_values = np.asarray(jax.jit(jax.vmap(jax.vmap(policy.value)))(jnp.asarray(final_obs)))
    expected = reference_gae(rewards, values, next_values, terminated, truncated, 0.9, 0.8)
    np.testing.assert_allclose(advantages, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns, expected + values, rtol=1e-5, atol=1e-5)

    # The final obs of a truncated step matters; that of a terminated step does not.
    moved = final_obs.copy()
    moved[1, 0] += 1.0  # terminated
    same, _ = advantages_fn(policy, rollout(moved))
    np.testing.assert_allclose(same, advantages, rtol=1e-6)
    moved[3, 0] += 1.0  # truncated
    changed, _ = advantages_fn(policy, rollout(moved))
    assert not np.allclose(changed[3, 0], advantages[3, 0])
    np.testing.assert_allclose(changed[4:, 0], advantages[4:, 0], rtol=1e-6)  # cut at the end


# --- small runs -------------------------------------------------------------------------------


def test_tiny_run_eager_jit_vmap_agree(tiny_run, tiny_logdir):
    key = jax.random.key(7)
    eager = tiny_run
    assert int(eager.iterations) == 3
    assert int(eager.total_timesteps) == TINY_STEPS
    assert isinstance(eager.policy, PPOPolicy)

    batched = tiny_learn_vmap(jnp.stack([key, jax.random.key(8)]), None)
    assert batched.iterations.shape == (2,)
    first = jax.tree.map(lambda x: x[0], eqx.filter(batched.policy, eqx.is_array))
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(eqx.filter(eager.policy,
                                                                      eqx.is_array))):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)

    run = read_run(str(tiny_logdir / "eager"))
    assert_steps_increase(run)
    assert [s for s, _ in run["train/loss"]] == [32, 64, 96]
    for tag in TRAIN_TAGS + ("learning_rate",):
        assert f"train/{tag}" in run, tag
        assert all(np.isfinite(v) for _, v in run[f"train/{tag}"])
    lrs = [v for _, v in run["train/learning_rate"]]
    assert lrs[0] > lrs[1] > lrs[2] > 0  # annealed linearly
    # Callback rewards are raw env rewards: no episode returns more than its 20 steps,
    # although the value of the final obs is bootstrapped on truncation.
    assert max(v for _, v in run["episode/return"]) <= 20.0


def test_policy_call(tiny_run):
    policy = tiny_run.policy
    obs = jnp.zeros(4)
    action = jax.jit(lambda o: policy(o))(obs)
    assert action.shape == () and action.dtype == jnp.int32
    sampled = jax.jit(jax.vmap(lambda k: policy(obs, key=k)))(
        jax.random.split(jax.random.key(0), 64))
    assert set(np.unique(sampled).tolist()) <= {0, 1}


def test_continuous_pendulum(tmp_path):
    ppo = PPO(n_envs=2, n_steps=16, batch_size=32, n_epochs=2, hidden_sizes=(16,),
              normalize_obs=True, clip_range_vf=0.2, log_std_init=-0.5, ent_coef=0.01)
    callback = TensorBoardCallback(name="pendulum", log_dir=tmp_path)
    result = quick_jit(jax.vmap(lambda k: ppo.learn(PENDULUM, total_timesteps=96, key=k,
                                                    callback=callback)))(
        jax.random.split(jax.random.key(0), 2))
    assert result.iterations.tolist() == [3, 3]
    policy = jax.tree.map(lambda x: x[0], result.policy)
    # observation statistics were updated from the 3 rollouts of 32 observations
    assert float(policy.obs_rms.count) == pytest.approx(96, abs=1e-3)
    # actions are clipped into the torque box [-2, 2]
    actions = jax.vmap(lambda k: policy(jnp.array([1.0, 0.0, 0.5]), key=k))(
        jax.random.split(jax.random.key(1), 256))
    assert actions.shape == (256, 1)
    assert float(actions.min()) >= -2.0 and float(actions.max()) <= 2.0
    assert float(actions.max()) > float(actions.min())
    # No episode ends in 3 iterations: no statistics over seeds yet, only the band run's
    # custom-scalars layout.
    assert run_dirs(str(tmp_path / "pendulum")) == ["seed_0", "seed_1", "seeds/band"]
    for seed in (0, 1):
        run = read_run(str(tmp_path / "pendulum" / f"seed_{seed}"))
        assert "train/std" in run
        assert run["train/std"][0][1] == pytest.approx(np.exp(-0.5), rel=0.05)
        assert all(np.isfinite(v) for tag in TRAIN_TAGS for _, v in run[f"train/{tag}"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        PPO(n_envs=2, n_steps=10, batch_size=7)
    with pytest.raises(ValueError, match="n_epochs"):
        PPO(n_epochs=0)
    with pytest.raises(ValueError, match="total_timesteps"):
        TINY.learn(CARTPOLE, total_timesteps=0, key=jax.random.key(0))
    with pytest.raises(TypeError, match="total_timesteps"):
        TINY.learn(CARTPOLE, total_timesteps=1.5, key=jax.random.key(0))


# --- learning quality ---------------------------------------------------------------------


# rl-baselines3-zoo's CartPole-v1 budget (n_timesteps 1e5, learning rate lin_0.001), which
# PPO's defaults follow. The learning rate then reaches 0 by the time the return nears 500:
# with a longer budget (150k) the still-large late updates made one seed collapse (491 at
# 88k steps, 211 at 150k) or not depending only on the CPU's floating-point code (AVX2+FMA
# here; XLA_FLAGS=--xla_cpu_max_isa=AVX, or another CI machine, kept it at 500). Measured
# at 100k on AVX2, AVX and SSE4.2 code: every seed >= 475 over the last tenth of the run
# (>= 477.7) and greedy policies at 500 in 8 of 8 episodes.
CARTPOLE_STEPS = 100_000


@pytest.mark.slow
def test_cartpole_learns_two_seeds(tmp_path):
    """Default PPO, 2 seeds vmapped in one program, SB3 zoo's 100k-step budget: the logged
    mean episode return (SB3's window) reaches 475, CartPole-v1's reward threshold, and is
    still there at the end, and the greedy policy balances for 500 steps."""
    ppo = PPO()
    callback = TensorBoardCallback(name="ppo", log_dir=tmp_path)
    train = jax.jit(jax.vmap(lambda k: ppo.learn(CARTPOLE, total_timesteps=CARTPOLE_STEPS,
                                                 key=k, callback=callback)))
    keys = jax.random.split(jax.random.key(0), 2)
    start = time.perf_counter()
    compiled = train.lower(keys).compile()
    compiled_at = time.perf_counter()
    result = jax.block_until_ready(compiled(keys))
    done_at = time.perf_counter()
    print(f"\nPPO CartPole 2 seeds x {CARTPOLE_STEPS} steps: compile "
          f"{compiled_at - start:.1f} s, train {done_at - compiled_at:.1f} s")

    n_iterations = ppo.n_iterations(CARTPOLE_STEPS)
    assert result.iterations.tolist() == [n_iterations] * 2
    assert result.total_timesteps.tolist() == [n_iterations * 256] * 2
    run_root = os.path.join(tmp_path, "ppo")
    assert run_dirs(run_root) == ["seed_0", "seed_1", "seeds/band", "seeds/max", "seeds/mean",
                                  "seeds/min"]
    for seed in (0, 1):
        run = read_run(os.path.join(run_root, f"seed_{seed}"))
        assert_steps_increase(run)
        returns = run["episode/return"]
        assert returns[-1][0] == n_iterations * 256
        assert returns[-1][1] >= 475, returns[-10:]
        assert run["train/learning_rate"][-1][1] < 1e-5
        # the returned step states agree with the last logged point
        averages = np.asarray(result.callback_step_state.average_return[seed])
        assert np.nanmean(averages) == pytest.approx(returns[-1][1], rel=1e-4)

    # The trained (greedy) policies balance the pole for the whole episode.
    def episode_return(policy, key):
        obs, state = CARTPOLE.reset(key)

        def step(carry, k):
            obs, state, total, alive = carry
            obs, state, reward, done, _ = CARTPOLE.step(k, state, policy(obs))
            return (obs, state, total + alive * reward, alive & ~done), None

        init = (obs, state, jnp.asarray(0.0), jnp.asarray(True))
        (_, _, total, _), _ = jax.lax.scan(step, init, jax.random.split(key, 500))
        return total

    totals = jax.jit(jax.vmap(episode_return))(result.policy, keys)
    assert totals.tolist() == [500.0, 500.0]
