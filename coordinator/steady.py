"""summary.steady_state: did the measured period start settled? (pure)

The planned warm-up is a guess. After the run, the per-window series of the measured
period (median latency and completions per second of the 1 s windows, from the
timeseries rows) are searched for a start that had not settled yet with MSER-5
(volley/confidence.py `warmup_windows`): the leading windows whose removal makes the
mean of the rest most precise, kept only when they differ from the rest beyond noise.
The summary reports how many windows that is, which series settled last, and the
warm-up that would have excluded them; its figures still include them (the histograms of
the whole measured period are merged as the records arrive), and a warning says so.

With `--warmup auto` (`load.warmup: auto`) they are excluded instead, never more than half
of the measured windows: `exclude_start` rebuilds the aggregator's measured totals by
re-merging the per-window histograms (windows by intended time) from the detected cut on.
The histograms are exact per 1 s window and merge losslessly, so the rebuilt figures are
the ones a planned warm-up of that length would have given; it works whether or not
requests.parquet was written, and the run keeps every window's histograms for it (the
loop does not free sealed windows of an auto warm-up run). The breakdowns by payload
size, input shape and model are not kept per window: they stay over the whole measured
period (said in the note).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from coordinator.aggregate import Aggregator
from coordinator.documents import SteadyState
from volley.confidence import warmup_windows


def _series(rows: Sequence[dict[str, Any]], key: str, first: int, last: int) -> list[float]:
    by_window = {int(r["window"]): r.get(key) for r in rows if r.get("agent") == "all"}
    out: list[float] = []
    for w in range(first, last):
        v = by_window.get(w)
        out.append(float(v) if isinstance(v, int | float) else math.nan)
    return out


def steady_state(
    rows: Sequence[dict[str, Any]], warmup_s: float, measured_s: float
) -> SteadyState | None:
    """The unsettled start of the measured period (None: too short to judge, < 20 windows
    or windows without a latency), reported."""
    first = math.ceil(warmup_s - 1e-9)
    last = math.floor(warmup_s + measured_s + 1e-9)
    latency = _series(rows, "latency_p50_ms", first, last)
    completions = _series(rows, "achieved_rps", first, last)
    if len(latency) < 20 or any(math.isnan(v) for v in latency):
        return None
    completions = [0.0 if math.isnan(v) else v for v in completions]
    d_lat = warmup_windows(latency)
    d_tp = warmup_windows(completions[:-1])  # the last window's completions are partial
    d = max(d_lat, d_tp)
    by = "" if d == 0 else "latency" if d_lat >= d_tp else "throughput"
    if d == 0:
        note = f"settled from the start of the measured period ({len(latency)} windows judged)"
    else:
        note = (
            f"{by} had not settled in the first {d} s after the warm-up (MSER-5 on the "
            f"{len(latency)} 1 s windows); these windows are in the figures: a warm-up of "
            f"{warmup_s + d:g}s would have left them out"
        )
    return {
        "unsettled_windows": d,
        "unsettled_s": float(d),
        "by": by,
        "action": "reported",
        "note": note,
    }


def settle_rule(d_lat: int, d_tp: int) -> str:
    return (
        f"MSER-5 on the 1 s windows' median latency ({d_lat} s unsettled) and completions "
        f"({d_tp} s), kept only where the start differs from the rest beyond 3 standard "
        "errors; at most half the run"
    )


def detect(
    rows: Sequence[dict[str, Any]], warmup_s: float, measured_s: float
) -> tuple[int, str, str, int]:
    """`--warmup auto`: the unsettled leading windows of the measured period, bounded by
    half of them (0 when too short to judge: < 20 windows or a window without latency),
    which series settled last, the rule's text and the windows judged."""
    first = math.ceil(warmup_s - 1e-9)
    last = math.floor(warmup_s + measured_s + 1e-9)
    latency = _series(rows, "latency_p50_ms", first, last)
    completions = [0.0 if math.isnan(v) else v for v in _series(rows, "achieved_rps", first, last)]
    if len(latency) < 20 or any(math.isnan(v) for v in latency):
        return 0, "", f"not judged: {len(latency)} windows with a latency, 20 needed", len(latency)
    d_lat = warmup_windows(latency)
    d_tp = warmup_windows(completions[:-1])  # the last window's completions are partial
    d = min(max(d_lat, d_tp), len(latency) // 2)
    by = "" if d == 0 else "latency" if d_lat >= d_tp else "throughput"
    return d, by, settle_rule(d_lat, d_tp), len(latency)


def exclude_start(agg: Aggregator, cut_window: int) -> Aggregator:
    """A copy of `agg` whose measured period starts at window `cut_window` (by intended
    time; at or after the planned warm-up's end): each agent's measured totals re-merged
    from its windows from the cut on, and its warm-up from every window before (the
    windows hold every record, warm-up ones too). The per-window histograms must still be
    held (not released)."""
    out = Aggregator(agg.n_agents, cut_window * agg.window_ns, agg.window_ns)
    out.good = agg.good
    out.completions = agg.completions
    out.by_size, out.by_model, out.by_shape = agg.by_size, agg.by_model, agg.by_shape
    out.shapes, out.sequences = agg.shapes, agg.sequences
    for old, new in zip(agg.agents, out.agents, strict=True):
        new.first_intended_ns, new.first_skew_ns = old.first_intended_ns, old.first_skew_ns
        new.last_done_ns, new.startup = old.last_done_ns, old.startup
    for (w, agent), st in sorted(agg.windows.items()):
        tally = out.agents[agent]
        if w >= cut_window:
            tally.measured.merge(st)
            out.windows[(w, agent)] = st
        else:
            tally.warmup.merge(st)
    return out


def excluded_state(
    d: int, by: str, rule: str, warmup_s: float, excluded_requests: int, judged: int
) -> SteadyState:
    """summary.steady_state of a `--warmup auto` run."""
    if d == 0:
        note = f"settled from the start: nothing excluded ({rule})"
    else:
        note = (
            f"excluded the first {d} s ({excluded_requests} requests) as warm-up: not "
            f"settled by {rule}; figures from {warmup_s + d:g} s on (breakdowns by payload, "
            "shape and model still cover the whole run)"
        )
    return {
        "unsettled_windows": d,
        "unsettled_s": float(d),
        "by": by,
        "action": "excluded",
        "note": note,
        "excluded_s": float(d),
        "excluded_requests": excluded_requests,
        "windows_judged": judged,
        "rule": rule,
    }
