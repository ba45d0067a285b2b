"""Loops that are not callax's trainers (issue 26, "A test per shape"): a CleanRL-shaped
loop (Python loop over env steps, a jitted update, eager writes and eager event records)
reads every point back, from TensorBoard's ``EventAccumulator`` and from JSON lines; and
the signatures written out in the docs match the code."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import callax
from callax import events
from callax.events import EventRecord, SACEvents, discover, record
from callax.writers import read_jsonl
from conftest import assert_steps_increase, read_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_step(params, batch):
    """A jitted update with losses from jax.grad, recording events (as CleanRL's TD3 would
    with callax's SACEvents)."""
    obs, target = batch

    def qf_loss(w):
        q = obs @ w
        return jnp.mean((q - target) ** 2), q

    (loss, q), grad = jax.value_and_grad(qf_loss, has_aux=True)(params)
    SACEvents.critic_value(0, q.mean())
    SACEvents.critic_value_loss(0, loss)
    SACEvents.policy_loss(None, -q.mean())
    return params - 0.05 * grad, loss


@jax.jit
def update(params, batch, epoch):
    (params, loss), rec = record(train_step)(params, batch)
    return params, loss, epoch.merge(rec)


def epoch_end(size):
    SACEvents.buffer_size(size)


def test_a_cleanrl_shaped_loop_reads_every_point_back(tmp_path):
    """Python loop over env steps; episode returns of shape (1,) (CleanRL's
    ``info["episode"]["r"]``), losses as jax.Array, SPS as an int, a hyperparameter table,
    hparams, and SAC events accumulated on the device and written eagerly every 10 updates.
    Every point written is computed here independently and compared with what is read."""
    args = {"learning_rate": 0.05, "batch_size": 4, "seed": 3, "env_id": "Toy-v0"}
    writer = callax.JITSummaryWriter(str(tmp_path / "run"), writers=("tensorboard", "jsonl"))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(
        f"|{k}|{v}|" for k, v in args.items()))
    rng = np.random.default_rng(args["seed"])
    params = jnp.zeros(3)
    epoch = discover(train_step, params, (jnp.ones((4, 3)), jnp.ones(4)))
    expected: dict[str, list[tuple[int, float]]] = {}

    def expect(tag, step, value):
        expected.setdefault(tag, []).append((step, float(np.float32(value))))

    episodic_return, learning_starts, window = 0.0, 20, []
    for global_step in range(200):
        reward = float(rng.normal())
        episodic_return += reward
        if global_step % 25 == 24:  # an episode ends: CleanRL's array of shape (1,)
            writer.add_scalar("charts/episodic_return", np.array([episodic_return]),
                              global_step)
            expect("charts/episodic_return", global_step, episodic_return)
            writer.add_scalar("charts/episodic_length", np.array([25], np.int32), global_step)
            expect("charts/episodic_length", global_step, 25)
            episodic_return = 0.0
        if global_step < learning_starts:
            continue
        obs = rng.normal(size=(4, 3)).astype(np.float32)
        target = rng.normal(size=4).astype(np.float32)
        q = np.asarray(obs @ np.asarray(params))
        window.append({"q": q.mean(), "loss": np.mean((q - target) ** 2)})
        params, loss, epoch = update(params, (obs, target), epoch)
        if global_step % 10 == 0:
            writer.add_scalar("losses/qf1_loss", loss, global_step)  # a jax.Array
            expect("losses/qf1_loss", global_step, np.asarray(loss))
            writer.add_scalar("charts/SPS", int(global_step / 0.5), global_step)
            expect("charts/SPS", global_step, int(global_step / 0.5))
            _, end = record(epoch_end)(global_step + 1)
            epoch.merge(end).write(writer, global_step)  # eager: reduced with NumPy
            epoch = epoch.reset()
            expect("trainer/critic_value/0", global_step,
                   np.mean(np.float32([u["q"] for u in window])))
            expect("trainer/critic_value_loss/0", global_step,
                   np.mean(np.float32([u["loss"] for u in window])))
            expect("trainer/policy_loss", global_step,
                   np.mean(np.float32([-u["q"] for u in window])))
            expect("trainer/buffer_size", global_step, global_step + 1)
            window = []  # the updates since the last write
    writer.add_hparams(args, {"charts/episodic_return": episodic_return}, global_step=200)
    expect("charts/episodic_return", 200, episodic_return)
    writer.close()

    run = read_run(writer.log_dir)
    lines = read_jsonl(writer.log_dir)
    assert sorted(run) == sorted(expected) == sorted(lines)
    for tag, points in expected.items():
        assert [s for s, _ in run[tag]] == [s for s, _ in points], tag
        np.testing.assert_allclose([v for _, v in run[tag]], [v for _, v in points],
                                   rtol=1e-5, atol=1e-6, err_msg=tag)
        assert lines[tag] == run[tag], tag
    assert_steps_increase(run)
    assert len(run["trainer/critic_value_loss/0"]) == 18  # steps 30, 40, ..., 190 and 20


def written_out(path: str) -> dict[str, list[str]]:
    """``{event: [parameter, ...]}`` from the ``class SACEvents`` text block of a page."""
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    block = text[text.index("class SACEvents(EventInterface):"):]
    block = block[:block.index("```")]
    found = {}
    for name, params in re.findall(r"^\s{4}(\w+)\(([^)]*)\)\s*$", block, re.M):
        found[name] = [p.split(":")[0].strip() for p in params.split(",") if p.strip()]
    return found


@pytest.mark.parametrize("path", ["docs/sac.md", "docs/foreign-loops.md"])
def test_the_signatures_written_in_the_docs_are_the_code(path):
    """The Markdown source lists every SACEvents event with its parameters (the reference
    section renders them only in the built site); this fails when the two drift."""
    code = {name: list(inspect.signature(getattr(SACEvents, name)).parameters)
            for name in SACEvents.events()}
    assert written_out(path) == code


def _text_block(path: str, start: str) -> str:
    """The lines of the ``text`` block of ``path`` from the line that starts with ``start``
    to the end of the block."""
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    block = text[text.index("\n" + start) + 1:]
    return block[:block.index("```")]


_ENTRY = re.compile(r"^(?:EventRecord\.)?(\w+)(?:\((.*?)\))?(?:\s*->\s*(.+?))?$")


def written_members(path: str) -> dict[str, tuple[str | None, str | None]]:
    """``{member: (parameters, return)}`` of the ``class EventRecord`` block of a page: each
    indented line, comment cut, holds ``;``-separated entries ``name(params) -> return``;
    ``parameters`` is ``None`` for an attribute or property."""
    block = _text_block(path, "class EventRecord")
    found = {}
    for line in block.splitlines()[1:]:
        if not line.startswith("    "):
            break
        for entry in line.split("#")[0].split(";"):
            match = _ENTRY.match(entry.strip())
            assert match, f"{path}: cannot read {entry.strip()!r} in the EventRecord block"
            name, params, returns = match.groups()
            found[name] = (params, returns)
    return found


def _parameters(fn) -> str:
    """``fn``'s parameters as the docs write them: names, ``*``, ``=default`` (no types)."""
    out, star = [], False
    for p in inspect.signature(fn).parameters.values():
        if p.name in ("self", "cls"):
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            out.append("*")
            star = True
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        star = star or p.kind is p.VAR_POSITIONAL
        default = "" if p.default is p.empty else f"={p.default!r}"
        out.append(f"{prefix}{p.name}{default}")
    return ", ".join(out)


def _exact_return(annotation: str) -> str | None:
    # Array returns are written with their shapes (f32[n]); other annotations as they are.
    return None if "jax.Array" in annotation else annotation


@pytest.mark.parametrize("path", ["docs/events.md", "docs/foreign-loops.md"])
def test_the_event_record_written_in_the_docs_is_the_code(path):
    """The ``class EventRecord`` block of the Markdown source lists every public method
    and property of ``EventRecord`` with the code's parameters (names, keyword-only
    marker, defaults) and return types; fails when the two drift."""
    written = written_members(path)
    fields = {f.name for f in dataclasses.fields(EventRecord)}
    code = {}
    for name in dir(EventRecord):
        member = inspect.getattr_static(EventRecord, name)
        if name.startswith("_") or name in fields:
            continue
        if isinstance(member, property):
            code[name] = (None, member.fget.__annotations__["return"])
        elif callable(member) or isinstance(member, classmethod | staticmethod):
            fn = getattr(EventRecord, name)
            code[name] = (_parameters(fn), inspect.signature(fn).return_annotation)
    assert set(written) - fields == set(code), path
    for name, (params, returns) in code.items():
        assert written[name][0] == params, f"{path}: {name}({written[name][0]}) != ({params})"
        if _exact_return(returns) is not None:
            assert written[name][1] == returns, f"{path}: {name} -> {written[name][1]}"


@pytest.mark.parametrize("path", ["docs/events.md", "docs/foreign-loops.md"])
def test_the_event_functions_written_in_the_docs_are_the_code(path):
    """The module-level functions of ``callax.events`` written at the start of a line of the
    reference block (``record(fn) -> ...``, ``timestamp(after) -> ...``) have the code's
    parameters."""
    block = _text_block(path, "class SACEvents" if "foreign" in path else
                        "class EventInterface")
    written = {}
    for line in block.splitlines():
        for entry in line.split("#")[0].split(";"):
            match = re.match(r"^\s*(\w+)\((.*?)\)\s*->", entry)
            if match and not line.startswith(" ") and match.group(1) in events.__all__:
                written[match.group(1)] = match.group(2)
    assert {"record", "discover", "timestamp", "sequenced", "elapsed"} <= set(written), path
    for name, params in written.items():
        assert params == _parameters(getattr(events, name)), f"{path}: {name}({params})"
