"""``EvalCallback``: deterministic evaluation episodes on a separate env, inside ``jit``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, Key, PRNGKeyArray, PyTree

from .._callback import (
    AbstractCallbackState,
    AbstractStepStatelessCallback,
    AbstractTrainingPassthroughCallback,
    IterationContext,
    ResetContext,
)
from .._summary_writer import JITSummaryWriter
from ._checkpoint import _default_select, _register_location, location_path, save_tree
from ._stop import AbstractEvalStopper, EvalResult

__all__ = ["EvalCallback", "EvalCallbackState", "evaluate_policy"]

EVAL_TAGS = ("eval/mean_reward", "eval/mean_ep_length")


def _policy_action(policy: Any, obs: Array, key: PRNGKeyArray, deterministic: bool) -> Array:
    # callax policies act on one observation: ``policy(obs)`` is the distribution's mode,
    # ``policy(obs, key=k)`` a sample.
    act: Callable[..., Array] = policy
    if not callable(act):
        raise TypeError(f"the policy ({type(policy).__name__}) is not callable on one "
                        "observation; pass act=(policy, obs, key, deterministic) -> action "
                        "to EvalCallback / evaluate_policy")
    return act(obs) if deterministic else act(obs, key=key)


def evaluate_policy(
    policy: Any,
    env: Any,
    key: PRNGKeyArray,
    *,
    n_eval_episodes: int = 5,
    deterministic: bool = True,
    max_episode_steps: int = 10_000,
    env_params: Any = None,
    act: Callable[[Any, Array, PRNGKeyArray, bool], Array] = _policy_action,
) -> tuple[Float[Array, " n"], Int[Array, " n"]]:
    """Run `n_eval_episodes` episodes of `policy` on `env` in parallel (jit/vmap-safe).

    Each episode runs until the env ends it (terminated or truncated) or for
    `max_episode_steps` steps, whichever comes first; the steps after an episode ended are
    ignored. Returns ``(episode_returns, episode_lengths)``, one entry per episode.

    **Arguments:**

    - `policy`: acts on one observation: ``policy(obs)`` (deterministic) or
      ``policy(obs, key=k)`` (sampled), as [`callax.train.PPOPolicy`][] does; or see `act`.
    - `env`: a gymnax-style environment.
    - `key`: PRNG key of the evaluation (resets, sampled actions, env noise).
    - `n_eval_episodes`, `deterministic`, `max_episode_steps`: as named.
    - `env_params`: environment parameters (``None``: the env's defaults).
    - `act`: ``act(policy, obs, key, deterministic) -> action`` for one observation.
    """
    n = n_eval_episodes
    k_reset, k_loop = jax.random.split(key)
    obs, env_state = jax.vmap(lambda k: env.reset(k, env_params))(jax.random.split(k_reset, n))

    def cond(carry):
        *_, finished, t, _ = carry
        return ~jnp.all(finished) & (t < max_episode_steps)

    def body(carry):
        obs, env_state, returns, lengths, finished, t, key = carry
        key, k_act, k_env = jax.random.split(key, 3)
        action = jax.vmap(lambda o, k: act(policy, o, k, deterministic))(
            obs, jax.random.split(k_act, n))
        obs, env_state, reward, done, _ = jax.vmap(
            lambda k, s, a: env.step(k, s, a, env_params))(jax.random.split(k_env, n),
                                                           env_state, action)
        live = ~finished
        returns = returns + jnp.where(live, jnp.asarray(reward, jnp.float32), 0.0)
        lengths = lengths + live.astype(jnp.int32)
        return obs, env_state, returns, lengths, finished | jnp.asarray(done, bool), t + 1, key

    carry = (obs, env_state, jnp.zeros(n, jnp.float32), jnp.zeros(n, jnp.int32),
             jnp.zeros(n, jnp.bool_), jnp.asarray(0, jnp.int32), k_loop)
    _, _, returns, lengths, *_ = jax.lax.while_loop(cond, body, carry)
    return returns, lengths


class EvalCallbackState(AbstractCallbackState):
    """Run state of [`callax.EvalCallback`][].

    **Attributes:**

    - `last_index`: ``num_timesteps // eval_freq`` at the last evaluation.
    - `evaluations`: evaluations done so far.
    - `last_mean_reward`, `last_mean_ep_length`: of the last evaluation (``NaN`` before).
    - `best_mean_reward`: the best mean reward so far (``-inf`` before any evaluation).
    - `on_new_best`, `after_eval`: the states of the stop conditions.
    - `keep_going`: false once a stop condition asked to stop.
    """

    last_index: Int[Array, ""]
    evaluations: Int[Array, ""]
    last_mean_reward: Float[Array, ""]
    last_mean_ep_length: Float[Array, ""]
    best_mean_reward: Float[Array, ""]
    on_new_best: PyTree
    after_eval: PyTree
    keep_going: Bool[Array, ""]


class EvalCallback(AbstractStepStatelessCallback[EvalCallbackState],
                   AbstractTrainingPassthroughCallback):
    """Evaluates the policy every `eval_freq` env steps on a separate env, from inside the
    jitted training (SB3's ``EvalCallback``).

    An evaluation runs `n_eval_episodes` episodes in parallel with the (by default
    deterministic) policy (see [`callax.evaluate_policy`][]) and writes
    ``eval/mean_reward`` and ``eval/mean_ep_length`` at the current env step to `writer`.
    When an evaluation sets a new best mean reward, the agent state is saved to
    ``<best_model_save_path>/best_model.eqx`` (Equinox serialisation, restore with
    [`callax.load_checkpoint`][]) and `callback_on_new_best` is updated;
    `callback_after_eval` is updated after every evaluation. Training stops once one of
    them says so (e.g. [`callax.StopTrainingOnRewardThreshold`][],
    [`callax.StopTrainingOnNoModelImprovement`][]).

    An evaluation is due after the iteration in which the total env steps (summed over
    envs) reach the next multiple of `eval_freq`. Under ``jax.vmap`` over seeds every seed
    evaluates its own policy; scalars go to ``<run>/seed_<i>`` and best models to
    ``<best_model_save_path>/seed_<i>/best_model.eqx``, each with one host call for the
    whole batch. Under ``vmap`` the evaluation runs for every seed whenever one is due.
    """

    # Environment and parameters split into arrays (pytree leaves) and the rest (static), so
    # a callback passed through ``jax.jit`` keeps Python numbers Python numbers.
    env_arrays: Any
    params_arrays: Any
    env_static: Any = eqx.field(static=True)
    params_static: Any = eqx.field(static=True)
    eval_freq: Int[Array, ""]
    writer: JITSummaryWriter | None
    best_handle: Int[Array, ""] | None
    callback_on_new_best: AbstractEvalStopper | None
    callback_after_eval: AbstractEvalStopper | None
    n_eval_episodes: int = eqx.field(static=True)
    deterministic: bool = eqx.field(static=True)
    max_episode_steps: int = eqx.field(static=True)
    act: Callable = eqx.field(static=True)
    select: Callable[[IterationContext], PyTree] = eqx.field(static=True)

    def __init__(
        self,
        eval_env: Any,
        *,
        eval_freq: int = 10_000,
        n_eval_episodes: int = 5,
        deterministic: bool = True,
        writer: JITSummaryWriter | str | os.PathLike | None = None,
        best_model_save_path: str | os.PathLike | None = None,
        callback_on_new_best: AbstractEvalStopper | None = None,
        callback_after_eval: AbstractEvalStopper | None = None,
        eval_env_params: Any = None,
        max_episode_steps: int = 10_000,
        act: Callable[[Any, Array, PRNGKeyArray, bool], Array] = _policy_action,
        select: Callable[[IterationContext], PyTree] | None = None,
    ):
        """**Arguments:**

        - `eval_env`: the evaluation environment (gymnax-style, not the training env).
        - `eval_freq`: evaluate every `eval_freq` env steps (total over envs).
        - `n_eval_episodes`: episodes per evaluation (run in parallel).
        - `deterministic`: act with the distribution's mode (else sample).
        - `writer`: where ``eval/*`` scalars go: a [`callax.JITSummaryWriter`][] (e.g. a
          ``TensorBoardCallback``'s ``tb_writer``, to share its run), a run directory, or
          ``None`` (nothing written).
        - `best_model_save_path`: directory of ``best_model.eqx`` (``None``: not saved).
        - `callback_on_new_best`, `callback_after_eval`: stop conditions (see above).
        - `eval_env_params`: parameters of `eval_env` (``None``: its defaults).
        - `max_episode_steps`: bound on an evaluation episode's length.
        - `act`: ``act(policy, obs, key, deterministic) -> action`` for one observation.
        - `select`: ``ctx -> pytree``, what the best model saves (default: the agent
          state, as [`callax.CheckpointCallback`][]). Use module-level functions for `act`
          and `select`: a new lambda per callback recompiles the trainer.
        """
        for name, value in (("eval_freq", eval_freq), ("n_eval_episodes", n_eval_episodes),
                            ("max_episode_steps", max_episode_steps)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, value in (("callback_on_new_best", callback_on_new_best),
                            ("callback_after_eval", callback_after_eval)):
            if value is not None and not isinstance(value, AbstractEvalStopper):
                raise TypeError(f"{name} must be an AbstractEvalStopper (such as "
                                f"StopTrainingOnRewardThreshold), got {value!r}")
        if not (hasattr(eval_env, "reset") and hasattr(eval_env, "step")):
            raise TypeError(f"eval_env must be an environment with reset and step, "
                            f"got {eval_env!r}")
        if isinstance(writer, str | os.PathLike):
            writer = JITSummaryWriter(writer)
        elif writer is not None and not isinstance(writer, JITSummaryWriter):
            raise TypeError(f"writer must be a JITSummaryWriter, a path or None, got {writer!r}")
        self.env_arrays, self.env_static = eqx.partition(eval_env, eqx.is_array)
        self.params_arrays, self.params_static = eqx.partition(eval_env_params, eqx.is_array)
        self.eval_freq = jnp.asarray(eval_freq, jnp.int32)
        self.writer = writer
        self.n_eval_episodes = n_eval_episodes
        self.deterministic = bool(deterministic)
        self.max_episode_steps = max_episode_steps
        self.callback_on_new_best = callback_on_new_best
        self.callback_after_eval = callback_after_eval
        self.act = act
        self.select = _default_select if select is None else select
        if best_model_save_path is None:
            self.best_handle = None
        else:
            # A host registry entry found by an array handle: no recompilation per directory.
            self.best_handle = jnp.asarray(_register_location(
                os.path.abspath(os.fspath(best_model_save_path)), "best_model.eqx"), jnp.int32)

    @property
    def eval_env(self) -> Any:
        """The evaluation environment."""
        return eqx.combine(self.env_arrays, self.env_static)

    @property
    def eval_env_params(self) -> Any:
        """The evaluation environment's parameters (``None``: its defaults)."""
        return eqx.combine(self.params_arrays, self.params_static)

    def best_model_path(self, seed: int | None = None) -> str:
        """Where the best model is saved (of vmapped seed `seed`)."""
        if self.best_handle is None:
            raise ValueError("this EvalCallback saves no best model (best_model_save_path=None)")
        return location_path(self.best_handle, 0, seed)

    def reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> EvalCallbackState:
        init = lambda s: None if s is None else s.init()  # noqa: E731
        return EvalCallbackState(
            last_index=jnp.asarray(0, jnp.int32), evaluations=jnp.asarray(0, jnp.int32),
            last_mean_reward=jnp.asarray(jnp.nan, jnp.float32),
            last_mean_ep_length=jnp.asarray(jnp.nan, jnp.float32),
            best_mean_reward=jnp.asarray(-jnp.inf, jnp.float32),
            on_new_best=init(self.callback_on_new_best),
            after_eval=init(self.callback_after_eval), keep_going=jnp.asarray(True),
        )

    def _evaluate(self, policy: Any, key: PRNGKeyArray) -> tuple[Array, Array]:
        returns, lengths = evaluate_policy(
            policy, self.eval_env, key, n_eval_episodes=self.n_eval_episodes,
            deterministic=self.deterministic, max_episode_steps=self.max_episode_steps,
            env_params=self.eval_env_params, act=self.act,
        )
        return jnp.mean(returns), jnp.mean(lengths.astype(jnp.float32))

    def on_iteration(self, ctx: IterationContext, *, key: Key[Array, ""]) -> EvalCallbackState:
        state = ctx.state
        step = jnp.asarray(ctx.locals["num_timesteps"], jnp.int32)
        index = step // self.eval_freq
        due = (index > state.last_index) & jnp.asarray(ctx.locals.get("active", True))
        nan = jnp.asarray(jnp.nan, jnp.float32)
        mean_reward, mean_length = jax.lax.cond(
            due, lambda: self._evaluate(ctx.policy, key), lambda: (nan, nan))
        evaluations = state.evaluations + due.astype(jnp.int32)
        is_new_best = due & (mean_reward > state.best_mean_reward)
        best = jnp.where(is_new_best, mean_reward, state.best_mean_reward)
        result = EvalResult(step, evaluations, mean_reward, mean_length, best, is_new_best)

        def updated(stopper, sub, when):
            if stopper is None:
                return sub
            new = stopper.update(sub, result)
            return jax.tree.map(lambda a, b: jnp.where(when, a, b), new, sub)

        on_new_best = updated(self.callback_on_new_best, state.on_new_best, is_new_best)
        after_eval = updated(self.callback_after_eval, state.after_eval, due)
        keep_going = state.keep_going
        for stopper, sub in ((self.callback_on_new_best, on_new_best),
                             (self.callback_after_eval, after_eval)):
            if stopper is not None:
                keep_going = keep_going & jnp.asarray(stopper.continue_training(sub), bool)

        if self.writer is not None:
            self.writer.write_rows(EVAL_TAGS, step[None],
                                   jnp.stack([mean_reward, mean_length])[None], when=due)
        if self.best_handle is not None:
            save_tree(self.select(ctx), handle=self.best_handle, step=step, pred=is_new_best)
        return EvalCallbackState(
            last_index=jnp.where(due, index, state.last_index), evaluations=evaluations,
            last_mean_reward=jnp.where(due, mean_reward, state.last_mean_reward),
            last_mean_ep_length=jnp.where(due, mean_length, state.last_mean_ep_length),
            best_mean_reward=best, on_new_best=on_new_best, after_eval=after_eval,
            keep_going=keep_going,
        )

    def continue_training(self, ctx: IterationContext, *, key: Key[Array, ""]) -> Bool[Array, ""]:
        return ctx.state.keep_going
