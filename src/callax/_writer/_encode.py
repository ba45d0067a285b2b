"""Encoding of TensorBoard event records (host side, no JAX).

Scalar events are encoded by hand (they are tiny, fixed-layout protobuf messages) so that a
batch of ``K`` rows × ``n`` tags costs a handful of NumPy operations plus one Python iteration
per row; rows holding different tags (eager loops alternating over tags) are encoded from
each tag's cached bytes. Records are framed with TFRecord's masked CRC-32C over
tensorboardX's ``crc32c`` (native when the ``crc32c`` package is installed). Everything
written here is read back by TensorBoard's own ``EventAccumulator`` in the tests.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence

import numpy as np

# tensorboardX's generated *_pb2 modules ship no type stubs: checkers cannot see their messages.
from tensorboardX.proto.event_pb2 import Event, SessionLog  # pyright: ignore[reportAttributeAccessIssue]
from tensorboardX.proto.plugin_text_pb2 import TextPluginData  # pyright: ignore[reportAttributeAccessIssue]
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata  # pyright: ignore[reportAttributeAccessIssue]
from tensorboardX.proto.tensor_pb2 import TensorProto  # pyright: ignore[reportAttributeAccessIssue]
from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto  # pyright: ignore[reportAttributeAccessIssue]
from tensorboardX.proto.types_pb2 import DataType  # pyright: ignore[reportAttributeAccessIssue]
from tensorboardX.record_writer import crc32c

__all__ = [
    "encode_file_version", "encode_masked_rows", "encode_scalar_rows", "encode_session_start",
    "encode_summaries", "frame", "text_summary", "varint",
]

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_INT64_MAX = 2**63 - 1
_SMALL_VARINTS = tuple(bytes((i,)) for i in range(128))


def varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    if value < 0:
        raise ValueError(f"varint of a negative number: {value}")
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _masked_crc(data: bytes) -> bytes:
    # TFRecord's masked CRC-32C (as tensorboardX's masked_crc32c, whose crc32c is native
    # when the crc32c package is installed), packed: one call per record part.
    x = crc32c(data)
    return _U32.pack((((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def frame(data: bytes) -> bytes:
    """One TFRecord: length, CRC of length, data, CRC of data."""
    header = _U64.pack(len(data))
    return header + _masked_crc(header) + data + _masked_crc(data)


def encode_file_version(wall_time: float | None = None) -> bytes:
    """The first record of every event file."""
    event = Event(wall_time=time.time() if wall_time is None else wall_time)
    event.file_version = "brain.Event:2"
    return frame(event.SerializeToString())


class _Template:
    """The bytes of a ``Summary`` holding one scalar per tag, with holes for the floats."""

    def __init__(self, tags: tuple[str, ...]):
        parts = []
        offsets = []
        size = 0
        for tag in tags:
            raw = tag.encode("utf-8")
            value = b"\x0a" + varint(len(raw)) + raw + b"\x15"  # Value.tag, Value.simple_value
            head = b"\x0a" + varint(len(value) + 4) + value  # Summary.value (repeated)
            parts.append(head + b"\x00\x00\x00\x00")
            offsets.append(size + len(head))
            size += len(head) + 4
        summary = b"".join(parts)
        # Event.summary (field 5) wraps the Summary.
        self.prefix = b"\x2a" + varint(len(summary))
        self.bytes = np.frombuffer(summary, dtype=np.uint8)
        self.offsets = offsets


_TEMPLATES: dict[tuple[str, ...], _Template] = {}


def _template(tags: tuple[str, ...]) -> _Template:
    template = _TEMPLATES.get(tags)
    if template is None:
        template = _TEMPLATES[tags] = _Template(tags)
    return template


def encode_scalar_rows(
    tags: tuple[str, ...],
    steps: np.ndarray,
    values: np.ndarray,
    wall_times: np.ndarray,
) -> bytes:
    """Encode rows of scalars as framed event records, one event (and record) per row.

    Args:
        tags: the ``n`` tags, one per column of ``values``.
        steps: ``int[K]`` global step of each row, in ``[0, 2**63 - 1]`` (the range of the
            event's ``int64`` step; anything else raises ``ValueError`` naming the tags).
        values: ``float[K, n]`` values.
        wall_times: ``float64[K]`` seconds since the epoch of each row.
    """
    if len(steps) == 0 or not tags:
        return b""
    steps = _checked_steps(tags, steps)
    template = _template(tags)
    rows = np.tile(template.bytes, (len(steps), 1))
    floats = np.ascontiguousarray(values, dtype="<f4").view(np.uint8).reshape(len(steps), -1, 4)
    for column, offset in enumerate(template.offsets):
        rows[:, offset : offset + 4] = floats[:, column]
    prefix = template.prefix
    out = []
    for step, wall_time, row in zip(steps.tolist(), wall_times.tolist(), rows, strict=True):
        data = b"\x09" + _F64.pack(wall_time) + b"\x10" + varint(step) + prefix + row.tobytes()
        out.append(frame(data))
    return b"".join(out)


def _checked_steps(tags: tuple[str, ...], steps: np.ndarray) -> np.ndarray:
    steps = np.asarray(steps)
    if not np.issubdtype(steps.dtype, np.integer):
        raise TypeError(f"steps of tag(s) {tags} must be integers, got dtype {steps.dtype}")
    if steps.min() < 0 or (steps.dtype == np.uint64 and steps.max() > _INT64_MAX):
        bad = int(steps.min()) if steps.min() < 0 else int(steps.max())
        raise ValueError(f"step {bad} of tag(s) {tags} is outside [0, 2**63 - 1], the range "
                         "of an event's step")
    return steps


_VALUE_HEADS: dict[str, bytes] = {}
_VALUE_HEADS_MAX = 65_536


def _value_head(tag: str) -> bytes:
    """The bytes of a ``Summary.value`` entry for a scalar of ``tag``, up to its float."""
    head = _VALUE_HEADS.get(tag)
    if head is None:
        raw = tag.encode("utf-8")
        value = b"\x0a" + varint(len(raw)) + raw + b"\x15"  # Value.tag, Value.simple_value
        head = b"\x0a" + varint(len(value) + 4) + value  # Summary.value (repeated)
        if len(_VALUE_HEADS) >= _VALUE_HEADS_MAX:
            _VALUE_HEADS.clear()
        _VALUE_HEADS[tag] = head
    return head


def encode_masked_rows(
    tags: tuple[str, ...],
    steps: np.ndarray,
    values: np.ndarray,
    valid: np.ndarray,
    wall_times: np.ndarray,
) -> bytes:
    """Like :func:`encode_scalar_rows`, but row ``k`` holds only the tags where
    ``valid[k]`` (rows without any are skipped): one event per row, from each tag's encoded
    bytes (cached) and the value's four bytes, so a row costs the same whichever tags it
    holds (eager loops alternating over tags write one tag per row)."""
    if len(steps) == 0 or not tags:
        return b""
    steps = _checked_steps(tags, steps)
    heads = [_value_head(tag) for tag in tags]
    width = 4 * len(tags)
    floats = np.ascontiguousarray(values, dtype="<f4").tobytes()
    out = []
    base = 0
    for step, wall_time, row in zip(steps.tolist(), wall_times.tolist(), valid.tolist(),
                                    strict=True):
        summary = b"".join([heads[j] + floats[base + 4 * j:base + 4 * j + 4]
                            for j, ok in enumerate(row) if ok])
        base += width
        if summary:
            out.append(frame(b"\x09" + _F64.pack(wall_time) + b"\x10" + varint(step) + b"\x2a"
                             + varint(len(summary)) + summary))
    return b"".join(out)


def text_summary(tag: str, text: str) -> bytes:
    """A serialized ``Summary`` holding ``text`` under ``tag`` for TensorBoard's text plugin
    (a string tensor of one element; Markdown, rendered by the dashboard)."""
    content = TextPluginData(version=0).SerializeToString()
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text",
                                                                      content=content))
    tensor = TensorProto(dtype=DataType.Value("DT_STRING"), string_val=[text.encode("utf-8")],
                         tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
    value = Summary.Value(tag=tag, metadata=metadata, tensor=tensor)
    return Summary(value=[value]).SerializeToString()


# --------------------------------------------------------------------------------------------
# Histograms (TensorBoard's ``HistogramProto`` inside a ``Summary.Value``).


def _packed_doubles(field: int, values: np.ndarray) -> bytes:
    data = np.ascontiguousarray(values, dtype="<f8").tobytes()
    return bytes([field << 3 | 2]) + varint(len(data)) + data


def encode_histogram(tag: str, step: int, wall_time: float, minimum: float, maximum: float,
                     num: float, total: float, sum_squares: float, bucket_limit: np.ndarray,
                     bucket: np.ndarray) -> bytes:
    """One framed event holding one histogram.

    ``bucket[i]`` counts the values in ``(bucket_limit[i - 1], bucket_limit[i]]`` (the first
    bucket starts at ``minimum``), as TensorBoard's histogram dashboard reads them.
    """
    histo = (
        b"\x09" + _F64.pack(minimum) + b"\x11" + _F64.pack(maximum)
        + b"\x19" + _F64.pack(num) + b"\x21" + _F64.pack(total)
        + b"\x29" + _F64.pack(sum_squares)
        + _packed_doubles(6, bucket_limit) + _packed_doubles(7, bucket)
    )
    raw = tag.encode("utf-8")
    value = b"\x0a" + varint(len(raw)) + raw + b"\x2a" + varint(len(histo)) + histo
    return encode_summaries((b"\x0a" + varint(len(value)) + value,), wall_time, step)


def encode_summaries(summaries: Sequence[bytes], wall_time: float, step: int = 0) -> bytes:
    """Serialized ``Summary`` protos, each framed as one event at ``step`` and ``wall_time``."""
    head = b"\x09" + _F64.pack(wall_time) + b"\x10" + varint(step) + b"\x2a"
    return b"".join(frame(head + varint(len(summary)) + summary) for summary in summaries)


def encode_session_start(step: int, wall_time: float | None = None) -> bytes:
    """A ``SessionLog.START`` event at ``step``: TensorBoard's mark of a restarted run.

    Read after earlier files of the run, it makes TensorBoard (``EventAccumulator``, and
    callax's own reader) drop every point of the run at a step ``>= step`` written before it.
    """
    event = Event(wall_time=time.time() if wall_time is None else wall_time, step=int(step))
    event.session_log.status = SessionLog.START
    return frame(event.SerializeToString())
