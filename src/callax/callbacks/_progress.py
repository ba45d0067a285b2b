"""``ProgressBarCallback``: progress of a jitted training run, printed from the host."""

from __future__ import annotations

import dataclasses
import itertools
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Int, Key

from .. import _host
from .._callback import (
    AbstractCallback,
    AbstractCallbackStepState,
    EmptyCallbackState,
    IterationContext,
    ResetContext,
    StepContext,
    TrainingContext,
)

__all__ = ["ProgressBarCallback", "ProgressBarStepState"]

_START, _UPDATE, _END = 0, 1, 2


@dataclasses.dataclass
class _Bar:
    """Host side of one progress bar (never part of a pytree)."""

    total_timesteps: int
    min_interval: float
    start: float | None = None
    last_print: float = -float("inf")
    last_steps: int = -1


_bars: dict[int, _Bar] = {}
_lock = threading.Lock()
_handles = itertools.count()


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _line(bar: _Bar, steps: int, total_steps: int, n_seeds: int, elapsed: float) -> str:
    fraction = steps / bar.total_timesteps if bar.total_timesteps else 1.0
    fps = total_steps / elapsed if elapsed > 0 else 0.0
    parts = [f"callax: {steps:,}/{bar.total_timesteps:,} steps ({100 * fraction:.0f}%)"]
    if n_seeds > 1:
        parts.append(f"{n_seeds} seeds")
    parts.append(f"{fps:,.0f} steps/s")
    parts.append(f"{_format_duration(elapsed)} elapsed")
    if 0 < fraction < 1 and steps:
        parts.append(f"ETA {_format_duration(elapsed * (1 - fraction) / fraction)}")
    return " | ".join(parts)


def _host_update(seed, when, kind, handle, steps, active, marker) -> None:
    # One row per seed of the batch (``_host.send``); ``marker`` (derived from the hook's
    # PRNG key) only makes the call batched whenever the run is, so that every seed has a row.
    del seed, when, marker
    kind = int(np.max(kind))
    handle = int(np.max(handle))
    steps = np.asarray(steps, np.int64).reshape(-1)
    active = np.asarray(active, bool).reshape(-1)
    now = time.monotonic()
    with _lock:
        bar = _bars.get(handle)
        if bar is None:
            return
        if kind == _START or bar.start is None:
            bar.start, bar.last_print, bar.last_steps = now, now, -1
            if kind == _START:
                return
        if kind == _UPDATE and (now - bar.last_print < bar.min_interval or not active.any()):
            return
        bar.last_print = now
        line = _line(bar, int(steps.max()), int(steps.sum()), steps.size, now - bar.start)
        stream = sys.stderr
        tty = getattr(stream, "isatty", lambda: False)()
        if kind == _END:
            if int(steps.max()) != bar.last_steps:  # else the last line already says it all
                stream.write(("\r" + line if tty else line) + "\n")
            elif tty:
                stream.write("\n")
            bar.start = None
        elif tty:
            stream.write("\r" + line)
        else:
            stream.write(line + "\n")
        bar.last_steps = int(steps.max())
        stream.flush()


class ProgressBarStepState(AbstractCallbackStepState):
    """Env steps taken by one environment."""

    steps: Int[Array, ""]

    def __init__(self, steps: Int[ArrayLike, ""]):
        self.steps = jnp.asarray(steps, jnp.int32)


class ProgressBarCallback(AbstractCallback[EmptyCallbackState, ProgressBarStepState]):
    """Prints the progress of a (jitted) training run on stderr.

    Every `every` iterations the run sends one small host call (steps done) and the host
    prints ``steps done/total, steps/s, elapsed time and ETA`` if at least `min_interval`
    seconds passed since the last line; a final line is printed by ``on_training_end``. On
    a terminal the line is redrawn in place (``\\r``); otherwise each update is a new line.

    Under ``jax.vmap`` over seeds it still makes **one** host call per update for the whole
    batch and prints one line: steps are those of the most advanced seed, steps/s are summed
    over seeds. Steps/s count from ``on_training_start`` (compilation excluded).
    """

    handle: Int[Array, ""]
    every: Int[Array, ""]

    def __init__(self, total_timesteps: int, every: int = 10, min_interval: float = 1.0):
        """**Arguments:**

        - `total_timesteps`: the run's planned env steps (per seed), for the percentage
          and the ETA.
        - `every`: at most one host call every `every` iterations.
        - `min_interval`: at least this many seconds between two printed lines.
        """
        if not isinstance(total_timesteps, int) or total_timesteps < 1:
            raise ValueError(f"total_timesteps must be a positive int, got {total_timesteps!r}")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if not min_interval >= 0:
            raise ValueError(f"min_interval must be >= 0, got {min_interval!r}")
        handle = next(_handles)
        with _lock:
            _bars[handle] = _Bar(total_timesteps, float(min_interval))
        self.handle = jnp.asarray(handle, jnp.int32)
        # An array, not a static int: a different `every` does not recompile the trainer.
        self.every = jnp.asarray(every, jnp.int32)

    def _emit(self, kind: int, step_state: ProgressBarStepState,
              pred: Bool[ArrayLike, ""], active: Bool[ArrayLike, ""], key: Key[Array, ""]
              ) -> None:
        # One host call for the whole batch of seeds (however deeply vmapped).
        marker = jax.random.key_data(key).reshape(-1)[0]
        _host.send(_host_update, jnp.asarray(kind, jnp.int32), self.handle,
                   jnp.sum(step_state.steps), jnp.asarray(active, jnp.bool_), marker,
                   when=jnp.asarray(pred, jnp.bool_))

    def reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> EmptyCallbackState:
        return EmptyCallbackState()

    def step_reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> ProgressBarStepState:
        return ProgressBarStepState(0)

    def on_step(self, ctx: StepContext, *, key: Key[Array, ""]) -> ProgressBarStepState:
        return ProgressBarStepState(ctx.state.steps + 1)

    def on_training_start(self, ctx: TrainingContext, *, key: Key[Array, ""]
                          ) -> EmptyCallbackState:
        self._emit(_START, ctx.step_state, True, True, key)
        return ctx.state

    def on_iteration(self, ctx: IterationContext, *, key: Key[Array, ""]) -> EmptyCallbackState:
        active = ctx.locals.get("active", True)
        due = jnp.asarray(ctx.iteration_count) % self.every == 0
        self._emit(_UPDATE, ctx.step_state, due & active, active, key)
        return ctx.state

    def on_training_end(self, ctx: TrainingContext, *, key: Key[Array, ""]
                        ) -> EmptyCallbackState:
        self._emit(_END, ctx.step_state, True, True, key)
        return ctx.state

    def continue_training(self, ctx: IterationContext, *, key: Key[Array, ""]) -> Bool[Array, ""]:
        return jnp.asarray(True)

