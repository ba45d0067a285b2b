"""Reading scalars back from event files without TensorBoard (host side, no JAX).

``callax train`` and ``callax summary`` must work with the core install, which has
tensorboardX (and so protobuf) but not TensorBoard. This module reads the TFRecord framing
itself, checking both masked CRC-32Cs of every record, and parses events with the protobuf
classes tensorboardX ships.

What it returns is what TensorBoard's ``EventAccumulator`` (with every point kept) returns
for the same directory, so a summary agrees with what TensorBoard shows:

- the files directly in the directory whose name contains ``tfevents``, in sorted order;
- a scalar is a ``Summary.Value`` with ``simple_value``, or a one-element numeric tensor of
  a tag whose first metadata names the ``scalars`` plugin (tensorboardX's
  ``add_scalar(..., new_style=True)``, ``tf.summary.scalar``);
- orphaned points are purged as TensorBoard does: after a ``SessionLog.START`` event (files
  of version 2, which callax and tensorboardX write) every point at or after its step is
  dropped; in older files a summary whose step goes back drops its tags' later points.

Damaged files:

- A truncated last record (a file still being written, or a killed process) ends the file
  quietly: every complete record before it is read.
- A record whose data fails its CRC (or does not parse as an event) is skipped with a
  ``RuntimeWarning`` naming the file and byte offset; its length was verified by its own
  CRC, so the records after it are read. TensorBoard stops reading the file there instead.
- A record whose length fails its CRC ends the file with a ``RuntimeWarning``: where the
  next record starts is unknown.

With ``strict=True`` both kinds of corruption raise [`EventFileError`] instead.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Iterator

import numpy as np
from google.protobuf.message import DecodeError

# tensorboardX's generated *_pb2 modules ship no type stubs: checkers cannot see their messages.
from tensorboardX.proto.event_pb2 import Event, SessionLog  # pyright: ignore[reportAttributeAccessIssue]
from tensorboardX.proto.types_pb2 import DataType  # pyright: ignore[reportAttributeAccessIssue]
from tensorboardX.record_writer import masked_crc32c

__all__ = ["EventFileError", "event_files", "read_records", "read_scalars"]

_HEADER = struct.Struct("<QI")  # data length, masked CRC-32C of the length's 8 bytes
_CRC = struct.Struct("<I")

# TensorProto dtype -> (NumPy dtype of ``tensor_content``, the repeated field of values).
_TENSOR_DTYPES = {
    DataType.DT_FLOAT: ("<f4", "float_val"),
    DataType.DT_DOUBLE: ("<f8", "double_val"),
    DataType.DT_HALF: ("<f2", "half_val"),
    DataType.DT_INT32: ("<i4", "int_val"),
    DataType.DT_INT64: ("<i8", "int64_val"),
}


class EventFileError(ValueError):
    """A corrupt record in an event file (raised by the reader with ``strict=True``)."""


def _corrupt(message: str, strict: bool) -> None:
    if strict:
        raise EventFileError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=2)


def read_records(path: str | os.PathLike, *, strict: bool = False) -> Iterator[bytes]:
    """The data of each TFRecord in the file at ``path``, both CRCs checked.

    **Arguments:**

    - `path`: an event file.
    - `strict`: raise [`EventFileError`] on a corrupt record instead of warning (see the
      module's notes); a truncated last record is never an error.
    """
    for _, record in _records(os.fspath(path), strict):
        yield record


def _records(path: str, strict: bool) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, data)`` of each record of the file at ``path``."""
    with open(path, "rb") as file:
        data = file.read()
    offset, end = 0, len(data)
    while offset + _HEADER.size <= end:
        length, length_crc = _HEADER.unpack_from(data, offset)
        if masked_crc32c(data[offset : offset + 8]) != length_crc:
            _corrupt(f"{path}: corrupt record length at byte {offset} (CRC mismatch); "
                     "the rest of the file is not read", strict)
            return
        start = offset + _HEADER.size
        stop = start + length
        if stop + _CRC.size > end:
            return  # truncated last record
        record = data[start:stop]
        (data_crc,) = _CRC.unpack_from(data, stop)
        if masked_crc32c(record) != data_crc:
            _corrupt(f"{path}: corrupt record at byte {offset} (data CRC mismatch); "
                     "record skipped", strict)
        else:
            yield offset, record
        offset = stop + _CRC.size


def event_files(directory: str | os.PathLike) -> list[str]:
    """The event files directly in ``directory`` (names containing ``tfevents``), sorted as
    TensorBoard reads them."""
    directory = os.fspath(directory)
    return sorted(
        os.path.join(directory, name) for name in os.listdir(directory)
        if "tfevents" in name and os.path.isfile(os.path.join(directory, name))
    )


def _tensor_scalar(tensor) -> float | None:
    """The value of a one-element numeric ``TensorProto``, else ``None``."""
    kind = _TENSOR_DTYPES.get(tensor.dtype)
    if kind is None or any(dim.size != 1 for dim in tensor.tensor_shape.dim):
        return None
    dtype, field = kind
    if tensor.tensor_content:
        content = np.frombuffer(tensor.tensor_content, dtype=dtype)
        return float(content[0]) if content.size == 1 else None
    values = getattr(tensor, field)
    if len(values) > 1:
        return None
    if not values:
        return 0.0  # proto3 default, as TensorBoard's make_ndarray fills it
    if field == "half_val":  # float16 bit patterns stored in int32s
        return float(np.array(values[0], np.uint16).view(np.float16))
    return float(values[0])


def _parse_file_version(text: str) -> float:
    try:
        return float(text.split("brain.Event:")[-1])
    except ValueError:
        return -1.0


class _Scalars:
    """The scalars of a run as they are read, with TensorBoard's purging of orphaned data."""

    def __init__(self):
        self.points: dict[str, list[tuple[int, float]]] = {}
        self.plugin: dict[str, str] = {}  # plugin of each tag's first metadata
        self.file_version: float | None = None
        self.most_recent_step = -1

    def _purge(self, step: int, tags) -> None:
        for tag in tags:
            points = self.points.get(tag)
            if points:
                self.points[tag] = [p for p in points if p[0] < step]

    def add(self, event: Event) -> None:
        if event.HasField("file_version"):
            self.file_version = _parse_file_version(event.file_version)
        has_summary = event.HasField("summary")
        if self.file_version and self.file_version >= 2:
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                self._purge(event.step, list(self.points))
        elif has_summary and event.step < self.most_recent_step:
            self._purge(event.step, [value.tag for value in event.summary.value])
        else:
            self.most_recent_step = event.step
        if not has_summary:
            return
        for value in event.summary.value:
            tag = value.tag
            if value.HasField("metadata") and tag not in self.plugin:
                self.plugin[tag] = value.metadata.plugin_data.plugin_name
            kind = value.WhichOneof("value")
            if kind == "simple_value":
                self.points.setdefault(tag, []).append((event.step, value.simple_value))
            elif kind == "tensor" and tag and self.plugin.get(tag) == "scalars":
                scalar = _tensor_scalar(value.tensor)
                if scalar is not None:
                    self.points.setdefault(tag, []).append((event.step, scalar))


def read_scalars(
    directory: str | os.PathLike, *, strict: bool = False
) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` (tags sorted, points in file order) of the event
    files directly in ``directory``: every point TensorBoard's ``EventAccumulator`` keeps
    with ``size_guidance={"scalars": 0}``, read without TensorBoard.

    **Arguments:**

    - `directory`: a run directory (sub-directories are other runs and are not read).
    - `strict`: raise [`EventFileError`] on a corrupt record instead of warning and going
      on; a truncated last record (a file being written) is read up to that record.
    """
    scalars = _Scalars()
    for path in event_files(directory):
        for offset, record in _records(path, strict):
            try:
                event = Event.FromString(record)
            except DecodeError:
                _corrupt(f"{path}: record at byte {offset} is not an event; record skipped",
                         strict)
                continue
            scalars.add(event)
    return {tag: scalars.points[tag] for tag in sorted(scalars.points)}


def is_run_file(name: str) -> bool:
    """Whether a file name is one of a run's outputs that :func:`read_run` reads (an event
    file or ``metrics.jsonl``)."""
    from ._jsonl import FILE_NAME

    return name.startswith("events.out.tfevents") or name == FILE_NAME


def read_run(directory: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of a run directory: its event files
    (:func:`read_scalars`) if it has any, else its ``metrics.jsonl`` (the JSON lines
    writer's file, read by :func:`~._jsonl.read_jsonl`). Both hold the same points when a
    run is written by both writers."""
    from ._jsonl import FILE_NAME, read_jsonl

    if not event_files(directory) and os.path.isfile(os.path.join(directory, FILE_NAME)):
        return read_jsonl(directory)
    return read_scalars(directory)
