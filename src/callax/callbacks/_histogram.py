"""Histograms from inside ``jit``: bucketed on device, all tags of a call in one host call."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Int, Key

from .. import _host, _writer as host
from .._callback import (
    AbstractContinuingCallback,
    AbstractStatelessCallback,
    AbstractStepStatelessCallback,
    EmptyCallbackState,
    IterationContext,
)
from .._summary_writer import JITSummaryWriter, check_tag

__all__ = ["HistogramCallback", "add_histograms", "rollout_histograms"]


def _summarise(values: ArrayLike, bins: int) -> tuple[Array, Array]:
    """``(stats[6], counts[bins])`` of the finite values: min, max, num, sum, sum of
    squares, bucket width; equal-width buckets from min to max.

    Values all equal (a constant, or a single value) have width 0: every bucket edge is
    that value (TensorBoard draws one spike there, as its own ``histogram`` summary does
    for a constant) and the count is in the last bucket. No finite value: ``num`` is 0
    and nothing is written for the tag."""
    x = jnp.ravel(jnp.asarray(values, jnp.float32))
    finite = jnp.isfinite(x)
    num = jnp.sum(finite)
    lo = jnp.min(jnp.where(finite, x, jnp.inf))
    hi = jnp.max(jnp.where(finite, x, -jnp.inf))
    spread = finite.any() & (hi > lo)
    width = jnp.where(spread, (hi - lo) / bins, 0.0)
    scaled = jnp.where(finite & spread, (x - lo) / jnp.where(spread, width, 1.0), bins - 1)
    index = jnp.clip(jnp.floor(scaled).astype(jnp.int32), 0, bins - 1)
    counts = jnp.zeros(bins, jnp.float32).at[index].add(finite.astype(jnp.float32))
    safe = jnp.where(finite, x, 0.0)
    stats = jnp.stack([lo, hi, num.astype(jnp.float32), jnp.sum(safe), jnp.sum(safe * safe),
                       width])
    return stats, counts


def _host_histograms(seed, when, handle, layout, step, stats, counts) -> None:
    rows = np.flatnonzero(when)
    if rows.size == 0:
        return
    tags = _host.layout_tags(int(layout[rows[0]]))
    host.write_histograms(int(handle[rows[0]]), tags, seed[rows], step[rows],
                          stats[rows].astype(np.float64), counts[rows].astype(np.float64))


def add_histograms(writer: JITSummaryWriter, histograms: Mapping[str, ArrayLike],
                   global_step: Int[ArrayLike, ""], *, when: Bool[ArrayLike, ""] = True,
                   bins: int = 30) -> None:
    """Write a histogram of each array of `histograms` (tag → values of any shape) at
    `global_step`, from eager code or inside ``jit``/``scan``/``vmap``.

    The values are bucketed on the device (`bins` equal-width buckets between their
    minimum and maximum; non-finite values are left out), so one host call carries
    ``n_tags × (bins + 6)`` numbers whatever the arrays' sizes, for all tags and, under
    ``jax.vmap``, all seeds at once (seed ``i`` writes to ``<run>/seed_<i>``, as scalars).
    Read back in TensorBoard's *Histograms* and *Distributions* dashboards. A tag's step
    must increase from call to call (a repeated step is dropped).

    **Arguments:**

    - `writer`: the run to write to (e.g. a ``TensorBoardCallback``'s ``tb_writer``).
    - `histograms`: a mapping of tag to array.
    - `global_step`: the step (int32).
    - `when`: write only when this holds (a boolean scalar).
    - `bins`: number of buckets (a Python int).
    """
    if not isinstance(writer, JITSummaryWriter):
        raise TypeError(f"writer must be a JITSummaryWriter, got {writer!r}")
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if not histograms:
        return
    tags = tuple(check_tag(tag) for tag in histograms)
    if len(set(tags)) != len(tags):
        raise ValueError(f"duplicate histogram tags: {tags}")
    summaries = [_summarise(values, bins) for values in histograms.values()]
    stats = jnp.stack([s for s, _ in summaries])
    counts = jnp.stack([c for _, c in summaries])
    _host.send(_host_histograms, writer.handle, jnp.asarray(_host.register_layout(tags),
                                                            jnp.int32),
               jnp.asarray(global_step, jnp.int32), stats, counts,
               when=jnp.asarray(when, jnp.bool_))


def rollout_histograms(ctx: IterationContext) -> dict[str, Array]:
    """The default selection of [`callax.HistogramCallback`][]: the iteration's actions and
    rewards (``rollout/actions``, ``rollout/rewards``) and, when the trainer stores them in
    ``Rollout.aux["value"]`` (PPO), the value estimates (``rollout/values``)."""
    rollout = ctx.locals["rollout"]
    out = {"rollout/actions": rollout.action, "rollout/rewards": rollout.reward}
    if isinstance(rollout.aux, Mapping) and "value" in rollout.aux:
        out["rollout/values"] = rollout.aux["value"]
    return out


class HistogramCallback(AbstractStatelessCallback, AbstractStepStatelessCallback,
                        AbstractContinuingCallback):
    """Writes histograms of the rollout (by default actions, rewards and PPO's values) every
    `every` iterations, at the current env step, with one host call per write for all tags
    and all vmapped seeds (see [`callax.add_histograms`][]).
    """

    writer: JITSummaryWriter
    every: Int[Array, ""]
    bins: int = eqx.field(static=True)
    select: Callable[[IterationContext], Mapping[str, Array]] = eqx.field(static=True)

    def __init__(self, writer: JITSummaryWriter | str | os.PathLike, *, every: int = 1,
                 bins: int = 30,
                 select: Callable[[IterationContext], Mapping[str, Array]] | None = None):
        """**Arguments:**

        - `writer`: a [`callax.JITSummaryWriter`][] (e.g. ``TensorBoardCallback.tb_writer``,
          to share its run) or a run directory.
        - `every`: write every `every` iterations.
        - `bins`: buckets per histogram.
        - `select`: ``ctx -> {tag: array}`` (default [`callax.rollout_histograms`][]); a
          module-level function (a new lambda per callback recompiles the trainer).
        """
        if isinstance(writer, str | os.PathLike):
            writer = JITSummaryWriter(writer)
        if not isinstance(writer, JITSummaryWriter):
            raise TypeError(f"writer must be a JITSummaryWriter or a path, got {writer!r}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
            raise ValueError(f"bins must be a positive int, got {bins!r}")
        self.writer = writer
        self.every = jnp.asarray(every, jnp.int32)
        self.bins = bins
        self.select = rollout_histograms if select is None else select

    def on_iteration(self, ctx: IterationContext, *, key: Key[Array, ""]) -> EmptyCallbackState:
        due = (jnp.asarray(ctx.iteration_count) % self.every == 0) & jnp.asarray(
            ctx.locals.get("active", True))
        add_histograms(self.writer, self.select(ctx), ctx.locals["num_timesteps"], when=due,
                       bins=self.bins)
        return EmptyCallbackState()

