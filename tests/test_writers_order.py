"""Program order per writer: random jitted programs (tests/order_model.py) written to
TensorBoard, JSON lines and W&B (offline) at once; what each writer holds must equal the
model's points in program order (a reordered, dropped or duplicated write fails)."""

from __future__ import annotations

import os

import jax
import pytest

import callax
from callax.writers import read_jsonl
from conftest import read_run, run_dirs, sync
from order_model import (
    RandomChoices,
    build,
    count_points,
    differences,
    generate,
    kinds_of,
    model as order_model,
)

pytest.importorskip("wandb")

from wandb_records import wandb_runs  # noqa: E402

WRITERS = ("tensorboard", "jsonl", "wandb")


def _programs(n: int) -> list[tuple[int, dict]]:
    """``n`` small programs with a vmap and a loop (each compiles once)."""
    out = []
    for seed in range(1000):
        program = generate(RandomChoices(seed), writers=2, max_writes=24, max_sites=6,
                           max_seeds=3)
        kinds = kinds_of(program)
        if "vmap" in kinds and len(kinds) >= 5 and count_points(order_model(program, 0)) >= 8:
            out.append((seed, program))
        if len(out) == n:
            return out
    raise AssertionError("too few programs")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Each program run once into fresh writers; ``[(case dir, W&B home, program)]``."""
    root = str(tmp_path_factory.mktemp("order_writers"))
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_DIR", "WANDB_SILENT")}
    cases = []
    try:
        for seed, program in _programs(3):
            case = os.path.join(root, f"case_{seed}")
            home = os.path.join(root, f"wandb_{seed}")  # read by each W&B run's init
            os.makedirs(home)
            os.environ.update(WANDB_MODE="offline", WANDB_DIR=home, WANDB_SILENT="true")
            writers = [callax.JITSummaryWriter(os.path.join(case, f"w{k}"), writers=WRITERS)
                       for k in range(2)]
            f = build(program, writers, 0)
            jax.jit(lambda f=f: f(0.0))().block_until_ready()
            sync()
            for w in writers:
                w.close()  # finishes the W&B runs
            cases.append((case, home, program))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return cases


def _read(writer: str, case: str, home: str) -> dict:
    """``{run: {tag: [(step, value)]}}`` as one writer holds it (``run``: ``w<k>`` or
    ``w<k>/seed_<i>``, which is also the W&B run's name)."""
    if writer == "tensorboard":
        return {d: read_run(os.path.join(case, d)) for d in run_dirs(case)}
    if writer == "jsonl":
        found = [os.path.relpath(d, case) for d, _, files in os.walk(case)
                 if "metrics.jsonl" in files]
        return {d: read_jsonl(os.path.join(case, d)) for d in found}
    return {name: run.scalars() for name, run in wandb_runs(home).items()}


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_keeps_program_order(written, writer):
    for case, home, program in written:
        got = _read(writer, case, home)
        want = order_model(program, 0)
        diff = differences(got, want)
        assert not diff, (f"{writer} {case}: expected {count_points(want)} points, got "
                          f"{count_points(got)}\n" + "\n".join(diff[:12]))
