"""report.html's server section: the breakdown of server time (queue vs compute) per model,
server time over the run, and utilisation (GPU, memory) over time.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from coordinator.documents import Summary
from coordinator.report import svg
from coordinator.report.data import RunData
from coordinator.report.page import col, figure, mids, note, num, table, warmup_band


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
                svg.Series("client service p50", cx, col(client, "service_p50_ms"), dashed=True),
            ],
            title="Server time per window (means) beside the client's service time",
            chart_id="server-over-time",
            x_label="seconds since start",
            y_label="ms",
            band=warmup_band(run),
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
                band=warmup_band(run),
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
                band=warmup_band(run),
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
