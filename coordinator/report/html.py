"""report.html of one run: one self-contained page (inline CSS and SVG, no script).

Sections: summary and verdict with SLOs; latency percentiles over time (outages marked);
throughput offered vs achieved; errors (by status code, per window) and outages;
latency histogram and percentile curve; agents (lateness, skew, CPU); the server's
breakdown (queue vs compute) and utilisation over time; latency by payload size; the
plan.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any, cast

from coordinator.documents import IntervalDoc, Outage, Summary
from coordinator.many import AgentLine, choose
from coordinator.report import svg
from coordinator.report.data import RunData, curve

CSS = """
:root{--fg:#1f2937;--mut:#6b7280;--bd:#e5e7eb;--bg:#f9fafb;--ok:#15803d;--bad:#b91c1c;
--warn:#b45309}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
margin:0;background:#fff}
main{max-width:1120px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:17px;margin:30px 0 8px;padding-top:8px;
border-top:1px solid var(--bd)}h3{font-size:14px;margin:16px 0 6px}
.sub{color:var(--mut);margin:0 0 12px}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;
font-size:13px;margin-right:6px;color:#fff}
.ok{background:var(--ok)}.bad{background:var(--bad)}.warnb{background:var(--warn)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px;
margin:14px 0}
.card{border:1px solid var(--bd);border-radius:8px;padding:8px 12px;background:var(--bg)}
.card .k{color:var(--mut);font-size:12px}.card .v{font-size:19px;font-weight:600}
.card .n{color:var(--mut);font-size:12px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:13px}
th,td{border-bottom:1px solid var(--bd);padding:4px 10px;text-align:right;
white-space:nowrap}th{background:var(--bg);font-weight:600}
td:first-child,th:first-child{text-align:left}
td.l,th.l{text-align:left}.pass{color:var(--ok);font-weight:600}
.fail{color:var(--bad);font-weight:600}.better{color:var(--ok)}.worse{color:var(--bad)}
.warn{color:var(--warn);font-weight:600}.noise{color:var(--mut)}td.ci{color:var(--mut)}
.scroll{overflow-x:auto}
figure.chart{margin:10px 0 18px;border:1px solid var(--bd);border-radius:8px;
padding:6px 8px 2px}
figure.chart figcaption{color:var(--mut);font-size:12px;padding:0 6px 6px}
.chart-svg{width:100%;height:auto;display:block}
.chart-svg .ct{font-weight:600;font-size:13px;fill:#111827}
.chart-svg .tk{font-size:11px;fill:#4b5563}.chart-svg .al{font-size:12px;fill:#374151}
.chart-svg .lg{font-size:12px;fill:#374151}.chart-svg .na{font-size:13px;fill:#9ca3af}
.chart-svg .grid{stroke:#eef0f3;stroke-width:1}.chart-svg .ax{stroke:#9ca3af;stroke-width:1}
.chart-svg .band{fill:#f3f4f6}.chart-svg .outage{fill:#fecaca;opacity:.7}
.note{border-left:3px solid var(--warn);background:#fffbeb;padding:6px 12px;margin:8px 0}
.reasons li{margin:2px 0}
pre{background:var(--bg);border:1px solid var(--bd);border-radius:6px;padding:10px;
overflow-x:auto;font-size:12px}
footer{color:var(--mut);font-size:12px;margin-top:30px}
"""


# ---------------------------------------------------------------- small HTML helpers
def page(title: str, body: Iterable[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>"
        + "".join(body)
        + f"<footer>volley report · generated {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())}"
        " · self-contained (no scripts, no external files)</footer></main></body></html>\n"
    )


def num(v: Any, digits: int = 3, unit: str = "") -> str:
    """A figure for a table cell: ints with separators, floats to `digits` significant
    decimals (trailing zeros dropped), None as an en dash."""
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    if isinstance(v, float):
        a = abs(v)
        if a >= 1000:
            text = f"{v:,.0f}"
        elif a >= 1 or a == 0:
            text = f"{v:.{digits}f}".rstrip("0").rstrip(".")
        else:
            text = f"{v:.{digits}g}"
        return text + unit
    return escape(str(v)) + unit


def short(v: Any, unit: str = "") -> str:
    """A headline figure: about four significant digits."""
    if not isinstance(v, float):
        return num(v, unit=unit)
    a = abs(float(v))
    if a >= 1000:
        text = f"{v:,.0f}"
    elif a >= 100:
        text = f"{v:.1f}"
    elif a >= 10:
        text = f"{v:.2f}"
    elif a >= 0.001 or a == 0:
        text = f"{v:.3f}"
    else:
        text = f"{v:.2g}"
    return text + unit


def table(head: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1, cls: str = "") -> str:
    h = "".join(
        f'<th class="l">{escape(c)}</th>' if i < left else f"<th>{escape(c)}</th>"
        for i, c in enumerate(head)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f'<div class="scroll"><table class="{cls}"><tr>{h}</tr>{body}</table></div>'


def figure(svg_text: str, caption: str = "") -> str:
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure class="chart">{svg_text}{cap}</figure>'


def card(key: str, value: str, note: str = "") -> str:
    n = f'<div class="n">{note}</div>' if note else ""
    return (
        f'<div class="card"><div class="k">{escape(key)}</div><div class="v">{value}</div>{n}</div>'
    )


def note(text: str) -> str:
    return f'<div class="note">{escape(text)}</div>'


def mids(rows: list[dict[str, Any]], window_s: float = 1.0) -> list[float]:
    """x of each time-series row: the middle of its window."""
    return [float(r["t_s"]) + window_s / 2 for r in rows]


def _col(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> list[float | None]:
    return [None if r.get(key) is None else float(r[key]) * scale for r in rows]


# ---------------------------------------------------------------- sections
def verdict_html(s: Summary) -> str:
    v = s.get("verdict", {})
    parts = []
    parts.append(
        '<span class="badge ok">VALID</span>'
        if v.get("valid")
        else '<span class="badge bad">INVALID</span>'
    )
    slos = v.get("slo", [])
    if slos:
        outcome = v.get("slo_outcome") or ("pass" if v.get("slo_passed") else "fail")
        parts.append(
            {
                "pass": '<span class="badge ok">SLOs PASS</span>',
                "fail": '<span class="badge bad">SLO FAILED</span>',
                "inconclusive": '<span class="badge warnb">SLO INCONCLUSIVE</span>',
            }[outcome]
        )
    if s.get("partial"):
        parts.append('<span class="badge warnb">PARTIAL</span>')
    out = ["<p>" + "".join(parts) + "</p>"]
    if v.get("reasons"):
        out.append(
            '<ul class="reasons">'
            + "".join(f"<li>{escape(r)}</li>" for r in v["reasons"])
            + "</ul>"
        )
    for w in v.get("warnings", []):
        out.append(note(f"warning: {w}"))
    if slos:
        out.append(
            table(
                ["SLO", "metric", "actual", "interval", "threshold", "result"],
                (
                    [
                        escape(r["slo"]),
                        escape(r["metric"]),
                        num(r.get("actual")),
                        _interval_text(r.get("interval")),
                        num(r.get("threshold")),
                        _slo_cell(r.get("outcome") or ("pass" if r.get("passed") else "fail"))
                        + (f" ({escape(r['reason'])})" if r.get("reason") else ""),
                    ]
                    for r in slos
                ),
                left=2,
            )
        )
    return "".join(out)


def _interval_text(iv: IntervalDoc | None, digits: int = 4) -> str:
    """low – high ('?' for an end too few requests bound); '–' without one."""
    if iv is None:
        return "–"
    high = "?" if iv["high"] is None else num(iv["high"], digits)
    return f"{num(iv['low'], digits)} – {high}"


def _slo_cell(outcome: str) -> str:
    cls = {"pass": "pass", "fail": "fail"}.get(outcome, "warn")
    return f'<span class="{cls}">{escape(outcome.upper())}</span>'


_YES, _NO = '<span class="pass">yes</span>', '<span class="warn">no</span>'


def confidence_html(s: Summary) -> str:
    """What the intervals say, in plain words, and whether the run had enough requests."""
    conf = s.get("confidence")
    if conf is None:
        return ""
    level = f"{conf['level']:.0%}"
    need = conf["requests_needed"]
    needed = cast(dict[str, Any], need)
    rows = [
        [
            k,
            str(needed[k]["needed"]),
            '<span class="pass">yes</span>'
            if needed[k]["enough"]
            else '<span class="warn">no</span>',
        ]
        for k in ("p50", "p90", "p95", "p99", "p999")
    ]
    tp, er = conf["throughput_rps"], conf["error_rate"]
    out = [
        "<h3>How sure these figures are</h3>",
        f'<p class="sub">Each figure comes with a {level} confidence interval: had the run '
        f"been repeated many times under the same conditions, {level} of such intervals would "
        "hold the true value. Percentile intervals come from the merged histogram (the "
        "histogram's own 1% buckets are included); a '?' upper end means too few requests "
        f"to bound that percentile. Throughput {_interval_text(tp, 3)} req/s, error rate "
        f"{er['low']:.3%} – {'?' if er['high'] is None else format(er['high'], '.3%')}.</p>",
        table(["percentile", f"requests needed ({level})", "had enough"], rows),
    ]
    return "".join(out)


def cards_html(s: Summary) -> str:
    lat, svc, late = s["latency_ms"], s["service_time_ms"], s["send_lateness_ms"]
    req = s["requests"]
    server = s.get("server") or {}
    cards = [
        card("offered", short(s.get("offered_rps"), "/s")),
        card("achieved", short(s.get("throughput_rps"), "/s")),
        card("latency p50", short(lat["p50"], " ms"), "from intended send time"),
        card("latency p99", short(lat["p99"], " ms")),
        card("latency p99.9", short(lat["p999"], " ms"), f"max {short(lat['max'])} ms"),
        card("service p99", short(svc["p99"], " ms"), "from actual send"),
        card(
            "errors",
            short(req["errors"]),
            f"{s.get('error_rate', 0):.3%} · dropped {req.get('dropped', 0)}",
        ),
        card(
            "send lateness p99",
            short(late["p99"], " ms"),
            f"{late['late_fraction']:.1%} &gt;1 ms late",
        ),
    ]
    if req.get("no_record"):
        cards.append(
            card(
                "no record",
                short(req["no_record"]),
                f"of {req['scheduled']} scheduled (lost with an agent, or not sent)",
            )
        )
    if server.get("queue_ms") is not None:
        cards.append(card("server queue", short(server["queue_ms"], " ms"), "mean per request"))
        cards.append(
            card("server compute", short(server.get("compute_infer_ms"), " ms"), "infer, mean")
        )
    return '<div class="cards">' + "".join(cards) + "</div>"


def percentiles_table(s: Summary) -> str:
    keys = ("p50", "p90", "p95", "p99", "p999", "max", "mean")
    rows = [
        ["latency (from intended)", *(num(s["latency_ms"].get(k), 4) for k in keys)],
        ["service time (from sent)", *(num(s["service_time_ms"].get(k), 4) for k in keys)],
    ]
    late = s["send_lateness_ms"]
    rows.append(
        [
            "send lateness",
            num(late["p50"], 4),
            "",
            "",
            num(late["p99"], 4),
            "",
            num(late["max"], 4),
            "",
        ]
    )
    stream = s.get("stream")
    if stream is not None:
        for label, key in (
            ("TTFT (from intended)", "ttft_ms"),
            ("second token (from intended)", "ttst_ms"),
            ("inter-token (every gap)", "itl_ms"),
            ("time per output token", "tpot_ms"),
        ):
            row = stream[key]  # type: ignore[literal-required]
            rows.append([label, *(num(row.get(k), 4) for k in keys)])
    conf = s.get("confidence")
    if conf is not None:
        level = f"{conf['level']:.0%}"
        for label, ivs in (
            ("latency", conf["latency_ms"]),
            ("service time", conf["service_time_ms"]),
        ):
            docs = cast(dict[str, IntervalDoc], ivs)
            rows.append(
                [
                    f"{label}: {level} interval",
                    *(f'<span class="noise">{_interval_text(docs[k])}</span>' for k in keys),
                ]
            )
    return table(["ms", *keys], rows) + stream_html(s) + confidence_html(s)


def stream_html(s: Summary) -> str:
    """Counts and rates of a streamed run ("" for a unary one)."""
    st = s.get("stream")
    if st is None:
        return ""
    per = st["responses_per_request"]
    text = (
        f"streamed: {st['requests']} requests, {st['responses']} responses "
        f"({per['min']}-{per['max']} per request, mean {per['mean']:g}), {st['tokens']} "
        f"tokens, {st['tokens_per_s']:.1f} tokens/s"
    )
    good = st.get("goodput")
    if good is not None:
        text += (
            f"; goodput {good['requests']} requests ({good['share']:.1%}), "
            f"{good['tokens_per_s']:.1f} tokens/s within the SLO limits"
        )
    return f"<p>{escape(text)}</p>"


def _band(run: RunData) -> tuple[float, float, str] | None:
    w = float(run.summary.get("warmup_s") or 0.0)
    return (0.0, w, "warm-up") if w > 0 else None


def over_time_html(run: RunData) -> str:
    rows = run.series("all")
    if not rows:
        return note("no time series in this run directory")
    xs = mids(rows)
    band = _band(run)
    spans = _outage_spans(run.summary)
    lat = svg.line_chart(
        [
            svg.Series("p50", xs, _col(rows, "latency_p50_ms")),
            svg.Series("p90", xs, _col(rows, "latency_p90_ms")),
            svg.Series("p99", xs, _col(rows, "latency_p99_ms")),
            svg.Series("max", xs, _col(rows, "latency_max_ms"), dashed=True),
        ],
        title="Latency percentiles per 1 s window (from intended send time)",
        chart_id="latency-over-time",
        x_label="seconds since start",
        y_label="ms",
        band=band,
        spans=spans,
    )
    thr = svg.line_chart(
        [
            svg.Series("achieved", xs, _col(rows, "achieved_rps"), color=svg.color(1)),
            svg.Series("offered", xs, _col(rows, "offered_rps"), color=svg.color(0), dashed=True),
            svg.Series("errors/s", xs, [float(r.get("errors") or 0) for r in rows]),
        ],
        title="Throughput: offered (scheduled) vs achieved (successful responses)",
        chart_id="throughput-over-time",
        x_label="seconds since start",
        y_label="requests/s",
        band=band,
        spans=spans,
    )
    marked = " Shaded red: outages (windows with at least half their arrivals in error)."
    return (
        figure(
            lat,
            "Windows by intended send time; percentiles from merged histograms."
            + (marked if spans else ""),
        )
        + figure(thr, "Achieved counts responses by the window they completed in.")
        + _tokens_over_time(run, rows, xs, band, spans)
    )


def _tokens_over_time(
    run: RunData,
    rows: list[dict[str, Any]],
    xs: list[float],
    band: tuple[float, float, str] | None,
    spans: list[tuple[float, float, str]],
) -> str:
    """TTFT and inter-token latency per window, and tokens/s (streamed runs only)."""
    if run.summary.get("stream") is None or not any(r.get("ttft_p50_ms") for r in rows):
        return ""
    window_s = xs[1] - xs[0] if len(xs) > 1 else 1.0
    chart = svg.line_chart(
        [
            svg.Series("TTFT p50", xs, _col(rows, "ttft_p50_ms")),
            svg.Series("TTFT p99", xs, _col(rows, "ttft_p99_ms")),
            svg.Series("ITL p50", xs, _col(rows, "itl_p50_ms"), dashed=True),
            svg.Series("ITL p99", xs, _col(rows, "itl_p99_ms"), dashed=True),
        ],
        title="Time to first token and inter-token latency per 1 s window",
        chart_id="tokens-over-time",
        x_label="seconds since start",
        y_label="ms",
        band=band,
        spans=spans,
    )
    rate = svg.line_chart(
        [svg.Series("tokens/s", xs, _col(rows, "tokens", 1.0 / window_s))],
        title="Output tokens per second (successful requests, by intended window)",
        chart_id="tokens-per-second",
        x_label="seconds since start",
        y_label="tokens/s",
        band=band,
        spans=spans,
    )
    return figure(chart, "TTFT from the intended send time; ITL over every gap.") + figure(
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
                    band=_band(run),
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


def agents_html(run: RunData) -> str:
    s = run.summary
    rows = []
    agents = s.get("agents", [])
    # many agents: the flagged and the latest first, the rest in a fold (coordinator/many.py)
    shown = choose(
        [
            AgentLine(
                str(a.get("state")),
                a.get("send_lateness_ms", {}).get("p99"),
                bool(a.get("saturated") or a.get("startup"))
                or a.get("state") in ("failed", "missing"),
            )
            for a in agents
        ]
    )
    for a in agents:
        late = a.get("send_lateness_ms", {})
        off = a.get("clock_offset_ms")
        rows.append(
            [
                escape(str(a.get("id"))),
                escape(str(a.get("host", ""))),
                num(a.get("workers")),
                escape(str(a.get("state"))),
                num(a.get("sent")),
                num(a.get("ok")),
                num(a.get("errors")),
                num(a.get("throughput_rps"), 4),
                num(a.get("latency_ms", {}).get("p50"), 4),
                num(a.get("latency_ms", {}).get("p99"), 4),
                num(late.get("p50"), 3),
                num(late.get("p99"), 3),
                f"{late.get('late_fraction', 0):.1%}",
                "–" if off is None else f"{off:.3f} ± {a.get('clock_uncertainty_ms') or 0:.3f}",
                num(a.get("start_skew_ms"), 3),
                num(a.get("cpu_percent_avg"), 3, "%"),
                num(a.get("cpu_us_per_request"), 4),
                '<span class="fail">yes</span>' if a.get("saturated") else "no",
            ]
        )
    head = [
        "agent",
        "host",
        "workers",
        "state",
        "sent",
        "ok",
        "errors",
        "req/s",
        "p50 ms",
        "p99 ms",
        "late p50 ms",
        "late p99 ms",
        ">1 ms late",
        "clock offset ms",
        "start skew ms",
        "CPU avg",
        "CPU µs/req",
        "saturated",
    ]
    out = [table(head, [rows[i] for i in shown.indices], left=2)]
    if shown.rest:
        out.append(note(f"{shown.states}; {shown.rest}"))
        out.append(
            f"<details><summary>all {len(rows)} agents</summary>"
            f"{table(head, rows, left=2)}</details>"
        )
    start = s.get("start")
    if start:
        out.append(
            note(
                f"two-phase start: every agent prepared (slowest {start['slowest_agent']}, "
                f"{start['prepare_s_max']}s), then a lead of {start['lead_ms']:.0f} ms; start "
                f"skew at most {start['skew_ms_max']} ms, {start['agents_within_5ms']} of "
                f"{start['agents']} agents within 5 ms"
            )
        )
    for a in s.get("agents", []):
        if a.get("saturation"):
            out.append(note(a["saturation"]))
        if a.get("startup"):
            out.append(note(a["startup"]))
        if a.get("error"):
            out.append(note(f"agent {a.get('id')}: {a['error']}"))
    names = run.agents()
    if shown.rest:  # many agents: chart the listed ones only
        keep = {str(agents[i].get("id")) for i in shown.indices}
        names = [n for n in names if n in keep]
    if names:
        band = _band(run)
        late_series = []
        cpu_series = []
        for i, name in enumerate(names):
            rows_a = run.series(name)
            xs = mids(rows_a)
            late_series.append(
                svg.Series(name, xs, _col(rows_a, "lateness_p99_ms"), color=svg.color(i))
            )
            cpu_series.append(
                svg.Series(name, xs, _col(rows_a, "agent_cpu_percent"), color=svg.color(i))
            )
        out.append(
            figure(
                svg.line_chart(
                    late_series,
                    title="Send lateness p99 per agent",
                    chart_id="agent-lateness",
                    x_label="seconds since start",
                    y_label="ms",
                    band=band,
                )
            )
            + figure(
                svg.line_chart(
                    cpu_series,
                    title="Agent CPU (100% = one core)",
                    chart_id="agent-cpu",
                    x_label="seconds since start",
                    y_label="%",
                    band=band,
                )
            )
        )
    return "".join(out)


def breakdown_rows(s: Summary) -> list[tuple[str, list[tuple[str, float | None]]]]:
    """Where a request's time goes: the client's mean latency split into generator
    lateness, network/client/gRPC and the server's own parts (all means, ms)."""
    server = s.get("server") or {}
    if server.get("queue_ms") is None:
        return []
    parts = [
        ("server queue", server.get("queue_ms")),
        ("compute input", server.get("compute_input_ms")),
        ("compute infer", server.get("compute_infer_ms")),
        ("compute output", server.get("compute_output_ms")),
        ("server other", max(server.get("overhead_ms") or 0.0, 0.0)),
    ]
    request = server.get("request_ms") or 0.0
    svc = s["service_time_ms"]["mean"]
    lat = s["latency_ms"]["mean"]
    client = [
        ("send lateness", max(lat - svc, 0.0)),
        ("network + client", max(svc - request, 0.0)),
        *parts,
    ]
    return [("client latency (mean)", client), ("server request (mean)", parts)]


def server_html(run: RunData) -> str:
    s = run.summary
    server = s.get("server") or {}
    doc = run.server or {}
    out: list[str] = []
    for n in server.get("notes") or []:
        out.append(note(n))
    info = doc.get("server") or {}
    cfg = doc.get("model_config") or {}
    facts = []
    if info:
        facts.append(f"{escape(str(info.get('name', '')))} {escape(str(info.get('version', '')))}")
    if server.get("instances") is not None:
        facts.append(
            f"{server['instances']} instance(s) {escape(str(server.get('instance_kind', '')))}"
        )
    if cfg.get("max_batch_size"):
        facts.append(f"max_batch_size {cfg['max_batch_size']}")
    if "dynamic_batching" in cfg:
        facts.append("dynamic batching on")
    if facts:
        out.append(f'<p class="sub">{" · ".join(facts)}</p>')
    rows = breakdown_rows(s)
    if rows:
        out.append(
            figure(
                svg.hbar_stack(
                    rows,
                    title="Where the time goes (means per request)",
                    chart_id="server-breakdown",
                ),
                "Server parts from Triton's statistics (deltas over the measured period); "
                "network + client = service time − server request time.",
            )
        )
    stats = doc.get("statistics") or {}
    if stats.get("available"):
        models = stats.get("measured") or {}
        out.append(
            table(
                [
                    "model",
                    "success",
                    "fail",
                    "executions",
                    "avg batch",
                    "request ms",
                    "queue ms",
                    "input ms",
                    "infer ms",
                    "output ms",
                    "other ms",
                ],
                (
                    [
                        escape(m),
                        num(f.get("success")),
                        num(f.get("fail")),
                        num(f.get("execution_count")),
                        num(f.get("avg_batch_size")),
                        num(f.get("request_ms"), 4),
                        num(f.get("queue_ms"), 4),
                        num(f.get("compute_input_ms"), 4),
                        num(f.get("compute_infer_ms"), 4),
                        num(f.get("compute_output_ms"), 4),
                        num(f.get("overhead_ms"), 4),
                    ]
                    for m, f in models.items()
                ),
            )
        )
        fig = models.get(run.summary.get("model", ""))
        bstats = fig.get("batch_stats", []) if fig else []
        if bstats:
            out.append("<h3>Batch statistics</h3>")
            out.append(
                table(
                    ["batch size", "executions", "input ms", "infer ms", "output ms"],
                    (
                        [
                            num(b["batch_size"]),
                            num(b["executions"]),
                            num(b.get("compute_input_ms"), 4),
                            num(b.get("compute_infer_ms"), 4),
                            num(b.get("compute_output_ms"), 4),
                        ]
                        for b in bstats
                    ),
                )
            )
        out.append(server_time_chart(run))
    elif stats.get("note") and not server.get("notes"):
        out.append(note(stats["note"]))
    out.append(utilisation_html(run))
    return "".join(out)


def server_time_chart(run: RunData) -> str:
    model = run.summary.get("model", "")
    wins = (run.server.get("statistics") or {}).get("windows") or []
    rows: list[tuple[float, Mapping[str, Any]]] = [
        (float(w["t_s"]) + float(w.get("span_s", 1.0)) / 2, w["models"].get(model) or {})
        for w in wins
    ]
    if not rows:
        return ""
    xs = [t for t, _ in rows]
    client = run.series("all")
    cx = mids(client)
    return figure(
        svg.line_chart(
            [
                svg.Series("server queue", xs, [f.get("queue_ms") for _, f in rows]),
                svg.Series("compute infer", xs, [f.get("compute_infer_ms") for _, f in rows]),
                svg.Series("server request", xs, [f.get("request_ms") for _, f in rows]),
                svg.Series("client service p50", cx, _col(client, "service_p50_ms"), dashed=True),
            ],
            title="Server time per window (means) beside the client's service time",
            chart_id="server-over-time",
            x_label="seconds since start",
            y_label="ms",
            band=_band(run),
        ),
        "Server figures are per-request means from statistics deltas between samples.",
    )


def utilisation_html(run: RunData) -> str:
    metrics = (run.server or {}).get("metrics") or {}
    if not metrics.get("available"):
        text = metrics.get("note") or "no Prometheus metrics for this run"
        return note(text)
    samples = metrics.get("samples") or []
    xs = [float(m["t_s"]) for m in samples]
    model = run.summary.get("model", "")
    util = [svg.Series("server CPU %", xs, [_pct(m.get("cpu_utilization")) for m in samples])]
    gpus = sorted({g for m in samples for g in (m.get("gpus") or {})})
    for g in gpus:
        util.append(
            svg.Series(
                f"GPU {g[:12]} %",
                xs,
                [_pct((m.get("gpus") or {}).get(g, {}).get("utilization")) for m in samples],
            )
        )
    charts = [
        figure(
            svg.line_chart(
                util,
                title="Server utilisation (Triton metrics)",
                chart_id="server-utilisation",
                x_label="seconds since start",
                y_label="%",
                band=_band(run),
            )
        ),
        figure(
            svg.line_chart(
                [
                    svg.Series(
                        f"pending ({model})",
                        xs,
                        [float((m.get("pending") or {}).get(model, 0)) for m in samples],
                    )
                ],
                title="Pending requests in the server",
                chart_id="server-pending",
                x_label="seconds since start",
                y_label="requests",
                band=_band(run),
            )
        ),
    ]
    if gpus:
        mem = [
            svg.Series(
                f"GPU {g[:12]} GiB",
                xs,
                [_gib((m.get("gpus") or {}).get(g, {}).get("memory_used_bytes")) for m in samples],
            )
            for g in gpus
        ]
        power = [
            svg.Series(
                f"GPU {g[:12]} W",
                xs,
                [(m.get("gpus") or {}).get(g, {}).get("power_w") for m in samples],
            )
            for g in gpus
        ]
        charts.append(
            figure(
                svg.line_chart(
                    mem,
                    title="GPU memory used",
                    chart_id="gpu-memory",
                    x_label="seconds since start",
                    y_label="GiB",
                )
            )
        )
        charts.append(
            figure(
                svg.line_chart(
                    power,
                    title="GPU power",
                    chart_id="gpu-power",
                    x_label="seconds since start",
                    y_label="W",
                )
            )
        )
    return "".join(charts)


def _pct(v: Any) -> float | None:
    return None if v is None else float(v) * 100.0


def _gib(v: Any) -> float | None:
    return None if v is None else float(v) / 2**30


def _size(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024:
            return f"{b:g} {unit}"
        b /= 1024
    return f"{b:g} TiB"


def payload_html(s: Summary) -> str:
    rows = s.get("latency_by_payload") or []
    if not rows:
        return note("no payload-size breakdown")
    cats = [f"{_size(r['bucket_bytes'][0])}–{_size(r['bucket_bytes'][1])}" for r in rows]
    out = table(
        ["request size", "requests", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"],
        (
            [
                escape(c),
                num(r["count"]),
                *(num(r["latency_ms"].get(k), 4) for k in ("p50", "p90", "p99", "max", "mean")),
            ]
            for c, r in zip(cats, rows, strict=True)
        ),
    )
    if len(rows) > 1:
        out += figure(
            svg.bar_chart(
                cats,
                [
                    ("p50", [r["latency_ms"]["p50"] for r in rows]),
                    ("p99", [r["latency_ms"]["p99"] for r in rows]),
                ],
                title="Latency by request payload size",
                chart_id="latency-by-payload",
                y_label="ms",
            )
        )
    return out


def header_html(run: RunData) -> str:
    s = run.summary
    load = run.plan.get("load") or {}
    if s.get("mode") == "closed":
        load_text = f"closed loop, concurrency {load.get('concurrency', '?')}"
    else:
        load_text = f"open loop ({s.get('arrival')}), rate {load.get('rate', '?')}/s"
        if load.get("stages"):
            load_text = f"open loop ({s.get('arrival')}), {len(load['stages'])} stages"
    return (
        f"<h1>volley · {escape(str(s.get('name')))}</h1>"
        f'<p class="sub">model <b>{escape(str(s.get("model")))}</b> at '
        f"{escape(str(s.get('target')))} · {escape(load_text)} · measured "
        f"{num(s.get('duration_s'))} s after {num(s.get('warmup_s'))} s warm-up · "
        f"seed {escape(str(s.get('seed')))} · run {escape(str(s.get('run_id')))} · "
        f"{escape(run.path.name)}</p>"
    )


def render_run(run: RunData) -> str:
    from coordinator.report.composed import composing_html, sequences_html  # imports this

    s = run.summary
    body = [
        header_html(run),
        verdict_html(s),
        cards_html(s),
    ]
    steady = s.get("steady_state")
    if isinstance(steady, dict) and steady.get("note"):
        body.append(f'<p class="sub">steady state: {escape(str(steady["note"]))}</p>')
    for n in run.notes:
        body.append(note(n))
    body += [
        "<h2>Latency</h2>",
        percentiles_table(s),
        over_time_html(run),
        distribution_html(run),
        "<h2>Errors and outages</h2>",
        errors_html(run),
        "<h2>Agents (the generator judges itself)</h2>",
        agents_html(run),
        "<h2>Server</h2>",
        server_html(run),
        composing_html(s),
        sequences_html(s),
        "<h2>Latency by payload size</h2>",
        payload_html(s),
    ]
    if run.plan_text:
        body.append(
            f"<h2>Plan</h2><details><summary>plan.yaml (re-run it to repeat this run)</summary>"
            f"<pre>{escape(run.plan_text)}</pre></details>"
        )
    return page(f"volley · {s.get('name')} · {s.get('model')}", body)
