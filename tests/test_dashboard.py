"""What TensorBoard itself serves after `callax train --seeds 3`: SB3's tags in every seed's
run, the statistics over seeds as runs (`seeds/mean`, `min`, `max`, under the seeds' tag
names), the band run and the custom-scalars layout that puts the return's band first; and
what its Time Series and Scalars tabs show first, for PPO with 3 seeds and SAC with 1
(TensorBoard's frontend order: tests/tensorboard_order.py), and the address `callax train`
prints, which pins the return above every group (rendered in headless Chromium). Screenshots
of the tabs: tests/dashboard_screens.py."""

from __future__ import annotations

import json
import os
import urllib.parse

import numpy as np
import pytest

import dashboard_screens
import tensorboard_order
from conftest import callax_train, get_json, settled, tensorboard_server
from test_cli import SAC_STEPS

SB3_TAGS = {"rollout/ep_rew_mean", "rollout/ep_len_mean", "time/fps", "train/learning_rate",
            "train/value_loss", "train/approx_kl"}


def test_data_server_serves_sb3_tags_seeds_run_and_layout(served):
    # The PPO run of `served` (`callax train --seeds 3`), alone under its own server.
    seed_runs = [f"seed_{i}" for i in range(3)]
    root = os.path.join(served["logdir"], "ppo")
    with tensorboard_server(root) as (port, server):
        base = f"http://127.0.0.1:{port}/data/plugin"

        statistics = [f"seeds/{s}" for s in ("mean", "min", "max")]

        def tags():
            found = get_json(f"{base}/scalars/tags")
            wanted = {*seed_runs, *statistics, "seeds/band"}
            return found if wanted <= set(found) else None

        listed = settled(tags, server)
        for run in seed_runs:
            assert SB3_TAGS <= set(listed[run]), (run, sorted(listed[run]))
            assert not any(t.startswith("episode/") for t in listed[run])
        headline = {"rollout/ep_rew_mean", "rollout/ep_len_mean"}
        for run in statistics:  # the seeds' own tag names: one card per metric
            assert set(listed[run]) == headline, (run, listed[run])
        assert set(listed["seeds/band"]) == {
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
        band = points("seeds/band", "~seed_band/ep_rew_mean/mean")
        assert band == mean

        layout = get_json(f"{base}/custom_scalars/layout")
        first = layout["category"][0]
        assert first["title"] == "ep_rew_mean over seeds" and len(first["chart"]) == 1
        margin = first["chart"][0]["margin"]["series"][0]
        assert margin == {"value": "~seed_band/ep_rew_mean/mean",
                          "lower": "~seed_band/ep_rew_mean/min",
                          "upper": "~seed_band/ep_rew_mean/max"}
    assert os.path.isdir(os.path.join(root, "seeds", "mean"))


def test_train_writes_histograms_by_default(served, tmp_path):
    """``callax train`` writes the rollout's histograms unless ``--no-histograms``: the
    PPO run of `served` (the default) has them; a run with the flag has none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callax_train(["--algo", "ppo", "--env", "cartpole", "--total-timesteps", "256",
                  "--no-progress", "--no-histograms", "--logdir", str(tmp_path / "off"),
                  "--name", "h"])
    found = {}
    for which, directory in (("on", os.path.join(served["logdir"], "ppo", "seed_0")),
                             ("off", str(tmp_path / "off" / "h" / "seed_0"))):
        accumulator = EventAccumulator(directory)
        accumulator.Reload()
        found[which] = accumulator.Tags()["histograms"]
    assert set(found["on"]) == {"rollout_histograms/actions", "rollout_histograms/rewards",
                                "rollout_histograms/values"}
    assert found["off"] == []


# --- What a user sees first (issue 28) --------------------------------------------------------
# PPO with 3 seeds and SAC with 1 seed through `callax train`, served by TensorBoard's own
# server; the order of the Time Series and Scalars tabs is TensorBoard's frontend sort applied
# to the tags the server lists (tests/tensorboard_order.py, checked against the bundle).

SB3_GROUPS = ["rollout", "rollout_histograms", "time", "train"]
SEED_RUNS = [f"ppo/seed_{i}" for i in range(3)]
AGGREGATE_RUNS = [f"ppo/seeds/{s}" for s in ("max", "mean", "min")]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``{"runs": [...], "scalars": {run: [tag]}, "histograms": {run: [tag]}}`` as the data
    server lists them for a PPO run (3 seeds) and a SAC run (1 seed), with ``"printed"``
    (``{"ppo": stdout, "sac": stdout}`` of the two trainings), ``"port"`` (the server's,
    alive while the module's tests run) and ``"logdir"`` (where the runs are). The trainings
    are ``python -m callax train`` children that compile without XLA's expensive
    optimizations (tests/conftest.py's ``callax_train``): these tests read tags, runs and
    layouts, not how well the agents learn. The SAC one is tests/test_cli.py's."""
    logdir = tmp_path_factory.mktemp("dashboard")
    printed = {}
    for name, argv in (("ppo", ["--algo", "ppo", "--env", "cartpole", "--seeds", "3",
                                "--total-timesteps", "512"]),
                       ("sac", ["--algo", "sac", "--env", "pendulum", "--total-timesteps",
                                str(SAC_STEPS)])):
        printed[name] = callax_train([*argv, "--logdir", str(logdir), "--name", name,
                                      "--no-progress"]).stdout
    with tensorboard_server(str(logdir)) as (port, server):
        base = f"http://127.0.0.1:{port}/data"

        def fetch():
            tags = get_json(f"{base}/plugin/timeseries/tags")
            found = {"runs": sorted(get_json(f"{base}/runs")),
                     "scalars": tags["scalars"]["runTagInfo"],
                     "histograms": tags["histograms"]["runTagInfo"]}
            every = [*SEED_RUNS, "sac/seed_0"]
            ready = all(run in found["scalars"] and run in found["histograms"] for run in every)
            return found if ready else None

        yield {**settled(fetch, server), "printed": printed, "port": port,
               "logdir": str(logdir)}


def cards(served, prefix: str) -> list[str]:
    """The Time Series cards of the runs under ``prefix`` (each by its tag): one per scalar
    tag (every run's line on it), one per histogram tag and run."""
    runs = [run for run in served["runs"] if run.startswith(prefix)]
    scalars = sorted({tag for run in runs for tag in served["scalars"].get(run, [])})
    histograms = [tag for run in runs for tag in served["histograms"].get(run, [])]
    return scalars + histograms


def test_sb3_groups_open_the_time_series_and_scalars_tabs(served):
    # PPO (3 seeds) and SAC (1 seed): rollout first, then SB3's other groups, then the
    # algorithm's events (SAC: `trainer`, after `train`; Maze's `SACEvents` came first).
    # With several seeds the min-max band's run (`seeds/band`, for Custom Scalars) adds one
    # group, `~seed_band`, which sorts after every other group.
    for prefix, groups in (("ppo/", [*SB3_GROUPS, "~seed_band"]),
                           ("sac/", [*SB3_GROUPS, "trainer"])):
        time_series = tensorboard_order.time_series_groups(cards(served, prefix))
        assert [name for name, _ in time_series] == groups, time_series
        assert "rollout/ep_rew_mean" in time_series[0][1]
        runs = {run: served["scalars"][run] for run in served["runs"] if run.startswith(prefix)}
        scalars_tab = tensorboard_order.scalars_tab_groups(runs)
        assert [name for name, _ in scalars_tab] == [g for g in groups if "histograms" not in g]
        assert "rollout/ep_rew_mean" in scalars_tab[0][1]


@pytest.mark.parametrize("prefix", ["ppo/", "sac/"])
def test_the_return_is_the_second_card_of_the_first_row(served, prefix):
    # TensorBoard's sort puts SB3's ep_len_mean before ep_rew_mean (`l` < `r`), in both
    # tabs; with one card per metric the return is the second card, in the first row (the
    # address `callax train` prints pins it first in Time Series: tests at the end).
    time_series = tensorboard_order.time_series_groups(cards(served, prefix))
    assert time_series[0][1][:2] == ["rollout/ep_len_mean", "rollout/ep_rew_mean"]
    runs = {run: served["scalars"][run] for run in served["runs"] if run.startswith(prefix)}
    scalars_tab = tensorboard_order.scalars_tab_groups(runs)
    assert scalars_tab[0][1][:2] == ["rollout/ep_len_mean", "rollout/ep_rew_mean"]


def test_sac_events_group_holds_every_sac_event_and_nothing_else(served):
    from test_sac import sac_tags

    groups = dict(tensorboard_order.time_series_groups(cards(served, "sac/")))
    assert sorted(groups["trainer"]) == sorted(sac_tags(asynchronous=False))
    assert not any(tag.startswith("SACEvents") for tag in served["scalars"]["sac/seed_0"])


def test_one_card_per_metric_and_seeds_told_apart(served):
    # Several seeds: one card per metric with every seed's line and the aggregate's (the
    # aggregate is runs `<run>/seeds/{mean,min,max}`, never extra tags); histogram cards,
    # one per seed, named by the seed.
    assert served["runs"] == sorted([*AGGREGATE_RUNS, *SEED_RUNS, "ppo/seeds/band",
                                     "sac/seed_0"])
    groups = dict(tensorboard_order.time_series_groups(cards(served, "ppo/")))
    assert groups["rollout"] == ["rollout/ep_len_mean", "rollout/ep_rew_mean"]
    for run in AGGREGATE_RUNS:
        assert sorted(served["scalars"][run]) == groups["rollout"], run
        assert served["histograms"].get(run, []) == []
    every_tag = {tag for tags in served["scalars"].values() for tag in tags
                 if not tag.startswith("~seed_band/")}  # the band run's (Custom Scalars)
    assert not any(tag.endswith(("/mean", "/min", "/max")) for tag in every_tag)
    histogram_tags = ["rollout_histograms/actions", "rollout_histograms/rewards",
                      "rollout_histograms/values"]
    assert sorted(groups["rollout_histograms"]) == sorted(histogram_tags * 3)
    for run in SEED_RUNS:
        assert sorted(served["histograms"][run]) == histogram_tags
    assert len(groups["time"]) == 1
    assert len(groups["train"]) == len({t for run in SEED_RUNS for t in served["scalars"][run]
                                        if t.startswith("train/")})


# --- The address `callax train` prints: Time Series with the return pinned first ------------

def printed_address(stdout: str) -> str:
    """The address after ``then open`` in the ``next:`` lines of ``callax train``."""
    lines = stdout.splitlines()
    steps = lines[lines.index("next:") + 1:]
    found = [line.split()[2] for line in steps if line.startswith("  then open ")]
    assert len(found) == 1, steps
    assert steps.index(f"  then open {found[0]}  (the return pinned first)") == 1, steps
    return found[0]


@pytest.mark.parametrize("prefix", ["ppo/", "sac/"])
def test_printed_address_pins_the_return_of_every_run(served, prefix):
    # PPO with 3 seeds and SAC with 1: the address after `tensorboard --logdir` opens Time
    # Series with one pinned scalar card, the return, a tag every run of the training has
    # (every seed and the statistics over seeds, not the band run, which is Custom Scalars').
    address = urllib.parse.urlsplit(printed_address(served["printed"][prefix.rstrip("/")]))
    assert (address.scheme, address.netloc, address.path) == ("http", "localhost:6006", "/")
    assert address.fragment == "timeseries"
    query = urllib.parse.parse_qs(address.query, strict_parsing=True)
    assert list(query) == ["pinnedCards"] and len(query["pinnedCards"]) == 1
    pins = json.loads(query["pinnedCards"][0])
    assert pins == [{"plugin": "scalars", "tag": "rollout/ep_rew_mean"}]
    runs = [run for run in served["runs"] if run.startswith(prefix) and run != "ppo/seeds/band"]
    assert runs == sorted([*AGGREGATE_RUNS, *SEED_RUNS] if prefix == "ppo/" else ["sac/seed_0"])
    for run in runs:
        assert pins[0]["tag"] in served["scalars"][run], (run, served["scalars"][run])


def test_rendered_time_series_draws_the_pinned_return_first(served):
    # The printed address on TensorBoard's own server, rendered by headless Chromium: the
    # first card drawn is the return, pinned above every group, with every run's line in its
    # table. Without the pin the first card is ep_len_mean (TensorBoard's sort).
    if dashboard_screens.chromium() is None:
        pytest.skip("chromium is not installed")
    printed = printed_address(served["printed"]["ppo"])
    assert printed == printed_address(served["printed"]["sac"])
    local = printed.replace("http://localhost:6006/", f"http://127.0.0.1:{served['port']}/")
    cards, text = dashboard_screens.time_series_cards(dashboard_screens.rendered_dom(local))
    assert cards[:2] == [("pinned", "rollout/ep_rew_mean"), ("groups", "rollout/ep_len_mean")]
    assert [card for card in cards if card[0] == "pinned"] == [cards[0]]
    shown = [run for run in served["runs"] if run != "ppo/seeds/band"]
    assert set(shown) <= set(text["pinned"]), text["pinned"]
    unpinned, _ = dashboard_screens.time_series_cards(
        dashboard_screens.rendered_dom(f"http://127.0.0.1:{served['port']}/#timeseries"))
    assert unpinned[:2] == [("groups", "rollout/ep_len_mean"), ("groups", "rollout/ep_rew_mean")]


def test_dashboard_url_encodes_any_tag_as_one_link():
    # Percent-encoded: no space, quote or bracket for a terminal to cut the link at; the
    # query decodes to TensorBoard's pinnedCards JSON, for any tag and address.
    from callax.cli._closing import dashboard_url

    url = dashboard_url("http://127.0.0.1:7007/", 'my runs/"return" [x]&y#z')
    assert not any(c in url for c in ' "[]{}') and url.count("#") == 1
    parts = urllib.parse.urlsplit(url)
    assert parts.netloc == "127.0.0.1:7007" and parts.fragment == "timeseries"
    pins = json.loads(urllib.parse.parse_qs(parts.query, strict_parsing=True)["pinnedCards"][0])
    assert pins == [{"plugin": "scalars", "tag": 'my runs/"return" [x]&y#z'}]
    with pytest.raises(ValueError, match="must not be empty"):
        dashboard_url(tag="")
