"""Hyperparameters linked to runs, read back through TensorBoard's own server (its Rust data
server, ``--load_fast=true``) and its HParams plugin's HTTP API: the dashboard's data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import jax
import pytest

import callax
from callax import HParamsCallback, TensorBoardCallback, hparams_of
from conftest import free_port, read_run, run_dirs
from tiny_ppo import TINY, learn_vmap


def post(port: int, route: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/data/plugin/hparams/{route}", json.dumps(body).encode(),
        {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


SESSION_GROUPS = {"experimentName": "", "colParams": [], "startIndex": 0, "sliceSize": 100,
                  "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                                      "STATUS_RUNNING"]}


def tensorboard_session_groups(logdir: str, expected: int) -> list[dict]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
         "--port", str(port), "--load_fast=true", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # a generous bound on a loaded machine
        groups: list[dict] = []
        while time.monotonic() < deadline:
            try:
                groups = post(port, "session_groups", SESSION_GROUPS).get("sessionGroups", [])
            except OSError:
                groups = []
            if len(groups) == expected and all(g.get("metricValues") for g in groups):
                return groups
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited: {server.stderr.read()}")
            time.sleep(0.5)
        pytest.fail(f"tensorboard showed {len(groups)} session groups, expected {expected}")
    finally:
        server.terminate()
        server.wait(timeout=30)


# XLA options of the one program below: what ``jax_disable_most_optimizations`` sets, given
# to this compilation only (no global flag, nothing left in a jit cache). The test reads what
# the callbacks wrote, not how fast the program runs; XLA:CPU's optimization passes were
# most of its compile time (44 s -> 20 s, machine loaded). XLA:CPU's older loop emitters
# (not its MLIR fusion emitters) build the same program faster still.
FEW_XLA_PASSES = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                  "xla_cpu_use_fusion_emitters": False}


def test_hparams_dashboard_shows_each_runs_hparams_and_final_metrics(logdir):
    configs = {"ppo": hparams_of(TINY),
               "other": {"learning_rate": 0.5, "algorithm": "X", "normalize_obs": True}}
    keys = jax.random.split(jax.random.key(0), 2)
    learn = None
    for name, hparams in configs.items():
        tb = TensorBoardCallback(log_dir=os.path.join(logdir, name))
        callbacks = [tb, HParamsCallback(tb.tb_writer, hparams)]
        # Compiled once: the second configuration's callbacks have the same structure.
        learn = learn or learn_vmap.lower(keys, callbacks).compile(FEW_XLA_PASSES)
        learn(keys, callbacks)
    callax.flush_all()
    runs = [r for r in run_dirs(logdir) if "/seeds/" not in r]  # no trial of their own
    assert len(runs) == 4 and all(r.endswith(("seed_0", "seed_1")) for r in runs)
    groups = {g["name"]: g for g in tensorboard_session_groups(logdir, expected=4)}
    # Trial names start with the seed (the table cuts long names) and name the run.
    names = {f"seed {r[-1]} · {r.split('/')[0]}/{r.split('/')[1]}": r for r in runs}
    assert sorted(groups) == sorted(names)
    for name, group in groups.items():
        run = names[name]
        expected = {**configs[run.split("/")[0]], "seed": int(run[-1])}
        assert group["hparams"] == {k: float(v) if isinstance(v, int) and not isinstance(
            v, bool) else v for k, v in expected.items()}
        assert [s["status"] for s in group["sessions"]] == ["STATUS_SUCCESS"]
        # Final metrics: the last point of each scalar tag of the run, as written.
        scalars = read_run(os.path.join(logdir, run))
        metrics = {m["name"]["tag"]: (m["trainingStep"], m["value"])
                   for m in group["metricValues"]}
        assert set(metrics) == set(scalars) and "rollout/ep_rew_mean" in metrics
        for tag, (step, value) in metrics.items():
            assert (step, pytest.approx(value, rel=1e-6)) == scalars[tag][-1]


def test_hparams_of_and_bad_values():
    hparams = hparams_of(TINY)
    assert hparams["algorithm"] == "PPO" and hparams["n_steps"] == 16
    assert hparams["hidden_sizes"] == "(8,)" and "clip_range_vf" not in hparams  # None
    with pytest.raises(TypeError, match="'lr'"):
        HParamsCallback("unused", {"lr": [1, 2]})
    with pytest.raises(TypeError, match="mapping"):
        hparams_of(3)
