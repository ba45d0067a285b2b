"""Tests for callax.envs: dynamics vs gymnasium, auto-reset semantics, gymnax adapter."""

from __future__ import annotations

import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from callax.envs import (
    AbstractEnv,
    Box,
    CartPole,
    CartPoleParams,
    CartPoleState,
    Discrete,
    GymnaxEnv,
    Pendulum,
    PendulumParams,
    PendulumState,
    make,
)

ATOL = 1e-5
RTOL = 1e-5
# Shapes are shared between tests so each jitted function compiles as few times as possible.
N_CARTPOLE = 120  # rollout length for CartPole
N_PENDULUM = 230  # rollout length for Pendulum: crosses the 200-step truncation
BATCH = 3
RNG = np.random.default_rng(0)
CARTPOLE_ACTIONS = RNG.integers(0, 2, (BATCH, N_CARTPOLE)).astype(np.int32)
# Torques beyond ±2 exercise the clipping.
PENDULUM_ACTIONS = RNG.uniform(-3.0, 3.0, (BATCH, N_PENDULUM, 1)).astype(np.float32)


def _rollout(env, key, state, actions, params=None):
    """Scans ``env.step`` over ``actions``; returns per-step outputs and post-step states."""
    keys = jax.random.split(key, actions.shape[0])

    def body(state, xs):
        k, action = xs
        obs, state, reward, done, info = env.step(k, state, action, params)
        return state, (obs, state, reward, done, info)

    return jax.lax.scan(body, state, (keys, actions))[1]


rollout = eqx.filter_jit(_rollout)
batched_rollout = eqx.filter_jit(eqx.filter_vmap(_rollout))
batched_reset = eqx.filter_jit(eqx.filter_vmap(lambda env, key: env.reset(key)))
jit_reset = eqx.filter_jit(lambda env, key, params=None: env.reset(key, params))
_jit_step = eqx.filter_jit(
    lambda env, key, state, action, params=None: env.step(key, state, action, params)
)


def _to_array(x):
    return jnp.asarray(np.asarray(x))  # never weak-typed, so one compile per dtype


def jit_step(env, key, state, action, params=None):
    """Jitted ``env.step``; Python numbers become arrays so they don't trigger recompiles."""
    state, action = jax.tree.map(_to_array, (state, action))
    return _jit_step(env, key, state, action, params)


def _as_np(tree):
    return jax.tree.map(np.asarray, tree)


def _index(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


# ----------------------------------------------------------------------------- gymnasium


def _compare_with_gymnasium(
    env, gym_env, n_steps, actions, set_gym_state, to_gym_action, resync_every=None
):
    """Runs ``env`` (jitted scan) and ``gym_env`` side by side with the same actions.

    The gymnasium state is set to ours at the start, after each reset, and (if given) every
    ``resync_every`` steps: float32 vs float64 round-off otherwise slowly accumulates.
    """
    _, state = jit_reset(env, jax.random.key(0))
    set_gym_state(gym_env, state)
    obs, states, reward, done, info = _as_np(rollout(env, jax.random.key(1), state, actions))
    n_done = 0
    for t in range(n_steps):
        g_obs, g_rew, g_term, g_trunc, _ = gym_env.step(to_gym_action(actions[t]))
        np.testing.assert_allclose(info["final_obs"][t], g_obs, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(reward[t], g_rew, rtol=RTOL, atol=ATOL)
        assert bool(info["terminated"][t]) == g_term, t
        assert bool(info["truncated"][t]) == g_trunc, t
        assert bool(done[t]) == (g_term or g_trunc)
        if g_term or g_trunc:
            n_done += 1
            gym_env.reset()
            set_gym_state(gym_env, _index(states, t))
        else:
            np.testing.assert_array_equal(obs[t], info["final_obs"][t])
            if resync_every and (t + 1) % resync_every == 0:
                set_gym_state(gym_env, _index(states, t))
    return n_done


def test_cartpole_matches_gymnasium():
    gymnasium = pytest.importorskip("gymnasium")
    gym_env = gymnasium.make("CartPole-v1")
    gym_env.reset(seed=0)

    def set_state(g, s):
        g.unwrapped.state = np.array([s.x, s.x_dot, s.theta, s.theta_dot], dtype=np.float64)

    actions = CARTPOLE_ACTIONS[0]
    n_done = _compare_with_gymnasium(
        CartPole(), gym_env, N_CARTPOLE, actions, set_state, lambda a: int(a)
    )
    assert n_done >= 2  # random actions: several episodes terminate


def test_pendulum_matches_gymnasium():
    gymnasium = pytest.importorskip("gymnasium")
    gym_env = gymnasium.make("Pendulum-v1")
    gym_env.reset(seed=0)

    def set_state(g, s):
        g.unwrapped.state = np.array([s.theta, s.theta_dot], dtype=np.float64)

    n_done = _compare_with_gymnasium(
        Pendulum(),
        gym_env,
        N_PENDULUM,
        PENDULUM_ACTIONS[0],
        set_state,
        lambda a: np.asarray(a, np.float32),
        resync_every=50,
    )
    assert n_done == 1


# ------------------------------------------------------------------ auto-reset semantics


def test_cartpole_truncates_at_500():
    env = CartPole()
    state = CartPoleState(0.0, 0.0, 0.0, 0.0, time=499)
    obs, new_state, reward, done, info = _as_np(jit_step(env, jax.random.key(0), state, 1))
    assert info["truncated"] and not info["terminated"] and done
    assert reward == 1.0
    assert new_state.time == 0
    # final_obs is the state reached by pushing right; obs is a fresh reset.
    assert info["final_obs"][1] == pytest.approx(0.195, abs=1e-3)
    assert not np.allclose(obs, info["final_obs"])
    assert np.all(np.abs(obs) <= 0.05)
    np.testing.assert_array_equal(
        obs, np.stack([new_state.x, new_state.x_dot, new_state.theta, new_state.theta_dot])
    )

    # One step earlier: nothing ends.
    state = CartPoleState(0.0, 0.0, 0.0, 0.0, time=498)
    obs, new_state, _, done, info = _as_np(jit_step(env, jax.random.key(0), state, 1))
    assert not done and not info["truncated"] and new_state.time == 499
    np.testing.assert_array_equal(obs, info["final_obs"])


def test_cartpole_terminated_vs_truncated():
    env = CartPole()
    falling = dict(x=0.0, x_dot=0.0, theta=0.2, theta_dot=2.0)  # crosses 12 degrees
    _, new_state, reward, done, info = _as_np(
        jit_step(env, jax.random.key(0), CartPoleState(**falling, time=3), 0)
    )
    assert info["terminated"] and not info["truncated"] and done
    assert reward == 1.0  # also on the terminating step, as gymnasium
    assert info["final_obs"][2] > CartPoleParams().theta_threshold_radians
    assert new_state.time == 0
    # Both at once: terminated on the last allowed step.
    _, _, _, done, info = _as_np(
        jit_step(env, jax.random.key(0), CartPoleState(**falling, time=499), 0)
    )
    assert info["terminated"] and info["truncated"] and done


def test_custom_params_under_jit():
    env = CartPole()
    params = CartPoleParams(max_steps_in_episode=7)
    state = CartPoleState(0.01, 0.0, -0.01, 0.0)
    actions = np.tile(np.array([0, 1], np.int32), 8)  # alternate: stays upright for 16 steps
    _, _, _, done, info = _as_np(rollout(env, jax.random.key(1), state, actions, params))
    assert not info["terminated"].any()
    np.testing.assert_array_equal(np.flatnonzero(info["truncated"]), [6, 13])
    np.testing.assert_array_equal(done, info["truncated"])

    # Params are pytrees: vmap over a batch of time limits and gravities (array leaves only).
    batch = CartPoleParams(gravity=jnp.array([9.8, 1.6]), max_steps_in_episode=jnp.array([5, 7]))
    state = CartPoleState(0.0, 0.0, 0.05, 0.0, time=4)
    step = eqx.filter_jit(eqx.filter_vmap(lambda p: env.step(jax.random.key(0), state, 1, p)))
    _, _, _, done, info = _as_np(step(batch))
    np.testing.assert_array_equal(info["truncated"], [True, False])
    assert info["final_obs"][0, 3] != info["final_obs"][1, 3]  # gravity differs


def test_pendulum_truncates_at_200_never_terminates():
    env = Pendulum()
    _, state = jit_reset(env, jax.random.key(0))
    out = rollout(env, jax.random.key(1), state, PENDULUM_ACTIONS[1])
    obs, states, reward, done, info = _as_np(out)
    assert not info["terminated"].any()
    np.testing.assert_array_equal(np.flatnonzero(info["truncated"]), [199])
    np.testing.assert_array_equal(done, info["truncated"])
    assert states.time[198] == 199 and states.time[199] == 0 and states.time[200] == 1
    assert not np.allclose(obs[199], info["final_obs"][199])
    np.testing.assert_array_equal(obs[:199], info["final_obs"][:199])
    assert np.all(reward <= 0.0) and np.all(reward >= -16.3)

    # Set the state directly; a scalar action is accepted too.
    state = PendulumState(theta=np.pi, theta_dot=8.0, time=199)
    _, new_state, reward, done, info = _as_np(jit_step(env, jax.random.key(0), state, 5.0))
    assert done and info["truncated"] and not info["terminated"] and new_state.time == 0
    # Pre-step state, clipped torque: -(pi^2 + 0.1 * 64 + 0.001 * 4).
    assert reward == pytest.approx(-(np.pi**2 + 6.4 + 0.004), rel=1e-5)


@pytest.mark.parametrize(
    ("env", "actions"),
    [(CartPole(), CARTPOLE_ACTIONS), (Pendulum(), PENDULUM_ACTIONS)],
    ids=["CartPole", "Pendulum"],
)
def test_vmap_scan_matches_single(env, actions):
    keys = jax.random.split(jax.random.key(0), BATCH)
    obs0, state = batched_reset(env, keys)
    assert obs0.shape == (BATCH, *env.observation_space().shape) and obs0.dtype == jnp.float32
    assert state.time.shape == (BATCH,)
    batched = _as_np(batched_rollout(env, keys, state, actions))
    obs, states, reward, done, info = batched
    n = actions.shape[1]
    assert reward.shape == done.shape == (BATCH, n) and done.dtype == np.bool_
    assert set(info) >= {"terminated", "truncated", "final_obs"}
    for i in range(BATCH):
        single = _as_np(rollout(env, keys[i], _index(state, i), actions[i]))
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-6, atol=1e-6),
            batched,
            single,
        )
    # Episode boundaries: on done the obs is a fresh reset (time 0), != final_obs.
    assert done.any()
    np.testing.assert_array_equal(done, info["terminated"] | info["truncated"])
    assert np.all(states.time[done] == 0)
    assert np.all(np.any(obs[done] != info["final_obs"][done], axis=-1))
    np.testing.assert_array_equal(obs[~done], info["final_obs"][~done])
    if isinstance(env, CartPole):
        assert np.all(np.abs(obs[done]) <= 0.05)


def test_spaces():
    cp, pd = CartPole(), Pendulum()
    assert cp.action_space() == Discrete(2)
    assert cp.observation_space().shape == (4,)
    assert float(cp.observation_space().high[0]) == pytest.approx(4.8)
    assert np.isinf(cp.observation_space().high[1])
    a = pd.action_space(PendulumParams())
    assert a.shape == (1,) and float(a.low[0]) == -2.0 and float(a.high[0]) == 2.0
    assert pd.observation_space().shape == (3,)
    key = jax.random.key(0)
    assert a.contains(a.sample(key)) and not a.contains(jnp.array([2.5]))
    assert cp.action_space().contains(1) and not cp.action_space().contains(2)
    assert Box(0.0, 1.0).shape == ()


def test_abstract_env_is_abstract():
    with pytest.raises(TypeError):
        AbstractEnv()


def test_make():
    for name in ["cartpole", "CartPole-v1", "CARTPOLE", "cartpole-V1"]:
        env = make(name)
        assert isinstance(env, CartPole) and env.name == "CartPole-v1"
    for name in ["pendulum", "Pendulum-v1", "PENDULUM-V1"]:
        env = make(name)
        assert isinstance(env, Pendulum) and env.name == "Pendulum-v1"
    with pytest.raises(ValueError, match="CartPole-v1.*Pendulum-v1"):
        make("Acrobot-v1")


# ------------------------------------------------------------------------ gymnax adapter


@pytest.fixture(scope="module")
def gymnax_cartpole():
    """``(gymnax env, gymnax params, GymnaxEnv)``, shared so jitted functions compile once."""
    gymnax = pytest.importorskip("gymnax")
    g_env, g_params = gymnax.make("CartPole-v1")
    return g_env, g_params, GymnaxEnv(g_env, g_params)


@eqx.filter_jit
def gymnax_rollout(env, key, state, actions):
    """Scans the raw gymnax ``env.step`` (auto-resetting) for reference outputs."""
    keys = jax.random.split(key, actions.shape[0])

    def body(state, xs):
        k, action = xs
        out = env.step(k, state, action)
        if len(out) == 6:  # newer gymnax: obs, state, reward, terminated, truncated, info
            obs, state, reward, terminated, truncated, info = out
            final_obs = info["final_observation"]
        else:  # classic gymnax: obs, state, reward, done, info
            obs, state, reward, done, _ = out
            terminated = truncated = final_obs = None
        return state, (obs, state, reward, terminated, truncated, final_obs)

    return jax.lax.scan(body, state, (keys, actions))[1]


def test_gymnax_adapter_matches_gymnax_cartpole(gymnax_cartpole):
    g_env, _, env = gymnax_cartpole
    assert env.name == "CartPole-v1"
    assert env.action_space() == Discrete(2)
    assert env.observation_space().shape == (4,)

    _, state = jit_reset(env, jax.random.key(0))
    state = state.replace(time=480)  # reach the 500-step limit within the rollout
    # Alternating pushes keep the pole up; the tail is random so episodes also terminate.
    actions = np.concatenate([np.tile(np.array([0, 1], np.int32), 15), CARTPOLE_ACTIONS[1, 30:]])
    obs, states, reward, done, info = _as_np(rollout(env, jax.random.key(2), state, actions))
    ref = _as_np(gymnax_rollout(g_env, jax.random.key(2), state, actions))
    ref_obs, ref_states, ref_reward, ref_term, ref_trunc, ref_final = ref
    np.testing.assert_array_equal(obs, ref_obs)
    jax.tree.map(np.testing.assert_array_equal, states, ref_states)
    np.testing.assert_array_equal(reward, ref_reward)
    assert info["truncated"][19] and not info["terminated"][19]
    assert np.flatnonzero(info["truncated"]).tolist() == [19]
    assert info["terminated"].any()
    np.testing.assert_array_equal(done, info["terminated"] | info["truncated"])
    if ref_term is not None:
        np.testing.assert_array_equal(info["terminated"], ref_term)
        np.testing.assert_array_equal(info["truncated"], ref_trunc)
        np.testing.assert_array_equal(info["final_obs"], ref_final)
    assert np.all(np.any(obs[done] != info["final_obs"][done], axis=-1))

    # Same semantics as the native CartPole on the same pre-step state.
    native = CartPole()
    falling = dict(theta=jnp.float32(0.2), theta_dot=jnp.float32(2.0))
    for s, action in [(state.replace(time=499), 1), (state.replace(time=3, **falling), 0)]:
        out = _as_np(jit_step(env, jax.random.key(5), s, action))
        nat = _as_np(
            jit_step(
                native,
                jax.random.key(5),
                CartPoleState(s.x, s.x_dot, s.theta, s.theta_dot, time=s.time),
                action,
            )
        )
        np.testing.assert_allclose(out[0], nat[0], rtol=1e-6, atol=1e-7)
        for k in ("terminated", "truncated"):
            assert out[4][k] == nat[4][k]
        np.testing.assert_allclose(out[4]["final_obs"], nat[4]["final_obs"], atol=1e-6)


class _ClassicGymnaxCartPole:
    """Mimics the classic gymnax API: ``done`` folds in the time limit, no ``is_truncated``."""

    def __init__(self, env):
        self._env = env
        self.name = env.name
        self.default_params = env.default_params

    def reset_env(self, key, params):
        return self._env.reset_env(key, params)

    def step_env(self, key, state, action, params):
        obs, state, reward, terminated, info = self._env.step_env(key, state, action, params)
        done = terminated | (state.time >= params.max_steps_in_episode)
        return obs, state, reward, done, info

    def observation_space(self, params):
        return self._env.observation_space(params)

    def action_space(self, params):
        return self._env.action_space(params)


def test_gymnax_adapter_classic_api_heuristic(gymnax_cartpole):
    g_env, _, adapter = gymnax_cartpole
    env = GymnaxEnv(_ClassicGymnaxCartPole(g_env))
    assert env.name == "CartPole-v1"
    _, state = jit_reset(adapter, jax.random.key(0))
    _, new_state, _, done, info = _as_np(
        jit_step(env, jax.random.key(1), state.replace(time=499), 1)
    )
    assert done and info["truncated"] and not info["terminated"] and new_state.time == 0
    falling = state.replace(theta=jnp.float32(0.2), theta_dot=jnp.float32(2.0))
    _, _, _, done, info = _as_np(jit_step(env, jax.random.key(1), falling, 1))
    assert done and info["terminated"] and not info["truncated"]


def test_gymnax_adapter_pendulum_and_by_id():
    pytest.importorskip("gymnax")
    env = GymnaxEnv("Pendulum-v1")
    assert env.name == "Pendulum-v1"
    space = env.action_space()
    assert isinstance(space, Box) and space.shape == (1,) and float(space.high[0]) == 2.0
    reset_then_step = eqx.filter_jit(
        lambda env, key: env.step(key, env.reset(key)[1].replace(time=199), jnp.zeros(1))
    )
    _, _, _, done, info = _as_np(reset_then_step(env, jax.random.key(0)))
    assert done and info["truncated"] and not info["terminated"]


def test_gymnax_adapter_missing_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "gymnax", None)  # makes `import gymnax` fail
    with pytest.raises(ImportError, match=r"pip install 'callax\[gymnax\]'"):
        GymnaxEnv("CartPole-v1")
