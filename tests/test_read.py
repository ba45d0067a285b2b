"""callax's own event-file reader (``callax._writer._read``) against TensorBoard's
``EventAccumulator``: callax runs, tensorboardX files, truncated and corrupt files, restarts."""

from __future__ import annotations

import math
import os
import struct
import tempfile
import warnings

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util
from tensorboardX import SummaryWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.proto.tensor_pb2 import TensorProto
from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboardX.proto.types_pb2 import DataType

import callax
from callax._writer._encode import encode_file_version, encode_scalar_rows, frame
from callax._writer._read import EventFileError, read_records, read_scalars
from conftest import sync


def tensorboard_scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows as scalars: ``EventAccumulator``'s scalars (every point kept)
    plus the one-element tensors of tags whose metadata names the ``scalars`` plugin."""
    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    out = {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
           for tag in accumulator.Tags()["scalars"]}
    for tag in accumulator.Tags()["tensors"]:
        if accumulator.SummaryMetadata(tag).plugin_data.plugin_name == "scalars":
            out.setdefault(tag, []).extend(
                (e.step, tensor_util.make_ndarray(e.tensor_proto).item())
                for e in accumulator.Tensors(tag))
    return {tag: out[tag] for tag in sorted(out)}


def assert_same(got, expected):
    """Equal tags, steps and values (``NaN`` equal to ``NaN``), in the same order."""
    assert list(got) == list(expected)
    for tag in expected:
        assert len(got[tag]) == len(expected[tag]), tag
        for (step, value), (e_step, e_value) in zip(got[tag], expected[tag], strict=True):
            assert step == e_step, tag
            assert value == e_value or (math.isnan(value) and math.isnan(e_value)), (
                tag, step, value, e_value)


def read_quietly(directory, **kwargs):
    """``read_scalars`` that fails on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read_scalars(directory, **kwargs)


def write_file(path, records: list[bytes]) -> None:
    with open(path, "wb") as file:
        file.write(b"".join(records))


def scalar_event(step: int, values: dict[str, float], wall_time: float = 1.0) -> bytes:
    summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in values.items()])
    return frame(Event(wall_time=wall_time, step=step, summary=summary).SerializeToString())


def start_event(step: int) -> bytes:
    session_log = SessionLog(status=SessionLog.START)
    return frame(Event(wall_time=1.0, step=step, session_log=session_log).SerializeToString())


def test_matches_event_accumulator_on_a_callax_run(tmp_path):
    """Several tags, NaN and infinities, masked (invalid) entries, two seeds' directories."""
    tags = ("a", "train/b", "weird/values")
    steps = np.array([1, 2, 3, 5, 8])
    values = np.array([[0.5, -1.0, np.nan], [1.5, 2.0, np.inf], [2.5, 3.0, -np.inf],
                       [3.5, 1e-30, 0.0], [-4.5, 3e38, np.nan]], np.float32)
    valid = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0], [1, 1, 1]], bool)
    writer = callax.JITSummaryWriter(str(tmp_path / "run"))
    writer.write_rows(tags, steps, values, valid)
    writer.add_scalar("a", 9.0, global_step=13)
    for seed in range(2):  # what a vmapped writer produces: one directory per seed
        seeded = callax.JITSummaryWriter(str(tmp_path / "run" / f"seed_{seed}"))
        seeded.write_rows(tags, steps + seed, values + seed, valid)
    sync()
    got = read_quietly(tmp_path / "run")
    assert_same(got, tensorboard_scalars(tmp_path / "run"))
    expected = {tag: [(int(s), float(v)) for s, v, ok in zip(steps, values[:, j], valid[:, j])
                      if ok] for j, tag in enumerate(tags)}
    expected["a"].append((13, 9.0))
    assert_same(got, expected)
    for seed in range(2):
        directory = tmp_path / "run" / f"seed_{seed}"
        assert_same(read_quietly(directory), tensorboard_scalars(directory))


def test_matches_event_accumulator_on_a_tensorboardx_file(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    rng = np.random.default_rng(0)
    for step in range(20):
        writer.add_scalar("loss", float(rng.normal()), step)
        writer.add_scalar("described", float(step) ** 2, step, display_name="Described")
        writer.add_scalars("group", {"x": step, "y": -step}, step)
        writer.add_histogram("weights", rng.normal(size=10), step)
        writer.add_text("note", f"step {step}", step)
    writer.add_scalar("loss", float("nan"), 20)
    writer.add_scalar("loss", float("inf"), 21)
    # Tensor-encoded scalars (TensorFlow 2's encoding), through tensorboardX's file writer.
    file_writer = writer._get_file_writer()
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
    scalar_shape = TensorShapeProto()
    for step in range(5):
        tensors = [
            TensorProto(dtype=DataType.DT_FLOAT, tensor_shape=scalar_shape,
                        float_val=[step / 3]),
            TensorProto(dtype=DataType.DT_DOUBLE, tensor_shape=scalar_shape,
                        tensor_content=np.float64(step / 7).tobytes()),
            TensorProto(dtype=DataType.DT_INT64, tensor_shape=scalar_shape, int64_val=[step]),
        ]
        values = [Summary.Value(tag=f"tensor/{i}", tensor=t, metadata=metadata)
                  for i, t in enumerate(tensors)]
        file_writer.add_summary(Summary(value=values), step)
    writer.close()
    got = read_quietly(tmp_path)
    assert_same(got, tensorboard_scalars(tmp_path))
    assert sorted(got) == ["described", "loss", "tensor/0", "tensor/1", "tensor/2"]
    assert len(got["loss"]) == 22 and math.isnan(got["loss"][20][1])
    assert got["tensor/1"][3] == (3, 3 / 7)
    for name in ("x", "y"):  # add_scalars writes one sub-run per key
        directory = tmp_path / "group" / name
        got = read_quietly(directory)
        assert_same(got, tensorboard_scalars(directory))
        assert len(got["group"]) == 20


def callax_records(n: int) -> list[bytes]:
    """A file-version record and ``n`` scalar records as callax encodes them."""
    tags = ("x", "y")
    steps = np.arange(1, n + 1)
    values = np.stack([steps * 0.5, -steps * 1.0], axis=1).astype(np.float32)
    data = encode_scalar_rows(tags, steps, values, np.linspace(1.0, 2.0, n))
    records, offset = [encode_file_version(1.0)], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        records.append(data[offset : offset + 16 + length])
        offset += 16 + length
    return records


def test_truncated_last_record_is_not_an_error(tmp_path):
    """Cut anywhere inside the last record (header, data or CRC): the earlier records are
    read, without a warning, and the result is TensorBoard's."""
    records = callax_records(4)
    whole = b"".join(records)
    path = tmp_path / "events.out.tfevents.1.host"
    complete = len(whole) - len(records[-1])
    for cut in range(complete, len(whole)):
        path.write_bytes(whole[:cut])
        got = read_quietly(tmp_path)
        assert got == {"x": [(1, 0.5), (2, 1.0), (3, 1.5)], "y": [(1, -1.0), (2, -2.0),
                                                                   (3, -3.0)]}, cut
        if cut % 5 == 0:
            assert_same(got, tensorboard_scalars(tmp_path))
    path.write_bytes(whole)
    assert read_quietly(tmp_path)["x"][-1] == (4, 2.0)


def test_corrupt_record_is_skipped_with_a_warning(tmp_path):
    records = callax_records(4)
    bad = bytearray(records[2])
    bad[20] ^= 0xFF  # inside the data: the data CRC fails, the length is still sound
    path = tmp_path / "events.out.tfevents.1.host"
    write_file(path, [*records[:2], bytes(bad), *records[3:]])
    with pytest.warns(RuntimeWarning, match=r"data CRC mismatch\); record skipped") as caught:
        got = read_scalars(tmp_path)
    assert str(path) in str(caught[0].message)
    assert got["x"] == [(1, 0.5), (3, 1.5), (4, 2.0)]  # step 2 lost, later ones kept
    with pytest.raises(EventFileError, match="data CRC mismatch"):
        read_scalars(tmp_path, strict=True)
    with pytest.raises(EventFileError, match="data CRC mismatch"):
        list(read_records(path, strict=True))


def test_corrupt_length_ends_the_file_with_a_warning(tmp_path):
    records = callax_records(4)
    bad = bytearray(records[2])
    bad[0] ^= 0x01  # the length: where the next record starts is unknown
    path = tmp_path / "events.out.tfevents.1.host"
    write_file(path, [*records[:2], bytes(bad), *records[3:]])
    with pytest.warns(RuntimeWarning, match=f"byte {len(records[0]) + len(records[1])}"):
        got = read_scalars(tmp_path)
    assert got["x"] == [(1, 0.5)]
    assert_same(got, tensorboard_scalars(tmp_path))  # TensorBoard stops there too
    with pytest.raises(EventFileError, match="corrupt record length"):
        read_scalars(tmp_path, strict=True)


def test_record_that_is_not_an_event_is_skipped(tmp_path):
    records = callax_records(2)
    write_file(tmp_path / "events.out.tfevents.1.host",
               [records[0], frame(b"\x0a\xff\xff\xff"), records[1], records[2]])
    with pytest.warns(RuntimeWarning, match="is not an event"):
        got = read_scalars(tmp_path)
    assert got["x"] == [(1, 0.5), (2, 1.0)]
    with pytest.raises(EventFileError, match="is not an event"):
        read_scalars(tmp_path, strict=True)


def test_restart_purges_like_tensorboard(tmp_path):
    """Version-2 files: ``SessionLog.START`` at step s drops every point at or after s.
    Files without a version: a summary whose step goes back drops its own tags' later
    points."""
    v2 = tmp_path / "v2"
    v2.mkdir()
    write_file(v2 / "events.out.tfevents.1.host", [
        encode_file_version(1.0), *(scalar_event(s, {"a": s, "b": -s}) for s in range(1, 6)),
        start_event(3), scalar_event(3, {"a": 30.0}), scalar_event(4, {"a": 40.0}),
    ])
    got = read_quietly(v2)
    assert got == {"a": [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)], "b": [(1, -1.0),
                                                                           (2, -2.0)]}
    assert_same(got, tensorboard_scalars(v2))
    old = tmp_path / "old"
    old.mkdir()
    write_file(old / "events.out.tfevents.1.host", [
        *(scalar_event(s, {"a": s, "b": -s}) for s in range(1, 6)),
        scalar_event(2, {"a": 20.0}), scalar_event(3, {"b": 30.0}),
    ])
    got = read_quietly(old)
    assert got == {"a": [(1, 1.0), (2, 20.0)], "b": [(1, -1.0), (2, -2.0), (3, 30.0)]}
    assert_same(got, tensorboard_scalars(old))


def test_files_are_read_in_sorted_order_and_other_files_ignored(tmp_path):
    write_file(tmp_path / "events.out.tfevents.2.host", [encode_file_version(1.0),
                                                         scalar_event(5, {"a": 5.0})])
    write_file(tmp_path / "events.out.tfevents.1.host", [encode_file_version(1.0),
                                                         scalar_event(1, {"a": 1.0})])
    write_file(tmp_path / "notes.txt", [b"not an event file"])
    got = read_quietly(tmp_path)
    assert got == {"a": [(1, 1.0), (5, 5.0)]}
    assert_same(got, tensorboard_scalars(tmp_path))
    # A directory named like an event file (TensorBoard's reader fails on it) is skipped.
    (tmp_path / "events.out.tfevents.3.dir").mkdir()
    assert read_quietly(tmp_path) == got


float32s = st.floats(width=32, allow_nan=True, allow_infinity=True)
events = st.one_of(
    st.tuples(st.just("scalars"), st.integers(0, 20),
              st.dictionaries(st.sampled_from(["a", "b", "c/d"]), float32s, min_size=1)),
    st.tuples(st.just("start"), st.integers(0, 20), st.just({})),
    st.tuples(st.just("empty"), st.integers(0, 20), st.just({})),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(st.tuples(st.booleans(), st.lists(events, max_size=12)), min_size=1,
                      max_size=3),
       cut=st.integers(0, 40))
def test_random_event_files_read_as_tensorboard_reads_them(files, cut):
    """Any sequence of scalar, restart and empty events over 1-3 files (with or without a
    file-version record), the last file cut short by ``cut`` bytes: the same scalars as
    TensorBoard's."""
    with tempfile.TemporaryDirectory() as directory:
        for index, (versioned, file_events) in enumerate(files):
            records = [encode_file_version(1.0)] if versioned else []
            for kind, step, values in file_events:
                if kind == "scalars":
                    records.append(scalar_event(step, values))
                elif kind == "start":
                    records.append(start_event(step))
                else:
                    records.append(frame(Event(wall_time=1.0, step=step).SerializeToString()))
            data = b"".join(records)
            if index == len(files) - 1:
                data = data[: max(0, len(data) - cut)]
            with open(os.path.join(directory, f"events.out.tfevents.{index}.h"), "wb") as f:
                f.write(data)
        assert_same(read_quietly(directory), tensorboard_scalars(directory))
