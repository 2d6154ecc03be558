"""`volley run --repeat N`: the spread between runs beside each run's own intervals.

A run's interval says how sure its figure is *if* its requests were independent draws of
one distribution. Repeating the run measures what that leaves out (the server warming
differently, a neighbour on the host, a schedule that happens to bunch): when the runs'
values spread wider than their own intervals, trust the spread.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TypedDict

from coordinator.documents import Summary

#: The figures compared across runs: (name, getter of the value, getter of the interval).
FIGURES = (
    "latency_ms.p50",
    "latency_ms.p90",
    "latency_ms.p99",
    "latency_ms.p999",
    "service_time_ms.p99",
    "throughput_rps",
    "error_rate",
)


class RepeatFigure(TypedDict):
    values: list[float]
    #: each run's own interval (high null: too few requests to bound it)
    within: list[list[float | None]]
    mean: float
    min: float
    max: float
    #: sample standard deviation between runs (0 for one run)
    sd: float
    #: (max - min) / mean between runs, and the mean relative width of the runs' intervals
    spread_ratio: float
    within_ratio: float | None
    #: the runs spread wider than their intervals: the within-run intervals understate it
    spread_exceeds_intervals: bool


class RepeatsDoc(TypedDict):
    runs: list[str]
    seeds: list[int]
    outcomes: list[str]
    figures: dict[str, RepeatFigure]


def _value(summary: Summary, name: str) -> float:
    family, _, stat = name.partition(".")
    if not stat:
        return float(summary[family])  # type: ignore[literal-required]
    return float(summary[family][stat])  # type: ignore[literal-required]


def _within(summary: Summary, name: str) -> list[float | None]:
    conf = summary.get("confidence")
    if conf is None:
        return [None, None]
    family, _, stat = name.partition(".")
    doc = conf[family] if not stat else conf[family][stat]  # type: ignore[literal-required]
    return [doc["low"], doc["high"]]


def figure(summaries: list[Summary], name: str) -> RepeatFigure:
    values = [_value(s, name) for s in summaries]
    within = [_within(s, name) for s in summaries]
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    lo, hi = min(values), max(values)
    spread = (hi - lo) / mean if mean > 0 else 0.0
    widths = [
        (w[1] - w[0]) / v
        for w, v in zip(within, values, strict=True)
        if w[0] is not None and w[1] is not None and v > 0
    ]
    within_ratio = sum(widths) / len(widths) if widths and len(widths) == n else None
    exceeds = within_ratio is not None and n > 1 and spread > within_ratio
    return {
        "values": values,
        "within": within,
        "mean": round(mean, 6),
        "min": lo,
        "max": hi,
        "sd": round(sd, 6),
        "spread_ratio": round(spread, 6),
        "within_ratio": None if within_ratio is None else round(within_ratio, 6),
        "spread_exceeds_intervals": exceeds,
    }


def repeats_doc(runs: list[tuple[Path, Summary]]) -> RepeatsDoc:
    summaries = [s for _, s in runs]
    return {
        "runs": [str(d) for d, _ in runs],
        "seeds": [s["seed"] for s in summaries],
        "outcomes": [
            s["verdict"].get("slo_outcome", "pass" if s["verdict"]["slo_passed"] else "fail")
            for s in summaries
        ],
        "figures": {name: figure(summaries, name) for name in FIGURES},
    }


def write_repeats(out: Path, runs: list[tuple[Path, Summary]]) -> RepeatsDoc:
    """repeats.json beside the first run directory (named after it)."""
    doc = repeats_doc(runs)
    first = runs[0][0]
    path = first.parent / f"{first.name}-repeats.json"
    path.write_text(json.dumps(doc, indent=2))
    return doc
