"""Terminal rendering of a run's summary (rich tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def print_summary(summary: dict[str, Any], run_dir: Path, console: Console | None = None) -> None:
    con = console or Console()
    req = summary["requests"]
    head = Table(
        title=f"volley run {summary.get('name', '')} -> {summary.get('model')} "
        f"@ {summary.get('target')}",
        show_header=False,
    )
    head.add_column("k", style="bold")
    head.add_column("v")
    head.add_row("mode", f"{summary.get('mode')} ({summary.get('arrival')})")
    head.add_row(
        "measured", f"{summary.get('duration_s')} s after {summary.get('warmup_s')} s warm-up"
    )
    head.add_row(
        "requests",
        f"scheduled {req['scheduled']}  sent {req['sent']}  ok {req['ok']}  "
        f"errors {req['errors']}  dropped {req['dropped']}",
    )
    if req.get("error_codes"):
        head.add_row("error codes", ", ".join(f"{k}: {v}" for k, v in req["error_codes"].items()))
    head.add_row(
        "offered / achieved",
        f"{summary['offered_rps']:.1f} / {summary['throughput_rps']:.1f} req/s",
    )
    con.print(head)

    lat = Table(title="latency (ms)")
    lat.add_column("")
    for k in ("p50", "p90", "p95", "p99", "p999", "max", "mean"):
        lat.add_column(k, justify="right")
    for label, key in (
        ("latency (from intended)", "latency_ms"),
        ("service time (from sent)", "service_time_ms"),
    ):
        row = summary[key]
        lat.add_row(
            label, *(f"{row[k]:.3f}" for k in ("p50", "p90", "p95", "p99", "p999", "max", "mean"))
        )
    con.print(lat)
    late = summary["send_lateness_ms"]
    con.print(
        f"send lateness: p50 {late['p50']:.3f} ms  p99 {late['p99']:.3f} ms  "
        f"max {late['max']:.3f} ms  >1 ms late {late['late_fraction']:.2%}"
    )

    agents = Table(title="agents")
    for col in (
        "agent",
        "host",
        "workers",
        "state",
        "sent",
        "ok",
        "errors",
        "req/s",
        "p99 ms",
        "late p99 ms",
        "offset ms",
        "skew ms",
        "CPU µs/req",
        "saturated",
    ):
        agents.add_column(col, justify="right" if col not in ("agent", "host", "state") else "left")
    for a in summary["agents"]:
        agents.add_row(
            str(a["id"]),
            str(a["host"]),
            str(a["workers"]),
            str(a["state"]),
            str(a["sent"]),
            str(a["ok"]),
            str(a["errors"]),
            f"{a['throughput_rps']:.1f}",
            f"{a['latency_ms']['p99']:.3f}",
            f"{a['send_lateness_ms']['p99']:.3f}",
            "-"
            if a["clock_offset_ms"] is None
            else f"{a['clock_offset_ms']:.2f}±{a['clock_uncertainty_ms']:.2f}",
            "-" if a["start_skew_ms"] is None else f"{a['start_skew_ms']:.3f}",
            "-" if a.get("cpu_us_per_request") is None else f"{a['cpu_us_per_request']:.0f}",
            "yes" if a["saturated"] else "no",
        )
    con.print(agents)
    server = summary.get("server") or {}
    if server.get("queue_ms") is not None:
        con.print(
            f"server: queue {server['queue_ms']:.3f} ms  compute infer "
            f"{server.get('compute_infer_ms', 0):.3f} ms (means per request)"
        )
    for o in summary.get("outages") or []:
        codes = ", ".join(f"{k}: {v}" for k, v in o["error_codes"].items())
        con.print(
            f"[yellow]outage:[/yellow] {o['start_s']:g}-{o['end_s']:g} s, "
            f"{o['errors']} of {o['records']} arrivals failed ({codes})"
        )
    verdict = summary["verdict"]
    for r in verdict.get("slo", []):
        mark = "[green]PASS[/green]" if r["passed"] else "[red]FAIL[/red]"
        con.print(f"SLO {r['slo']}: {mark} (actual {r['actual']}, threshold {r['threshold']:g})")
    for w in verdict.get("warnings", []):
        con.print(f"[yellow]warning:[/yellow] {w}")
    if verdict["valid"]:
        con.print("[green]valid run[/green]")
    else:
        con.print("[red]INVALID run:[/red]")
        for reason in verdict["reasons"]:
            con.print(f"  - {reason}")
    recovery = summary.get("recovery")
    if recovery:
        con.print(f"[yellow]recover:[/yellow] {recovery['hint']}")
    con.print(f"results: {run_dir}")
