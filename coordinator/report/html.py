"""report.html of one run: one self-contained page (inline CSS and SVG, no script).

Sections: summary and verdict with SLOs; latency percentiles over time (outages marked);
throughput offered vs achieved; errors (by status code, per window) and outages;
latency histogram and percentile curve; agents (lateness, skew, CPU); the server's
breakdown (queue vs compute) and utilisation over time; latency by payload size; the
plan. This module renders the summary, verdict, percentiles, payload and header parts and
assembles the page; the other sections live beside it: `timeline.py` (over time,
errors, distribution), `agents.py`, `server.py`, and `page.py` (the parts of any page).
"""

from __future__ import annotations

from html import escape
from typing import Any, cast

from coordinator.documents import IntervalDoc, Summary
from coordinator.report import svg
from coordinator.report.agents import agents_html
from coordinator.report.data import RunData
from coordinator.report.page import card, figure, note, num, page, short, table
from coordinator.report.server import server_html
from coordinator.report.timeline import distribution_html, errors_html, over_time_html


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
