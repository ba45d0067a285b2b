"""tensorboardX's common calls on ``JITSummaryWriter`` (issue 26, "A drop-in for
tensorboardX's common calls"): one-element arrays, ``add_text`` and ``add_hparams`` from a
plain Python loop, each read back from every writer (TensorBoard's own readers, JSON lines,
W&B's offline run file)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

import callax
from callax import JITSummaryWriter
from callax.writers import read_jsonl
from conftest import read_run, sync


def accumulator(directory: str) -> EventAccumulator:
    sync()
    acc = EventAccumulator(directory, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def jsonl_lines(directory: str) -> list[dict]:
    with open(os.path.join(directory, "metrics.jsonl"), encoding="utf-8") as file:
        return [json.loads(line) for line in file]


@pytest.mark.parametrize("value", [
    np.array([1.5]), np.array([[1.5]]), jnp.array([1.5]), jnp.ones((1, 1, 1)) * 1.5,
    np.array([3], np.int64) - 1.5, np.float32([1.5]),
], ids=["np(1,)", "np(1,1)", "jnp(1,)", "jnp(1,1,1)", "int64(1,)", "f32(1,)"])
def test_one_element_arrays_are_logged_eagerly_and_in_jit(logdir, value):
    """CleanRL's ``info["episode"]["r"]`` has shape (1,): tensorboardX takes it."""
    writer = JITSummaryWriter(logdir)
    writer.add_scalar("charts/episodic_return", value, 3)
    writer.add_dict("d", {"r": value}, global_step=4)
    jax.jit(lambda w, v: w.add_scalar("jit", v, 5))(writer, jnp.asarray(value, jnp.float32))
    writer.flush()
    run = read_run(logdir)
    assert run == {"charts/episodic_return": [(3, 1.5)], "d/r": [(4, 1.5)], "jit": [(5, 1.5)]}


def test_several_elements_still_fail_naming_the_tag(logdir):
    writer = JITSummaryWriter(logdir)
    with pytest.raises(ValueError, match=r"'x' must be a scalar, got shape \(2, 1\)"):
        writer.add_scalar("x", np.ones((2, 1)), 0)
    with pytest.raises(ValueError, match=r"'x' must be a scalar, got shape \(0,\)"):
        writer.add_scalar("x", np.ones((0,)), 0)


TABLE = "|param|value|\n|-|-|\n|learning_rate|0.0003|\n|tau|0.005|"


def test_add_text_reads_back_in_tensorboards_text_plugin_and_json_lines(logdir):
    writer = JITSummaryWriter(logdir, writers=("tensorboard", "jsonl"))
    writer.add_scalar("loss", 1.0, 0)
    writer.add_text("hyperparameters", TABLE)  # global_step=None: the tag's first text, 0
    writer.add_text("notes", "ünïcode ✓", 10)
    writer.add_text("notes", "second", global_step=None)  # the next step: 11
    writer.add_text("notes", "goes back", 5)  # dropped (TensorBoard would purge 10 and 11)
    with pytest.warns(RuntimeWarning, match="dropped 1 point.*1 of 'notes'"):
        writer.flush()
    acc = accumulator(logdir)
    assert set(acc.PluginTagToContent("text")) == {"hyperparameters", "notes"}
    texts = {tag: [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode())
                   for e in acc.Tensors(tag)] for tag in ("hyperparameters", "notes")}
    assert texts == {"hyperparameters": [(0, TABLE)],
                     "notes": [(10, "ünïcode ✓"), (11, "second")]}
    assert callax._writer.get_run(int(writer.handle)).dropped == {"notes": 1}
    lines = [(line["tag"], line["step"], line["text"]) for line in jsonl_lines(logdir)
             if "text" in line]
    assert lines == [("hyperparameters", 0, TABLE), ("notes", 10, "ünïcode ✓"),
                     ("notes", 11, "second")]
    assert read_jsonl(logdir) == {"loss": [(0, 1.0)]}  # text lines are not scalars


def test_add_text_and_add_hparams_are_eager_only_and_check_their_arguments(logdir):
    writer = JITSummaryWriter(logdir)
    with pytest.raises(RuntimeError, match="add_text writes from Python"):
        jax.jit(lambda w: w.add_text("t", "x", 0))(writer)
    with pytest.raises(RuntimeError, match="add_hparams writes from Python"):
        jax.jit(lambda w: w.add_hparams({"lr": 0.1}, {}))(writer)
    with pytest.raises(TypeError, match="must be a str|text_string"):  # or the type hook
        writer.add_text("t", 3.0, 0)
    with pytest.raises(ValueError, match="invalid TensorBoard tag"):
        writer.add_text("/t", "x", 0)
    with pytest.raises(ValueError, match="negative global_step"):
        writer.add_text("t", "x", -1)
    with pytest.raises(TypeError, match="must be a bool, number or str|hparams_of"):
        writer.add_hparams({"lr": [0.1]}, {})
    with pytest.raises(TypeError, match="metrics must be a mapping|metric_dict"):
        writer.add_hparams({"lr": 0.1}, [1.0])


def test_add_hparams_from_a_plain_loop(logdir):
    """The HParams session (start and end) goes into the run itself, the metrics as its
    scalars; TensorBoard's HParams plugin data reads back with TensorBoard's protobufs."""
    writer = JITSummaryWriter(logdir, writers=("tensorboard", "jsonl"))
    for step in range(3):
        writer.add_scalar("charts/episodic_return", float(step), step)
    hparams = {"learning_rate": 3e-4, "env_id": "Pendulum-v1", "cuda": False, "seed": 1}
    writer.add_hparams(hparams, {"charts/episodic_return": 7.5}, global_step=3)
    writer.flush()
    acc = accumulator(logdir)
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    end = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_end_info"]).session_end_info
    assert start.hparams["learning_rate"].number_value == pytest.approx(3e-4)
    assert start.hparams["env_id"].string_value == "Pendulum-v1"
    assert start.hparams["cuda"].bool_value is False
    assert start.hparams["seed"].number_value == 1.0
    assert end.status == 1  # STATUS_SUCCESS
    assert read_run(logdir) == {"charts/episodic_return": [(0, 0.0), (1, 1.0), (2, 2.0),
                                                           (3, 7.5)]}
    lines = jsonl_lines(logdir)
    assert [line["hparams"] for line in lines if "hparams" in line] == [hparams]


def test_add_hparams_shows_in_tensorboards_hparams_dashboard(logdir):
    from test_hparams import tensorboard_session_groups

    writer = JITSummaryWriter(os.path.join(logdir, "td3"))
    writer.add_hparams({"learning_rate": 3e-4, "policy_noise": 0.2}, {"return": -150.0},
                       global_step=0)
    writer.add_scalar("return", -120.0, 1)  # later points of a metric: the last one shows
    writer.close()
    (group,) = tensorboard_session_groups(logdir, expected=1)
    assert group["hparams"] == {"learning_rate": 3e-4, "policy_noise": 0.2}
    metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
    assert metrics == {"return": -120.0}


def test_add_text_and_hparams_reach_wandb(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from wandb_records import wandb_runs

    home = tmp_path / "wandb_home"
    home.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(home))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    writer = JITSummaryWriter(str(tmp_path / "cleanrl"), writers=("wandb",))
    writer.add_text("hyperparameters", TABLE, 0)
    writer.add_hparams({"learning_rate": 3e-4, "env_id": "Pendulum-v1"}, {"r": 1.0},
                       global_step=0)
    writer.add_scalar("r", 2.0, 1)
    writer.close()
    (run,) = wandb_runs(str(home)).values()
    texts = [(row["global_step"], row["hyperparameters"]) for row in run.history
             if "hyperparameters" in row]
    assert texts == [(0, TABLE)]
    assert run.config["learning_rate"] == 3e-4 and run.config["env_id"] == "Pendulum-v1"
    scalars = [(row["global_step"], row["r"]) for row in run.history if "r" in row]
    assert scalars == [(0, 1.0), (1, 2.0)]
