"""report.html's agents section: lateness, clock skew, CPU and the agents table."""

from __future__ import annotations

from html import escape

from coordinator.many import AgentLine, choose
from coordinator.report import svg
from coordinator.report.data import RunData
from coordinator.report.page import col, figure, mids, note, num, table, warmup_band


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
                f'<span class="fail">{escape(str(a.get("bottleneck") or "yes"))}</span>'
                if a.get("saturated")
                else "no",
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
        band = warmup_band(run)
        late_series = []
        cpu_series = []
        for i, name in enumerate(names):
            rows_a = run.series(name)
            xs = mids(rows_a)
            late_series.append(
                svg.Series(name, xs, col(rows_a, "lateness_p99_ms"), color=svg.color(i))
            )
            cpu_series.append(
                svg.Series(name, xs, col(rows_a, "agent_cpu_percent"), color=svg.color(i))
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
