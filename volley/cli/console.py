"""Terminal rendering of a run's summary (rich tables).

Readable at 80 columns: short headers that are never cut, numbers that never wrap (a long
agent name folds instead), the agents' figures in two tables. Piped or redirected (not a
terminal) there are no colours and the tables are drawn in ASCII.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from coordinator.documents import AgentRow, Summary
from coordinator.many import AgentLine, choose

#: SIMPLE_HEAD in ASCII: a dashed rule under the header, nothing else
_ASCII_HEAD = box.Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)

_Pct = Literal["p50", "p90", "p95", "p99", "p999", "max", "mean"]
_PCTS: tuple[_Pct, ...] = ("p50", "p90", "p95", "p99", "p999", "max", "mean")


def _size(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def _ms(v: float) -> str:
    """Milliseconds in at most 5 characters below 100 s: 3 decimals under 10 ms, fewer above."""
    for limit, digits in ((10, 3), (100, 2), (1000, 1)):
        if abs(v) < limit:
            return f"{v:.{digits}f}"
    return f"{v:.0f}"


def _table(
    con: Console, title: str, *columns: str, caption: str | None = None, left: int = 1
) -> Table:
    """A table with a rule under its header; the first `left` columns left-aligned.

    Every column is at least as wide as its header; only the first may fold its cells.
    """
    t = Table(
        title=title,
        caption=caption,
        box=box.SIMPLE_HEAD if con.is_terminal else _ASCII_HEAD,
        show_edge=False,
        pad_edge=False,
        title_justify="left",
        caption_justify="left",
        title_style="bold",
        caption_style="dim",
    )
    for i, col in enumerate(columns):
        t.add_column(
            col,
            justify="left" if i < left else "right",
            min_width=len(col),
            no_wrap=i > 0,
            overflow="fold",
        )
    return t


def print_summary(summary: Summary, run_dir: Path, console: Console | None = None) -> None:
    con = console or Console()
    req = summary["requests"]
    con.print(
        f"[bold]volley run {escape(str(summary.get('name', '')))}[/bold] -> "
        f"{escape(str(summary.get('model')))} @ {escape(str(summary.get('target')))}",
        overflow="fold",
    )
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold", no_wrap=True)
    head.add_column(overflow="fold")
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
        head.add_row(
            "error codes", escape(", ".join(f"{k}: {v}" for k, v in req["error_codes"].items()))
        )
    head.add_row(
        "offered / achieved",
        f"{summary['offered_rps']:.1f} / {summary['throughput_rps']:.1f} req/s",
    )
    con.print(head)
    con.print()

    lat = _table(
        con,
        "latency (ms)",
        "",
        *_PCTS,
        caption="latency: from the intended send; service time: from the actual send",
    )
    for label, row in (
        ("latency", summary["latency_ms"]),
        ("service time", summary["service_time_ms"]),
    ):
        lat.add_row(label, *(_ms(row[k]) for k in _PCTS))
    con.print(lat)
    con.print()
    by_size = summary.get("latency_by_payload") or []
    if len(by_size) > 1:
        sizes = _table(
            con,
            "latency by request size (ms)",
            "request size",
            "sent",
            "errors",
            "p50",
            "p99",
            "max",
        )
        for size_row in by_size:
            lo, hi = size_row["bucket_bytes"]
            lat_row = size_row["latency_ms"]
            sizes.add_row(
                f"{_size(lo)}-{_size(hi)}",
                str(size_row.get("sent", size_row["count"])),
                str(size_row.get("errors", 0)),
                *(_ms(lat_row[k]) for k in ("p50", "p99", "max")),
            )
        con.print(sizes)
        con.print()
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
    con.print()
    _print_agents(con, summary["agents"])

    server = summary.get("server") or {}
    if server.get("queue_ms") is not None:
        con.print(
            f"server: queue {server['queue_ms']:.3f} ms  compute infer "
            f"{server.get('compute_infer_ms') or 0.0:.3f} ms (means per request)"
        )
    for note in server.get("notes") or []:
        con.print(f"[dim]server: {escape(note)}[/dim]")
    for o in summary.get("outages") or []:
        codes = ", ".join(f"{k}: {v}" for k, v in o["error_codes"].items())
        con.print(
            f"[yellow]outage:[/yellow] {o['start_s']:g}-{o['end_s']:g} s, "
            f"{o['errors']} of {o['records']} arrivals failed ({escape(codes)})"
        )
    verdict = summary["verdict"]
    for r in verdict.get("slo", []):
        mark = "[green]PASS[/green]" if r["passed"] else "[red]FAIL[/red]"
        con.print(
            f"SLO {escape(r['slo'])}: {mark} (actual {r['actual']}, threshold {r['threshold']:g})"
        )
    for w in verdict.get("warnings", []):
        con.print(f"[yellow]warning:[/yellow] {escape(w)}")
    if verdict["valid"]:
        con.print("[green]valid run[/green]")
    else:
        con.print("[red]INVALID run:[/red]")
        for reason in verdict["reasons"]:
            con.print(f"  - {escape(reason)}")
    if (run_dir / "report.html").is_file():
        con.print(f"report: {run_dir / 'report.html'}", overflow="fold")
    recovery = summary.get("recovery")
    if recovery:
        con.print(f"[yellow]recover:[/yellow] {escape(recovery['hint'])}")
    con.print(f"results: {run_dir}", overflow="fold")


def _print_agents(con: Console, agents: list[AgentRow]) -> None:
    """Two tables: what each agent measured, then its timing, clock and CPU."""
    if not agents:
        return
    load = _table(
        con, "agents", "agent", "state", "ok", "errors", "req/s", "p99 ms", "saturated", left=2
    )
    timing = _table(
        con,
        "agents: timing (ms) and CPU",
        "agent",
        "workers",
        "late p99",
        "clock ±",
        "start skew",
        "CPU µs/req",
        caption="late: send lateness; clock: offset from this machine ± uncertainty",
    )
    shown = choose(
        [
            AgentLine(
                str(a["state"]),
                a["send_lateness_ms"]["p99"],
                a["saturated"] or bool(a.get("startup")) or a["state"] in ("failed", "missing"),
            )
            for a in agents
        ]
    )
    if shown.rest:
        con.print(escape(shown.states))
    for a in (agents[i] for i in shown.indices):
        offset = (
            "-"
            if a["clock_offset_ms"] is None
            else f"{a['clock_offset_ms']:.2f}±{a['clock_uncertainty_ms'] or 0.0:.2f}"
        )
        skew = "-" if a["start_skew_ms"] is None else f"{a['start_skew_ms']:.2f}"
        cpu = "-" if a.get("cpu_us_per_request") is None else f"{a['cpu_us_per_request']:.0f}"
        agent_id = escape(str(a["id"]))
        load.add_row(
            agent_id,
            str(a["state"]),
            str(a["ok"]),
            str(a["errors"]),
            f"{a['throughput_rps']:.1f}",
            _ms(a["latency_ms"]["p99"]),
            "yes" if a["saturated"] else "no",
        )
        timing.add_row(
            agent_id,
            str(a["workers"]),
            _ms(a["send_lateness_ms"]["p99"]),
            offset,
            skew,
            cpu,
        )
    con.print(load)
    if shown.rest:
        con.print(f"  {escape(shown.rest)}")
    con.print()
    con.print(timing)
    con.print()
