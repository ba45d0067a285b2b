"""Seeds at a glance: the mean, min and max over vmapped seeds of a few headline tags, written
as runs of their own beside the seeds' runs, and the custom-scalars layout that draws them.

The statistics are runs, not tags: ``<run>/seeds/mean``, ``<run>/seeds/min`` and
``<run>/seeds/max`` hold ``rollout/ep_rew_mean`` and ``rollout/ep_len_mean`` under the very
names the seeds' runs (``<run>/seed_<i>``) use, so TensorBoard draws them as three more
lines on each metric's one card (Time Series and Scalars overlay runs, never tags).

TensorBoard's custom-scalars *margin* chart (a line with a shaded band) reads its value,
lower and upper tags from one run, and a run holding its value tag without the other two is
listed as "missing tags" under the chart. So the band has a run of its own,
``<run>/seeds/band``, holding ``~seed_band/<metric>/{mean,min,max}``: tags no other run has,
in a group that TensorBoard sorts after every lower-case group (``~`` follows the letters)
and leaves collapsed (Time Series opens the first two groups only). It is written by the
TensorBoard writer alone: nothing else draws a custom-scalars layout.

Every point goes through the run's writers (:class:`callax.writers.AbstractWriter`): with
JSON lines alone, the statistics are ``metrics.jsonl`` files and no event file is written.
Writers that draw a group's statistics themselves (Weights & Biases groups the seeds' runs
and plots their mean with a min-max band) write no aggregate runs.

The seeds' values are buffered on device next to the run's own rows (a [`SeedRows`][]) and
sent to the host with one call for the whole ``vmap`` batch (``callax._host.send``: every
row carries its seed position; under ``pmap`` the rows of all devices are gathered). A
training of one seed makes no such call. The host computes the statistics in float64 from
the very float32 values the seed runs hold. A step is written only when every seed of the
batch has a value there (a seed that stopped early or has not finished an episode yet leaves
the step out: never a mean of fewer seeds).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Sequence
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

__all__ = ["BAND_GROUP", "BAND_RUN", "HEADLINE_TAGS", "SEEDS_RUN", "STATISTICS", "SeedRows",
           "band_tags", "layout_summary", "open_seeds_run", "read_statistics",
           "seed_statistics", "write_layout"]

SEEDS_RUN = "seeds"
"""The directory, under the seeds' run, of the runs holding their statistics."""
STATISTICS = ("mean", "min", "max")
"""The statistics over seeds, each a run ``<run>/seeds/<statistic>``."""
BAND_RUN = "band"
"""The run ``<run>/seeds/band`` that the custom-scalars band is drawn from (TensorBoard)."""
BAND_GROUP = "~seed_band"
"""The tag group of the band's tags: ``~`` sorts it after every lower-case group."""

HEADLINE_TAGS = ("rollout/ep_rew_mean", "rollout/ep_len_mean")
"""The tags summarised over seeds (those written by the run)."""

NO_SEEDS_RUN = -2
"""The ``seeds_handle`` of a run none of whose writers takes the statistics (W&B alone)."""


def band_tags(tag: str) -> tuple[str, str, str]:
    """The band run's tags of `tag`: ``~seed_band/<name>/mean``, ``/min``, ``/max``."""
    name = tag.rpartition("/")[2]
    return tuple(f"{BAND_GROUP}/{name}/{s}" for s in STATISTICS)  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class _StatisticRuns:
    """Handles of the runs of one run's statistics (``band``: ``None`` without TensorBoard)."""

    runs: tuple[int, ...]  # one per STATISTICS entry
    band: int | None


_statistic_runs: dict[int, _StatisticRuns | None] = {}  # run handle -> its statistics' runs
_layouts_written: set[int] = set()
_lock = threading.Lock()


def seed_statistics(values: np.ndarray) -> np.ndarray:
    """``[3, n]``: mean, min and max over axis 0 of ``values[seeds, n]`` (float64)."""
    values = np.asarray(values, np.float64)
    return np.stack([values.mean(axis=0), values.min(axis=0), values.max(axis=0)])


def _writer_class(factory: Callable) -> Any:
    return getattr(factory, "func", factory)  # a functools.partial of a writer class


def _statistic_writers(factories: tuple) -> tuple[tuple, tuple]:
    """The writers of the statistics' runs (all but those that draw a group's statistics
    themselves) and of the band run (TensorBoard's)."""
    from .._writer._tensorboard import TensorBoardWriter

    kept = tuple(f for f in factories if not getattr(_writer_class(f), "groups_seeds", False))
    band = tuple(f for f in kept if isinstance(_writer_class(f), type)
                 and issubclass(_writer_class(f), TensorBoardWriter))
    return kept, band


def _open_statistic_runs(run: host.Run, purge_step: int | None,
                         open_run: Callable[..., Any], under: str = "") -> _StatisticRuns | None:
    """Open ``<run>/[<under>/]seeds/{mean,min,max}`` (and ``band``) with `open_run`;
    ``None`` when no writer of the run takes them. Each moves with the run on a rerun."""
    writers, band_writers = _statistic_writers(run.factories)
    if not writers:
        return None
    base = os.path.join(run.log_dir, under, SEEDS_RUN)
    names = [*STATISTICS, *([BAND_RUN] if band_writers else [])]
    handles = []
    for name in names:
        handle = int(open_run(os.path.join(base, name), purge_step=purge_step,
                              writers=band_writers if name == BAND_RUN else writers))
        run.children.append(host.get_run(handle))
        handles.append(handle)
    return _StatisticRuns(tuple(handles[:len(STATISTICS)]),
                          handles[len(STATISTICS)] if band_writers else None)


def open_seeds_run(handle: Int[ArrayLike, ""], purge_step: int | None = None) -> Array:
    """Open the runs of the statistics over seeds of the run `handle` now (in every process,
    in the same order as the run itself, so that handles agree across processes) and return
    the handle of ``<run>/seeds/mean`` (:data:`NO_SEEDS_RUN` when no writer of the run takes
    them); ``-1`` for a run opened inside ``jax.jit`` (its name is known only when it
    executes: the host opens the runs at their first write, single-process only)."""
    if _host.is_traced(handle):
        return jnp.asarray(-1, jnp.int32)
    run = host.get_run(int(np.asarray(handle)))
    runs = _open_statistic_runs(run, purge_step, _host.open_run)
    with _lock:
        _statistic_runs[run.handle] = runs
    return jnp.asarray(NO_SEEDS_RUN if runs is None else runs.runs[0], jnp.int32)


def _runs_of(handle: int) -> _StatisticRuns | None:
    with _lock:
        if handle not in _statistic_runs:
            _statistic_runs[handle] = _open_statistic_runs(host.get_run(handle), None,
                                                           host.open_run)
        return _statistic_runs[handle]


_configuration_runs: dict[tuple[int, str], _StatisticRuns | None] = {}


def _configuration_runs_of(handle: int, configuration: str) -> _StatisticRuns | None:
    """The statistics' runs of one configuration of a sweep, ``<run>/<configuration>/seeds/
    {mean,min,max,band}``, opened at its first statistics (by the process that writes
    them)."""
    key = (handle, configuration)
    with _lock:
        if key not in _configuration_runs:
            _configuration_runs[key] = _open_statistic_runs(
                host.get_run(handle), None, host.open_run, under=configuration)
        return _configuration_runs[key]


def read_statistics(run_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """``{"<tag>/<statistic>": [(step, value), ...]}`` of the statistics over seeds of the run
    in `run_dir`, from the runs ``seeds/mean``, ``seeds/min`` and ``seeds/max`` (event files or
    JSON lines), or from the single run ``seeds`` that callax wrote before (tags
    ``<tag>/mean``, ...)."""
    from .._writer._read import read_run

    base = os.path.join(os.fspath(run_dir), SEEDS_RUN)
    out: dict[str, list[tuple[int, float]]] = {}
    if not any(os.path.isdir(os.path.join(base, s)) for s in STATISTICS):
        return read_run(base) if os.path.isdir(base) else out
    for statistic in STATISTICS:
        directory = os.path.join(base, statistic)
        if os.path.isdir(directory):
            for tag, points in read_run(directory).items():
                out[f"{tag}/{statistic}"] = points
    return {tag: out[tag] for tag in sorted(out)}


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
        `seeds_handle` what :func:`open_seeds_run` returned. Only a batch of several seeds
        (``vmap`` of size 2 or more, or seeds spread over devices) calls the host: one seed
        has no statistics over seeds."""
        due = jnp.asarray(when, jnp.bool_) & (self.count > 0)
        _host.send(_host_seed_rows, jnp.asarray(handle, jnp.int32),
                   jnp.asarray(seeds_handle, jnp.int32),
                   jnp.asarray(_host.register_layout(tags), jnp.int32), self.words,
                   self.values, self.valid, self.count, when=due, several_seeds=True)
        return SeedRows(self.words, self.values, self.valid,
                        jnp.where(due, 0, self.count))


def _host_seed_rows(seed, when, handle, seeds_handle, layout, words, values, valid,
                    count) -> None:
    rows = np.flatnonzero(when)
    if seed.shape[0] < 2 or rows.size == 0 or int(seeds_handle[rows[0]]) == NO_SEEDS_RUN:
        return
    tags = _host.layout_tags(int(layout[rows[0]]))
    steps = words_to_int64(words)  # [B, K]
    run = int(handle[rows[0]])
    sweep = host.layout_of(run)
    if sweep is None:
        _write_statistics(tags, steps, values, valid, count, rows, seed.shape[0],
                          lambda: _runs_of(run))
        return
    # A sweep: the statistics over each configuration's seeds, in its own runs.
    configs = np.array([sweep.locate(int(p))[0] for p in seed.tolist()])
    for config in np.unique(configs).tolist():
        if sweep.seeds < 2:
            continue
        name = sweep.name(config)
        _write_statistics(tags, steps, values, valid, count,
                          rows[configs[rows] == config], sweep.seeds,
                          lambda name=name: _configuration_runs_of(run, name))


def _write_statistics(tags, steps, values, valid, count, rows, n_seeds, runs_of) -> None:
    """Mean, min and max over the seeds `rows` at every step all `n_seeds` seeds have, to
    the runs ``runs_of()`` returns."""
    by_step: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for b in rows:
        for k in range(int(count[b])):
            by_step.setdefault(int(steps[b, k]), []).append((values[b, k], valid[b, k]))
    complete = sorted(s for s, entries in by_step.items() if len(entries) == n_seeds)
    runs = runs_of() if complete else None
    if not complete or runs is None:
        return
    stats = np.zeros((len(STATISTICS), len(complete), len(tags)), np.float32)
    ok = np.zeros((len(complete), len(tags)), np.bool_)
    for i, step in enumerate(complete):
        entries = by_step[step]
        stats[:, i] = seed_statistics(np.stack([v for v, _ in entries]))
        ok[i] = np.stack([m for _, m in entries]).all(axis=0)
    seeds, steps_out = np.array([host.NO_SEED]), np.array([complete])
    for run, values_of_run in zip(runs.runs, stats, strict=True):
        host.write(run, tags, seeds, steps_out, values_of_run[None], ok[None])
    if runs.band is not None:
        band = tuple(t for tag in tags for t in band_tags(tag))
        interleaved = stats.transpose(1, 2, 0).reshape(len(complete), -1)  # tag-major
        host.write(runs.band, band, seeds, steps_out, interleaved[None],
                   np.repeat(ok, len(STATISTICS), axis=1)[None])
        write_layout(runs.band, host.NO_SEED, tags, seeds=True)


def _chart(title: str, **content: Any) -> Any:
    return layout_pb2.Chart(title=title, **content)


def _every_run(tags: Sequence[str]) -> list[Any]:
    return [_chart(f"{tag.rpartition('/')[2]}: every run",
                   multiline=layout_pb2.MultilineChartContent(tag=[f"^{tag}$"]))
            for tag in tags]


def layout_summary(tags: Sequence[str] = HEADLINE_TAGS, *, seeds: bool = True) -> bytes:
    """A serialized ``Summary`` holding TensorBoard's custom-scalars layout, in the order the
    tab draws it. With `seeds`: one category per tag, each a single *margin* chart (the mean
    over seeds with its min-max band, from the ``seeds/band`` run), the first tag's first;
    then "every run" (one multiline chart per tag: every seed and statistic) and "time"
    (``time/fps``). Without: "every run" and "time".

    One chart per band category: TensorBoard does not draw a category's margin and
    multiline charts in the stored order (it drew both multiline charts before the bands),
    while categories are drawn in order."""
    categories = []
    if seeds:
        for tag in tags:
            name = tag.rpartition("/")[2]
            value, lower, upper = band_tags(tag)
            series = layout_pb2.MarginChartContent.Series(value=value, lower=lower,
                                                          upper=upper)
            categories.append(layout_pb2.Category(
                title=f"{name} over seeds",
                chart=[_chart(f"{name}: mean over seeds, min-max band",
                              margin=layout_pb2.MarginChartContent(series=[series]))]))
    categories.append(layout_pb2.Category(title="every run", chart=_every_run(tags)))
    categories.append(layout_pb2.Category(title="time", chart=[_chart(
        "fps", multiline=layout_pb2.MultilineChartContent(tag=["^time/fps$"]))]))
    layout = layout_pb2.Layout(category=categories)
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name="custom_scalars"))
    tensor = TensorProto(dtype="DT_STRING", string_val=[layout.SerializeToString()],
                         tensor_shape=TensorShapeProto())
    return Summary(value=[Summary.Value(tag="custom_scalars__config__", tensor=tensor,
                                        metadata=metadata)]).SerializeToString()


def write_layout(handle: int, seed: int, tags: Sequence[str] = HEADLINE_TAGS, *,
                 seeds: bool = True) -> None:
    """Write the custom-scalars layout once into seed position `seed` of run `handle` (host
    side; TensorBoard merges the layouts of all runs; only TensorBoard writers keep it)."""
    with _lock:
        if handle in _layouts_written:
            return
        _layouts_written.add(handle)
    host.write_summaries(handle, np.array([seed]), (layout_summary(tags, seeds=seeds),))
