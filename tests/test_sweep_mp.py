"""A sweep over two real JAX processes (gloo on 127.0.0.1, tests/sweep_mp_script.py):
shard_map x vmap over 4 global devices, every (configuration, seed) run written exactly once,
by the process that holds it, with its own values."""

from __future__ import annotations

import os

import numpy as np
import pytest

import two_processes
from conftest import read_run, run_dirs
from test_sweep_scale import EPISODE, ITERS, NAMES, SEEDS


@pytest.fixture(scope="module")
def mp_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sweep_mp"))
    two_processes.run("sweep_mp_script.py", root, timeout=400)
    return root


def test_every_configuration_and_seed_once_over_two_processes(mp_root):
    root = os.path.join(mp_root, "sweep")
    runs = [r for r in run_dirs(root) if "/seeds/" not in r]
    assert runs == sorted(f"{n}/seed_{s}" for n in NAMES for s in range(SEEDS))
    for c, (lr, clip) in enumerate([(0.5, 0.1), (0.25, 0.2)]):
        for s in range(SEEDS):
            directory = os.path.join(root, NAMES[c], f"seed_{s}")
            # One process wrote the seed (event file names end in <pid>.<n>.callax).
            assert len({f.split(".")[-3] for f in os.listdir(directory)
                        if ".tfevents." in f}) == 1
            reward = np.float32(10.0 * np.float32(lr)) + np.float32(clip) + np.float32(s)
            points = read_run(directory)["rollout/ep_rew_mean"]
            np.testing.assert_allclose([v for _, v in points], [EPISODE * reward] * ITERS,
                                       rtol=1e-6)
