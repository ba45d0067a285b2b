"""Hyperparameter sweeps (``callax.Sweep``): a user's own loop vmapped over configurations and
seeds writes one run per (configuration, seed), named by the configuration, with its values
in its HParams trial, its JSON lines and its W&B run; the statistics over seeds are per
configuration. Every run's points are read back and compared with values computed here."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import callax
from callax._writer._sweep import SweepLayout, format_value, parse_config_name
from callax.callbacks._seeds import read_statistics
from callax.writers import read_jsonl
from conftest import assert_steps_increase, read_run, run_dirs
from minimal_loop import drive

N_ITERS, N_STEPS, N_ENVS, EPISODE = 3, 4, 2, 4
CONFIGS = {"learning_rate": [1e-3, 3e-4], "clip_range": [0.1, 0.2]}
NAMES = ["learning_rate=1e-3,clip_range=0.1", "learning_rate=3e-4,clip_range=0.2"]


def seed_value(key) -> jax.Array:
    """A number that differs between the seeds' keys (so a mixed-up seed shows)."""
    return (jax.random.key_data(key).reshape(-1)[-1] % 5).astype(jnp.float32)


def train_fn(callback):
    """A scripted training: every step rewards ``1000 * lr + clip + seed_value``, every
    episode lasts ``EPISODE`` steps, so every logged mean return is ``EPISODE`` times that."""
    def train(config, key):
        reward = config["learning_rate"] * 1000 + config["clip_range"] + seed_value(key)
        rewards = jnp.broadcast_to(reward, (N_ITERS, N_STEPS, N_ENVS))
        dones = jnp.broadcast_to((jnp.arange(N_STEPS) % EPISODE == EPISODE - 1)[None, :, None],
                                 (N_ITERS, N_STEPS, N_ENVS))
        return drive(callback, rewards, dones, key)[2]

    return train


def expected_return(config: int, key) -> float:
    lr, clip = (np.float32(CONFIGS[n][config]) for n in ("learning_rate", "clip_range"))
    reward = np.float32(lr * np.float32(1000)) + clip + np.float32(seed_value(key))
    return float(np.float32(EPISODE) * np.float32(reward))


def run_sweep(log_dir, seeds=3, writers=("tensorboard", "jsonl"), close=False, **options):
    sweep = callax.Sweep(CONFIGS, seeds=seeds, **options)
    tb = callax.TensorBoardCallback(name="sweep", log_dir=log_dir, flush_every=2,
                                    writers=writers, sweep=sweep)
    callback = callax.CallbackList([tb, callax.HParamsCallback(tb.tb_writer,
                                                               {"algorithm": "mine"})])
    keys = jax.random.split(jax.random.key(0), seeds)
    iterations = jax.jit(sweep.vmap(train_fn(callback)))(keys)
    callax.flush_all()
    if close:  # W&B finishes its runs (their files' exit records) at close
        tb.tb_writer.close()
    return sweep, keys, iterations


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One sweep of 2 configurations x 3 seeds into every writer (TensorBoard, JSON lines and
    offline W&B), compiled once for the tests that read its runs back: ``(log_dir,
    wandb_dir, keys, iterations)``."""
    root = tmp_path_factory.mktemp("sweep")
    wandb_dir = root / "wandb_home"
    wandb_dir.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_DIR", str(wandb_dir))
        env.setenv("WANDB_SILENT", "true")
        env.delenv("WANDB_API_KEY", raising=False)
        log_dir = str(root / "runs")
        _, keys, iterations = run_sweep(log_dir, writers=("tensorboard", "jsonl", "wandb"),
                                        close=True)
    return log_dir, str(wandb_dir), keys, iterations


def test_one_run_per_configuration_and_seed(shared):
    logdir, _, keys, iterations = shared
    assert iterations.shape == (2, 3) and (iterations == N_ITERS).all()
    runs = [r for r in run_dirs(logdir) if "/seeds/" not in r]
    assert runs == [f"sweep/{n}/seed_{s}" for n in NAMES for s in range(3)]
    steps = [N_STEPS * N_ENVS * (i + 1) for i in range(N_ITERS)]
    for c, name in enumerate(NAMES):
        finals = []
        for s in range(3):
            directory = os.path.join(logdir, "sweep", name, f"seed_{s}")
            scalars = read_run(directory)
            assert_steps_increase(scalars)
            value = expected_return(c, keys[s])
            assert scalars["rollout/ep_rew_mean"] == [(t, pytest.approx(value)) for t in steps]
            assert read_jsonl(directory)["rollout/ep_rew_mean"] == scalars["rollout/ep_rew_mean"]
            finals.append(value)
            # Every JSON line names its configuration; the hparams line has its values.
            lines = [json.loads(line) for line in open(os.path.join(directory,
                                                                    "metrics.jsonl"))]
            assert {line["config"] for line in lines} == {name}
            (hparams,) = [line["hparams"] for line in lines if "hparams" in line]
            assert hparams == {"algorithm": "mine", "seed": s,
                               **{k: float(format_value(v[c])) for k, v in CONFIGS.items()}}
        # The statistics over each configuration's seeds, in its own seeds/ runs.
        stats = read_statistics(os.path.join(logdir, "sweep", name))
        assert stats["rollout/ep_rew_mean/mean"] == [
            (t, pytest.approx(np.mean(finals), rel=1e-6)) for t in steps]
        assert stats["rollout/ep_rew_mean/min"][-1][1] == pytest.approx(min(finals))
        assert stats["rollout/ep_rew_mean/max"][-1][1] == pytest.approx(max(finals))
    assert not os.path.exists(os.path.join(logdir, "sweep", "seeds"))  # only per configuration
    # callax summary ranks the configurations (a higher learning rate: more reward here).
    from callax.cli._ranking import rank_sweeps
    from callax.cli._summary import _event_dirs

    ranking = rank_sweeps(logdir, _event_dirs(logdir))["sweep"]
    assert [r["configuration"] for r in ranking] == NAMES and ranking[0]["seeds"] == 3


def test_hparams_dashboard_one_trial_per_configuration_and_seed(shared):
    from test_hparams import tensorboard_session_groups

    logdir = shared[0]
    groups = {g["name"]: g for g in tensorboard_session_groups(logdir, expected=6)}
    expected = {f"seed {s} · {name} · {os.path.basename(logdir)}/sweep": (c, s)
                for c, name in enumerate(NAMES) for s in range(3)}
    assert sorted(groups) == sorted(expected)
    for trial, (c, s) in expected.items():
        group = groups[trial]
        assert group["hparams"] == {"algorithm": "mine", "seed": float(s),
                                    **{k: pytest.approx(v[c]) for k, v in CONFIGS.items()}}
        run = read_run(os.path.join(logdir, "sweep", NAMES[c], f"seed_{s}"))
        metrics = {m["name"]["tag"]: (m["trainingStep"], m["value"])
                   for m in group["metricValues"]}
        assert metrics["rollout/ep_rew_mean"] == (run["rollout/ep_rew_mean"][-1][0],
                                                  pytest.approx(run["rollout/ep_rew_mean"][-1][1]))


def test_seeds_outer_axis(logdir):
    sweep, keys, iterations = run_sweep(logdir, seeds=2, seeds_outer=True)
    assert iterations.shape == (2, 2)
    for c, name in enumerate(NAMES):
        for s in range(2):
            scalars = read_run(os.path.join(logdir, "sweep", name, f"seed_{s}"))
            assert scalars["rollout/ep_rew_mean"][-1][1] == pytest.approx(
                expected_return(c, keys[s]))


def test_wandb_runs_grouped_by_configuration(shared):
    from wandb_records import wandb_runs

    log_dir, wandb_dir, keys, _ = shared
    runs = wandb_runs(wandb_dir)
    assert sorted(runs) == sorted(f"sweep/{n}/seed_{s}" for n in NAMES for s in range(3))
    for c, name in enumerate(NAMES):
        assert all(runs[f"sweep/{name}/seed_{s}"].finished for s in range(3))
        for s in range(3):
            run = runs[f"sweep/{name}/seed_{s}"]
            assert run.run.run_group == f"sweep/{name}"
            for key, values in CONFIGS.items():
                assert run.config[key] == pytest.approx(values[c])
            assert run.config["seed"] == s and run.config["algorithm"] == "mine"
            directory = os.path.join(log_dir, "sweep", name, f"seed_{s}")
            assert run.scalars()["rollout/ep_rew_mean"] == read_jsonl(directory)[
                "rollout/ep_rew_mean"]
            assert run.scalars()["rollout/ep_rew_mean"][-1][1] == pytest.approx(
                expected_return(c, keys[s]))


def test_a_batch_other_than_declared_fails(logdir):
    sweep = callax.Sweep(CONFIGS, seeds=3)
    tb = callax.TensorBoardCallback(name="bad", log_dir=logdir, sweep=sweep)
    keys = jax.random.split(jax.random.key(0), 2)  # two seeds, not three
    with pytest.raises(Exception, match="declares 2 configurations x 3 seeds"):
        jax.jit(sweep.vmap(train_fn(tb)))(keys)
        jax.effects_barrier()
    assert not os.path.exists(os.path.join(logdir, "bad", "seed_0"))  # never misnamed
    # JAX keeps a failed host call's error in its ordered-effects token: later host calls
    # of this process would raise it again. Leave the process clean for the other tests.
    from jax._src import dispatch

    dispatch.runtime_tokens.clear()


def test_sweep_construction():
    grid = callax.Sweep.grid({"learning_rate": [1e-3, 3e-4], "ent_coef": [0.0, 0.01]},
                             seeds=4)
    assert grid.configurations == 4 and grid.size == 16 and grid.names == (
        "learning_rate", "ent_coef")
    np.testing.assert_allclose(grid.values["ent_coef"], [0, 0.01, 0, 0.01])
    layout = grid.layout()
    assert [layout.name(c) for c in range(4)] == [
        "learning_rate=1e-3,ent_coef=0", "learning_rate=1e-3,ent_coef=0.01",
        "learning_rate=3e-4,ent_coef=0", "learning_rate=3e-4,ent_coef=0.01"]
    assert layout.locate(5) == (1, 1)
    assert SweepLayout(layout.names, layout.table, 4, seeds_outer=True).locate(5) == (1, 1)
    assert SweepLayout(layout.names, layout.table, 4, seeds_outer=True).locate(6) == (2, 1)
    assert parse_config_name("learning_rate=3e-4,ent_coef=0") == {"learning_rate": 3e-4,
                                                                   "ent_coef": 0.0}
    assert parse_config_name("seed_0") is None
    assert [format_value(v) for v in (1e-6, 0.2, 100.0, 2.5e-3)] == ["1e-6", "0.2", "100",
                                                                    "0.0025"]
    with pytest.raises(ValueError, match="one length"):
        callax.Sweep({"a": [1.0, 2.0], "b": [1.0]}, seeds=2)
    with pytest.raises(ValueError, match="identifiers"):
        callax.Sweep({"a/b": [1.0]}, seeds=2)
    with pytest.raises(ValueError, match="positive int"):
        callax.Sweep({"a": [1.0]}, seeds=0)
    with pytest.raises(ValueError, match="finite"):
        callax.Sweep({"a": [float("nan")]}, seeds=1).layout()
    with pytest.raises(TypeError, match="sweep"):
        callax.TensorBoardCallback(log_dir="unused_runs", sweep={"a": [1.0]})


def write_jsonl_run(directory: str, points: list[tuple[int, float]]) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "metrics.jsonl"), "w") as file:
        for step, value in points:
            file.write(json.dumps({"step": step, "tag": "rollout/ep_rew_mean", "value": value,
                                   "wall_time": 0.0}) + "\n")


def test_summary_ranks_configurations_by_iqm_with_overlapping_cis(tmp_path, capsys):
    from callax import cli
    from callax._iqm import interquartile_mean, stratified_bootstrap_ci

    finals = {"learning_rate=0.01": [300.0, 320.0, 310.0, 280.0],
              "learning_rate=3e-4": [330.0, 250.0, 400.0, 200.0],
              "learning_rate=1e-6": [20.0, 22.0, 19.0, 21.0]}
    for config, values in finals.items():
        for s, value in enumerate(values):
            write_jsonl_run(os.path.join(tmp_path, "sw", config, f"seed_{s}"),
                            [(10, value / 2), (20, value)])
    assert cli.main(["summary", str(tmp_path), "--json"]) == 0
    ranking = json.loads(capsys.readouterr().out)["sweeps"]["sw"]
    expected = sorted(finals, key=lambda c: -interquartile_mean(finals[c]))
    assert [r["configuration"] for r in ranking] == expected
    assert expected[-1] == "learning_rate=1e-6"
    best = stratified_bootstrap_ci(finals[expected[0]])
    for rank, row in enumerate(ranking, 1):
        values = finals[row["configuration"]]
        low, high = stratified_bootstrap_ci(values)
        assert row["rank"] == rank and row["seeds"] == 4
        assert row["tag"] == "rollout/ep_rew_mean"
        assert row["iqm"] == pytest.approx(interquartile_mean(values))
        assert (row["ci95_low"], row["ci95_high"]) == (pytest.approx(low), pytest.approx(high))
        assert row["overlaps_best"] == (high >= best[0] and low <= best[1])
        assert row["config"] == parse_config_name(row["configuration"])
    assert ranking[0]["overlaps_best"] and ranking[1]["overlaps_best"]
    assert not ranking[2]["overlaps_best"]
    # Over-seed aggregates per configuration, as for any run's seeds.
    over = json.loads(_summary_json(cli, tmp_path, capsys))
    for config, values in finals.items():
        group = over[os.path.join("sw", config, "seed_*")]["rollout/ep_rew_mean"]
        assert group["iqm"] == pytest.approx(interquartile_mean(values))
    # The table: one line per configuration, best first, * where the CI overlaps the best.
    assert cli.main(["summary", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    block = text[text.index("Sweep sw:"):].splitlines()
    assert "final rollout/ep_rew_mean" in block[0]
    rows = [line.split() for line in block[2:5]]
    assert [r[1] for r in rows] == expected
    assert [r[-1] == "*" for r in rows] == [True, True, False]


def _summary_json(cli, root, capsys) -> str:
    assert cli.main(["summary", str(root), "--json"]) == 0
    return capsys.readouterr().out
