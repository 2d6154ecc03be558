"""summary.confidence: the intervals of a run's figures, from its merged histograms and
counts (pure; the statistics are volley/confidence.py's)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

from coordinator.aggregate import Aggregator, Stats
from coordinator.documents import (
    ConfidenceBlock,
    Enough,
    IntervalDoc,
    PercentileIntervals,
    RequestsNeeded,
)
from volley.confidence import (
    Interval,
    design_effect,
    mean_interval,
    min_samples,
    percentile_interval,
    proportion_interval,
    rate_interval,
)
from volley.histogram import LogHistogram

#: The percentiles of a Percentiles block, as fractions of 100.
PCTS = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}

METHOD = (
    "percentiles: order-statistic (binomial) intervals from the merged histogram, from the "
    "lower edge of the low rank's bucket to the upper edge of the high rank's (bucket error "
    "included), the number of values divided by the design effect of their time "
    "correlation (batch means over the 1 s windows); mean: normal approximation; "
    "throughput: exact Poisson; error rate: Clopper-Pearson (these two take requests as "
    "independent)"
)


def interval_doc(iv: Interval, scale: float = 1.0, digits: int = 4) -> IntervalDoc:
    return {
        "low": round(iv.low * scale, digits),
        "high": None if iv.high is None else round(iv.high * scale, digits),
    }


def doc_interval(doc: IntervalDoc, level: float) -> Interval:
    return Interval(float(doc["low"]), None if doc["high"] is None else float(doc["high"]), level)


def window_histograms(agg: Aggregator, which: str) -> list[LogHistogram]:
    """Per measured 1 s window (all agents merged): its latency or service histogram, the
    batches `design_effect` reads. Windows already sealed (histograms freed, long runs)
    and the one the warm-up ends in are left out."""
    per: dict[int, LogHistogram] = {}
    for (w, _agent), st in agg.windows.items():
        if w * agg.window_ns < agg.warmup_ns:
            continue
        h = st.latency if which == "latency" else st.service
        if h.count:
            per.setdefault(w, LogHistogram()).merge(h)
    return [per[w] for w in sorted(per)]


def design_effects(batches: Sequence[LogHistogram]) -> dict[str, float]:
    return {k: design_effect(batches, q) for k, q in PCTS.items()}


def percentile_intervals(
    h: LogHistogram, level: float, deffs: dict[str, float] | None = None, pending: int = 0
) -> PercentileIntervals:
    """Intervals (ms) of hist_ms's figures (`deffs`: per percentile, `design_effect`;
    `pending`: values still to come, volley/confidence.py `percentile_interval`)."""
    ms = 1e-6
    de = deffs or {}
    iv = {
        k: interval_doc(percentile_interval(h, q, level, de.get(k, 1.0), pending), ms)
        for k, q in PCTS.items()
    }
    exact = float(h.max_ns)
    top: IntervalDoc = (
        {"low": round(exact * ms, 4), "high": None if pending else round(exact * ms, 4)}
        if h.count
        else {"low": 0.0, "high": None}
    )
    return {
        "p50": iv["p50"],
        "p90": iv["p90"],
        "p95": iv["p95"],
        "p99": iv["p99"],
        "p999": iv["p999"],
        "max": top,
        "mean": interval_doc(mean_interval(h, level), ms),
    }


def requests_needed(ok: int, level: float, deffs: dict[str, float]) -> RequestsNeeded:
    def row(k: str) -> Enough:
        deff = deffs.get(k, 1.0)
        need = math.ceil(min_samples(PCTS[k], level) * deff)
        return {"needed": need, "had": ok, "enough": ok >= need, "design_effect": round(deff, 3)}

    return {
        "p50": row("p50"),
        "p90": row("p90"),
        "p95": row("p95"),
        "p99": row("p99"),
        "p999": row("p999"),
    }


def confidence_block(
    total: Stats,
    measured_s: float,
    level: float,
    latency_batches: Sequence[LogHistogram] = (),
    service_batches: Sequence[LogHistogram] = (),
    pending: int = 0,
) -> ConfidenceBlock:
    """The intervals of a run's figures; the batches (its measured windows) let the
    percentile intervals account for time correlation (`design_effect`). `pending`:
    requests whose records are still to come (in flight): every interval but the
    throughput's and the mean's then holds whatever they turn out to be."""
    lat_de = design_effects(latency_batches)
    svc_de = design_effects(service_batches)
    m = max(pending, 0)
    errors = proportion_interval(total.errors, total.sent + m, level)
    if m:  # the pending ones all errors (upper end) or none (lower end)
        errors = Interval(
            errors.low, proportion_interval(total.errors + m, total.sent + m, level).high, level
        )
    return {
        "level": level,
        "latency_ms": percentile_intervals(total.latency, level, lat_de, m),
        "service_time_ms": percentile_intervals(total.service, level, svc_de, m),
        "throughput_rps": interval_doc(rate_interval(total.ok, measured_s, level), digits=3),
        "error_rate": interval_doc(errors, digits=6),
        "requests_needed": requests_needed(total.latency.count, level, lat_de),
        "method": METHOD,
    }


def run_confidence(
    agg: Aggregator, total: Stats, measured_s: float, level: float, pending: int = 0
) -> ConfidenceBlock:
    return confidence_block(
        total,
        measured_s,
        level,
        window_histograms(agg, "latency"),
        window_histograms(agg, "service"),
        pending,
    )


def metric_interval(block: ConfidenceBlock, metric: str) -> Interval | None:
    """The interval of an SLO's metric (latency_ms.p99, error_rate, throughput_rps)."""
    level = float(block["level"])
    family, _, stat = metric.partition(".")
    if family == "latency_ms" or family == "service_time_ms":
        rows = block["latency_ms"] if family == "latency_ms" else block["service_time_ms"]
        doc = cast(dict[str, IntervalDoc], rows).get(stat)
        return None if doc is None else doc_interval(doc, level)
    if metric == "error_rate":
        return doc_interval(block["error_rate"], level)
    if metric == "throughput_rps":
        return doc_interval(block["throughput_rps"], level)
    return None


def unbounded_note(block: ConfidenceBlock, metric: str) -> str:
    """Why a percentile SLO has no upper bound: too few successful requests."""
    family, _, stat = metric.partition(".")
    need = cast(dict[str, Enough], block["requests_needed"]).get(stat)
    if family not in ("latency_ms", "service_time_ms") or need is None:
        return ""
    level = float(block["level"])
    return (
        f"{stat} needs at least {need['needed']} successful requests to be bounded at "
        f"{level:.0%} confidence; the run had {need['had']}"
    )
