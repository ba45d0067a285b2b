"""The statistics over seeds: runs ``<run>/seeds/mean``, ``min`` and ``max`` holding the
headline tags under the seeds' own names (exactly the statistics of the values the seed runs
hold), the TensorBoard-only ``seeds/band`` run and the custom-scalars layout drawing it."""

import os

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata

import callax
from callax.callbacks import _seeds
from callax.callbacks._seeds import HEADLINE_TAGS, band_tags, read_statistics
from callax.writers import read_jsonl
from conftest import read_run, run_dirs
from minimal_loop import drive
from test_episodes import scripted

STATISTIC_RUNS = ["seeds/band", "seeds/max", "seeds/mean", "seeds/min"]


def train(logdir, n_seeds, flush_every=3, vmap=True, **options):
    data = [scripted(20 + s, n_iters=7) for s in range(n_seeds)]
    rewards = np.stack([r for r, _ in data])
    dones = np.stack([d for _, d in data])
    dones[0, :2] = False  # seed 0 finishes no episode in the first two iterations
    cb = callax.TensorBoardCallback(name="s", log_dir=logdir, flush_every=flush_every,
                                    **options)
    keys = jax.random.split(jax.random.key(3), n_seeds)
    if vmap:
        jax.jit(jax.vmap(lambda k, r, d: drive(cb, r, d, k)))(keys, rewards, dones)
    else:
        jax.jit(lambda k, r, d: drive(cb, r, d, k))(keys[0], rewards[0], dones[0])
    jax.effects_barrier()
    callax.flush_all()
    return f"{logdir}/s"


def layout_of(directory):
    accumulator = EventAccumulator(directory)
    accumulator.Reload()
    tensor = accumulator.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto
    return layout_pb2.Layout.FromString(tensor.string_val[0])


def test_statistics_are_runs_under_the_seeds_tag_names(logdir):
    root = train(logdir, n_seeds=3)
    assert run_dirs(root) == ["seed_0", "seed_1", "seed_2", *STATISTIC_RUNS]
    seeds = [read_run(f"{root}/seed_{i}") for i in range(3)]
    for statistic in ("mean", "min", "max"):
        # The seeds' own names: TensorBoard draws them on each metric's one card.
        assert sorted(read_run(f"{root}/seeds/{statistic}")) == sorted(HEADLINE_TAGS)
    statistics = read_statistics(root)
    band = read_run(f"{root}/seeds/band")
    assert sorted(band) == sorted(t for tag in HEADLINE_TAGS for t in band_tags(tag))
    for tag in HEADLINE_TAGS:
        per_seed = [dict(run[tag]) for run in seeds]
        common = sorted(set.intersection(*(set(p) for p in per_seed)))
        assert common and min(common) > min(min(p) for p in per_seed[1:])  # seed 0 late
        values = np.array([[p[s] for s in common] for p in per_seed], np.float64)
        expected = (values.mean(axis=0), values.min(axis=0), values.max(axis=0))
        for statistic, want, band_tag in zip(("mean", "min", "max"), expected,
                                             band_tags(tag), strict=True):
            for got in (statistics[f"{tag}/{statistic}"], band[band_tag]):
                assert [s for s, _ in got] == common
                # float32 of the float64 statistic of the float32 values: exact.
                np.testing.assert_array_equal([v for _, v in got], want.astype(np.float32))


def test_custom_scalars_open_on_the_return_band(logdir):
    root = train(logdir, n_seeds=2)
    layout = layout_of(f"{root}/seeds/band")
    # One chart per band category: TensorBoard draws categories in order.
    first = layout.category[0]
    assert len(first.chart) == 1 and first.chart[0].WhichOneof("content") == "margin"
    series = first.chart[0].margin.series[0]
    assert (series.value, series.lower, series.upper) == band_tags("rollout/ep_rew_mean")
    assert [c.title for c in layout.category] == [
        "ep_rew_mean over seeds", "ep_len_mean over seeds", "every run", "time"]
    assert [c.WhichOneof("content") for c in layout.category[1].chart] == ["margin"]
    assert [c.multiline.tag[0] for c in layout.category[2].chart] == [
        "^rollout/ep_rew_mean$", "^rollout/ep_len_mean$"]
    # Every band tag is held by the band run alone (no "missing tags" under a chart), and
    # no other run holds a layout (TensorBoard would merge it first).
    for run in run_dirs(root):
        tags = read_run(f"{root}/{run}")
        assert (run == "seeds/band") == any(t.startswith(_seeds.BAND_GROUP) for t in tags)
        if run != "seeds/band":
            accumulator = EventAccumulator(f"{root}/{run}")
            accumulator.Reload()
            assert metadata.CONFIG_SUMMARY_TAG not in accumulator.Tags()["tensors"], run


def test_json_lines_alone_write_the_statistics_and_no_event_file(logdir):
    root = train(logdir, n_seeds=2, writers=("jsonl",))
    files = [os.path.join(d, f) for d, _, fs in os.walk(logdir) for f in fs]
    assert files and not any("tfevents" in f for f in files), files
    assert sorted(os.path.relpath(os.path.dirname(f), root) for f in files) == [
        "seed_0", "seed_1", "seeds/max", "seeds/mean", "seeds/min"]  # no band: TensorBoard's
    statistics = read_statistics(root)
    seeds = [dict(read_jsonl(f"{root}/seed_{i}")["rollout/ep_rew_mean"]) for i in range(2)]
    mean = statistics["rollout/ep_rew_mean/mean"]
    assert mean and all(v == np.float32(np.mean([np.float64(s[step]) for s in seeds]))
                        for step, v in mean)


@pytest.mark.parametrize("vmap", [True, False])
def test_one_seed_makes_no_host_call_for_statistics(logdir, monkeypatch, vmap):
    calls = []
    original = _seeds._host_seed_rows
    monkeypatch.setattr(_seeds, "_host_seed_rows", lambda *a: calls.append(1) or original(*a))
    root = train(logdir, n_seeds=1, vmap=vmap)
    assert run_dirs(root) == (["seed_0"] if vmap else ["."])
    assert calls == []
    train(f"{logdir}/two", n_seeds=2)  # the same code with two seeds calls the host
    assert calls


def test_no_statistics_when_disabled(logdir):
    train(f"{logdir}/off", n_seeds=2, seeds_run=False)
    assert run_dirs(f"{logdir}/off/s") == ["seed_0", "seed_1"]


def test_callback_built_inside_jit_opens_its_statistics_runs_on_the_host(logdir):
    """Its run is named when the program executes: the statistics' runs follow it there."""
    data = [scripted(40 + s, n_iters=4) for s in range(2)]
    rewards = np.stack([r for r, _ in data])
    dones = np.stack([d for _, d in data])

    @jax.jit
    def train(keys, rewards, dones):
        cb = callax.TensorBoardCallback(log_dir=logdir, flush_every=2)  # a fresh run per call
        return jax.vmap(lambda k, r, d: drive(cb, r, d, k))(keys, rewards, dones)

    keys = jax.random.split(jax.random.key(5), 2)
    train(keys, rewards, dones)
    train(keys, rewards, dones)
    runs = run_dirs(logdir)
    (first, second) = sorted({r.split("/")[0] for r in runs})
    assert runs == [f"{name}/{run}" for name in (first, second)
                    for run in ["seed_0", "seed_1", *STATISTIC_RUNS]]
    for name in (first, second):
        seeds = [dict(read_run(f"{logdir}/{name}/seed_{i}")["rollout/ep_rew_mean"])
                 for i in range(2)]
        mean = read_run(f"{logdir}/{name}/seeds/mean")["rollout/ep_rew_mean"]
        assert mean and all(
            v == np.float32(np.mean([np.float64(s[step]) for s in seeds])) for step, v in mean)
