"""``HParamsCallback``: a run's hyperparameters for TensorBoard's HParams dashboard."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int, Key

from .. import _host, _writer as host
from .._callback import (
    AbstractContinuingCallback,
    AbstractStepStatelessCallback,
    EmptyCallbackState,
    IterationContext,
    ResetContext,
    TrainingContext,
)
from .._summary_writer import JITSummaryWriter
from .._writer._tensorboard import hparams_summaries, trial_name

__all__ = ["HParamsCallback", "hparams_of", "trial_name"]

from .._hparams_of import HParamValue as HParamValue, hparams_of as hparams_of

_START, _END = 0, 1
_sessions: dict[int, dict[str, HParamValue]] = {}
_lock = threading.Lock()
_handles = itertools.count()



def _session(hparams: Mapping[str, HParamValue], group_name: str = ""
             ) -> tuple[bytes, bytes]:
    """Serialized ``Summary`` protos: the session start (hyperparameters, trial name
    `group_name`) and end. Bad names or values raise ``TypeError``."""
    return hparams_summaries(hparams, group_name)


def _host_session(seed, when, kind, writer, session, marker) -> None:
    # One row per seed of the batch; ``marker`` (from the hook's PRNG key) only makes the
    # call batched whenever the run is, so that every seed has a row.
    del marker
    rows = np.flatnonzero(when)
    if rows.size == 0:
        return
    hparams = _sessions[int(session[rows[0]])]
    handle = int(writer[rows[0]])
    _, end = _session(hparams)
    for position in seed[rows].tolist():
        if int(kind[rows[0]]) == _START:
            # Every writer of the run (TensorBoard's session start, named with the seed's
            # trial name; a JSON line; W&B's config); each seed its own trial, with a
            # ``seed`` column.
            column = "seed" if "seed" not in hparams else "seed_position"
            layout = host.layout_of(handle)
            if position < 0:
                values = hparams
            elif layout is not None:  # a sweep: the configuration's values, its seed
                config, local = layout.locate(position)
                values = {**hparams, **layout.config(config), column: local}
            else:
                values = {**hparams, column: position}
            host.write_hparams(handle, np.array([position]), values)
        else:
            host.write_summaries(handle, np.array([position]), (end,))


class HParamsCallback(AbstractStepStatelessCallback[EmptyCallbackState],
                      AbstractContinuingCallback):
    """Links hyperparameters to a run for TensorBoard's *HParams* dashboard, which then
    shows them next to the run's final metrics (the last value of each of its scalar tags).

    At training start it writes the hyperparameters (an hparams *session start*) into the
    run of `writer`, at training end the session's end (status "success"); under
    ``jax.vmap`` over seeds into every ``<run>/seed_<i>`` (each seed is a session), one host
    call for the whole batch. Each seed's trial is named ``seed <i> · <parent>/<run>`` (the
    seed first: the dashboard's table cuts long names) and has a ``seed`` hyperparameter,
    its seed position (``seed_position`` if `hparams` already has a ``seed``). In a sweep
    ([`callax.Sweep`][], declared to the run's [`callax.TensorBoardCallback`][]) every
    configuration's seed is a session, ``seed <s> · <configuration> · <parent>/<run>``,
    whose hyperparameters are `hparams` updated with the configuration's values and the
    seed ``s`` within it. Give it the
    run the metrics go to, e.g. a [`callax.TensorBoardCallback`][]'s ``tb_writer``::

        tb = callax.TensorBoardCallback(log_dir="runs/ppo")
        callbacks = [tb, callax.HParamsCallback(tb.tb_writer, ppo)]
    """

    writer: JITSummaryWriter
    session: Int[Array, ""]

    def __init__(self, writer: JITSummaryWriter | str | os.PathLike,
                 hparams: Mapping[str, HParamValue] | Any):
        """**Arguments:**

        - `writer`: a [`callax.JITSummaryWriter`][] or a run directory.
        - `hparams`: ``{name: bool | int | float | str}``, or a configuration (a dataclass
          or Equinox module such as a ``PPO``) read by [`callax.hparams_of`][].
        """
        values = hparams_of(hparams)
        _session(values)  # bad values fail before a run is opened
        if isinstance(writer, str | os.PathLike):
            writer = JITSummaryWriter(writer)
        if not isinstance(writer, JITSummaryWriter):
            raise TypeError(f"writer must be a JITSummaryWriter or a path, got {writer!r}")
        handle = next(_handles)
        with _lock:
            _sessions[handle] = values
        self.writer = writer
        self.session = jnp.asarray(handle, jnp.int32)

    def _send(self, kind: int, key: Key[Array, ""]) -> None:
        marker = jax.random.key_data(key).reshape(-1)[0]
        _host.send(_host_session, jnp.asarray(kind, jnp.int32), self.writer.handle,
                   self.session, marker)

    def reset(self, ctx: ResetContext, *, key: Key[Array, ""]) -> EmptyCallbackState:
        return EmptyCallbackState()

    def on_training_start(self, ctx: TrainingContext, *, key: Key[Array, ""]
                          ) -> EmptyCallbackState:
        self._send(_START, key)
        return ctx.state

    def on_iteration(self, ctx: IterationContext, *, key: Key[Array, ""]) -> EmptyCallbackState:
        return ctx.state

    def on_training_end(self, ctx: TrainingContext, *, key: Key[Array, ""]
                        ) -> EmptyCallbackState:
        self._send(_END, key)
        return ctx.state

