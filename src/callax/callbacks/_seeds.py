"""Seeds at a glance: the run ``<run>/seeds``, holding the mean, min and max over vmapped
seeds of a few headline tags at every step, and the custom-scalars layout that draws them.

The seeds' values are buffered on device next to the run's own rows (a [`SeedRows`][]) and
sent to the host with one call for the whole ``vmap`` batch (``callax._host.send``: every
row carries its seed position; under ``pmap`` the rows of all devices are gathered). The
host computes the statistics in float64 from the very float32 values the seed runs hold and
writes them once, to their own run: ``<tag>/mean``, ``<tag>/min`` and ``<tag>/max`` (own
names: a margin chart matches every run holding its value tag, and only this run holds all
three).
A step is written only when every seed of the batch has a value there (a seed that stopped
early or has not finished an episode yet leaves the step out: never a mean of fewer seeds).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, UInt32

# tensorboardX's generated protobuf modules ship no stubs.
from tensorboardX.proto import (
    layout_pb2 as _layout_pb2,
    summary_pb2 as _summary_pb2,
    tensor_pb2 as _tensor_pb2,
    tensor_shape_pb2 as _tensor_shape_pb2,
)

from .. import _host, _writer as host
from .._step import Step, words_to_int64
from .._summary_writer import stack_scalars

# Generated messages, unknown to type checkers.
layout_pb2: Any = _layout_pb2
Summary: Any = _summary_pb2.Summary  # pyright: ignore[reportAttributeAccessIssue]
SummaryMetadata: Any = _summary_pb2.SummaryMetadata  # pyright: ignore[reportAttributeAccessIssue]
TensorProto: Any = _tensor_pb2.TensorProto  # pyright: ignore[reportAttributeAccessIssue]
TensorShapeProto: Any = _tensor_shape_pb2.TensorShapeProto  # pyright: ignore[reportAttributeAccessIssue]

__all__ = ["HEADLINE_TAGS", "SEEDS_RUN", "SeedRows", "layout_summary", "open_seeds_run",
           "seed_statistics", "write_layout"]

SEEDS_RUN = "seeds"
"""The name of the run, under the seeds' run, that holds their mean, min and max."""

HEADLINE_TAGS = ("rollout/ep_rew_mean", "rollout/ep_len_mean")
"""The tags summarised over seeds (those written by the run)."""

_seed_runs: dict[int, int] = {}  # run handle -> handle of its <run>/seeds
_layouts_written: set[int] = set()
_lock = threading.Lock()


def seed_statistics(values: np.ndarray) -> np.ndarray:
    """``[3, n]``: mean, min and max over axis 0 of ``values[seeds, n]`` (float64)."""
    values = np.asarray(values, np.float64)
    return np.stack([values.mean(axis=0), values.min(axis=0), values.max(axis=0)])


class SeedRows(eqx.Module):
    """Device buffer of one seed's headline values: ``values[K, n]``, ``valid[K, n]`` and
    the step of each row (as [`callax.Step`][] words), ``count`` rows filled."""

    words: UInt32[Array, "K 2"]
    values: Float[Array, "K n"]
    valid: Bool[Array, "K n"]
    count: Int[Array, ""]

    @classmethod
    def empty(cls, rows: int, n: int) -> SeedRows:
        # Varying over enclosing manual axes (``shard_map``), so it can be a loop carry.
        return cls(*_host.vary((jnp.zeros((rows, 2), jnp.uint32),
                                jnp.zeros((rows, n), jnp.float32),
                                jnp.zeros((rows, n), jnp.bool_), jnp.asarray(0, jnp.int32))))

    def append(self, step: Step, values: Sequence[ArrayLike], valid: Sequence[ArrayLike],
               when: Bool[ArrayLike, ""]) -> SeedRows:
        when = jnp.asarray(when, jnp.bool_)
        index = jnp.minimum(self.count, self.values.shape[0] - 1)
        row = stack_scalars(list(values))  # one sharding for all (Explicit meshes)
        row_valid = stack_scalars(list(valid), jnp.bool_)
        words = step.words.astype(jnp.uint32)
        return SeedRows(
            words=self.words.at[index].set(jnp.where(when, words, self.words[index])),
            values=self.values.at[index].set(jnp.where(when, row, self.values[index])),
            valid=self.valid.at[index].set(jnp.where(when, row_valid, self.valid[index])),
            count=self.count + when.astype(jnp.int32),
        )

    def send(self, handle: Int[ArrayLike, ""], seeds_handle: Int[ArrayLike, ""],
             tags: tuple[str, ...], when: Bool[ArrayLike, ""]) -> SeedRows:
        """Hand the filled rows to the host (one call for the batch) when `when` holds and
        rows are filled; the buffer is then empty. `handle` is the seeds' run,
        `seeds_handle` the ``seeds`` run (from :func:`open_seeds_run`; ``-1``: opened on the
        host at the first write)."""
        due = jnp.asarray(when, jnp.bool_) & (self.count > 0)
        _host.send(_host_seed_rows, jnp.asarray(handle, jnp.int32),
                   jnp.asarray(seeds_handle, jnp.int32),
                   jnp.asarray(_host.register_layout(tags), jnp.int32), self.words,
                   self.values, self.valid, self.count, when=due)
        return SeedRows(self.words, self.values, self.valid,
                        jnp.where(due, 0, self.count))


def open_seeds_run(handle: Int[ArrayLike, ""], purge_step: int | None = None) -> Array:
    """The handle of ``<run>/seeds`` for the run `handle`, opened now (in every process, in
    the same order as the run itself, so that handles agree across processes); ``-1`` for
    a run opened inside ``jax.jit`` (its name is known only when it executes: the host
    opens the ``seeds`` run at its first write, single-process only)."""
    if _host.is_traced(handle):
        return jnp.asarray(-1, jnp.int32)
    run = host.get_run(int(np.asarray(handle)))
    seeds = _host.open_run(os.path.join(run.log_dir, SEEDS_RUN), purge_step=purge_step)
    with _lock:
        _seed_runs[run.handle] = int(seeds)
    # A new training of the run (a rerun) moves the seeds run along: <run>_1/seeds.
    run.children.append(host.get_run(int(seeds)))
    return seeds


def _seeds_handle(handle: int) -> int:
    with _lock:
        seeds = _seed_runs.get(handle)
        if seeds is None:
            directory = os.path.join(host.get_run(handle).log_dir, SEEDS_RUN)
            seeds = _seed_runs[handle] = host.open_run(directory)
    return seeds


def _host_seed_rows(seed, when, handle, seeds_handle, layout, words, values, valid,
                    count) -> None:
    n_seeds = seed.shape[0]
    rows = np.flatnonzero(when)
    if n_seeds < 2 or rows.size == 0:
        return
    tags = _host.layout_tags(int(layout[rows[0]]))
    steps = words_to_int64(words)  # [B, K]
    by_step: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for b in rows:
        for k in range(int(count[b])):
            by_step.setdefault(int(steps[b, k]), []).append((values[b, k], valid[b, k]))
    complete = sorted(s for s, entries in by_step.items() if len(entries) == n_seeds)
    if not complete:
        return
    out = np.zeros((len(complete), 3 * len(tags)), np.float32)
    ok = np.zeros((len(complete), 3 * len(tags)), np.bool_)
    for i, step in enumerate(complete):
        entries = by_step[step]
        vals = np.stack([v for v, _ in entries])
        every = np.stack([m for _, m in entries]).all(axis=0)
        stats = seed_statistics(vals)  # [3, n]
        out[i] = stats.T.reshape(-1)
        ok[i] = np.repeat(every, 3)
    seeds_handle = int(seeds_handle[rows[0]])
    if seeds_handle < 0:
        seeds_handle = _seeds_handle(int(handle[rows[0]]))
    out_tags = tuple(f"{tag}/{s}" for tag in tags for s in ("mean", "min", "max"))
    host.write(seeds_handle, out_tags, np.array([host.NO_SEED]), np.array([complete]),
               out[None], ok[None])
    write_layout(seeds_handle, host.NO_SEED, tags, seeds=True)


def layout_summary(tags: Sequence[str] = HEADLINE_TAGS, *, seeds: bool = True) -> bytes:
    """A serialized ``Summary`` holding TensorBoard's custom-scalars layout: a first
    category "returns" with, per tag, the mean over seeds drawn with its min-max band (a
    *margin* chart of the ``seeds`` run, when `seeds`) and every run's curve (a multiline
    chart), then ``time/fps``."""
    charts = []
    for tag in tags:
        name = tag.rpartition("/")[2]
        if seeds:
            series = layout_pb2.MarginChartContent.Series(
                value=f"{tag}/mean", lower=f"{tag}/min", upper=f"{tag}/max")
            charts.append(layout_pb2.Chart(
                title=f"{name}: mean over seeds, min-max band",
                margin=layout_pb2.MarginChartContent(series=[series])))
        charts.append(layout_pb2.Chart(
            title=f"{name}: every run",
            multiline=layout_pb2.MultilineChartContent(tag=[f"^{tag}$"])))
    layout = layout_pb2.Layout(category=[
        layout_pb2.Category(title="returns", chart=charts),
        layout_pb2.Category(title="time", chart=[layout_pb2.Chart(
            title="fps", multiline=layout_pb2.MultilineChartContent(tag=["^time/fps$"]))]),
    ])
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name="custom_scalars"))
    tensor = TensorProto(dtype="DT_STRING", string_val=[layout.SerializeToString()],
                         tensor_shape=TensorShapeProto())
    return Summary(value=[Summary.Value(tag="custom_scalars__config__", tensor=tensor,
                                        metadata=metadata)]).SerializeToString()


def write_layout(handle: int, seed: int, tags: Sequence[str] = HEADLINE_TAGS, *,
                 seeds: bool = True) -> None:
    """Write the custom-scalars layout once into seed position `seed` of run `handle` (host
    side; TensorBoard merges the layouts of all runs)."""
    with _lock:
        if handle in _layouts_written:
            return
        _layouts_written.add(handle)
    host.write_summaries(handle, np.array([seed]), (layout_summary(tags, seeds=seeds),))
