"""Reading W&B's offline run files (``run-<id>.wandb``) back, for the tests.

wandb has no public reader of these files. Their framing (read from what wandb 0.31 writes):
a 7-byte header ``b":W&B"`` + magic ``0xBEE1`` (little-endian) + version ``0``; then blocks of
32768 bytes, each holding chunks ``crc32 (4, LE) | length (2, LE) | type (1) | data`` where
the CRC is ``zlib.crc32(type byte + data)`` and the type is 1 (a whole record), 2/3/4 (first,
middle, last part of a record split over blocks); fewer than 7 bytes left in a block are
padding. Each record is a ``wandb_internal_pb2.Record`` protobuf (wandb's own classes).
"""

from __future__ import annotations

import glob
import json
import os
import struct
import time
import zlib

_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK = 32768
_CHUNK = struct.Struct("<IHB")


def records(path: str) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    with open(path, "rb") as file:
        data = file.read()
    assert data[:7] == _HEADER, f"{path}: not a W&B run file ({data[:7]!r})"
    out, parts, offset = [], None, 7
    while offset + _CHUNK.size <= len(data):
        left = _BLOCK - offset % _BLOCK
        if left < _CHUNK.size:
            offset += left
            continue
        crc, length, kind = _CHUNK.unpack_from(data, offset)
        if kind == 0 and length == 0:
            break  # zero fill: end of what was written
        chunk = data[offset + _CHUNK.size : offset + _CHUNK.size + length]
        assert zlib.crc32(bytes([kind]) + chunk) == crc, f"{path}: bad CRC at {offset}"
        offset += _CHUNK.size + length
        if kind == 1:
            out.append(pb.Record.FromString(chunk))
        elif kind == 2:
            parts = [chunk]
        elif kind == 3:
            assert parts is not None
            parts.append(chunk)
        elif kind == 4:
            assert parts is not None
            out.append(pb.Record.FromString(b"".join([*parts, chunk])))
            parts = None
        else:
            raise AssertionError(f"{path}: unknown chunk type {kind} at {offset}")
    return out


def _row(items) -> dict:
    """A history row: ``nested_key`` paths (a histogram's fields) become nested dicts."""
    row: dict = {}
    for item in items:
        keys = list(item.nested_key) or [item.key]
        target = row
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = json.loads(item.value_json)
    return row


class WandbRun:
    """What one offline W&B run file holds: its run record, config and history rows."""

    def __init__(self, path: str):
        self.path = path
        self.records = records(path)
        kinds = [r.WhichOneof("record_type") for r in self.records]
        runs = [r.run for r, k in zip(self.records, kinds, strict=True) if k == "run"]
        assert runs, f"{path}: no run record"
        self.run = runs[0]
        self.config: dict = {}
        for r, k in zip(self.records, kinds, strict=True):
            if k == "config":
                for item in r.config.update:
                    self.config[item.key] = json.loads(item.value_json)
        self.history = [_row(r.history.item)
                        for r, k in zip(self.records, kinds, strict=True) if k == "history"]
        self.metrics = {r.metric.name: r.metric.step_metric
                        for r, k in zip(self.records, kinds, strict=True) if k == "metric"}
        self.finished = "exit" in kinds

    def scalars(self, step_key: str = "global_step") -> dict[str, list[tuple[int, float]]]:
        """``{tag: [(step, value), ...]}`` of the history rows (W&B's own keys left out)."""
        out: dict[str, list[tuple[int, float]]] = {}
        for row in self.history:
            for key, value in row.items():
                if key.startswith("_") or key == step_key or isinstance(value, dict):
                    continue
                out.setdefault(key, []).append((int(row[step_key]), float(value)))
        return {tag: out[tag] for tag in sorted(out)}


def _finished(path: str) -> bool:
    try:
        return any(r.WhichOneof("record_type") == "exit" for r in records(path))
    except AssertionError:  # header not written yet
        return False


def wandb_runs(wandb_dir: str, timeout: float = 120.0) -> dict[str, WandbRun]:
    """``{display name: WandbRun}`` of every offline run under ``<wandb_dir>/wandb``.

    ``run.finish()`` returns before W&B's service process has written the whole file: wait
    (at most ``timeout`` seconds) until every run file holds its exit record."""
    paths = sorted(glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*",
                                          "run-*.wandb")))
    deadline = time.monotonic() + timeout
    while not all(_finished(p) for p in paths) and time.monotonic() < deadline:
        time.sleep(0.1)
    unfinished = [p for p in paths if not _finished(p)]
    assert not unfinished, f"W&B runs without an exit record after {timeout} s (was the " \
        f"writer closed?): {unfinished}"
    out = {}
    for path in paths:
        run = WandbRun(path)
        out[run.run.display_name] = run
    return out
