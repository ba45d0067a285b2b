"""The Weights & Biases writer: one W&B run per seed of a callax run, grouped by the run.

Steps. W&B's own ``step`` must increase over a whole W&B run, across every key logged, and a
logged row whose ``step`` goes back is dropped. callax's steps increase per *tag* only: a
run's iteration metrics (at env steps) and, say, SAC's update events (at gradient steps) or
a histogram written at an earlier step interleave, so their steps go back and forth. So the
writer never passes ``step=``: every tag is declared with
``define_metric(tag, step_metric="global_step")`` and every row is logged as
``{"global_step": step, tag: value, ...}`` (one W&B history row per callax row; W&B's
``_step`` only counts rows). Charts then plot each tag against its callax step, every point
is kept, and tags at unrelated steps never drop each other's points.

Everything here runs on callax's writer thread (never inside a jitted program); ``wandb`` is
imported when a run first uses the writer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _queue
from ._interface import AbstractWriter, Destination

__all__ = ["STEP_METRIC", "SUPPORTED", "WandbWriter", "offline_runs"]

STEP_METRIC = "global_step"
"""The W&B key holding callax's step; every tag's charts use it as their x axis."""
SUPPORTED = ">=0.31,<0.32"
offline_runs: list[str] = []
"""The directories of the offline W&B runs this process made (what ``wandb sync`` uploads),
in the order they were made."""
"""The ``wandb`` versions the ``callax[wandb]`` extra allows (the tested range)."""


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise ImportError("callax: the 'wandb' writer needs Weights & Biases: "
                          "pip install 'callax[wandb]'") from None
    return wandb


def _close_before_wandb_exits() -> None:
    """Interpreter exit runs ``atexit`` hooks last-registered first, and ``wandb`` registers
    the teardown of its service process when it starts it (at a first ``wandb.init``):
    register callax's exit flush again after it, so that every queued point reaches W&B
    and every W&B run is finished before W&B shuts down."""
    import atexit

    hook = _queue.exit_hook
    if hook is not None:
        atexit.unregister(hook)
        atexit.register(hook)


class WandbWriter(AbstractWriter):
    """One W&B run for one seed of a callax run (``wandb.init(..., reinit="create_new")``).

    The W&B run is named ``<run name>/seed_<i>`` (the run's name alone without seeds) and
    grouped by the callax run's name (``group=``), so W&B shows the seeds of one run
    together; hyperparameters ([`callax.HParamsCallback`][]) become the run's config.
    In a sweep ([`callax.Sweep`][]) the W&B run is ``<run name>/<configuration>/seed_<s>``,
    grouped by ``<run name>/<configuration>``, its config the configuration's values and
    ``seed``.

    Options (give them with ``functools.partial(WandbWriter, project=...)``):

    - `project`: the W&B project (default: ``$WANDB_PROJECT``, else ``"callax"``);
    - `group`: the W&B group (default: the callax run's name);
    - `init`: more keyword arguments of ``wandb.init`` (``entity``, ``mode``, ``dir``,
      ``tags``, ...). ``WANDB_MODE=offline`` writes ``run-<id>.wandb`` under
      ``<dir>/wandb/offline-run-*`` for ``wandb sync`` later, with no account (``dir``:
      ``$WANDB_DIR``, else the callax run's directory).

    Closing (``flush``/``close`` of the callax run, or interpreter exit) finishes the W&B run.

    Files: without ``WANDB_DIR`` (or ``dir=``), W&B writes under the callax run's directory
    (``<run>/wandb/``), not in the working directory.
    """

    groups_seeds = True
    """W&B draws the statistics of a group's runs itself (its group view plots their mean
    with a min-max band): callax writes no ``seeds/mean``, ``min``, ``max`` runs to it."""

    def __init__(self, destination: Destination, *, project: str | None = None,
                 group: str | None = None, **init: Any):
        wandb = _import_wandb()
        name = os.path.basename(os.path.normpath(destination.run_dir))
        if destination.configuration is not None:  # a sweep: grouped by configuration
            name = f"{name}/{destination.configuration}"
        display = name if destination.seed is None else f"{name}/seed_{destination.seed}"
        options: dict[str, Any] = dict(
            project=project or os.environ.get("WANDB_PROJECT") or "callax",
            group=group or name, name=display, reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )
        if destination.config is not None:
            options["config"] = {**destination.config, "seed": destination.seed}
        # Read now, not once per process as wandb's settings singleton does.
        for key, variable in (("dir", "WANDB_DIR"), ("mode", "WANDB_MODE")):
            if os.environ.get(variable):
                options[key] = os.environ[variable]
        options.setdefault("dir", destination.run_dir)  # files under the run, not in ./
        options.update(init)
        if options.get("dir"):
            os.makedirs(options["dir"], exist_ok=True)
        self._run = wandb.init(**options)
        _close_before_wandb_exits()
        self._run.define_metric(STEP_METRIC, hidden=True)
        self._defined: set[str] = set()
        self.path = getattr(self._run, "dir", "") or destination.directory
        self.id = self._run.id
        if getattr(self._run.settings, "mode", "") == "offline":
            sync_dir = getattr(self._run.settings, "sync_dir", "")
            if sync_dir:
                offline_runs.append(sync_dir)

    @staticmethod
    def check_installed() -> None:
        """Fail now (when a run is configured) if ``wandb`` cannot be imported."""
        _import_wandb()

    def _define(self, tags) -> None:
        for tag in tags:
            if tag not in self._defined:
                self._run.define_metric(tag, step_metric=STEP_METRIC)
                self._defined.add(tag)

    def write_scalars(self, tags, steps, values, valid, wall_times) -> None:
        self._define(tags)
        everything = bool(valid.all())
        log = self._run.log
        for step, row, ok in zip(steps.tolist(), values.tolist(), valid.tolist(),
                                 strict=True):
            data: dict[str, Any] = {STEP_METRIC: step}
            for j, value in enumerate(row):
                if everything or ok[j]:
                    data[tags[j]] = value
            log(data)
        del wall_times  # W&B stamps each row itself (``_timestamp``)

    def write_histograms(self, tags, step, stats, counts, wall_time) -> None:
        import wandb

        self._define(tags)
        data: dict[str, Any] = {STEP_METRIC: int(step)}
        for tag, row, bucket in zip(tags, stats.tolist(), counts, strict=True):
            minimum, maximum, _, _, _, width = row
            limits = minimum + width * np.arange(1, len(bucket) + 1, dtype=np.float64)
            limits[-1] = max(maximum, limits[-1])
            edges = np.concatenate([[minimum], limits])
            data[tag] = wandb.Histogram(np_histogram=(np.asarray(bucket).tolist(),
                                                      edges.tolist()))
        self._run.log(data)

    def write_text(self, tag: str, step: int, text: str, wall_time: float) -> None:
        self._define((tag,))
        self._run.log({STEP_METRIC: int(step), tag: text})  # a string in the run's history
        del wall_time

    def write_hparams(self, hparams: Mapping[str, Any], wall_time: float) -> None:
        self._run.config.update(
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in hparams.items()}, allow_val_change=True)

    def close(self) -> None:
        self._run.finish()
