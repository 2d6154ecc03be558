"""summary.confidence: the intervals of a run's figures, from its merged histograms and
counts (pure; the statistics are volley/confidence.py's)."""

from __future__ import annotations

from typing import cast

from coordinator.aggregate import Stats
from coordinator.documents import (
    ConfidenceBlock,
    Enough,
    IntervalDoc,
    PercentileIntervals,
    RequestsNeeded,
)
from volley.confidence import (
    Interval,
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
    "included); mean: normal approximation; throughput: exact Poisson; error rate: "
    "Clopper-Pearson; values of a run are taken as independent"
)


def interval_doc(iv: Interval, scale: float = 1.0, digits: int = 4) -> IntervalDoc:
    return {
        "low": round(iv.low * scale, digits),
        "high": None if iv.high is None else round(iv.high * scale, digits),
    }


def doc_interval(doc: IntervalDoc, level: float) -> Interval:
    return Interval(float(doc["low"]), None if doc["high"] is None else float(doc["high"]), level)


def percentile_intervals(h: LogHistogram, level: float) -> PercentileIntervals:
    """Intervals (ms) of hist_ms's figures."""
    ms = 1e-6
    iv = {k: interval_doc(percentile_interval(h, q, level), ms) for k, q in PCTS.items()}
    exact = float(h.max_ns)
    top: IntervalDoc = (
        {"low": round(exact * ms, 4), "high": round(exact * ms, 4)}
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


def requests_needed(ok: int, level: float) -> RequestsNeeded:
    def row(q: float) -> Enough:
        need = min_samples(q, level)
        return {"needed": need, "had": ok, "enough": ok >= need}

    return {
        "p50": row(PCTS["p50"]),
        "p90": row(PCTS["p90"]),
        "p95": row(PCTS["p95"]),
        "p99": row(PCTS["p99"]),
        "p999": row(PCTS["p999"]),
    }


def confidence_block(total: Stats, measured_s: float, level: float) -> ConfidenceBlock:
    return {
        "level": level,
        "latency_ms": percentile_intervals(total.latency, level),
        "service_time_ms": percentile_intervals(total.service, level),
        "throughput_rps": interval_doc(rate_interval(total.ok, measured_s, level), digits=3),
        "error_rate": interval_doc(proportion_interval(total.errors, total.sent, level), digits=6),
        "requests_needed": requests_needed(total.latency.count, level),
        "method": METHOD,
    }


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
