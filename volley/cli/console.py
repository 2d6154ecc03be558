"""Terminal rendering of a run's summary (rich tables)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from coordinator.documents import Summary


def _size(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def print_summary(summary: Summary, run_dir: Path, console: Console | None = None) -> None:
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
    for label, block in (
        ("latency (from intended)", summary["latency_ms"]),
        ("service time (from sent)", summary["service_time_ms"]),
    ):
        lat.add_row(
            label, *(f"{block[k]:.3f}" for k in ("p50", "p90", "p95", "p99", "p999", "max", "mean"))
        )
    con.print(lat)
    by_size = summary.get("latency_by_payload") or []
    if len(by_size) > 1:
        sizes = Table(title="latency by request size (ms)")
        for col in ("request bytes", "sent", "errors", "p50", "p99", "max"):
            sizes.add_column(col, justify="right")
        for row in by_size:
            lo, hi = row["bucket_bytes"]
            lat_row = row["latency_ms"]
            sizes.add_row(
                f"{_size(lo)}-{_size(hi)}",
                str(row.get("sent", row["count"])),
                str(row.get("errors", 0)),
                *(f"{lat_row[k]:.3f}" for k in ("p50", "p99", "max")),
            )
        con.print(sizes)
    pool = summary.get("input_pool")
    if pool and pool.get("distinct_shapes", 1) > 1:
        rb = pool["request_bytes"]
        con.print(
            f"input pool: {pool['payloads']} payloads, {pool['distinct_shapes']} shapes, "
            f"requests {_size(rb['min'])}-{_size(rb['max'])} (mean {_size(rb['mean'])}), "
            f"{_size(pool['bytes_per_worker'])} per worker"
        )
    late = summary["send_lateness_ms"]
    con.print(
        f"send lateness: p50 {late['p50']:.3f} ms  p99 {late['p99']:.3f} ms  "
        f"max {late['max']:.3f} ms  >1 ms late {late['late_fraction']:.2%}"
    )

    agents = Table(title="agents")
    cols = (
        "agent",
        "wk",
        "state",
        "ok",
        "err",
        "req/s",
        "p99 ms",
        "late p99",
        "offset ±ms",
        "skew ms",
        "CPU µs/req",
        "sat.",
    )
    for col in cols:
        agents.add_column(
            col,
            justify="left" if col in ("agent", "state") else "right",
            no_wrap=col in ("agent", "offset ±ms"),
        )
    for a in summary["agents"]:
        offset = (
            "-"
            if a["clock_offset_ms"] is None
            else f"{a['clock_offset_ms']:.2f}±{a['clock_uncertainty_ms']:.2f}"
        )
        skew = "-" if a["start_skew_ms"] is None else f"{a['start_skew_ms']:.2f}"
        cpu = "-" if a.get("cpu_us_per_request") is None else f"{a['cpu_us_per_request']:.0f}"
        agents.add_row(
            str(a["id"]),
            str(a["workers"]),
            str(a["state"]),
            str(a["ok"]),
            str(a["errors"]),
            f"{a['throughput_rps']:.1f}",
            f"{a['latency_ms']['p99']:.2f}",
            f"{a['send_lateness_ms']['p99']:.2f}",
            offset,
            skew,
            cpu,
            "yes" if a["saturated"] else "no",
        )
    con.print(agents)
    server = summary.get("server") or {}
    if server.get("queue_ms") is not None:
        con.print(
            f"server: queue {server['queue_ms']:.3f} ms  compute infer "
            f"{server.get('compute_infer_ms', 0):.3f} ms (means per request)"
        )
    for note in server.get("notes") or []:
        con.print(f"[dim]server: {escape(note)}[/dim]")
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
    if (run_dir / "report.html").is_file():
        con.print(f"report: {run_dir / 'report.html'}")
    recovery = summary.get("recovery")
    if recovery:
        con.print(f"[yellow]recover:[/yellow] {recovery['hint']}")
    con.print(f"results: {run_dir}")
