"""A sweep of 2 configurations x 4 seeds spread over 4 devices (pmap, shard_map, sharded
jit; tests/sweep_scale_script.py in a subprocess): every (configuration, seed) run is
written exactly once, with its own values."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ["learning_rate=0.5,clip_range=0.1", "learning_rate=0.25,clip_range=0.2"]
ITERS, STEPS, ENVS, EPISODE, SEEDS = 3, 4, 2, 4, 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sweep_scale"))
    # No speed is measured in the child: XLA skips its expensive passes (compiles faster).
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    done = subprocess.run([sys.executable, os.path.join(HERE, "sweep_scale_script.py"), root],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("layout", ["pmap", "shard_map", "jit"])
def test_every_configuration_and_seed_once_over_four_devices(runs, layout):
    mine = sorted(r[len(layout) + 1:] for r in runs if r.startswith(layout + "/"))
    expected = sorted([f"{n}/seed_{s}" for n in NAMES for s in range(SEEDS)]
                      + [f"{n}/seeds/{x}" for n in NAMES for x in ("band", "max", "mean",
                                                                   "min")])
    assert mine == expected
    steps = [STEPS * ENVS * (i + 1) for i in range(ITERS)]
    for c, (lr, clip) in enumerate([(0.5, 0.1), (0.25, 0.2)]):
        finals = []
        for s in range(SEEDS):
            reward = np.float32(10.0 * np.float32(lr)) + np.float32(clip) + np.float32(s)
            points = runs[f"{layout}/{NAMES[c]}/seed_{s}"]["rollout/ep_rew_mean"]
            assert [t for t, _ in points] == steps
            np.testing.assert_allclose([v for _, v in points], [EPISODE * reward] * ITERS,
                                       rtol=1e-6)
            finals.append(EPISODE * reward)
        mean = runs[f"{layout}/{NAMES[c]}/seeds/mean"]["rollout/ep_rew_mean"]
        np.testing.assert_allclose([v for _, v in mean], [np.mean(finals)] * ITERS, rtol=1e-6)
