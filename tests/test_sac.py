"""SAC: hooks, bootstrapping, SACEvents read back from TensorBoard (jitted and asynchronous
modes), events leaving training unchanged, and learning Pendulum (slow)."""

from __future__ import annotations

import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Bool, Float, Int, Key

import callax
from callax import (
    AbstractCallback,
    AbstractCallbackState,
    AbstractCallbackStepState,
    AbstractContinuingCallback,
    AbstractStatelessCallback,
    IterationContext,
    ResetContext,
    StepContext,
    TrainingContext,
)
from callax.callbacks import find_learning_rate
from callax.envs import AbstractEnv, Box, Pendulum, make
from callax.train._sac import SAC, td_target
from conftest import assert_steps_increase, read_run, run_dirs
from quick_jit import quick_jit

# ---- the small jitted run shared by most tests --------------------------------------------------

CAPACITY, BATCH, N_STEPS, STARTS, TOTAL, SEEDS = 120, 32, 50, 50, 250, 2
SMALL = SAC(learning_starts=STARTS, batch_size=BATCH, n_steps=N_STEPS, hidden_sizes=(8,),
            buffer_size=CAPACITY)
EPOCH_STEPS = list(range(N_STEPS, TOTAL + 1, N_STEPS))  # [50, 100, ..., 250]
PENDULUM_MAX_COST = np.pi**2 + 0.1 * 8**2 + 0.001 * 2**2  # largest per-step cost

UPDATE_EVENTS = ("policy_grad_norm", "policy_entropy", "policy_mean_logp")
CRITIC_EVENTS = ("critic_value", "critic_value_loss", "critic_grad_norm",
                 "errors_between_critics")
PHASES = ("time_sampling_from_buffer", "time_learner_rollout", "time_loss_computation",
          "time_backprob")


def sac_tags(asynchronous: bool) -> set[str]:
    tags = {f"trainer/{e}" for e in UPDATE_EVENTS}  # one policy: no "/0"
    tags |= {f"trainer/{e}/{i}" for e in CRITIC_EVENTS for i in (0, 1)}
    tags |= {"trainer/buffer_size", "trainer/buffer_avg_pick_per_transition"}
    phases = PHASES + (("time_dequeuing_actors",) if asynchronous else ())
    tags |= {f"trainer/{p}/{f}" for p in phases for f in ("time", "percent")}
    if asynchronous:
        tags |= {"trainer/estimated_queue_sizes/before",
                 "trainer/estimated_queue_sizes/after"}
    return tags


def values(run, tag):
    return np.array([v for _, v in run[tag]])


def steps(run, tag):
    return [s for s, _ in run[tag]]


@pytest.fixture(scope="module")
def jitted(tmp_path_factory):
    """Two vmapped seeds of a small SAC run, with and without events (same keys)."""
    logdir = str(tmp_path_factory.mktemp("sac"))
    env = Pendulum()
    tb = callax.TensorBoardCallback(name="run", log_dir=logdir)
    keys = jax.random.split(jax.random.key(0), SEEDS)

    def train(events):
        return quick_jit(jax.vmap(lambda k: SMALL.learn(env, total_timesteps=TOTAL, key=k,
                                                        callback=tb, events=events)))

    start = time.perf_counter()
    with_events = jax.block_until_ready(train(tb.tb_writer)(keys))
    print(f"small SAC run with events, compile + run: {time.perf_counter() - start:.1f} s")
    tb_plain = callax.TensorBoardCallback(name="plain", log_dir=logdir)
    without = jax.block_until_ready(quick_jit(jax.vmap(
        lambda k: SMALL.learn(env, total_timesteps=TOTAL, key=k, callback=tb_plain)))(keys))
    runs = [read_run(os.path.join(logdir, "run", f"seed_{i}")) for i in range(SEEDS)]
    return {"logdir": logdir, "result": with_events, "without": without, "runs": runs}


STATISTICS = ("band", "max", "mean", "min")  # the runs <run>/seeds/<statistic>


def test_one_run_per_seed_with_every_jitted_mode_event(jitted):
    assert run_dirs(jitted["logdir"]) == (
        [f"plain/seed_{i}" for i in range(SEEDS)] + [f"plain/seeds/{s}" for s in STATISTICS]
        + [f"run/seed_{i}" for i in range(SEEDS)] + [f"run/seeds/{s}" for s in STATISTICS])
    for run in jitted["runs"]:
        sac = {t for t in run if t.startswith("trainer/")}
        assert sac == sac_tags(asynchronous=False)  # no queue events: never faked
        assert_steps_increase(run)
    assert values(jitted["runs"][0], "train/actor_loss")[-1] != pytest.approx(
        values(jitted["runs"][1], "train/actor_loss")[-1])


def test_steps_and_buffer_events_match_an_independent_count(jitted):
    for run in jitted["runs"]:
        assert steps(run, "trainer/buffer_size") == EPOCH_STEPS
        # Updates run after every env step once STARTS steps have been taken.
        n_updates = np.array([max(0, s - STARTS + 1) for s in EPOCH_STEPS])
        np.testing.assert_array_equal(values(run, "trainer/buffer_size"),
                                      np.minimum(EPOCH_STEPS, CAPACITY))
        np.testing.assert_allclose(values(run, "trainer/buffer_avg_pick_per_transition"),
                                   n_updates * BATCH / np.array(EPOCH_STEPS), rtol=1e-6)
        # Update events exist from the first epoch with an update; timing from the first
        # epoch whose first step trains.
        assert steps(run, "trainer/policy_entropy") == EPOCH_STEPS
        assert steps(run, "trainer/time_backprob/time") == EPOCH_STEPS[1:]
    result = jitted["result"]
    np.testing.assert_array_equal(result.agent_state.n_updates, [TOTAL - STARTS + 1] * SEEDS)
    np.testing.assert_array_equal(result.agent_state.buffer.total_sampled,
                                  [(TOTAL - STARTS + 1) * BATCH] * SEEDS)


def test_update_events_agree_with_the_training_log_and_physical_bounds(jitted):
    for run in jitted["runs"]:
        # No tag repeats another's values (the policy loss and entropy coefficient are
        # train/actor_loss, train/ent_coef and train/ent_coef_loss only).
        # (episode/* are lerax's moving averages, a different statistic that can coincide
        # with rollout/* over the first episodes; `callax train` does not write them.)
        series = [tuple(values(run, tag)) for tag in run if not tag.startswith("episode/")]
        assert len(set(series)) == len(series), sorted(run)
        np.testing.assert_allclose(values(run, "trainer/critic_value_loss/0")
                                   + values(run, "trainer/critic_value_loss/1"),
                                   values(run, "train/critic_loss"), rtol=1e-5)
        for tag in run:
            if tag.startswith("trainer/"):
                assert np.all(np.isfinite(values(run, tag))), tag
        # alpha = exp(log_alpha) starts at 1 and each Adam step moves log_alpha by at most
        # lr * (1 - b1) / sqrt(1 - b2) ~ 3.2 lr.
        coef = values(run, "train/ent_coef")
        max_change = 3.2 * SMALL.learning_rate * (TOTAL - STARTS + 1)
        assert np.all(coef > 0) and np.all(np.abs(np.log(coef)) <= max_change)
        q_bound = PENDULUM_MAX_COST / (1 - SMALL.gamma)
        for i in (0, 1):
            assert np.all(np.abs(values(run, f"trainer/critic_value/{i}")) < q_bound)
            assert np.all(values(run, f"trainer/critic_value_loss/{i}") >= 0)
            assert np.all(values(run, f"trainer/critic_grad_norm/{i}") > 0)
            errors = values(run, f"trainer/errors_between_critics/{i}")
            assert np.all(errors >= 0) and errors[0] < errors[-1]  # targets start equal
        assert np.all(values(run, "trainer/policy_grad_norm") > 0)
        # Entropy of the pre-tanh Gaussian: log_std + (1 + log 2 pi) / 2 per action dim, with
        # log_std clipped to [-20, 2].
        entropy = values(run, "trainer/policy_entropy")
        half_log = 0.5 * (1 + np.log(2 * np.pi))
        assert np.all((entropy >= -20 + half_log) & (entropy <= 2 + half_log))


def test_time_events_are_real_measurements(jitted):
    for run in jitted["runs"]:
        total = np.zeros(len(EPOCH_STEPS) - 1)
        for phase in PHASES:
            t = values(run, f"trainer/{phase}/time")
            p = values(run, f"trainer/{phase}/percent")
            assert np.all(t > 0) and np.all(t < 10.0)
            assert np.all((p >= 0) & (p <= 100))
            total += p
        # The four phases do not overlap and make up the whole timed update.
        np.testing.assert_allclose(total, 100.0, rtol=1e-4)


def test_events_do_not_change_training(jitted):
    trained = jax.tree.leaves(eqx.filter(jitted["result"].agent_state.actor, eqx.is_array))
    plain = jax.tree.leaves(eqx.filter(jitted["without"].agent_state.actor, eqx.is_array))
    for a, b in zip(trained, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert "trainer/buffer_size" not in read_run(
        os.path.join(jitted["logdir"], "plain", "seed_0"))


def test_truncation_stores_the_final_observation(jitted):
    data = jitted["result"].agent_state.buffer.data
    # Step s (0-based) sits in slot s % CAPACITY; steps 130..249 are stored. Step 199 is the
    # 200th of the first episode: truncated.
    obs, next_obs = np.asarray(data.obs[0]), np.asarray(data.next_obs[0])
    terminated = np.asarray(data.terminated[0])
    assert not terminated.any()  # Pendulum never terminates: always bootstrap
    slot = 199 % CAPACITY
    assert not np.allclose(next_obs[slot], obs[slot + 1])  # the reset obs follows...
    continuing = [s % CAPACITY for s in range(130, 249) if s != 199]
    np.testing.assert_allclose(next_obs[continuing], obs[[(s + 1) % CAPACITY for s in
                                                          range(130, 249) if s != 199]])
    # ...while the stored next_obs continues the episode's dynamics: theta_dot changes by at
    # most 3g/2l*dt + 3/ml^2*2*dt per step.
    assert abs(next_obs[slot, 2] - obs[slot, 2]) <= (15 + 6) * 0.05 + 1e-5
    np.testing.assert_allclose(np.hypot(next_obs[slot, 0], next_obs[slot, 1]), 1, rtol=1e-5)


def test_td_target_bootstraps_on_truncation_only():
    reward, next_value = jnp.array([1.0, 1.0]), jnp.array([10.0, 10.0])
    target = td_target(reward, jnp.array([False, True]), next_value, 0.9)
    np.testing.assert_allclose(target, [1.0 + 0.9 * 10.0, 1.0])


# ---- callback hooks, early stopping and termination -------------------------------------------


class CountdownParams(eqx.Module):
    length: int = 4
    max_steps_in_episode: int = 100


class CountdownState(eqx.Module):
    time: Int[Array, ""]


class Countdown(AbstractEnv[CountdownState, CountdownParams]):
    """A continuous-action env that *terminates* after ``length`` steps; reward = 1 + step."""

    @property
    def name(self) -> str:
        return "Countdown"

    @property
    def default_params(self) -> CountdownParams:
        return CountdownParams()

    def reset_env(self, key, params):
        state = CountdownState(jnp.zeros((), jnp.int32))
        return self._obs(state), state

    def step_env(self, key, state, action, params):
        state = CountdownState(state.time + 1)
        reward = 1.0 + state.time.astype(jnp.float32)
        terminated = state.time >= params.length
        return self._obs(state), state, reward, terminated, jnp.zeros((), jnp.bool_)

    def observation_space(self, params=None):
        return Box(0.0, 1.0, (2,))

    def action_space(self, params=None):
        return Box(-1.0, 1.0, (1,))

    @staticmethod
    def _obs(state):
        return jnp.stack([state.time.astype(jnp.float32) / 10.0, jnp.ones(())])


class TallyState(AbstractCallbackState):
    resets: Int[Array, ""]
    starts: Int[Array, ""]
    iterations: Int[Array, ""]
    ends: Int[Array, ""]
    bad: Int[Array, ""]  # contexts that broke a documented invariant


class TallyStepState(AbstractCallbackStepState):
    steps: Int[Array, ""]
    reward: Float[Array, ""]
    terminations: Int[Array, ""]
    bad: Int[Array, ""]


class Tally(AbstractCallback[TallyState, TallyStepState]):
    """Counts every hook, checks the contexts, stops after ``stop_after`` iterations (an
    array: changing it does not recompile)."""

    stop_after: Int[Array, ""]
    countdown: bool = eqx.field(static=True, default=True)

    def __init__(self, stop_after: int, countdown: bool = True):
        self.stop_after = jnp.asarray(stop_after, jnp.int32)
        self.countdown = countdown

    def reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> TallyState:
        zero = jnp.zeros((), jnp.int32)
        return TallyState(zero + 1, zero, zero, zero, zero)

    def step_reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> TallyStepState:
        zero = jnp.zeros((), jnp.int32)
        return TallyStepState(zero, jnp.zeros(()), zero, zero)

    def on_step(self, ctx: StepContext, *, key: Key[Array, ""]) -> TallyStepState:
        s = ctx.state
        bad = (ctx.done != (ctx.locals["terminated"] | ctx.locals["truncated"]))
        if self.countdown:
            bad |= ctx.reward != 1.0 + ctx.locals["final_obs"][0] * 10.0  # raw reward
        return TallyStepState(s.steps + 1, s.reward + ctx.reward,
                              s.terminations + ctx.locals["terminated"], s.bad + bad)

    def on_training_start(self, ctx: TrainingContext, *, key: Key[Array, ""]) -> TallyState:
        bad = (ctx.iteration_count != 0) | (jnp.sum(ctx.step_state.steps) != 0)
        return eqx.tree_at(lambda s: (s.starts, s.bad), ctx.state,
                           (ctx.state.starts + 1, ctx.state.bad + bad))

    def on_iteration(self, ctx: IterationContext, *, key: Key[Array, ""]) -> TallyState:
        s = ctx.state
        bad = ctx.iteration_count != s.iterations + 1
        bad |= jnp.sum(ctx.step_state.steps) != ctx.locals["num_timesteps"]
        bad |= find_learning_rate(ctx.opt_state) != SAC().learning_rate
        bad |= ~jnp.all(jnp.isfinite(jnp.stack([ctx.training_log[k] for k in (
            "actor_loss", "critic_loss", "ent_coef", "ent_coef_loss")])))
        bad |= ctx.training_log["n_updates"] != ctx.locals["agent_state"].n_updates
        return eqx.tree_at(lambda s: (s.iterations, s.bad), s, (s.iterations + 1, s.bad + bad))

    def on_training_end(self, ctx: TrainingContext, *, key: Key[Array, ""]) -> TallyState:
        return eqx.tree_at(lambda s: s.ends, ctx.state, ctx.state.ends + 1)

    def continue_training(self, ctx: IterationContext, *, key: Key[Array, ""]
                          ) -> Bool[Array, ""]:
        return ctx.iteration_count < self.stop_after


COUNTDOWN_SAC = SAC(learning_starts=8, batch_size=8, n_steps=10, n_envs=2, hidden_sizes=(8,),
                    buffer_size=64)


@pytest.fixture(scope="module")
def countdown_learn():
    """Seeds vmapped, each with its own ``stop_after``, TensorBoard and events (arguments:
    new callbacks do not recompile)."""

    def learn(stop_after, key, tb):
        return COUNTDOWN_SAC.learn(Countdown(), total_timesteps=200, key=key,
                                   callback=[Tally(stop_after), tb], events=tb.tb_writer)

    return quick_jit(jax.vmap(learn, in_axes=(0, 0, None)))


def test_hooks_early_stop_raw_rewards_and_termination(countdown_learn, logdir):
    tb = callax.TensorBoardCallback(name="countdown", log_dir=logdir)
    result = countdown_learn(jnp.array([2, 4]), jax.random.split(jax.random.key(1), 2), tb)
    # Each vmapped seed stops on its own (a batched while_loop predicate).
    np.testing.assert_array_equal(result.iterations, [2, 4])
    np.testing.assert_array_equal(result.total_timesteps, [40, 80])
    for seed, iterations in enumerate((2, 4)):
        state = jax.tree.map(lambda x: x[seed], result.callback_state.states[0])
        step_state = jax.tree.map(lambda x: x[seed], result.callback_step_state.states[0])
        assert (int(state.resets), int(state.starts), int(state.iterations),
                int(state.ends)) == (1, 1, iterations, 1)
        assert int(state.bad) == 0 and int(jnp.sum(step_state.bad)) == 0
        steps_per_env = 10 * iterations
        np.testing.assert_array_equal(step_state.steps, [steps_per_env] * 2)
        episodes = steps_per_env // 4
        np.testing.assert_array_equal(step_state.terminations, [episodes] * 2)
        # raw rewards: 1 + t within each 4-step episode
        np.testing.assert_allclose(step_state.reward, [episodes * (2 + 3 + 4 + 5)] * 2)
        # The stopped seed's epochs end with it: no event written for the iterations the
        # other seed still runs.
        run = read_run(os.path.join(logdir, "countdown", f"seed_{seed}"))
        assert steps(run, "trainer/buffer_size") == [20 * (i + 1) for i in range(iterations)]
        assert_steps_increase(run)
    # Terminations are stored with the observation actually reached (not the reset one).
    buffer = jax.tree.map(lambda x: x[0], result.agent_state.buffer)
    n = int(buffer.size)
    terminated = np.asarray(buffer.data.terminated[:n])
    next_obs = np.asarray(buffer.data.next_obs[:n])
    assert n == 40 and terminated.sum() == 10
    np.testing.assert_allclose(next_obs[terminated, 0], 0.4, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(buffer.data.reward[:n]).sum(), 2 * 5 * 14)


def test_stop_before_the_first_iteration(countdown_learn, logdir):
    tb = callax.TensorBoardCallback(name="stop", log_dir=logdir)
    result = countdown_learn(jnp.array([0, 1]), jax.random.split(jax.random.key(0), 2), tb)
    np.testing.assert_array_equal(result.iterations, [0, 1])
    np.testing.assert_array_equal(result.total_timesteps, [0, 20])
    state = result.callback_state.states[0]
    np.testing.assert_array_equal(state.starts, [1, 1])
    np.testing.assert_array_equal(state.iterations, [0, 1])
    np.testing.assert_array_equal(state.ends, [1, 1])


def test_bad_arguments_fail_before_compiling():
    with pytest.raises(ValueError, match="batch_size"):
        SAC(batch_size=0)
    with pytest.raises(ValueError, match="tau"):
        SAC(tau=0.0)
    with pytest.raises(TypeError, match="continuous"):
        SAC().learn(make("cartpole"), total_timesteps=10, key=jax.random.key(0))
    with pytest.raises(TypeError, match="JITSummaryWriter"):
        SAC().learn(Pendulum(), total_timesteps=10, key=jax.random.key(0), events="runs")
    with pytest.raises(ValueError, match="total_timesteps"):
        SAC().learn(Pendulum(), total_timesteps=-1, key=jax.random.key(0))


def test_predict_maps_to_the_action_box(jitted):
    env = Pendulum()
    agent = jax.tree.map(lambda x: x[0], jitted["result"].agent_state)
    obs = jnp.array([-1.0, 0.0, 0.0])
    predict = jax.jit(lambda agent, obs, key: (SMALL.predict(agent, env, obs),
                                               SMALL.predict(agent, env, obs, key=key)))
    action, sampled = predict(agent, obs, jax.random.key(2))
    assert action.shape == (1,) and bool(jnp.all(jnp.abs(action) <= 2.0))
    assert bool(jnp.all(jnp.abs(sampled) <= 2.0))


# ---- asynchronous mode ------------------------------------------------------------------------


def test_async_records_all_18_events_from_the_real_queue(logdir):
    env = Pendulum()
    sac = SAC(learning_starts=100, batch_size=32, n_steps=50, hidden_sizes=(8,),
              buffer_size=300)
    tb = callax.TensorBoardCallback(name="async", log_dir=logdir)
    queue_size, steps_per_put = 3, 2
    start = time.perf_counter()
    result = sac.learn_async(env, total_timesteps=500, key=jax.random.key(0),
                             callback=[tb, Tally(stop_after=4, countdown=False)],
                             events=tb.tb_writer, num_actors=2, steps_per_put=steps_per_put,
                             queue_size=queue_size)
    print(f"async SAC, compile + run: {time.perf_counter() - start:.1f} s")
    # continue_training stopped it after 4 of 5 iterations of 2 actors x 50 steps
    assert int(result.total_timesteps) == 400 and int(result.iterations) == 4
    tb_steps, tally = result.callback_step_state.states
    state = result.callback_state.states[1]
    assert (int(state.resets), int(state.starts), int(state.iterations), int(state.ends)) == (
        1, 1, 4, 1)
    assert int(state.bad) == 0 and int(jnp.sum(tally.bad)) == 0
    assert tb_steps.step.shape == (2,)  # one env per actor
    assert int(jnp.sum(tally.steps)) == 400  # on_step ran in the actors, as ingested
    run = read_run(os.path.join(logdir, "async"))
    assert {t for t in run if t.startswith("trainer/")} == sac_tags(asynchronous=True)
    assert_steps_increase(run)
    epoch_steps = [100, 200, 300, 400]
    assert steps(run, "trainer/buffer_size") == epoch_steps
    np.testing.assert_array_equal(values(run, "trainer/buffer_size"), [100, 200, 300, 300])
    # Each queue item holds 2 steps and brings 2 updates once 100 steps are ingested.
    n_updates = np.array([2 * (s // 2 - 49) for s in epoch_steps])
    np.testing.assert_allclose(values(run, "trainer/buffer_avg_pick_per_transition"),
                               n_updates * 32 / np.array(epoch_steps), rtol=1e-6)
    assert int(result.agent_state.n_updates) == n_updates[-1]
    for field in ("before", "after"):
        sizes = values(run, f"trainer/estimated_queue_sizes/{field}")
        assert np.all((sizes >= 0) & (sizes <= queue_size))
    total = 0.0
    for phase in (*PHASES, "time_dequeuing_actors"):
        t = values(run, f"trainer/{phase}/time")[-1]
        p = values(run, f"trainer/{phase}/percent")[-1]
        assert 0 <= t < 10 and 0 <= p <= 100
        total += p
    assert total == pytest.approx(100.0, rel=1e-4)
    assert np.all(values(run, "train/policy_lag") >= 0)
    assert np.all(values(run, "train/ent_coef") > 0)


# ---- learning quality ---------------------------------------------------------------------------


class LastEpisodesState(AbstractCallbackStepState):
    episode_return: Float[Array, ""]
    first: Float[Array, ""]  # return of the first finished episode (NaN: none yet)
    last: Float[Array, " 10"]  # returns of the last 10 finished episodes (NaN: none yet)


class LastEpisodes(AbstractStatelessCallback[LastEpisodesState], AbstractContinuingCallback):
    def step_reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> LastEpisodesState:
        return LastEpisodesState(jnp.zeros(()), jnp.full((), jnp.nan), jnp.full((10,), jnp.nan))

    def on_step(self, ctx: StepContext, *, key: Key[Array, ""]) -> LastEpisodesState:
        ret = ctx.state.episode_return + ctx.reward
        first = jnp.where(ctx.done & jnp.isnan(ctx.state.first), ret, ctx.state.first)
        last = jnp.where(ctx.done, jnp.roll(ctx.state.last, -1).at[-1].set(ret),
                         ctx.state.last)
        return LastEpisodesState(jnp.where(ctx.done, 0.0, ret), first, last)


@pytest.mark.slow
def test_sac_learns_pendulum():
    """Mean return >= -250 over the last 10 episodes within 6k steps, 2 seeds vmapped, far
    above each seed's first episode (uniformly random actions: before ``learning_starts``)."""
    sac = SAC(learning_rate=1e-3, learning_starts=500, batch_size=64, hidden_sizes=(64, 64),
              n_steps=1000, buffer_size=6_000)
    env = Pendulum()
    start = time.perf_counter()
    result = jax.jit(jax.vmap(lambda k: sac.learn(env, total_timesteps=6_000, key=k,
                                                  callback=LastEpisodes())))(
        jax.random.split(jax.random.key(42), 2))
    last = np.asarray(result.callback_step_state.last)  # [seed, env, 10]
    first = np.asarray(result.callback_step_state.first).reshape(2)  # random actions
    elapsed = time.perf_counter() - start
    means = np.nanmean(last.reshape(2, -1), axis=1)
    print(f"SAC Pendulum 6k steps x 2 seeds: first (random) episode {first}, last-10 mean "
          f"returns {means}, {elapsed:.1f} s")
    assert not np.isnan(last).any() and not np.isnan(first).any()
    assert np.all(means >= -250), means
    assert np.all(means >= first + 300), (first, means)


def test_sac_runs_through_the_shared_driver(monkeypatch):
    # SAC.learn is run_training with SAC's functions: no training loop of its own.
    import callax.train._sac as sac_module

    seen = {}

    def spy(env, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("driver reached")

    monkeypatch.setattr(sac_module, "run_training", spy)
    with pytest.raises(RuntimeError, match="driver reached"):
        sac_module.SAC(n_steps=3, n_envs=2).learn(Pendulum(), total_timesteps=12,
                                                  key=jax.random.key(0))
    assert seen["n_envs"] == 2 and seen["n_steps"] == 3 and seen["n_iterations"] == 2
    assert callable(seen["step_fn"]) and seen["end_iteration_fn"] is None  # no events


def test_no_import_cycles_in_the_package():
    """Static import graph of ``callax`` (every ``import``, at any depth of a module):
    no cycle between modules (``_sac`` and ``_sac_async`` used to import each other)."""
    import ast
    import pathlib

    root = pathlib.Path(callax.__file__).parent

    def name_of(path: pathlib.Path) -> str:
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(p): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] \
                    if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                edges |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target
                          for a in node.names}
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
        graph[name] = {e for e in edges if e in modules and e != name}
    # A package's __init__ re-exporting its modules is not a cycle of modules.
    plain = {n for n, p in modules.items() if p.name != "__init__.py"}
    cycles = []
    for start in plain:
        stack = [(start, (start,))]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node] & plain:
                if nxt == start:
                    cycles.append(path)
                elif nxt not in path:
                    stack.append((nxt, (*path, nxt)))
    assert cycles == []
    assert "callax.train._sac" not in graph["callax.train._sac_async"]
