"""``callax summary``: what the runs under a directory hold (event files or JSON lines),
and each outcome's interquartile mean over seeds."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from typing import Any

from ._parser import UsageError
from ._ranking import rank_sweeps, ranking_table

__all__ = ["NOT_OUTCOMES", "is_outcome", "read_scalars", "summarize", "summarize_seeds",
           "summary_command"]

NOT_OUTCOMES = ("time/", "train/learning_rate")
"""Tags (prefixes) that say how a run ran, not how well it did: left out of the table over
seeds (an interval over seeds of the speed or of a schedule's last value means nothing)."""


def is_outcome(tag: str) -> bool:
    """Whether `tag` is an outcome of training (everything but :data:`NOT_OUTCOMES`)."""
    return not any(tag == p or (p.endswith("/") and tag.startswith(p)) for p in NOT_OUTCOMES)


def _event_dirs(root: str) -> list[str]:
    from .._writer._read import is_run_file

    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        if any(is_run_file(f) for f in files):
            found.append(directory)
    return sorted(found)


def read_scalars(directory: str) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the event files directly in ``directory`` (or, if
    it has none, of its ``metrics.jsonl`` from the JSON lines writer): every
    point TensorBoard's ``EventAccumulator`` would keep, read without TensorBoard (so the core
    install suffices). A truncated last record, as in a file still being written, is not an
    error: the points before it are read. A corrupt record is skipped with a warning."""
    from .._writer._read import read_run

    return read_run(directory)


def summarize(root: str) -> dict[str, dict[str, dict[str, Any]]]:
    """``{run: {tag: {points, last_step, last_value, min, max}}}`` for every directory under
    ``root`` holding event files (``run`` is its path relative to ``root``, ``"."`` for
    ``root`` itself). ``min`` and ``max`` ignore ``NaN`` values."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for directory in _event_dirs(root):
        run = os.path.relpath(directory, root)
        tags = {}
        for tag, points in read_scalars(directory).items():
            if not points:
                continue
            values = [v for _, v in points if not math.isnan(v)]  # NaN: no min/max
            tags[tag] = {
                "points": len(points),
                "last_step": points[-1][0],
                "last_value": points[-1][1],
                "min": min(values) if values else math.nan,
                "max": max(values) if values else math.nan,
            }
        summary[run] = tags
    return summary


def summarize_seeds(root: str, *, reps: int = 2000) -> dict[str, dict[str, dict[str, Any]]]:
    """Over the seeds of each run with several (directories ``<group>/seed_<i>``):
    ``{"<group>/seed_*": {tag: {seeds, iqm, ci95_low, ci95_high}}}`` where ``iqm`` is the
    interquartile mean of the seeds' last values of ``tag`` and ``ci95_*`` its 95 %
    stratified-bootstrap confidence interval (Agarwal et al. 2021; ``reps`` replicates,
    fixed seed). A tag counts the seeds whose last value is not ``NaN``; at least two.
    Tags that are not outcomes (:func:`is_outcome`: speed, the learning-rate schedule) are
    left out."""
    import re

    from .._iqm import interquartile_mean, stratified_bootstrap_ci

    groups: dict[str, list[str]] = {}
    for directory in _event_dirs(root):
        parent, name = os.path.split(os.path.relpath(directory, root))
        if re.fullmatch(r"seed_\d+", name):
            groups.setdefault(parent, []).append(directory)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for parent, directories in sorted(groups.items()):
        if len(directories) < 2:
            continue
        last: dict[str, list[float]] = {}
        for directory in directories:
            for tag, points in read_scalars(directory).items():
                if points and not math.isnan(points[-1][1]):
                    last.setdefault(tag, []).append(points[-1][1])
        tags = {}
        for tag, values in sorted(last.items()):
            if len(values) < 2 or not is_outcome(tag):
                continue
            low, high = stratified_bootstrap_ci(values, reps=reps)
            tags[tag] = {"seeds": len(values), "iqm": interquartile_mean(values),
                         "ci95_low": low, "ci95_high": high}
        out[os.path.join(parent, "seed_*")] = tags
    return out


def _seeds_table(over: dict[str, dict[str, dict[str, Any]]]) -> str:
    header = ("seeds of", "tag", "seeds", "IQM", "95% CI")
    rows = [(group, tag, str(s["seeds"]), _format_value(s["iqm"]),
             f"[{_format_value(s['ci95_low'])}, {_format_value(s['ci95_high'])}]")
            for group, tags in over.items() for tag, s in tags.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = (True, True, False, False, True)

    def line(row):
        cells = [c.ljust(w) if is_left else c.rjust(w)
                 for c, w, is_left in zip(row, widths, left, strict=True)]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def _json_safe(obj: Any) -> Any:
    """NaN becomes ``null`` and infinities ``"inf"``/``"-inf"``: the output is strict JSON."""
    if isinstance(obj, dict):
        return {key: _json_safe(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(value) for value in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def _format_value(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
        return f"{value:.4e}"
    return f"{value:.4f}"


def _table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    header = ("run", "tag", "points", "last step", "last value", "min", "max")
    rows = [
        (run, tag, str(s["points"]), str(s["last_step"]), _format_value(s["last_value"]),
         _format_value(s["min"]), _format_value(s["max"]))
        for run, tags in summary.items() for tag, s in tags.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = (True, True, False, False, False, False, False)

    def line(row):
        cells = [c.ljust(w) if is_left else c.rjust(w)
                 for c, w, is_left in zip(row, widths, left, strict=True)]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def summary_command(args: argparse.Namespace) -> int:
    """``callax summary``: the table (or JSON) of every run under ``args.dir``."""
    root = args.dir
    if not os.path.isdir(root):
        raise UsageError(f"no such directory: {root!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = summarize(root)
    for warning in caught:  # corrupt records: one line each, not a source listing
        print(f"callax: warning: {warning.message}", file=sys.stderr)
    if not summary:
        raise UsageError(f"no runs under {root!r} (no TensorBoard event files, no "
                         "metrics.jsonl)")
    over = summarize_seeds(root)
    ranking = rank_sweeps(root, _event_dirs(root), tag=getattr(args, "rank_tag", None))
    if args.json:
        sweeps = {"sweeps": ranking} if ranking else {}
        print(json.dumps(_json_safe({**summary, **over, **sweeps}), indent=2,
                         allow_nan=False))
    else:
        print(_table(summary))
        if over:
            print("\nOver seeds: interquartile mean of the seeds' last values, 95% "
                  "stratified-bootstrap CI (Agarwal et al. 2021); outcomes only (no time/, "
                  "no train/learning_rate)")
            print(_seeds_table(over))
        if ranking:
            print()
            print(ranking_table(ranking, _format_value))
    return 0
