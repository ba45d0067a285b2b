"""What ``callax train`` prints when it is done: each seed's final return, read back from
what was written, and the next step for each chosen writer."""

from __future__ import annotations

import importlib.util
import os
import shlex
import threading
from collections.abc import Sequence

import numpy as np

from .._writer import AbstractWriter, Destination
from .._writer._read import read_run

__all__ = ["KeptValues", "final_values", "next_steps", "view_command"]

RETURN_TAG = "rollout/ep_rew_mean"
FILE_WRITERS = ("tensorboard", "jsonl")


class KeptValues(AbstractWriter):
    """Keeps the last point of every tag of each seed in memory: the closing summary's
    source when no writer leaves files callax can read (W&B alone)."""

    last: dict[str, dict[str, tuple[int, float]]] = {}
    """``{seed directory: {tag: (step, value)}}``, over every run of the process."""
    groups_seeds = True  # the statistics over seeds are not needed here
    _lock = threading.Lock()

    def __init__(self, destination: Destination):
        self.path = destination.directory
        with self._lock:
            self._last = KeptValues.last.setdefault(destination.directory, {})

    def write_scalars(self, tags, steps, values, valid, wall_times) -> None:
        for column, tag in enumerate(tags):
            rows = np.flatnonzero(valid[:, column])
            if rows.size:
                self._last[tag] = (int(steps[rows[-1]]), float(values[rows[-1], column]))

    def close(self) -> None:
        pass


def final_values(run_dir: str, seeds: int, writers: Sequence[str]) -> list[float | None]:
    """Each seed's last ``rollout/ep_rew_mean`` (``None``: no finished episode), read from
    the seed's event files or JSON lines when a file writer was chosen, else from
    :class:`KeptValues`."""
    out: list[float | None] = []
    for seed in range(seeds):
        directory = os.path.join(run_dir, f"seed_{seed}")
        if any(w in FILE_WRITERS for w in writers):
            points = read_run(directory).get(RETURN_TAG, []) if os.path.isdir(directory) else []
            out.append(points[-1][1] if points else None)
        else:
            kept = KeptValues.last.get(directory, {}).get(RETURN_TAG)
            out.append(None if kept is None else kept[1])
    return out


def view_command(logdir: str) -> str:
    """The shell command that opens ``logdir`` in TensorBoard, with its install if needed."""
    view = f"tensorboard --logdir {shlex.quote(logdir)}"
    if importlib.util.find_spec("tensorboard") is None:
        return f"python -m pip install tensorboard && {view}"
    return view


def _has_event_files(root: str) -> bool:
    return any(f.startswith("events.out.tfevents") for _, _, files in os.walk(root)
               for f in files)


def next_steps(run_dir: str, wandb_offline_runs: Sequence[str] = ()) -> list[str]:
    """The shell commands that come next: ``tensorboard --logdir <run>`` when the run has
    event files (TensorBoard then names the runs ``seed_0``, ``seeds/mean``, ...: the seed
    is what a card shows), ``callax summary <run>`` always, and ``wandb sync`` for the
    offline W&B runs made."""
    steps = []
    if _has_event_files(run_dir):
        steps.append(view_command(run_dir))
    steps.append(f"callax summary {shlex.quote(run_dir)}")
    if wandb_offline_runs:
        steps.append("wandb sync " + " ".join(shlex.quote(d) for d in wandb_offline_runs))
    return steps
