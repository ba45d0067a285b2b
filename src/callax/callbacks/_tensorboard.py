"""``TensorBoardCallback``: episode statistics, learning rate and the training log."""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Key

from .._buffer import ScalarBuffer
from .._callback import (
    AbstractCallback,
    AbstractCallbackState,
    AbstractCallbackStepState,
    IterationContext,
    ResetContext,
    StepContext,
    TrainingContext,
)
from .._host import begin_training, is_traced, on_mesh, open_run, vary
from .._step import Step, wide_sum
from .._summary_writer import JITSummaryWriter, flatten_scalars, stack_scalars
from .._sweep import Sweep, declare_sweep
from .._writer import check_run_name, prepare_log_dir
from ._episodes import EpisodeWindow, check_window_size, sb3_time, window_means
from ._seeds import HEADLINE_TAGS, SeedRows, open_seeds_run

__all__ = [
    "TensorBoardCallback",
    "TensorBoardCallbackState",
    "TensorBoardCallbackStepState",
    "find_learning_rate",
]


class TensorBoardCallbackStepState(AbstractCallbackStepState):
    """Per-environment episode statistics of [`callax.TensorBoardCallback`][].

    **Attributes** (under ``jax.vmap`` they carry the batch dimensions):

    - `step`: env steps taken by this env (``int32``).
    - `episode_return` (``float32``), `episode_length` (``int32``): of the episode in
      progress.
    - `episode_done`: whether the last step ended an episode (``bool``).
    - `average_return`, `average_length`: exponential moving averages over *finished*
      episodes (``float32``), seeded by the first one (no bias toward 0). ``NaN`` until an
      episode ends: such an env does not count in the logged mean.

    - `window`: the env's share of its seed's last finished episodes, for SB3's
      ``rollout/ep_rew_mean`` and ``rollout/ep_len_mean`` (an ``EpisodeWindow``: under
      ``jax.vmap`` over ``N`` envs, ``ceil(stats_window_size / N)`` slots per env), or
      ``None`` (a state built without one writes only the moving averages).

    Six plain arrays, one per number, each in its natural dtype, so every value is exact on
    every backend. Inside a jitted rollout XLA fuses
    [`next`][callax.TensorBoardCallbackStepState.next] into a few elementwise kernels per
    env step; what that costs against packing all six numbers into one array is measured on
    the performance page. The constructor converts and broadcasts its six arguments
    together.
    """

    step: Int[Array, "*batch"]
    episode_return: Float[Array, "*batch"]
    episode_length: Int[Array, "*batch"]
    episode_done: Bool[Array, "*batch"]
    average_return: Float[Array, "*batch"]
    average_length: Float[Array, "*batch"]
    window: EpisodeWindow | None

    def __init__(
        self,
        step: Int[ArrayLike, "*#batch"],
        episode_return: Float[ArrayLike, "*#batch"],
        episode_length: Int[ArrayLike, "*#batch"],
        episode_done: Bool[ArrayLike, "*#batch"],
        average_return: Float[ArrayLike, "*#batch"],
        average_length: Float[ArrayLike, "*#batch"],
        window: EpisodeWindow | None = None,
    ):
        args = (step, episode_return, episode_length, episode_done, average_return,
                average_length)
        shape = jnp.broadcast_shapes(*(jnp.shape(x) for x in args))

        def as_(x, dtype):
            return jnp.broadcast_to(jnp.asarray(x).astype(dtype), shape)

        self.step = as_(step, jnp.int32)
        self.episode_return = as_(episode_return, jnp.float32)
        self.episode_length = as_(episode_length, jnp.int32)
        self.episode_done = as_(episode_done, jnp.bool_)
        self.average_return = as_(average_return, jnp.float32)
        self.average_length = as_(average_length, jnp.float32)
        self.window = window

    @classmethod
    def initial(cls, stats_window_size: int | None = None, like: ArrayLike | None = None
                ) -> TensorBoardCallbackStepState:
        """No steps, no finished episode (averages are ``NaN``); with `stats_window_size`, an
        empty window of that many episodes (per seed when `like`, any per-env array such
        as ``step_reset``'s key, is batched over the envs: see
        `EpisodeWindow.empty`)."""
        window = (None if stats_window_size is None
                  else EpisodeWindow.empty(stats_window_size, like))
        return cls(0, 0.0, 0, False, jnp.nan, jnp.nan, window)

    def next(
        self,
        reward: Float[ArrayLike, "*batch"],
        done: Bool[ArrayLike, "*batch"],
        alpha: Float[ArrayLike, ""],
    ) -> TensorBoardCallbackStepState:
        """The state after one env step with raw ``reward``; ``done`` ends the episode.

        The finishing step's reward and length are part of the episode. On the first finished
        episode the averages become its return and length; after that
        ``average = alpha * average + (1 - alpha) * episode``.
        """
        done = jnp.asarray(done, jnp.bool_)
        alpha = jnp.asarray(alpha, jnp.float32)
        episode_return = self.episode_return + jnp.asarray(reward, jnp.float32)
        episode_length = self.episode_length + 1

        def average(old, finished):
            finished = finished.astype(jnp.float32)
            smoothed = jnp.where(jnp.isnan(old), finished, alpha * old + (1 - alpha) * finished)
            return jnp.where(done, smoothed, old)

        window = None if self.window is None else self.window.add(
            done, episode_return, episode_length)
        return TensorBoardCallbackStepState(
            window=window,
            step=self.step + 1,
            episode_return=jnp.where(done, 0.0, episode_return),
            episode_length=jnp.where(done, 0, episode_length),
            episode_done=done,
            average_return=average(self.average_return, episode_return),
            average_length=average(self.average_length, episode_length),
        )


class TensorBoardCallbackState(AbstractCallbackState):
    """Run state of [`callax.TensorBoardCallback`][]: the rows not yet sent to the host
    (`seeds`: the headline values for the ``seeds`` run, ``None`` without it)."""

    buffer: ScalarBuffer
    seeds: SeedRows | None = None


def find_learning_rate(opt_state: Any) -> jax.Array | None:
    """The ``learning_rate`` of the first ``optax.inject_hyperparams`` state in ``opt_state``.

    ``None`` (decided at trace time) when there is none.
    """

    def is_injected(x) -> bool:
        return hasattr(x, "hyperparams") and isinstance(getattr(x, "hyperparams"), Mapping)

    for node in jax.tree_util.tree_leaves(opt_state, is_leaf=is_injected):
        if is_injected(node) and "learning_rate" in node.hyperparams:
            return jnp.asarray(node.hyperparams["learning_rate"], jnp.float32)
    return None


def _name_part(obj: Any) -> str | None:
    if obj is None:
        return None
    name = obj if isinstance(obj, str) else getattr(obj, "name", None)
    if not isinstance(name, str):
        name = type(obj).__name__
    return name.replace(os.sep, "-").replace(" ", "")


class TensorBoardCallback(AbstractCallback[TensorBoardCallbackState, TensorBoardCallbackStepState]):
    """Writes training statistics to TensorBoard once per iteration.

    Tags, all at global step = total env steps so far (summed over envs):

    - `rollout/ep_rew_mean`, `rollout/ep_len_mean`: Stable-Baselines3's statistics, the mean
      return and length of the last `stats_window_size` finished episodes over all envs
      (SB3's ``ep_info_buffer``; per seed under ``vmap``). Nothing is written before the
      first episode ends.
    - `time/fps`: SB3's ``int(num_timesteps / time_elapsed)``, when the loop passes
      ``locals["time_elapsed"]`` and ``locals["num_timesteps"]`` (callax's trainers do: the
      host clock read once per iteration, compilation excluded).
    - `episode/return`, `episode/length` (with `moving_average`, lerax's tags): mean over envs
      of each env's moving average over finished episodes (see
      [`callax.TensorBoardCallbackStepState`][]). Envs with no finished episode do not
      count; nothing is written before the first episode ends.
    - `train/learning_rate`: from an ``optax.inject_hyperparams`` optimizer state (not
      written when the optimizer has none).
    - `train/<key>`: every entry of the iteration's training log (nested mappings become
      `train/<key>/<subkey>`).

    Rows are buffered on device and sent to the host every `flush_every` iterations in one
    host call (all tags of all buffered iterations, all vmapped seeds, in one packed array),
    and at `on_training_end`. An exception in the training loop loses at most the
    `flush_every - 1` iterations still on device; everything sent before is written.
    Training under ``jax.vmap`` over seeds writes one run per seed, ``<run>/seed_<i>``.
    A trainer whose vmapped loop keeps running the body for seeds that already stopped
    passes ``locals["active"]`` (false for those seeds); nothing is written for them.
    """

    tb_writer: JITSummaryWriter
    seeds_handle: Int[Array, ""]
    sweep: Sweep | None
    alpha: float
    stats_window_size: int | None = eqx.field(static=True)
    moving_average: bool = eqx.field(static=True)
    seeds_run: bool = eqx.field(static=True)
    flush_every: int = eqx.field(static=True)
    max_scalars: int = eqx.field(static=True)
    step_offset: int = eqx.field(static=True)

    def __init__(
        self,
        name: str | None = None,
        env: Any = None,
        policy: Any = None,
        alpha: float = 0.9,
        log_dir: str | os.PathLike = "runs",
        *,
        flush_every: int = 32,
        max_scalars: int = 64,
        axis_names: tuple[str, ...] | None = None,
        reduce: str | None = None,
        per_process: bool = False,
        resume_from_step: int | None = None,
        stats_window_size: int | None = 100,
        moving_average: bool = True,
        seeds_run: bool = True,
        writers: Any = None,
        sweep: Sweep | None = None,
    ):
        """**Arguments:**

        - `name`: the run's name, a directory under `log_dir`. Without it the name is
          ``<date>_<time>[_<env name>][_<policy name>]``, made when the run opens (for a
          callback built inside ``jax.jit``: each time the function executes).
        - `env`, `policy`: used only to name the run.
        - `alpha`: smoothing factor of the moving averages, in ``[0, 1)``.
        - `stats_window_size`: finished episodes (per seed) averaged by
          ``rollout/ep_rew_mean`` and ``rollout/ep_len_mean`` (SB3's ``stats_window_size``).
          The seed's window is spread over its envs' step states: under ``jax.vmap`` over
          ``N`` envs each holds ``2 * ceil(stats_window_size / N)`` numbers of it.
          ``None`` turns the window off: no ``rollout/`` tags (nor the ``seeds`` run) and
          no window in the step state, which then holds the running episode, the step
          count and the moving averages only.
        - `moving_average`: also write lerax's ``episode/return`` and ``episode/length``.
        - `seeds_run`: under ``jax.vmap`` over several seeds, also write the run
          ``<run>/seeds``: for ``rollout/ep_rew_mean`` and ``rollout/ep_len_mean``,
          ``<tag>/mean``, ``<tag>/min`` and ``<tag>/max`` over seeds at every step where
          every seed has a value, with a custom-scalars layout drawing the mean with its
          min-max band (one more host call per `flush_every` iterations). Not with
          `reduce` (the rows are then devices of one agent, not seeds) nor `per_process`,
          nor for a callback built inside ``jax.jit`` with several processes.
        - `log_dir`: the parent directory of runs.
        - `flush_every`: iterations buffered on device between host transfers (``1``: send
          every iteration at once). This is also how many iterations a crash can lose.
        - `max_scalars`: capacity of one buffered row (tags per iteration).
        - `axis_names`, `reduce`, `per_process`: how training under ``jax.pmap`` /
          ``shard_map`` and with several processes is written, as for
          [`callax.JITSummaryWriter`][] (default: one run per global seed,
          ``<run>/seed_<i>``; ``reduce="mean"`` for data-parallel training of one agent).
          See the "Scaling out" page.
        - `resume_from_step`: continue the run `name` after restoring a checkpoint taken
          at env step ``S``: the run directory is reused as it is, points it holds at steps
          after ``S`` (the lost tail) are hidden by TensorBoard, and the global steps written
          start from ``S`` (the trainer counts env steps from 0 again). Needs `name`.
        - `writers`: where the points go, as for [`callax.JITSummaryWriter`][] (default
          TensorBoard alone; e.g. ``("tensorboard", "jsonl", "wandb")``).
        - `sweep`: the training is a hyperparameter sweep ([`callax.Sweep`][]), vmapped over
          its configurations and seeds as the sweep declares: each is written to
          ``<run>/<configuration>/seed_<s>`` (statistics over seeds per configuration).
          The sweep is sent to the host at each training's start (``reset``).

        The run directory is checked here: a `name` with a path separator, ``..`` or an
        absolute path, a `log_dir` that is a file or not writable, or a path too long for
        the file system raises at once.
        """
        if int(flush_every) < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        check_window_size(stats_window_size, allow_none=True)
        if int(max_scalars) < 3:
            raise ValueError(f"max_scalars must be >= 3, got {max_scalars}")
        if not 0.0 <= float(alpha) < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        if name is not None:
            check_run_name(name)
        if resume_from_step is not None:
            if (isinstance(resume_from_step, bool)
                    or not isinstance(resume_from_step, int | np.integer)
                    or resume_from_step < 0):
                raise ValueError("resume_from_step must be a non-negative int, got "
                                 f"{resume_from_step!r}")
            if name is None:
                raise ValueError("resume_from_step needs the name of the run to continue")
        log_dir = os.fspath(log_dir)
        prepare_log_dir(log_dir if name is None else os.path.join(log_dir, name))
        parts = [_name_part(env), _name_part(policy)]

        def run_dir() -> str:
            if name is not None:
                return os.path.join(log_dir, name)
            stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            return os.path.join(log_dir, "_".join([stamp, *(p for p in parts if p)]))

        options: dict[str, Any] = dict(axis_names=axis_names, reduce=reduce,
                                       per_process=per_process)
        JITSummaryWriter(_handle=0, **options)  # validate the options before opening a run
        if resume_from_step is None:
            handle = open_run(run_dir, avoid_existing=True, per_process=per_process,
                              writers=writers)
        else:
            # Points logged at S itself belong to the restored history: hide those after S.
            handle = open_run(run_dir, per_process=per_process,
                              purge_step=int(resume_from_step) + 1, writers=writers)
        self.tb_writer = JITSummaryWriter._from_handle(handle, **options)
        self.step_offset = 0 if resume_from_step is None else int(resume_from_step)
        self.alpha = float(alpha)
        self.stats_window_size = stats_window_size
        self.moving_average = bool(moving_average)
        # A run opened inside jit is named when it executes; its seeds run would then be
        # opened by process 0 alone, and run handles must agree across processes.
        lazy_in_processes = is_traced(handle) and jax.process_count() > 1
        self.seeds_run = (bool(seeds_run) and reduce is None and not per_process
                          and not lazy_in_processes and stats_window_size is not None)
        purge = None if resume_from_step is None else int(resume_from_step) + 1
        self.seeds_handle = (open_seeds_run(handle, purge) if self.seeds_run
                             else jnp.asarray(-1, jnp.int32))
        self.flush_every = int(flush_every)
        self.max_scalars = int(max_scalars)
        if sweep is not None and not isinstance(sweep, Sweep):
            raise TypeError(f"sweep must be a callax.Sweep, got {sweep!r}")
        self.sweep = sweep

    def reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> TensorBoardCallbackState:
        # One run per training: a compiled training run again (or this callback reused)
        # writes to ``<run>_1``, ``<run>_2``, ... instead of dropping its points.
        begin_training(self.tb_writer.handle)
        if self.sweep is not None:
            declare_sweep(self.tb_writer.handle, self.sweep, key, ctx.locals.get("hparams"))
        seeds = (SeedRows.empty(self.flush_every, len(HEADLINE_TAGS)) if self.seeds_run
                 else None)
        return TensorBoardCallbackState(ScalarBuffer.empty(self.flush_every, self.max_scalars),
                                        seeds)

    def step_reset(self, ctx: ResetContext, *, key: Key[Array, ""]
                   ) -> TensorBoardCallbackStepState:
        # Varying over enclosing manual axes: the rollout updates it with per-device data;
        # on the mesh of an Explicit ``jax.set_mesh``.
        # ``key`` is per env: under ``vmap`` over envs each holds its share of the window.
        return vary(on_mesh(TensorBoardCallbackStepState.initial(self.stats_window_size,
                                                                  like=key)))

    def on_step(self, ctx: StepContext, *, key: Key[Array, ""]) -> TensorBoardCallbackStepState:
        # ``vary``: a field set from replicated data (``done`` under ``shard_map``) keeps the
        # carry's type (a no-op at run time and outside manual axes).
        return vary(ctx.state.next(ctx.reward, ctx.done, self.alpha))

    def on_iteration(self, ctx: IterationContext, *, key: Key[Array, ""]
                     ) -> TensorBoardCallbackState:
        step_state: TensorBoardCallbackStepState = ctx.step_state
        finished = ~jnp.isnan(step_state.average_return)
        count = jnp.sum(finished)

        def mean_finished(x):
            return jnp.sum(jnp.where(finished, x, 0.0)) / jnp.maximum(count, 1)

        tags, values, valid = [], [], []
        if step_state.window is not None:
            ep_rew_mean, ep_len_mean, episodes = window_means(step_state.window)
            tags += ["rollout/ep_rew_mean", "rollout/ep_len_mean"]
            values += [ep_rew_mean, ep_len_mean]
            valid += [episodes > 0, episodes > 0]
        if self.moving_average:
            tags += ["episode/return", "episode/length"]
            values += [mean_finished(step_state.average_return),
                       mean_finished(step_state.average_length)]
            valid += [count > 0, count > 0]
        for tag, value in sb3_time(ctx.locals).items():
            if tag == "time/fps":
                tags.append(tag)
                values.append(value)
                valid.append(jnp.asarray(True))
        learning_rate = find_learning_rate(ctx.opt_state)
        if learning_rate is not None:
            tags.append("train/learning_rate")
            values.append(learning_rate)
            valid.append(jnp.asarray(True))
        for tag, value in flatten_scalars("train", ctx.training_log or {}).items():
            if tag in tags:
                continue
            tags.append(tag)
            values.append(jnp.asarray(value))
            valid.append(jnp.asarray(True))
        # Total env steps: each env's int32 count read as uint32 (exact up to 2**32 - 1
        # steps per env), summed exactly as 64-bit words with carry (past 2**31); a
        # resumed run counts on from its checkpoint's step.
        step = Step._from_words(wide_sum(
            jax.lax.bitcast_convert_type(step_state.step, jnp.uint32))) + self.step_offset
        active = ctx.locals.get("active", True)
        buffer = ctx.state.buffer.append(
            self.tb_writer, tuple(tags), step, stack_scalars(values),
            stack_scalars(valid, jnp.bool_), when=active
        )
        seeds = ctx.state.seeds
        if seeds is not None:
            position = {tag: i for i, tag in enumerate(tags)}
            nan, false = jnp.asarray(jnp.nan, jnp.float32), jnp.asarray(False)
            seeds = seeds.append(
                step, [values[position[t]] if t in position else nan for t in HEADLINE_TAGS],
                [valid[position[t]] if t in position else false for t in HEADLINE_TAGS],
                when=active)
            seeds = seeds.send(self.tb_writer.handle, self.seeds_handle, HEADLINE_TAGS,
                               when=seeds.count == seeds.values.shape[0])
        return TensorBoardCallbackState(buffer, seeds)

    def on_training_start(self, ctx: TrainingContext, *, key: Key[Array, ""]
                          ) -> TensorBoardCallbackState:
        return ctx.state

    def on_training_end(self, ctx: TrainingContext, *, key: Key[Array, ""]
                        ) -> TensorBoardCallbackState:
        seeds = ctx.state.seeds
        if seeds is not None:
            seeds = seeds.send(self.tb_writer.handle, self.seeds_handle, HEADLINE_TAGS,
                               when=True)
        return TensorBoardCallbackState(ctx.state.buffer.flush(self.tb_writer, sync=True),
                                        seeds)

    def continue_training(self, ctx: IterationContext, *, key: Key[Array, ""]) -> Bool[Array, ""]:
        return jnp.asarray(True)




