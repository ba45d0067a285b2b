"""The JSON lines writer: ``<directory>/metrics.jsonl``, one JSON object per line, and its
reader (used by ``callax summary``).

Lines (every one a JSON object, UTF-8, ``\\n``-terminated):

- a scalar point: ``{"step": 120, "tag": "episode/return", "value": 21.5,
  "wall_time": 1718000000.25}``. ``value`` is the logged ``float32`` as a JSON number
  (printed exactly: ``float(value)`` reads the same number back), or, for values JSON has no
  number for, one of the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (strict JSON;
  Python's ``float()`` reads all three);
- a histogram: ``{"step", "tag", "histogram": {"min", "max", "num", "sum", "sum_squares",
  "bucket_limits": [...], "bucket_counts": [...]}, "wall_time"}`` (bucket ``i`` counts the
  values in ``(bucket_limits[i - 1], bucket_limits[i]]``, the first from ``min``);
- hyperparameters: ``{"hparams": {...}, "wall_time"}``;
- text (``add_text``): ``{"step", "tag", "text": "...", "wall_time"}``;
- in a hyperparameter sweep ([`callax.Sweep`][]) every line also has ``"config"``, the
  name of its configuration (``"learning_rate=3e-4,clip_range=0.2"``);
- a restart (a run resumed with ``purge_step``): ``{"purge_step": q, "wall_time"}``: points
  above it at steps ``>= q`` are superseded (readers drop them, as TensorBoard does).

The file is opened for appending and written without a buffer, one batch per ``write``; a
failed write is cut back off the file, so lines are whole. A reader treats a last line
without its ``\\n`` as not yet written.
"""

from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np

from ._append import append_whole
from ._interface import AbstractWriter, Destination

__all__ = ["FILE_NAME", "JsonlWriter", "read_jsonl", "value_of"]

FILE_NAME = "metrics.jsonl"

_NON_FINITE = {math.inf: '"Infinity"', -math.inf: '"-Infinity"'}


def _number(value: float) -> str:
    if value != value:  # NaN
        return '"NaN"'
    text = _NON_FINITE.get(value)
    return text if text is not None else repr(value)


def value_of(value: float | str) -> float:
    """A ``value`` read from a line, as a float (``"NaN"``, ``"Infinity"``, ...)."""
    return float(value)


class JsonlWriter(AbstractWriter):
    """JSON lines: ``<directory>/metrics.jsonl`` (see the module for its lines)."""

    def __init__(self, destination: Destination):
        os.makedirs(destination.directory, exist_ok=True)
        self.path = os.path.join(destination.directory, FILE_NAME)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed by close()
        self._tags: dict[str, str] = {}
        # In a sweep every line names its configuration (``"config": "lr=3e-4,..."``).
        self._config_name = destination.configuration
        self._config = ("" if destination.configuration is None else
                        f', "config": {json.dumps(destination.configuration)}')
        if destination.purge_step is not None:
            self._append(f'{{"purge_step": {int(destination.purge_step)}, '
                         f'"wall_time": {_now()}}}\n')

    def _tag(self, tag: str) -> str:
        text = self._tags.get(tag)
        if text is None:
            text = self._tags[tag] = json.dumps(tag, ensure_ascii=False)
        return text

    def _append(self, text: str) -> None:
        """Append whole lines; on an error (a full disk) cut the file back to where it was."""
        append_whole(self._file, text.encode("utf-8"))

    def write_scalars(self, tags, steps, values, valid, wall_times) -> None:
        names = [self._tag(t) for t in tags]
        lines = []
        everything = bool(valid.all())
        for step, wall, row, ok in zip(steps.tolist(), wall_times.tolist(),
                                       values.tolist(), valid.tolist(), strict=True):
            head = f'{{"step": {step}, "tag": '
            tail = f', "wall_time": {wall!r}{self._config}}}\n'
            for j, value in enumerate(row):
                if everything or ok[j]:
                    lines.append(f'{head}{names[j]}, "value": {_number(value)}{tail}')
        self._append("".join(lines))

    def write_histograms(self, tags, step, stats, counts, wall_time) -> None:
        lines = []
        for tag, row, bucket in zip(tags, stats.tolist(), counts, strict=True):
            minimum, maximum, num, total, squares, width = row
            limits = minimum + width * np.arange(1, len(bucket) + 1, dtype=np.float64)
            limits[-1] = max(maximum, limits[-1])
            histogram = {"min": minimum, "max": maximum, "num": num, "sum": total,
                         "sum_squares": squares, "bucket_limits": limits.tolist(),
                         "bucket_counts": np.asarray(bucket, np.float64).tolist()}
            line = {"step": int(step), "tag": tag, "histogram": histogram,
                    "wall_time": float(wall_time)}
            if self._config:
                line["config"] = self._config_name
            lines.append(json.dumps(line, allow_nan=True) + "\n")
        self._append("".join(lines))

    def write_hparams(self, hparams, wall_time) -> None:
        line = {"hparams": dict(hparams), "wall_time": float(wall_time)}
        if self._config:
            line["config"] = self._config_name
        self._append(json.dumps(line) + "\n")

    def write_text(self, tag, step, text, wall_time) -> None:
        line = {"step": int(step), "tag": tag, "text": text, "wall_time": float(wall_time)}
        if self._config:
            line["config"] = self._config_name
        self._append(json.dumps(line, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._file.close()


def _now() -> float:
    import time

    return time.time()


def read_jsonl(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` (tags sorted, points in file order) of a
    ``metrics.jsonl`` file (or of ``<directory>/metrics.jsonl``): the scalar points, with
    those superseded by a restart's ``purge_step`` left out. A last line without its
    ``\\n`` (being written) is not read; a line that is not a JSON object is skipped with a
    ``RuntimeWarning`` naming the file and line."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, FILE_NAME)
    with open(path, "rb") as file:
        data = file.read()
    points: dict[str, list[tuple[int, float]]] = {}
    lines = data.split(b"\n")
    for number, line in enumerate(lines[:-1], 1):  # the part after the last \n is unfinished
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item, dict):
                raise ValueError("not an object")
            if "purge_step" in item:
                start = int(item["purge_step"])
                for tag, kept in points.items():
                    points[tag] = [p for p in kept if p[0] < start]
            elif "value" in item:
                point = (int(item["step"]), value_of(item["value"]))
                points.setdefault(str(item["tag"]), []).append(point)
        except (ValueError, KeyError, TypeError) as error:
            warnings.warn(f"{path}: line {number} is not a callax JSON line ({error}); "
                          "skipped", RuntimeWarning, stacklevel=2)
    return {tag: points[tag] for tag in sorted(points)}
