"""The W&B writer, with the real ``wandb`` package offline (no network, no key): the run
files it writes are read back with wandb's own record protobufs (``wandb_records``) and
compared point by point with the event files of the same run."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import wandb  # noqa: F401 - the test extra installs it (no silent skip)

import callax
from callax._writer._read import read_scalars
from callax.writers import read_jsonl
from wandb_records import wandb_runs  # noqa: E402

WRITERS = ("tensorboard", "jsonl", "wandb")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    wandb_dir = tmp_path / "wandb_home"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return str(wandb_dir)


def same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for tag in a:
        assert [s for s, _ in a[tag]] == [s for s, _ in b[tag]], tag
        for (_, x), (_, y) in zip(a[tag], b[tag], strict=True):
            assert x == y or (math.isnan(x) and math.isnan(y)), (tag, x, y)


def test_wandb_one_run_per_seed_point_by_point(tmp_path, offline):
    run_dir = str(tmp_path / "ppo_run")
    writer = callax.JITSummaryWriter(run_dir, writers=WRITERS)

    def metrics(w, x, step):
        w.add_dict("train", {"loss": x, "odd": jnp.where(x > 1, jnp.nan, x)}, global_step=step)

    def events(w, x, step):
        def update():
            callax.SACEvents.policy_loss(0, 2.0 * x)
            callax.SACEvents.critic_value(1, x - 1.0)

        _, record = callax.events.record(update)()
        record.write(w, step)

    seeds = jnp.arange(3.0)
    for i in range(4):
        # Tags at unrelated, interleaving steps: iteration metrics at 0, 10, 20, 30, SAC
        # events at 5, 15, ... (a single increasing W&B step could not hold both).
        jax.vmap(metrics, in_axes=(None, 0, None))(writer, seeds + i / 4, 10 * i)
        jax.vmap(events, in_axes=(None, 0, None))(writer, seeds * 0.5 + i, 10 * i + 5)
    from callax._writer import write_hparams

    jax.effects_barrier()
    write_hparams(int(writer.handle), np.arange(3), {"lr": 0.25, "algo": "sac", "tuned": True})
    writer.close()

    runs = wandb_runs(offline)
    assert sorted(runs) == [f"ppo_run/seed_{i}" for i in range(3)]
    for seed in range(3):
        run = runs[f"ppo_run/seed_{seed}"]
        directory = os.path.join(run_dir, f"seed_{seed}")
        events_read = read_scalars(directory)
        assert any(tag.startswith("trainer/") for tag in events_read)
        assert len(events_read) == 4 and all(len(p) == 4 for p in events_read.values())
        same(run.scalars(), events_read)
        same(run.scalars(), read_jsonl(directory))
        assert run.run.run_group == "ppo_run"
        assert run.config["lr"] == 0.25 and run.config["algo"] == "sac"
        assert run.config["tuned"] is True
        for tag in events_read:
            assert run.metrics[tag] == "global_step"
        assert run.finished


def test_wandb_histograms(tmp_path, offline):
    from callax._writer import write_histograms

    writer = callax.JITSummaryWriter(str(tmp_path / "h"), writers=("wandb",))
    stats = np.array([[[0.0, 3.0, 4.0, 6.0, 14.0, 1.0]]])
    for step in (3, 7):
        write_histograms(int(writer.handle), ("w",), np.array([-1]), np.array([step]), stats,
                         np.array([[[1.0, 1.0, 2.0]]]))
    writer.close()
    (run,) = wandb_runs(offline).values()
    rows = [r for r in run.history if "w" in r]
    assert [r["global_step"] for r in rows] == [3, 7]
    assert rows[0]["w"]["_type"] == "histogram"
    assert rows[0]["w"]["values"] == [1, 1, 2]
    assert rows[0]["w"]["bins"] == [0.0, 1.0, 2.0, 3.0]


def test_wandb_a_failing_writer_leaves_the_others(tmp_path, offline, monkeypatch):
    from callax._writer import _wandb

    def broken(self, *args):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(_wandb.WandbWriter, "write_scalars", broken)
    writer = callax.JITSummaryWriter(str(tmp_path / "f"), writers=WRITERS)
    with pytest.warns(RuntimeWarning, match="W&B is down"):
        for step in range(3):
            writer.add_scalar("x", float(step), step)
        jax.effects_barrier()
        with pytest.raises(callax.WriteError, match="W&B is down") as info:
            writer.flush()
    assert info.value.lost == 3
    expected = {"x": [(s, float(s)) for s in range(3)]}
    assert read_scalars(str(tmp_path / "f")) == expected
    assert read_jsonl(str(tmp_path / "f")) == expected
    writer.close()


def test_wandb_written_at_exit(tmp_path, offline):
    """Nothing flushed or closed: interpreter exit writes every queued point to every
    writer, W&B's run finished after them."""
    script = textwrap.dedent(f"""
        import callax
        w = callax.JITSummaryWriter({str(tmp_path / "exit")!r}, writers={WRITERS!r})
        for step in range(200):
            w.add_dict("", {{"a": step * 0.5, "b": -step}}, global_step=step)
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    expected = {"a": [(s, s * 0.5) for s in range(200)], "b": [(s, -s) for s in range(200)]}
    assert read_scalars(str(tmp_path / "exit")) == expected
    assert read_jsonl(str(tmp_path / "exit")) == expected
    (run,) = wandb_runs(offline).values()
    assert run.scalars() == expected
    assert run.finished


def test_missing_wandb_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'callax\[wandb\]'"):
        callax.JITSummaryWriter(str(tmp_path), writers=("tensorboard", "wandb"))
