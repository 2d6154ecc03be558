"""Report sections for issue 16: stateful sequences and composed models (ensemble
steps, BLS callees). Rendered from summary.json alone, like the rest of report.html."""

from __future__ import annotations

from html import escape

from coordinator.documents import Summary
from coordinator.report import svg
from coordinator.report.page import figure, note, num, table


def sequences_html(s: Summary) -> str:
    q = s.get("sequences")
    if q is None:
        return ""
    out = ["<h2>Sequences</h2>"]
    out.append(
        f'<p class="sub">{escape(q["id_type"])} correlation IDs · length '
        f"{escape(q['length'])} steps · think {escape(q['think_ms'])} ms</p>"
    )
    out.append(
        table(
            ["started", "completed", "failed", "cut at the end", "refused", "ended", "no END"],
            [
                [
                    num(q["started"]),
                    num(q["completed"]),
                    num(q["failed"]),
                    num(q["cut"]),
                    num(q["refused"]),
                    num(q["ended"]),
                    num(q["unfinished"]),
                ]
            ],
            left=0,
        )
    )
    if q["mismatches"]:
        out.append(note(f"{q['mismatches']} responses had the wrong sequence state"))
    rows = []
    for p in q["by_position"]:
        lat = p["latency_ms"]
        rows.append(
            [
                escape(p["position"]),
                num(lat["count"]),
                num(lat["p50"], 4),
                num(lat["p90"], 4),
                num(lat["p99"], 4),
                num(lat["max"], 4),
            ]
        )
    d = q["duration_ms"]
    rows.append(
        [
            "whole sequence",
            num(d["count"]),
            num(d["p50"], 4),
            num(d["p90"], 4),
            num(d["p99"], 4),
            num(d["max"], 4),
        ]
    )
    out.append("<h3>Latency by step position, and per sequence (ms)</h3>")
    out.append(table(["", "count", "p50", "p90", "p99", "max"], rows))
    if q["live"]:
        xs = [p["t_s"] + 0.5 for p in q["live"]]
        ys: list[float | None] = [p["live"] for p in q["live"]]
        out.append(
            figure(
                svg.line_chart(
                    [svg.Series("live sequences", xs, ys, points=True)],
                    title="Live sequences (1 s averages)",
                    chart_id="live-sequences",
                    x_label="time (s)",
                    y_label="sequences",
                ),
                "Each sequence is live from its first send to its final response.",
            )
        )
    ids = [
        [
            num(a["agent"]),
            escape(f"[{a['range'][0]}, {a['range'][1]})") if a["range"] else "",
            num(a["lowest"]),
            num(a["highest"]),
            num(a["sequences"]),
        ]
        for a in q["agents"]
    ]
    out.append("<h3>Correlation IDs by agent (planned ranges are disjoint)</h3>")
    out.append(table(["agent", "range", "lowest used", "highest used", "sequences"], ids))
    return "".join(out)


def composing_html(s: Summary) -> str:
    server = s.get("server") or {}
    rows = server.get("composing") or []
    if not rows:
        return ""
    out = ["<h3>Composing models</h3>"]
    bars: list[tuple[str, list[tuple[str, float | None]]]] = [
        (
            f"{r['name']} ({r['role']})",
            [
                ("queue", r["queue_ms"]),
                ("compute input", r["compute_input_ms"]),
                ("compute infer", r["compute_infer_ms"]),
                ("compute output", r["compute_output_ms"]),
            ],
        )
        for r in rows
    ]
    out.append(
        figure(
            svg.hbar_stack(
                bars, title="Each composing model's time (means per request)", chart_id="composing"
            ),
            f"The models that serve {escape(str(s.get('model', '')))}: Triton's statistics "
            "of each over the measured period.",
        )
    )
    out.append(
        table(
            ["model", "role", "success", "executions", "avg batch", "queue ms", "input ms",
             "infer ms", "output ms"],
            (
                [
                    escape(r["name"]),
                    escape(r["role"]),
                    num(r["success"]),
                    num(r["execution_count"]),
                    num(r["avg_batch_size"]),
                    num(r["queue_ms"], 4),
                    num(r["compute_input_ms"], 4),
                    num(r["compute_infer_ms"], 4),
                    num(r["compute_output_ms"], 4),
                ]
                for r in rows
            ),
        )
    )  # fmt: skip
    return "".join(out)
