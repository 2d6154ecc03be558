"""report.html over time: latency percentiles and throughput per window (outages marked,
tokens of streams), errors by status code and outages, the latency distribution.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from html import escape
from typing import Any

from coordinator.documents import Outage, Summary
from coordinator.report import svg
from coordinator.report.data import RunData, curve
from coordinator.report.page import col, figure, mids, note, num, table, warmup_band


def over_time_html(run: RunData) -> str:
    rows = run.series("all")
    if not rows:
        return note("no time series in this run directory")
    xs = mids(rows)
    spans = _outage_spans(run.summary)
    # every chart over time: the same x axis, warm-up band and outage spans
    chart = functools.partial(
        svg.line_chart, x_label="seconds since start", band=warmup_band(run), spans=spans
    )
    lat = chart(
        [
            svg.Series("p50", xs, col(rows, "latency_p50_ms")),
            svg.Series("p90", xs, col(rows, "latency_p90_ms")),
            svg.Series("p99", xs, col(rows, "latency_p99_ms")),
            svg.Series("max", xs, col(rows, "latency_max_ms"), dashed=True),
        ],
        title="Latency percentiles per 1 s window (from intended send time)",
        chart_id="latency-over-time",
        y_label="ms",
    )
    thr = chart(
        [
            svg.Series("achieved", xs, col(rows, "achieved_rps"), color=svg.color(1)),
            svg.Series("offered", xs, col(rows, "offered_rps"), color=svg.color(0), dashed=True),
            svg.Series("errors/s", xs, [float(r.get("errors") or 0) for r in rows]),
        ],
        title="Throughput: offered (scheduled) vs achieved (successful responses)",
        chart_id="throughput-over-time",
        y_label="requests/s",
    )
    marked = " Shaded red: outages (windows with at least half their arrivals in error)."
    return (
        figure(
            lat,
            "Windows by intended send time; percentiles from merged histograms."
            + (marked if spans else ""),
        )
        + figure(thr, "Achieved counts responses by the window they completed in.")
        + _tokens_over_time(run, rows, xs, chart)
    )


def _tokens_over_time(
    run: RunData,
    rows: list[dict[str, Any]],
    xs: list[float],
    chart: Callable[..., str],
) -> str:
    """TTFT and inter-token latency per window, and tokens/s (streamed runs only)."""
    if run.summary.get("stream") is None or not any(r.get("ttft_p50_ms") for r in rows):
        return ""
    window_s = xs[1] - xs[0] if len(xs) > 1 else 1.0
    ttft = chart(
        [
            svg.Series("TTFT p50", xs, col(rows, "ttft_p50_ms")),
            svg.Series("TTFT p99", xs, col(rows, "ttft_p99_ms")),
            svg.Series("ITL p50", xs, col(rows, "itl_p50_ms"), dashed=True),
            svg.Series("ITL p99", xs, col(rows, "itl_p99_ms"), dashed=True),
        ],
        title="Time to first token and inter-token latency per 1 s window",
        chart_id="tokens-over-time",
        y_label="ms",
    )
    rate = chart(
        [svg.Series("tokens/s", xs, col(rows, "tokens", 1.0 / window_s))],
        title="Output tokens per second (successful requests, by intended window)",
        chart_id="tokens-per-second",
        y_label="tokens/s",
    )
    return figure(ttft, "TTFT from the intended send time; ITL over every gap.") + figure(
        rate, "Tokens of the requests scheduled in each window."
    )


def _outage_spans(s: Summary) -> list[tuple[float, float, str]]:
    return [
        (float(o["start_s"]), float(o["end_s"]), f"outage {_outage_text(o)}")
        for o in s.get("outages") or []
    ]


def _codes_text(codes: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(codes.items(), key=lambda kv: -kv[1]))


def _outage_text(o: Outage) -> str:
    share = o["errors"] / o["records"] if o["records"] else 0.0
    return (
        f"{num(o['start_s'])}–{num(o['end_s'])} s: {o['errors']:,} of {o['records']:,} "
        f"in error ({share:.0%}): {_codes_text(o.get('error_codes') or {})}"
    )


def errors_html(run: RunData) -> str:
    """Errors by status code (measured period, and warm-up apart), errors per window by
    code, and the outages (runs of 1 s windows with at least half their arrivals in
    error); "none" when there were none."""
    s = run.summary
    req = s["requests"]
    codes = req.get("error_codes") or {}
    warm = (s.get("warmup_requests") or {}).get("error_codes") or {}
    out = ['<section id="errors" data-section="errors">']
    if codes or warm:
        total = sum(codes.values())
        out.append(
            table(
                ["status code", "errors (measured)", "share of errors", "warm-up"],
                (
                    [
                        escape(c),
                        num(codes.get(c, 0)),
                        f"{codes.get(c, 0) / total:.1%}" if total else "–",
                        num(warm.get(c, 0)),
                    ]
                    for c in sorted({*codes, *warm}, key=lambda c: (-codes.get(c, 0), c))
                ),
                cls="error-codes",
            )
        )
    else:
        out.append('<p class="sub" data-none="error-codes">Error codes: none (no errors).</p>')
    per_window = run.window_error_codes()
    names = sorted({c for _, w in per_window for c in w})
    if names:
        xs = [t + 0.5 for t, _ in per_window]
        out.append(
            figure(
                svg.line_chart(
                    [
                        svg.Series(c, xs, [float(w.get(c, 0)) for _, w in per_window], points=True)
                        for c in names
                    ],
                    title="Errors per 1 s window by status code",
                    chart_id="errors-over-time",
                    x_label="seconds since start",
                    y_label="errors",
                    band=warmup_band(run),
                    spans=_outage_spans(s),
                ),
                "Windows by intended send time (timeseries.parquet: error_codes).",
            )
        )
    outages = s.get("outages")
    if outages:
        out.append("<h3>Outages</h3>")
        out.append(
            table(
                ["from s", "to s", "seconds", "arrivals", "errors", "error share", "status codes"],
                (
                    [
                        num(o["start_s"]),
                        num(o["end_s"]),
                        num(round(float(o["end_s"]) - float(o["start_s"]), 3)),
                        num(o["records"]),
                        num(o["errors"]),
                        f"{o['errors'] / o['records']:.0%}" if o["records"] else "–",
                        escape(_codes_text(o.get("error_codes") or {})),
                    ]
                    for o in outages
                ),
                cls="outages",
            )
        )
    elif outages is not None:
        out.append(
            '<p class="sub" data-none="outages">Outages: none (no 1 s window with at least '
            "half its arrivals in error).</p>"
        )
    else:
        out.append(note("this summary has no outages list (an older run)"))
    out.append("</section>")
    return "".join(out)


def distribution_html(run: RunData) -> str:
    h = run.histograms.get("latency")
    if h is None or h.count == 0:
        return note("no latency histogram (histograms.json missing or empty)")
    lo, hi, counts = h.buckets()
    s = run.summary["latency_ms"]
    hist = svg.log_histogram(
        lo.tolist(),
        hi.tolist(),
        counts.tolist(),
        title="Latency histogram (measured period)",
        chart_id="latency-histogram",
        marks=[("p50", s["p50"]), ("p99", s["p99"])],
    )
    series = [("latency", curve(h), h.count)]
    svc = run.histograms.get("service_time")
    if svc is not None and svc.count:
        series.append(("service time", curve(svc), svc.count))
    late = run.histograms.get("send_lateness")
    if late is not None and late.count:
        series.append(("send lateness", curve(late), late.count))
    pc = svg.percentile_curve(
        series, title="Percentile curve", chart_id="percentile-curve", dashed=[False, True, True]
    )
    return figure(hist, "Log-spaced bins; dashed lines mark p50 and p99.") + figure(
        pc, "Latency is from the intended send time (free of coordinated omission)."
    )
