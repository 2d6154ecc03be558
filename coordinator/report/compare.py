"""`volley compare`: runs side by side, with the differences against the first run."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from typing import Any

from coordinator.documents import PercentileKey, Summary
from coordinator.report import svg
from coordinator.report.data import RunData, curve
from coordinator.report.page import figure, mids, note, num, page, table
from coordinator.report.server import breakdown_rows
from volley.confidence import Interval, differ

#: (label, getter, unit, better) — better: "lower", "higher" or "" (no judgement)
Row = tuple[str, Callable[[Summary], Any], str, str]


def _get(*path: str) -> Callable[[Summary], Any]:
    def get(s: Summary) -> Any:
        cur: Any = s
        for p in path:
            if not isinstance(cur, dict):
                return None
            cur = cur.get(p)
        return cur

    return get


def _util(key: str) -> Callable[[Summary], Any]:
    def get(s: Summary) -> Any:
        server = s.get("server")
        u = server.get("utilization") if server else None
        v = u.get(key) if u else None
        return v.get("mean") if isinstance(v, dict) else None

    return get


ROWS: list[Row] = [
    ("offered", _get("offered_rps"), "req/s", ""),
    ("achieved", _get("throughput_rps"), "req/s", "higher"),
    ("error rate", _get("error_rate"), "", "lower"),
    ("dropped", _get("requests", "dropped"), "", "lower"),
    *(
        (f"latency {k}", _get("latency_ms", k), "ms", "lower")
        for k in ("p50", "p90", "p95", "p99", "p999", "max", "mean")
    ),
    ("service time p50", _get("service_time_ms", "p50"), "ms", "lower"),
    ("service time p99", _get("service_time_ms", "p99"), "ms", "lower"),
    ("send lateness p99", _get("send_lateness_ms", "p99"), "ms", "lower"),
    # streamed runs (empty for unary ones)
    ("TTFT p50", _get("stream", "ttft_ms", "p50"), "ms", "lower"),
    ("TTFT p99", _get("stream", "ttft_ms", "p99"), "ms", "lower"),
    ("inter-token p50", _get("stream", "itl_ms", "p50"), "ms", "lower"),
    ("inter-token p99", _get("stream", "itl_ms", "p99"), "ms", "lower"),
    ("time per token p50", _get("stream", "tpot_ms", "p50"), "ms", "lower"),
    ("tokens/s", _get("stream", "tokens_per_s"), "", "higher"),
    ("goodput share", _get("stream", "goodput", "share"), "", "higher"),
    ("server instances", _get("server", "instances"), "", ""),
    ("server request", _get("server", "request_ms"), "ms", "lower"),
    ("server queue", _get("server", "queue_ms"), "ms", "lower"),
    ("server compute input", _get("server", "compute_input_ms"), "ms", "lower"),
    ("server compute infer", _get("server", "compute_infer_ms"), "ms", "lower"),
    ("server compute output", _get("server", "compute_output_ms"), "ms", "lower"),
    ("server avg batch", _get("server", "avg_batch_size"), "", ""),
    ("server CPU (mean)", _util("cpu_utilization_percent"), "%", ""),
    ("server GPU (mean)", _util("gpu_utilization_percent"), "%", ""),
]


def _composing(name: str, key: str) -> Callable[[Summary], Any]:
    def get(s: Summary) -> Any:
        server = s.get("server") or {}
        for r in server.get("composing") or []:
            if r["name"] == name:
                return r.get(key)
        return None

    return get


def _position(pos: str) -> Callable[[Summary], Any]:
    def get(s: Summary) -> Any:
        q = s.get("sequences")
        for p in q["by_position"] if q else []:
            if p["position"] == pos:
                return p["latency_ms"]["p50"]
        return None

    return get


def extra_rows(runs: list[RunData]) -> list[Row]:
    """Rows of what only some runs have: each composing model (ensemble steps, BLS
    callees), and sequence figures."""
    names: dict[str, None] = {}
    for r in runs:
        for c in (r.summary.get("server") or {}).get("composing") or []:
            names[c["name"]] = None
    rows: list[Row] = []
    for n in names:
        rows += [
            (f"{n}: queue", _composing(n, "queue_ms"), "ms", "lower"),
            (f"{n}: compute infer", _composing(n, "compute_infer_ms"), "ms", "lower"),
            (f"{n}: executions", _composing(n, "execution_count"), "", ""),
        ]
    if any(r.summary.get("sequences") for r in runs):
        rows += [
            ("sequences completed", _get("sequences", "completed"), "", "higher"),
            ("sequences failed", _get("sequences", "failed"), "", "lower"),
            *((f"{p} step p50", _position(p), "ms", "lower") for p in ("first", "middle", "last")),
            ("sequence duration p50", _get("sequences", "duration_ms", "p50"), "ms", "lower"),
            ("live sequences (peak 1 s)", _get("sequences", "live_max"), "", ""),
        ]
    return rows


#: figure label -> path of its interval in summary.confidence
INTERVALS: dict[str, tuple[str, ...]] = {
    "achieved": ("throughput_rps",),
    "error rate": ("error_rate",),
    **{f"latency {k}": ("latency_ms", k) for k in ("p50", "p90", "p95", "p99", "p999", "mean")},
    "service time p50": ("service_time_ms", "p50"),
    "service time p99": ("service_time_ms", "p99"),
}


def interval_of(s: Summary, label: str) -> Interval | None:
    """The run's interval of a compared figure (None: no confidence block or figure)."""
    path = INTERVALS.get(label)
    conf = s.get("confidence")
    if path is None or conf is None:
        return None
    cur: Any = conf
    for p in path:
        cur = cur.get(p) if isinstance(cur, dict) else None
    if not isinstance(cur, dict):
        return None
    return Interval(float(cur["low"]), cur.get("high"), float(conf["level"]))


def significant(a: Interval | None, b: Interval | None) -> bool | None:
    """Do two runs' figures differ beyond noise (their intervals do not overlap,
    volley/confidence.py `differ`)? None when either has no interval."""
    if a is None or b is None:
        return None
    return differ(a, b)


def labels(runs: list[RunData]) -> list[str]:
    names = [r.label for r in runs]
    if len(set(names)) < len(names):
        names = [f"{r.label} ({r.path.name})" for r in runs]
    return names


def delta(a: Any, b: Any) -> float | None:
    """Relative change of b against a (None when not comparable)."""
    if not isinstance(a, int | float) or not isinstance(b, int | float) or isinstance(a, bool):
        return None
    if a == 0:
        return None
    return (float(b) - float(a)) / abs(float(a))


def comparison(runs: list[RunData]) -> list[dict[str, Any]]:
    """The compared figures as data: one entry per row with values and changes vs run 0."""
    out = []
    for label, get, unit, better in [*ROWS, *extra_rows(runs)]:
        values = [get(r.summary) for r in runs]
        if all(v is None for v in values):
            continue
        ivs = [interval_of(r.summary, label) for r in runs]
        out.append(
            {
                "figure": label,
                "unit": unit,
                "better": better,
                "values": values,
                "intervals": [None if iv is None else [iv.low, iv.high] for iv in ivs],
                "change_vs_first": [delta(values[0], v) for v in values[1:]],
                #: True: beyond noise; False: within it; None: no intervals to judge
                "significant_vs_first": [significant(ivs[0], iv) for iv in ivs[1:]],
            }
        )
    return out


def _change_cell(d: float | None, better: str, sig: bool | None = None) -> str:
    if d is None:
        return "–"
    cls = ""
    if better and abs(d) >= 0.02 and sig is not False:
        good = d < 0 if better == "lower" else d > 0
        cls = "better" if good else "worse"
    mark = ""
    if sig is True:
        mark = ' <b title="the intervals do not overlap">*</b>'
    elif sig is False:
        cls = "noise"
        mark = ' <span title="the intervals overlap">≈</span>'
    return f'<span class="{cls}">{d:+.1%}</span>{mark}'


def _outcome_cell(v: Any) -> str:
    outcome = v.get("slo_outcome") or ("pass" if v.get("slo_passed") else "fail")
    cls = {"pass": "pass", "fail": "fail"}.get(outcome, "warn")
    return f'<span class="{cls}">{escape(outcome)}</span>'


def render_compare(runs: list[RunData]) -> str:
    names = labels(runs)
    base = names[0]
    body: list[str] = [
        f"<h1>volley · comparing {len(runs)} runs</h1>",
        f'<p class="sub">changes are relative to the first run, <b>{escape(base)}</b>; '
        "green is better, red worse (±2% or more); <b>*</b> the difference is beyond noise "
        "(the runs' confidence intervals do not overlap), ≈ within it (they overlap)</p>",
    ]
    # ---- what each run was
    facts = []
    for name, r in zip(names, runs, strict=True):
        s = r.summary
        load = r.plan.get("load") or {}
        cfg = (r.server or {}).get("model_config") or {}
        groups = cfg.get("instance_group") or []
        inst = ", ".join(f"{g.get('count', 1)}×{g.get('kind', '')}" for g in groups) or "–"
        v = s.get("verdict", {})
        facts.append(
            [
                escape(name),
                escape(str(s.get("model"))),
                escape(str(s.get("target"))),
                escape(
                    f"closed c={load.get('concurrency')}"
                    if s.get("mode") == "closed"
                    else f"open {s.get('arrival')} {load.get('rate', '')}/s"
                ),
                num(s.get("duration_s")),
                escape(inst),
                '<span class="pass">valid</span>'
                if v.get("valid")
                else '<span class="fail">invalid</span>',
                "–" if not v.get("slo") else _outcome_cell(v),
                escape(r.path.name),
            ]
        )
    body.append(
        table(
            [
                "run",
                "model",
                "target",
                "load",
                "measured s",
                "instances",
                "verdict",
                "SLOs",
                "directory",
            ],
            facts,
            left=9,
        )
    )
    # ---- figures side by side
    rows = []
    for c in comparison(runs):
        unit = f" {c['unit']}" if c["unit"] else ""
        rows.append(
            [
                escape(c["figure"] + unit),
                *(num(v, 4) for v in c["values"]),
                *(
                    _change_cell(d, c["better"], sig)
                    for d, sig in zip(c["change_vs_first"], c["significant_vs_first"], strict=True)
                ),
            ]
        )
    head = ["figure", *names, *(f"{n} vs {base}" for n in names[1:])]
    body.append("<h2>Figures</h2>")
    body.append(table(head, rows))
    # ---- charts
    body.append("<h2>Latency</h2>")
    curves = [
        (name, curve(r.histograms["latency"]), r.histograms["latency"].count)
        for name, r in zip(names, runs, strict=True)
        if "latency" in r.histograms and r.histograms["latency"].count
    ]
    body.append(
        figure(
            svg.percentile_curve(
                curves, title="Latency percentile curves", chart_id="compare-percentiles"
            ),
            "Latency from the intended send time, measured period of each run.",
        )
    )
    keys: tuple[PercentileKey, ...] = ("p50", "p90", "p99", "p999")
    body.append(
        figure(
            svg.bar_chart(
                names,
                [(k, [r.summary["latency_ms"].get(k) for r in runs]) for k in keys],
                title="Latency percentiles per run",
                chart_id="compare-latency-bars",
                y_label="ms",
            )
        )
    )
    body.append(
        figure(
            svg.line_chart(
                [
                    svg.Series(
                        name,
                        mids(r.series("all")),
                        [x.get("latency_p99_ms") for x in r.series("all")],
                    )
                    for name, r in zip(names, runs, strict=True)
                ],
                title="Latency p99 per 1 s window",
                chart_id="compare-p99-over-time",
                x_label="seconds since start",
                y_label="ms",
            )
        )
    )
    body.append("<h2>Throughput</h2>")
    body.append(
        figure(
            svg.bar_chart(
                names,
                [
                    ("offered", [r.summary.get("offered_rps") for r in runs]),
                    ("achieved", [r.summary.get("throughput_rps") for r in runs]),
                ],
                title="Offered vs achieved throughput",
                chart_id="compare-throughput",
                y_label="requests/s",
            )
        )
    )
    body.append("<h2>Server</h2>")
    stacks = []
    for name, r in zip(names, runs, strict=True):
        b = breakdown_rows(r.summary)
        if b:
            stacks.append((name, b[0][1]))
    if stacks:
        body.append(
            figure(
                svg.hbar_stack(
                    stacks,
                    title="Where the time goes, per run (means per request)",
                    chart_id="compare-server-breakdown",
                ),
                "From Triton's statistics (queue, compute) and the client's service time.",
            )
        )
    else:
        body.append(note("no run has server statistics"))
    util = []
    for name, r in zip(names, runs, strict=True):
        m = (r.server or {}).get("metrics") or {}
        samples = m.get("samples") or []
        if m.get("available") and samples:
            util.append(
                svg.Series(
                    name,
                    [float(x["t_s"]) for x in samples],
                    [
                        None if x.get("cpu_utilization") is None else x["cpu_utilization"] * 100
                        for x in samples
                    ],
                )
            )
    if util:
        body.append(
            figure(
                svg.line_chart(
                    util,
                    title="Server CPU utilisation",
                    chart_id="compare-server-cpu",
                    x_label="seconds since start",
                    y_label="%",
                )
            )
        )
    return page(f"volley compare · {' vs '.join(names)}", body)
