"""CSV in perf_analyzer's `-f` / `--verbose-csv` layout, one row per run.

Column names are perf_analyzer's; a column is filled only where volley measures the
same figure, else left empty. Times are integer microseconds, as perf_analyzer writes:

- `Concurrency` (closed loop) or `Request Rate` (open loop: the plan's rate, or the
  offered rate when the plan has stages or a trace) — the first column.
- `Inferences/Second`: successful requests/s × batch size (measured period).
- `Server Queue`, `Server Compute Input|Infer|Output`: means per request from Triton's
  statistics (the same source perf_analyzer uses), empty without them.
- `p50|p90|p95|p99 latency`, `Avg latency`: volley's *service time* (sent -> done),
  which is what perf_analyzer measures; volley's primary latency (from the intended
  send time) is in summary.json.
- `Network+Server Send/Recv`: mean service time minus the server's queue and compute
  means (capped at 0), as perf_analyzer computes it; volley does not split the
  client's send/receive time out, so it is included here.
- `Client Send`, `Client Recv`, `request/response`, `response wait`: empty (volley
  sends pre-serialized requests and does not time those steps separately).
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from coordinator.report.data import ReportError, RunData

COLUMNS_AFTER_LOAD = (
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "Avg latency",
    "request/response",
    "response wait",
)


def _us(ms: Any) -> str:
    """Milliseconds as whole microseconds; "" for none, or one too large to be a time
    (a hand-edited summary's 1e305 ms)."""
    if ms is None:
        return ""
    us = float(ms) * 1000
    return str(int(us)) if math.isfinite(us) else ""


def _batch(plan: dict[str, Any]) -> int:
    if int(plan.get("max_batch_size") or 0) <= 0:
        return 1
    inputs = plan.get("inputs") or []
    shape = (inputs[0] or {}).get("shape") if inputs else None
    return int(shape[0]) if shape else 1


def _load_value(run: RunData) -> str:
    s = run.summary
    load = run.plan.get("load") or {}
    if s.get("mode") == "closed":
        return str(load.get("concurrency", ""))
    if load.get("stages") or s.get("arrival") == "trace" or not load.get("rate"):
        return f"{float(s.get('offered_rps') or 0):g}"
    return f"{float(load['rate']):g}"


def csv_row(run: RunData) -> list[str]:
    s = run.summary
    server = s.get("server")
    svc = s["service_time_ms"]
    parts: list[float | None] = (
        [
            server.get("queue_ms"),
            server.get("compute_input_ms"),
            server.get("compute_infer_ms"),
            server.get("compute_output_ms"),
        ]
        if server
        else [None] * 4
    )
    network = ""
    if parts[0] is not None:
        accounted = sum(p or 0.0 for p in parts)
        network = _us(max(float(svc["mean"]) - accounted, 0.0))
    ips = float(s.get("throughput_rps") or 0.0) * _batch(run.plan)
    return [
        _load_value(run),
        f"{ips:g}",
        "",
        network,
        *(_us(p) for p in parts),
        "",
        *(_us(svc.get(k)) for k in ("p50", "p90", "p95", "p99")),
        _us(svc.get("mean")),
        "",
        "",
    ]


def perf_analyzer_csv(runs: list[RunData]) -> str:
    modes = {r.summary.get("mode") for r in runs}
    if len(modes) > 1:
        raise ReportError(
            "these runs mix open and closed loop; perf_analyzer's CSV has one load column "
            "(Concurrency or Request Rate): export them separately"
        )
    first = "Concurrency" if modes == {"closed"} else "Request Rate"
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([first, *COLUMNS_AFTER_LOAD])
    for r in runs:
        w.writerow(csv_row(r))
    return out.getvalue()
