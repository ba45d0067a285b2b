"""The TensorBoard writer: one event file per seed directory (see :mod:`._event_file`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import numpy as np

# tensorboardX's generated *_pb2 modules ship no type stubs: checkers cannot see their messages.
from tensorboardX.proto.api_pb2 import Status  # pyright: ignore[reportAttributeAccessIssue]
from tensorboardX.proto.plugin_hparams_pb2 import (
    HParamsPluginData,  # pyright: ignore[reportAttributeAccessIssue]
    SessionEndInfo,  # pyright: ignore[reportAttributeAccessIssue]
    SessionStartInfo,  # pyright: ignore[reportAttributeAccessIssue]
)
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata  # pyright: ignore[reportAttributeAccessIssue]

from ._encode import (
    encode_histogram,
    encode_masked_rows,
    encode_scalar_rows,
    encode_summaries,
    text_summary,
)
from ._event_file import EventFile
from ._interface import AbstractWriter, Destination

__all__ = ["TensorBoardWriter", "hparams_summaries"]


class TensorBoardWriter(AbstractWriter):
    """TensorBoard event files: ``<directory>/events.out.tfevents.*``, one per writer, written
    without a buffer (every batch reaches the operating system at once), read by
    ``tensorboard --logdir <run>`` and ``callax summary``.

    A restarted run (``purge_step``) begins its file with a ``SessionLog.START`` and writes
    again the points TensorBoard needs to hide the lost tail (see :mod:`._event_file`);
    :attr:`last_steps` are the steps those points reach, which the run's steps go on from.
    A file deleted under the writer is replaced by a new one at the next write (warned).
    """

    def __init__(self, destination: Destination):
        self.destination = destination
        self._file = EventFile(destination.directory, destination.purge_step)
        self.path = self._file.path
        self.last_steps: dict[str, int] = dict(self._file.last_steps)

    def _append(self, data: bytes) -> None:
        if self._file.deleted():
            self._file.close()
            old = self.path
            self._file = EventFile(self.destination.directory)
            self.path = self._file.path
            warnings.warn(f"callax: run {self.destination.run_dir!r}: the event file {old!r} "
                          "(or its directory) was deleted; writing goes on in a new file",
                          RuntimeWarning, stacklevel=1)
        self._file.write(data)

    def write_scalars(self, tags, steps, values, valid, wall_times) -> None:
        if valid.all():
            self._append(encode_scalar_rows(tags, steps, values, wall_times))
        else:  # each row with the tags it holds (in row order: steps keep increasing)
            self._append(encode_masked_rows(tags, steps, values, valid, wall_times))

    def write_histograms(self, tags, step, stats, counts, wall_time) -> None:
        out = []
        for tag, row, bucket in zip(tags, stats.tolist(), counts, strict=True):
            minimum, maximum, num, total, squares, width = row
            limits = minimum + width * np.arange(1, len(bucket) + 1, dtype=np.float64)
            limits[-1] = max(maximum, limits[-1])
            out.append(encode_histogram(tag, step, wall_time, minimum, maximum, num, total,
                                        squares, limits, bucket))
        self._append(b"".join(out))

    def write_hparams(self, hparams, wall_time) -> None:
        name = trial_name(self.destination.run_dir, self.destination.seed,
                          self.destination.configuration)
        start, _ = hparams_summaries(hparams, name)
        self._append(encode_summaries((start,), wall_time))

    def write_text(self, tag, step, text, wall_time) -> None:
        self._append(encode_summaries((text_summary(tag, text),), wall_time, step))

    def write_records(self, records: bytes) -> None:
        """Append prebuilt event records (TensorBoard only: an HParams session's end)."""
        self._append(records)

    def flush(self) -> None:
        # Every write already reached the OS; the file's flush is where an fsync would go.
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _summary(tag: str, data) -> bytes:
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name="hparams", content=data.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata)]).SerializeToString()


def trial_name(log_dir: str, seed: int | None, configuration: str | None = None) -> str:
    """The HParams dashboard's trial name of seed position `seed` of the run in `log_dir`:
    the seed first (the table cuts long names), then the sweep's `configuration` (if any),
    then the run's last two path parts."""
    parent, base = os.path.split(os.path.normpath(log_dir))
    run = f"{os.path.basename(parent)}/{base}" if os.path.basename(parent) else base
    if configuration is not None:
        run = f"{configuration} · {run}"
    return run if seed is None or seed < 0 else f"seed {seed} · {run}"


def hparams_summaries(hparams: Mapping[str, bool | int | float | str], group_name: str = ""
                      ) -> tuple[bytes, bytes]:
    """Serialized ``Summary`` protos of TensorBoard's HParams plugin: the session start
    (hyperparameters, trial name `group_name`) and end. Bad names or values raise
    ``TypeError``."""
    start = SessionStartInfo(group_name=group_name)
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
