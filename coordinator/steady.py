"""summary.steady_state: did the measured period start settled? (pure)

The planned warm-up is a guess. After the run, the per-window series of the measured
period (median latency and completions per second of the 1 s windows, from the
timeseries rows) are searched for a start that had not settled yet with MSER-5
(volley/confidence.py `warmup_windows`): the leading windows whose removal makes the
mean of the rest most precise, kept only when they differ from the rest beyond noise.
The summary reports how many windows that is, which series settled last, and the
warm-up that would have excluded them; its figures still include them (the histograms of
the whole measured period are merged as the records arrive), and a warning says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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
    or windows without a latency)."""
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
