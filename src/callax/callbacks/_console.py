"""``ConsoleTableCallback``: Stable-Baselines3's console table of a jitted training run."""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
import threading
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Key

from .. import _host
from .._callback import (
    AbstractCallback,
    AbstractCallbackState,
    AbstractCallbackStepState,
    IterationContext,
    ResetContext,
    StepContext,
    TrainingContext,
)
from .._summary_writer import flatten_scalars
from ._episodes import EpisodeWindow, check_window_size, sb3_time, window_means
from ._tensorboard import find_learning_rate

__all__ = ["ConsoleTableCallback", "ConsoleTableState", "ConsoleTableStepState", "format_table"]


@dataclasses.dataclass
class _Table:
    """Host side of one console table (never part of a pytree)."""

    stream: Any
    start: float | None = None


_tables: dict[int, _Table] = {}
_lock = threading.Lock()
_handles = itertools.count()


def _format_number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.3g}"


def format_table(values: dict[str, list[float]]) -> str:
    """SB3's console table: keys grouped by their prefix (``train/loss`` under ``train/``),
    one value column per seed (``values[key][seed]``)."""
    groups: dict[str, list[tuple[str, list[float]]]] = {}
    for key in sorted(values):
        group, _, name = key.rpartition("/")
        groups.setdefault(group, []).append((name, values[key]))
    n_seeds = max((len(v) for v in values.values()), default=1)
    rows: list[list[str]] = []
    if n_seeds > 1:
        rows.append(["", *(f"seed {i}" for i in range(n_seeds))])
    for group, entries in groups.items():
        if group:
            rows.append([f"{group}/", *([""] * n_seeds)])
        for name, column in entries:
            rows.append([("    " if group else "") + name,
                         *(_format_number(v) for v in column)])
    widths = [max(len(row[i]) for row in rows) for i in range(n_seeds + 1)]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
             + " |" for row in rows]
    rule = "-" * max(len(line) for line in lines)
    return "\n".join([rule, *lines, rule])


def _host_table(seed, when, handle, layout, values, steps, iteration, marker) -> None:
    # One row per seed of the batch (``_host.send``); ``marker`` (from the hook's PRNG key)
    # only makes the call batched whenever the run is, so that every seed has a column.
    del seed, marker
    rows = np.flatnonzero(when)
    if rows.size == 0:
        return
    handle = int(handle[rows[0]])
    now = time.monotonic()
    with _lock:
        table = _tables.get(handle)
        if table is None:
            return
        if int(layout[rows[0]]) < 0:  # training start
            table.start = now
            return
        elapsed = now - (table.start if table.start is not None else now)
    tags = _host.layout_tags(int(layout[rows[0]]))
    out = {tag: [float(v) for v in values[rows, j]] for j, tag in enumerate(tags)
           if np.isfinite(values[rows, j]).any()}
    out["time/iterations"] = [float(i) for i in iteration[rows]]
    out["time/total_timesteps"] = [float(s) for s in steps[rows]]
    if "time/fps" not in out:  # the loop gave no clock reading: the host's, now
        out["time/time_elapsed"] = [float(int(elapsed))] * rows.size
        out["time/fps"] = [float(int(s / elapsed)) if elapsed > 0 else 0.0
                           for s in steps[rows]]
    stream = table.stream if table.stream is not None else sys.stdout
    stream.write(format_table(out) + "\n")
    stream.flush()


class ConsoleTableStepState(AbstractCallbackStepState):
    """One env's episode bookkeeping: the running episode, the env's step count and its
    last finished episodes (the same window as [`callax.TensorBoardCallback`][]'s)."""

    episode_return: Float[Array, ""]
    episode_length: Int[Array, ""]
    step: Int[Array, ""]
    window: EpisodeWindow


class ConsoleTableState(AbstractCallbackState):
    """The console table keeps no run state of its own (the episodes are in the step
    states); this marks the table's run state in a ``CallbackList``."""


class ConsoleTableCallback(AbstractCallback[ConsoleTableState, ConsoleTableStepState]):
    """Prints Stable-Baselines3's console table every `every` iterations: ``rollout/``
    (``ep_rew_mean``, ``ep_len_mean``: over the last `stats_window_size` finished episodes,
    absent before the first one ends), ``time/`` (``fps``, ``iterations``, ``time_elapsed``,
    ``total_timesteps``) and ``train/`` (the trainer's training log).

    The ``rollout/`` values are computed exactly as [`callax.TensorBoardCallback`][]
    computes its ``rollout/`` tags, and ``time/fps`` from the same clock reading when the
    loop passes ``locals["time_elapsed"]`` (callax's trainers do), so the table and the
    dashboard show the same numbers at the same step. Without it the host clock at printing
    time is used.

    One host call per table; under ``jax.vmap`` over seeds one call and one table with a
    column per seed. ``time_elapsed`` and ``fps`` count from ``on_training_start``
    (compilation excluded).
    """

    handle: Int[Array, ""]
    every: Int[Array, ""]
    stats_window_size: int = eqx.field(static=True)

    def __init__(self, every: int = 1, stream: Any = None, *, stats_window_size: int = 100):
        """**Arguments:**

        - `every`: print every `every` iterations.
        - `stream`: a text stream to print to (default: ``sys.stdout`` at the time of printing).
        - `stats_window_size`: finished episodes averaged by ``rollout/`` (SB3's).
        """
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.stats_window_size = check_window_size(stats_window_size)  # pyright: ignore[reportAttributeAccessIssue]
        handle = next(_handles)
        with _lock:
            _tables[handle] = _Table(stream)
        self.handle = jnp.asarray(handle, jnp.int32)
        self.every = jnp.asarray(every, jnp.int32)

    def reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> ConsoleTableState:
        return ConsoleTableState()

    def step_reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> ConsoleTableStepState:
        zero_i, zero_f = jnp.asarray(0, jnp.int32), jnp.asarray(0.0, jnp.float32)
        return ConsoleTableStepState(zero_f, zero_i, zero_i,
                                     EpisodeWindow.empty(self.stats_window_size, key))

    def on_step(self, ctx: StepContext, *, key: Key[Array, ""]) -> ConsoleTableStepState:
        s = ctx.state
        done = jnp.asarray(ctx.done, jnp.bool_)
        ret = s.episode_return + jnp.asarray(ctx.reward, jnp.float32)
        length = s.episode_length + 1
        return ConsoleTableStepState(
            episode_return=jnp.where(done, 0.0, ret),
            episode_length=jnp.where(done, 0, length),
            step=s.step + 1,
            window=s.window.add(done, ret, length),
        )

    def _send(self, layout: int | Array, values: Array, steps: ArrayLike,
              iteration: ArrayLike, when: Bool[ArrayLike, ""], key: Key[Array, ""]) -> None:
        marker = jax.random.key_data(key).reshape(-1)[0]
        _host.send(_host_table, self.handle, jnp.asarray(layout, jnp.int32), values,
                   jnp.asarray(steps, jnp.int32), jnp.asarray(iteration, jnp.int32), marker,
                   when=jnp.asarray(when, jnp.bool_))

    def on_training_start(self, ctx: TrainingContext, *, key: Key[Array, ""]
                          ) -> ConsoleTableState:
        self._send(-1, jnp.zeros(1, jnp.float32), 0, 0, True, key)
        return ctx.state

    def on_iteration(self, ctx: IterationContext, *, key: Key[Array, ""]) -> ConsoleTableState:
        ep_rew_mean, ep_len_mean, _ = window_means(ctx.step_state.window)
        scalars = {
            "rollout/ep_rew_mean": ep_rew_mean,
            "rollout/ep_len_mean": ep_len_mean,
            **sb3_time(ctx.locals),
            **flatten_scalars("train", ctx.training_log),
        }
        learning_rate = find_learning_rate(ctx.opt_state)  # as TensorBoardCallback writes it
        if learning_rate is not None and "train/learning_rate" not in scalars:
            scalars["train/learning_rate"] = learning_rate
        tags = tuple(scalars)
        values = jnp.stack([jnp.asarray(v, jnp.float32) for v in scalars.values()])
        due = (jnp.asarray(ctx.iteration_count) % self.every == 0) & jnp.asarray(
            ctx.locals.get("active", True))
        self._send(_host.register_layout(tags), values, ctx.locals["num_timesteps"],
                   ctx.iteration_count, due, key)
        return ctx.state

    def on_training_end(self, ctx: TrainingContext, *, key: Key[Array, ""]
                        ) -> ConsoleTableState:
        return ctx.state

    def continue_training(self, ctx: IterationContext, *, key: Key[Array, ""]) -> Bool[Array, ""]:
        return jnp.asarray(True)
