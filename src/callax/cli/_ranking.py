"""``callax summary``'s ranking of a sweep's configurations (``callax.Sweep``): directories
``<sweep>/<name>=<value>,.../seed_<i>``, ranked by the interquartile mean over their seeds of
the final return, each with its 95 % stratified-bootstrap CI; the configurations whose CI
overlaps the best one's are marked (the data cannot tell them apart from the best)."""

from __future__ import annotations

import math
import os
import re
from typing import Any

__all__ = ["RANK_TAGS", "rank_sweeps", "ranking_table"]

RANK_TAGS = ("rollout/ep_rew_mean", "episode/return")
"""The final return a configuration is ranked by: the first of these its seeds have."""


def _sweep_seeds(root: str, event_dirs: list[str]) -> dict[str, dict[str, list[str]]]:
    """``{sweep: {configuration: [seed directories]}}`` of every configuration directory
    (its name parses as ``name=value,...``) holding ``seed_<i>`` runs."""
    from .._writer._sweep import parse_config_name

    sweeps: dict[str, dict[str, list[str]]] = {}
    for directory in event_dirs:
        parent, name = os.path.split(os.path.relpath(directory, root))
        sweep, config = os.path.split(parent)
        if re.fullmatch(r"seed_\d+", name) and parse_config_name(config) is not None:
            sweeps.setdefault(sweep or ".", {}).setdefault(config, []).append(directory)
    return sweeps


def _final_values(directories: list[str], tag: str | None) -> tuple[str | None, list[float]]:
    from .._writer._read import read_run as read_scalars

    runs = [read_scalars(d) for d in directories]
    if tag is None:
        tag = next((t for t in RANK_TAGS if any(t in run for run in runs)), None)
    if tag is None:
        return None, []
    return tag, [run[tag][-1][1] for run in runs
                 if run.get(tag) and not math.isnan(run[tag][-1][1])]


def rank_sweeps(root: str, event_dirs: list[str], *, tag: str | None = None,
                reps: int = 2000) -> dict[str, list[dict[str, Any]]]:
    """``{sweep: [row, ...]}``, rows best first: ``configuration``, ``config`` (its
    values), ``tag`` (what is ranked: `tag`, or the first of :data:`RANK_TAGS` present),
    ``seeds`` (seeds with a final value), ``iqm``, ``ci95_low``, ``ci95_high``, ``rank``
    (1 = best) and ``overlaps_best`` (its CI overlaps the best's; true for the best).
    Configurations with no final value rank last with ``NaN``."""
    from .._iqm import interquartile_mean, stratified_bootstrap_ci
    from .._writer._sweep import parse_config_name

    out: dict[str, list[dict[str, Any]]] = {}
    for sweep, configs in sorted(_sweep_seeds(root, event_dirs).items()):
        rows = []
        for config, directories in sorted(configs.items()):
            ranked_tag, values = _final_values(directories, tag)
            low, high = stratified_bootstrap_ci(values, reps=reps) if values else (math.nan,
                                                                                   math.nan)
            rows.append({"configuration": config, "config": parse_config_name(config),
                         "tag": ranked_tag, "seeds": len(values),
                         "iqm": interquartile_mean(values), "ci95_low": low,
                         "ci95_high": high})
        rows.sort(key=lambda r: -r["iqm"] if not math.isnan(r["iqm"]) else math.inf)
        best = rows[0]
        for rank, row in enumerate(rows, 1):
            row["rank"] = rank
            row["overlaps_best"] = bool(not math.isnan(row["iqm"])
                                        and row["ci95_high"] >= best["ci95_low"]
                                        and row["ci95_low"] <= best["ci95_high"])
        out[sweep] = rows
    return out


def ranking_table(ranking: dict[str, list[dict[str, Any]]], format_value) -> str:
    """The text table of :func:`rank_sweeps`: one block per sweep; ``*`` marks the
    configurations whose CI overlaps the best one's."""
    blocks = []
    for sweep, rows in ranking.items():
        header = ("rank", "configuration", "seeds", "IQM", "95% CI", "")
        lines = [(str(r["rank"]), r["configuration"], str(r["seeds"]),
                  format_value(r["iqm"]),
                  f"[{format_value(r['ci95_low'])}, {format_value(r['ci95_high'])}]",
                  "*" if r["overlaps_best"] else "") for r in rows]
        widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]
        left = (False, True, False, False, True, True)

        def line(row, widths=widths, left=left):
            return "  ".join(c.ljust(w) if is_left else c.rjust(w)
                             for c, w, is_left in zip(row, widths, left, strict=True)).rstrip()

        tag = next((r["tag"] for r in rows if r["tag"]), "?")
        blocks.append("\n".join([f"Sweep {sweep}: configurations by the IQM over seeds of "
                                 f"the final {tag} (* = CI overlaps the best)",
                                 line(header), *(line(r) for r in lines)]))
    return "\n\n".join(blocks)
