"""``HParamsCallback``: a run's hyperparameters for TensorBoard's HParams dashboard."""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int, Key

# tensorboardX's generated *_pb2 modules ship no type stubs: checkers cannot see their messages.
from tensorboardX.proto.api_pb2 import Status  # pyright: ignore[reportAttributeAccessIssue]
from tensorboardX.proto.plugin_hparams_pb2 import (
    HParamsPluginData,  # pyright: ignore[reportAttributeAccessIssue]
    SessionEndInfo,  # pyright: ignore[reportAttributeAccessIssue]
    SessionStartInfo,  # pyright: ignore[reportAttributeAccessIssue]
)
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata  # pyright: ignore[reportAttributeAccessIssue]

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

__all__ = ["HParamsCallback", "hparams_of"]

_START, _END = 0, 1
_sessions: dict[int, tuple[bytes, bytes]] = {}
_lock = threading.Lock()
_handles = itertools.count()

HParamValue = bool | int | float | str


def hparams_of(config: Any) -> dict[str, HParamValue]:
    """The hyperparameters of a configuration: a mapping as it is, or the fields of a
    dataclass / Equinox module (such as [`callax.train.PPO`][]) whose values are numbers,
    booleans or strings (tuples and lists become strings, ``None`` and arrays are left out),
    plus ``algorithm``: the class name."""
    if isinstance(config, Mapping):
        return dict(config)
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"hparams must be a mapping or a dataclass/Equinox module, got "
                        f"{config!r}")
    out: dict[str, HParamValue] = {"algorithm": type(config).__name__}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name, None)
        if isinstance(value, tuple | list):
            value = str(tuple(value))
        if isinstance(value, bool | int | float | str):
            out[field.name] = value
    return out


def _summary(tag: str, data: HParamsPluginData) -> bytes:
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name="hparams", content=data.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata)]).SerializeToString()


def _session(hparams: Mapping[str, HParamValue]) -> tuple[bytes, bytes]:
    """Serialized ``Summary`` protos: the session start (hyperparameters) and end."""
    start = SessionStartInfo()
    for name, value in hparams.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"hyperparameter names must be non-empty strings, got {name!r}")
        if isinstance(value, bool):
            start.hparams[name].bool_value = value
        elif isinstance(value, int | float):
            start.hparams[name].number_value = float(value)
        elif isinstance(value, str):
            start.hparams[name].string_value = value
        else:
            raise TypeError(f"hyperparameter {name!r} must be a bool, number or str, got "
                            f"{value!r}")
    end = SessionEndInfo(status=Status.Value("STATUS_SUCCESS"))
    return (_summary("_hparams_/session_start_info",
                     HParamsPluginData(version=0, session_start_info=start)),
            _summary("_hparams_/session_end_info",
                     HParamsPluginData(version=0, session_end_info=end)))


def _host_session(seed, when, kind, writer, session, marker) -> None:
    # One row per seed of the batch; ``marker`` (from the hook's PRNG key) only makes the
    # call batched whenever the run is, so that every seed has a row.
    del marker
    rows = np.flatnonzero(when)
    if rows.size == 0:
        return
    start, end = _sessions[int(session[rows[0]])]
    host.write_summaries(int(writer[rows[0]]), seed[rows],
                         (start,) if int(kind[rows[0]]) == _START else (end,))


class HParamsCallback(AbstractStepStatelessCallback[EmptyCallbackState],
                      AbstractContinuingCallback):
    """Links hyperparameters to a run for TensorBoard's *HParams* dashboard, which then
    shows them next to the run's final metrics (the last value of each of its scalar tags).

    At training start it writes the hyperparameters (an hparams *session start*) into the
    run of `writer`, at training end the session's end (status "success"); under
    ``jax.vmap`` over seeds into every ``<run>/seed_<i>`` (each seed is a session), one host
    call for the whole batch. Give it the run the metrics go to, e.g. a
    [`callax.TensorBoardCallback`][]'s ``tb_writer``::

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
        session = _session(hparams_of(hparams))  # bad values fail before a run is opened
        if isinstance(writer, str | os.PathLike):
            writer = JITSummaryWriter(writer)
        if not isinstance(writer, JITSummaryWriter):
            raise TypeError(f"writer must be a JITSummaryWriter or a path, got {writer!r}")
        handle = next(_handles)
        with _lock:
            _sessions[handle] = session
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

