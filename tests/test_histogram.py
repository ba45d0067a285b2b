"""Histograms from inside jit/vmap: hand-encoded events read back by TensorBoard's
EventAccumulator (``Histograms``), one host call per write for all tags and seeds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import callax
from callax import HistogramCallback, JITSummaryWriter, add_histograms
from callax.callbacks import _histogram
from callax.envs import CartPoleParams, make
from callax.train import PPO
from conftest import run_dirs, sync
from quick_jit import quick_jit


def histograms(directory):
    sync()
    accumulator = EventAccumulator(directory, size_guidance={"histograms": 0})
    accumulator.Reload()
    return {tag: accumulator.Histograms(tag) for tag in accumulator.Tags()["histograms"]}


def check(histogram, values, bins):
    values = np.asarray(values, np.float32).astype(np.float64).ravel()  # as on device
    h = histogram.histogram_value
    assert h.min == pytest.approx(values.min(), rel=1e-6)
    assert h.max == pytest.approx(values.max(), rel=1e-6)
    assert h.num == values.size
    assert h.sum == pytest.approx(values.sum(), rel=1e-5, abs=1e-5)
    assert h.sum_squares == pytest.approx((values ** 2).sum(), rel=1e-5)
    assert len(h.bucket) == len(h.bucket_limit) == bins
    edges = np.concatenate([[h.min], h.bucket_limit])
    expected, _ = np.histogram(values, bins=edges)
    np.testing.assert_array_equal(np.asarray(h.bucket), expected)


def test_eager_histograms_match_numpy(logdir):
    writer = JITSummaryWriter(logdir)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 3)), rng.uniform(-2, 5, size=17)
    add_histograms(writer, {"h/a": a, "h/b": b}, 3, bins=7)
    add_histograms(writer, {"h/a": a + 1, "h/b": np.full(4, 2.5)}, 4, bins=7)
    add_histograms(writer, {"h/a": a}, 5, when=False, bins=7)
    found = histograms(logdir)
    assert set(found) == {"h/a", "h/b"}
    assert [e.step for e in found["h/a"]] == [3, 4]
    check(found["h/a"][0], a, 7)
    check(found["h/a"][1], a + 1, 7)
    check(found["h/b"][0], b, 7)
    constant = found["h/b"][1].histogram_value  # all values equal: one full bucket
    assert (constant.min, constant.max, constant.num) == (2.5, 2.5, 4)
    assert sum(constant.bucket) == 4


def edges(h):
    """TensorBoard's buckets ``[left, right]`` (the first starts at ``min``)."""
    limits = list(h.bucket_limit)
    return list(zip([h.min, *limits[:-1]], limits, strict=True))


@pytest.mark.parametrize("values", [np.ones(128), np.full(5, -3.25), np.array([7.5]),
                                    np.array([np.nan, 2.0, np.inf, 2.0])],
                         ids=["cartpole-rewards", "negative-constant", "single", "nan-and-const"])
def test_constant_and_single_value_buckets_sit_on_the_value(logdir, values):
    """All buckets are [v, v] (no width, no axis from v to v + bins, never inverted) and the
    count is in one bucket: TensorBoard draws one spike at v."""
    add_histograms(JITSummaryWriter(logdir), {"h": values}, 1, bins=30)
    (event,) = histograms(logdir)["h"]
    h = event.histogram_value
    v = float(values[np.isfinite(values)][0])
    count = int(np.isfinite(values).sum())
    assert (h.min, h.max, h.num) == (v, v, count)
    assert edges(h) == [(v, v)] * 30
    assert list(h.bucket) == [0.0] * 29 + [count]


def test_all_nan_writes_no_point_and_spares_the_other_tags(logdir):
    add_histograms(JITSummaryWriter(logdir), {"nan": np.full(6, np.nan),
                                              "ok": np.array([0.0, 1.0, 2.0, 3.0])}, 2, bins=3)
    found = histograms(logdir)
    assert set(found) == {"ok"}
    h = found["ok"][0].histogram_value
    assert edges(h) == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]  # equal widths, increasing
    assert list(h.bucket) == [1.0, 1.0, 2.0]


def test_spread_edges_increase_and_end_at_the_max(logdir):
    values = np.random.default_rng(3).normal(size=200).astype(np.float32)
    add_histograms(JITSummaryWriter(logdir), {"h": values}, 1, bins=10)
    h = histograms(logdir)["h"][0].histogram_value
    pairs = edges(h)
    assert all(left < right for left, right in pairs)
    assert pairs[-1][1] == pytest.approx(float(values.max()), rel=1e-6)
    width = (float(values.max()) - float(values.min())) / 10
    np.testing.assert_allclose([right - left for left, right in pairs], width, rtol=1e-4)


def test_jit_vmap_one_host_call_for_all_seeds_and_tags(logdir, monkeypatch):
    calls = []
    write = _histogram.host.write_histograms
    monkeypatch.setattr(_histogram.host, "write_histograms",
                        lambda *a: (calls.append(len(a[2])), write(*a)))
    writer = JITSummaryWriter(logdir)
    data = jnp.arange(2 * 3 * 10, dtype=jnp.float32).reshape(2, 3, 10) ** 1.5

    @jax.jit
    @jax.vmap
    def run(x):
        def body(_, t):
            add_histograms(writer, {"x": x * (t + 1), "neg": -x}, t + 1, bins=5)
            return None, None
        jax.lax.scan(body, None, jnp.arange(2))

    run(data)
    assert run_dirs(logdir) == ["seed_0", "seed_1"]
    assert calls == [2, 2]  # one host call per scan step, carrying both seeds
    for seed in (0, 1):
        found = histograms(f"{logdir}/seed_{seed}")
        assert [e.step for e in found["x"]] == [1, 2]
        check(found["x"][1], np.asarray(data[seed]) * 2, 5)
        check(found["neg"][0], -np.asarray(data[seed]), 5)


def test_histogram_callback_logs_rollout_actions_and_values(logdir):
    ppo = PPO(n_envs=2, n_steps=16, batch_size=16, n_epochs=1, hidden_sizes=(8,))
    cb = HistogramCallback(logdir, every=2, bins=4)
    callax.flush_all()
    quick_jit(lambda key: ppo.learn(make("cartpole"), total_timesteps=4 * 32, key=key,
                                    callback=cb,
                                    env_params=CartPoleParams(max_steps_in_episode=20)))(
        jax.random.key(0))
    found = histograms(logdir)
    assert set(found) == {"rollout/actions", "rollout/rewards", "rollout/values"}
    for tag in found:
        assert [e.step for e in found[tag]] == [64, 128]
        assert all(e.histogram_value.num == 32 for e in found[tag])
    actions = found["rollout/actions"][0].histogram_value
    assert 0 <= actions.min <= actions.max <= 1 and sum(actions.bucket) == 32
    assert found["rollout/rewards"][1].histogram_value.min == 1.0  # CartPole: 1 per step


def test_bad_arguments(logdir):
    writer = JITSummaryWriter(logdir)
    with pytest.raises(ValueError, match="bins"):
        add_histograms(writer, {"a": jnp.ones(3)}, 0, bins=0)
    with pytest.raises(TypeError, match="writer"):
        add_histograms(logdir, {"a": jnp.ones(3)}, 0)
    with pytest.raises(ValueError, match="every"):
        HistogramCallback(writer, every=0)
