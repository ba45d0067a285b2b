"""The `<run>/seeds` run: mean, min and max over vmapped seeds of the headline tags, exactly
the statistics of the values the seed runs hold, and its custom-scalars layout."""

import jax
import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata

import callax
from callax.callbacks._seeds import HEADLINE_TAGS
from conftest import read_run, run_dirs
from minimal_loop import drive
from test_episodes import scripted


def train(logdir, n_seeds, flush_every=3, **options):
    data = [scripted(20 + s, n_iters=7) for s in range(n_seeds)]
    rewards = np.stack([r for r, _ in data])
    dones = np.stack([d for _, d in data])
    dones[0, :2] = False  # seed 0 finishes no episode in the first two iterations
    cb = callax.TensorBoardCallback(name="s", log_dir=logdir, flush_every=flush_every,
                                    **options)
    keys = jax.random.split(jax.random.key(3), n_seeds)
    jax.jit(jax.vmap(lambda k, r, d: drive(cb, r, d, k)))(keys, rewards, dones)
    return f"{logdir}/s"


def test_seeds_run_holds_exact_mean_min_max(logdir):
    root = train(logdir, n_seeds=3)
    assert run_dirs(root) == ["seed_0", "seed_1", "seed_2", "seeds"]
    seeds = [read_run(f"{root}/seed_{i}") for i in range(3)]
    summary = read_run(f"{root}/seeds")
    assert set(summary) == {t + s for t in HEADLINE_TAGS for s in ("/mean", "/min", "/max")}
    for tag in HEADLINE_TAGS:
        per_seed = [dict(run[tag]) for run in seeds]
        common = sorted(set.intersection(*(set(p) for p in per_seed)))
        assert common and min(common) > min(min(p) for p in per_seed[1:])  # seed 0 late
        values = np.array([[p[s] for s in common] for p in per_seed], np.float64)
        for suffix, expected in (("/mean", values.mean(axis=0)), ("/min", values.min(axis=0)),
                                 ("/max", values.max(axis=0))):
            got = summary[tag + suffix]
            assert [s for s, _ in got] == common
            # float32 of the float64 statistic of the float32 values: exact.
            np.testing.assert_array_equal([v for _, v in got], expected.astype(np.float32))
    accumulator = EventAccumulator(f"{root}/seeds")
    accumulator.Reload()
    tensor = accumulator.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto
    layout = layout_pb2.Layout.FromString(tensor.string_val[0])
    assert layout.category[0].title == "returns"
    margin = layout.category[0].chart[0].margin.series[0]
    assert (margin.value, margin.lower, margin.upper) == (
        "rollout/ep_rew_mean/mean", "rollout/ep_rew_mean/min", "rollout/ep_rew_mean/max")


def test_no_seeds_run_for_one_seed_or_when_disabled(logdir):
    root = train(logdir, n_seeds=1)
    assert run_dirs(root) == ["seed_0"]
    train(f"{logdir}/off", n_seeds=2, seeds_run=False)
    assert run_dirs(f"{logdir}/off/s") == ["seed_0", "seed_1"]


def test_callback_built_inside_jit_opens_its_seeds_run_on_the_host(logdir):
    """Its run is named when the program executes: the seeds run follows it there."""
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
    assert runs == [f"{first}/seed_0", f"{first}/seed_1", f"{first}/seeds",
                    f"{second}/seed_0", f"{second}/seed_1", f"{second}/seeds"]
    for name in (first, second):
        seeds = [dict(read_run(f"{logdir}/{name}/seed_{i}")["rollout/ep_rew_mean"])
                 for i in range(2)]
        mean = read_run(f"{logdir}/{name}/seeds")["rollout/ep_rew_mean/mean"]
        assert mean and all(
            v == np.float32(np.mean([np.float64(s[step]) for s in seeds])) for step, v in mean)
