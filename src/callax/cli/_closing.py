"""What ``callax train`` prints when it is done: each seed's final return, read back from
what was written, and the next step for each chosen writer."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import urllib.parse
from collections.abc import Sequence

from .._writer._read import read_run

__all__ = ["dashboard_url", "final_values", "next_steps", "outputs", "view_command"]

RETURN_TAG = "rollout/ep_rew_mean"
FILE_WRITERS = ("tensorboard", "jsonl")
TENSORBOARD = "http://localhost:6006/"
"""Where ``tensorboard --logdir`` serves when its default port is free."""


def outputs(writers: Sequence[str]) -> tuple[str, ...]:
    """What a run chosen with `writers` writes: `writers`, and with no writer whose files
    callax reads (W&B alone: its offline files have no public reader) callax's own JSON
    lines too, which the closing summary and ``callax summary`` read."""
    if any(w in FILE_WRITERS for w in writers):
        return tuple(writers)
    return (*writers, "jsonl")


def final_values(run_dir: str, seeds: int) -> list[float | None]:
    """Each seed's last ``rollout/ep_rew_mean`` (``None``: no finished episode), read back
    from what the seed's run holds (event files, else JSON lines)."""
    out: list[float | None] = []
    for seed in range(seeds):
        directory = os.path.join(run_dir, f"seed_{seed}")
        points = read_run(directory).get(RETURN_TAG, []) if os.path.isdir(directory) else []
        out.append(points[-1][1] if points else None)
    return out


def view_command(logdir: str) -> str:
    """The shell command that opens ``logdir`` in TensorBoard, with its install if needed."""
    view = f"tensorboard --logdir {shlex.quote(logdir)}"
    if importlib.util.find_spec("tensorboard") is None:
        return f"python -m pip install tensorboard && {view}"
    return view


def dashboard_url(address: str = TENSORBOARD, tag: str = RETURN_TAG) -> str:
    """TensorBoard's *Time Series* tab at `address` with the scalar card of `tag` pinned:
    drawn first, above every group. TensorBoard (2.21) sorts each group's tags by name, so
    ``rollout/ep_len_mean`` comes before the return; a pin is the one order a URL can set
    (the ``pinnedCards`` query parameter: a JSON list of ``{"plugin", "tag"}``, here
    percent-encoded so that a terminal shows one clickable link)."""
    if not tag:
        raise ValueError("dashboard_url: the pinned tag must not be empty")
    pins = json.dumps([{"plugin": "scalars", "tag": tag}], separators=(",", ":"))
    return f"{address}?pinnedCards={urllib.parse.quote(pins, safe='')}#timeseries"


def _has_event_files(root: str) -> bool:
    return any(f.startswith("events.out.tfevents") for _, _, files in os.walk(root)
               for f in files)


def next_steps(run_dir: str, wandb_offline_runs: Sequence[str] = ()) -> list[str]:
    """The shell commands that come next: ``tensorboard --logdir <run>`` when the run has
    event files (TensorBoard then names the runs ``seed_0``, ``seeds/mean``, ...: the seed
    is what a card shows) and, after it, the address that opens its Time Series tab on the
    return (:func:`dashboard_url`); ``callax summary <run>`` always, and ``wandb sync`` for
    the offline W&B runs made."""
    steps = []
    if _has_event_files(run_dir):
        steps.append(view_command(run_dir))
        steps.append(f"then open {dashboard_url()}  (the return pinned first)")
    steps.append(f"callax summary {shlex.quote(run_dir)}")
    if wandb_offline_runs:
        steps.append("wandb sync " + " ".join(shlex.quote(d) for d in wandb_offline_runs))
    return steps
