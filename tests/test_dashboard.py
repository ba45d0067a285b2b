"""What TensorBoard itself serves after `callax train --seeds 3`: SB3's tags in every seed's
run, the statistics over seeds as runs (`seeds/mean`, `min`, `max`, under the seeds' tag
names), the band run and the custom-scalars layout that puts the return's band first."""

from __future__ import annotations

import os
import urllib.parse

import numpy as np
import pytest

from callax.cli import _train as cli_train
from conftest import get_json, settled, tensorboard_server
from test_cli import run_main
from tiny_ppo import TINY

SB3_TAGS = {"rollout/ep_rew_mean", "rollout/ep_len_mean", "time/fps", "train/learning_rate",
            "train/value_loss", "train/approx_kl"}


def test_data_server_serves_sb3_tags_seeds_run_and_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(cli_train, "make_algo", lambda algo, env: TINY)
    run_main(["train", "--algo", "ppo", "--env", "cartpole", "--seeds", "3",
              "--total-timesteps", "512", "--logdir", str(tmp_path), "--name", "tiny",
              "--no-progress"])
    seed_runs = [f"tiny/seed_{i}" for i in range(3)]
    with tensorboard_server(str(tmp_path)) as (port, server):
        base = f"http://127.0.0.1:{port}/data/plugin"

        statistics = [f"tiny/seeds/{s}" for s in ("mean", "min", "max")]

        def tags():
            found = get_json(f"{base}/scalars/tags")
            wanted = {*seed_runs, *statistics, "tiny/seeds/band"}
            return found if wanted <= set(found) else None

        served = settled(tags, server)
        for run in seed_runs:
            assert SB3_TAGS <= set(served[run]), (run, sorted(served[run]))
            assert not any(t.startswith("episode/") for t in served[run])
        headline = {"rollout/ep_rew_mean", "rollout/ep_len_mean"}
        for run in statistics:  # the seeds' own tag names: one card per metric
            assert set(served[run]) == headline, (run, served[run])
        assert set(served["tiny/seeds/band"]) == {
            f"~seed_band/{t}/{s}" for t in ("ep_rew_mean", "ep_len_mean")
            for s in ("mean", "min", "max")}

        def points(run, tag):
            query = urllib.parse.urlencode({"run": run, "tag": tag})
            return {p[1]: p[2] for p in get_json(f"{base}/scalars/scalars?{query}")}

        # The served statistics are the mean, min and max of the served seed values.
        per_seed = [points(run, "rollout/ep_rew_mean") for run in seed_runs]
        mean, low, high = (points(run, "rollout/ep_rew_mean") for run in statistics)
        assert mean and set(mean) == set(low) == set(high)
        for step, value in mean.items():
            values = np.array([p[step] for p in per_seed], np.float64)
            assert value == pytest.approx(values.mean(), rel=1e-6)
            assert (low[step], high[step]) == (values.min(), values.max())
        band = points("tiny/seeds/band", "~seed_band/ep_rew_mean/mean")
        assert band == mean

        layout = get_json(f"{base}/custom_scalars/layout")
        first = layout["category"][0]
        assert first["title"] == "ep_rew_mean over seeds" and len(first["chart"]) == 1
        margin = first["chart"][0]["margin"]["series"][0]
        assert margin == {"value": "~seed_band/ep_rew_mean/mean",
                          "lower": "~seed_band/ep_rew_mean/min",
                          "upper": "~seed_band/ep_rew_mean/max"}
    assert os.path.isdir(tmp_path / "tiny" / "seeds" / "mean")


def test_train_writes_histograms_by_default(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setattr(cli_train, "make_algo", lambda algo, env: TINY)
    base = ["train", "--algo", "ppo", "--env", "cartpole", "--total-timesteps", "256",
            "--no-progress", "--logdir"]
    run_main([*base, str(tmp_path / "on"), "--name", "h"])
    run_main([*base, str(tmp_path / "off"), "--name", "h", "--no-histograms"])
    found = {}
    for which in ("on", "off"):
        accumulator = EventAccumulator(str(tmp_path / which / "h" / "seed_0"))
        accumulator.Reload()
        found[which] = accumulator.Tags()["histograms"]
    assert set(found["on"]) == {"rollout_histograms/actions", "rollout_histograms/rewards",
                                "rollout_histograms/values"}
    assert found["off"] == []
