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

from coordinator.documents import AgentRow, IntervalDoc, Summary
from coordinator.many import AgentLine, choose
from coordinator.repeats import RepeatsDoc
from volley.conns import describe

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


def _ms_or_unbounded(v: float | None) -> str:
    return "?" if v is None else _ms(v)


def _span(iv: IntervalDoc, fmt: str) -> str:
    """An interval as low-high ('?' for an end the data cannot bound)."""
    high = "?" if iv["high"] is None else format(iv["high"], fmt)
    return f"{format(iv['low'], fmt)}-{high}"


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
    conf = summary.get("confidence")
    level = f"{conf['level']:.0%}" if conf else ""
    achieved = f"{summary['offered_rps']:.1f} / {summary['throughput_rps']:.1f} req/s"
    if conf:
        achieved += f"  ({level} CI {_span(conf['throughput_rps'], '.1f')})"
    head.add_row("offered / achieved", achieved)
    if conf:
        err = conf["error_rate"]
        head.add_row(
            "error rate",
            f"{summary['error_rate']:.3%}  ({level} CI {err['low']:.3%}-"
            f"{'?' if err['high'] is None else format(err['high'], '.3%')})",
        )
    steady = summary.get("steady_state")
    if steady:
        head.add_row("steady state", escape(steady["note"]))
    auto = summary.get("auto_stop")
    if auto:
        head.add_row("auto duration", escape(f"{auto['reason']} at {auto['stopped_at_s']:g} s"))
    q = summary.get("sequences")
    if q is not None:
        pos = "  ".join(
            f"{p['position']} p50 {p['latency_ms']['p50']} ms" for p in q["by_position"]
        )
        head.add_row(
            "sequences",
            f"started {q['started']}  completed {q['completed']}  failed {q['failed']}  "
            f"cut {q['cut']}  ended {q['ended']}  live (1 s peak) {q['live_max']}; {pos}",
        )
    for c in (summary.get("server") or {}).get("composing") or []:
        head.add_row(
            f"  {escape(c['name'])}",
            f"{escape(c['role'])}: queue {c['queue_ms']} ms  infer {c['compute_infer_ms']} ms  "
            f"executions {c['execution_count']}",
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
    for label, row, key in (
        ("latency", summary["latency_ms"], "latency_ms"),
        ("service time", summary["service_time_ms"], "service_time_ms"),
    ):
        lat.add_row(label, *(_ms(row[k]) for k in _PCTS))
        if conf:
            ivs = conf["latency_ms"] if key == "latency_ms" else conf["service_time_ms"]
            lat.add_row(f"  {level} low", *(_ms(ivs[k]["low"]) for k in _PCTS))
            lat.add_row(
                f"  {level} high",
                *(_ms_or_unbounded(ivs[k]["high"]) for k in _PCTS),
            )
    stream = summary.get("stream")
    if stream is not None:
        for label, key in (
            ("TTFT", "ttft_ms"),
            ("2nd token", "ttst_ms"),
            ("inter-token", "itl_ms"),
            ("per token", "tpot_ms"),
        ):
            lat.add_row(label, *(_ms(stream[key][k]) for k in _PCTS))  # type: ignore[literal-required]
    if conf:
        lat.caption = (
            f"{lat.caption}; low/high: {level} confidence interval (? = too few requests "
            "to bound it)"
        )
    con.print(lat)
    if stream is not None:
        per = stream["responses_per_request"]
        con.print(
            f"stream: {stream['requests']} requests, {stream['responses']} responses "
            f"({per['min']}-{per['max']} per request, mean {per['mean']:g}), "
            f"{stream['tokens']} tokens, {stream['tokens_per_s']:.1f} tokens/s; "
            "TTFT and 2nd token from the intended send, inter-token: every gap"
        )
        good = stream.get("goodput")
        if good is not None:
            con.print(
                f"goodput: {good['requests']} requests ({good['share']:.1%} of those sent) "
                f"met every SLO limit, {good['requests_per_s']:.2f} req/s, "
                f"{good['tokens_per_s']:.1f} tokens/s"
            )
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
    _print_connections(con, summary)

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
        outcome = r.get("outcome", "pass" if r["passed"] else "fail")
        mark = {
            "pass": "[green]PASS[/green]",
            "fail": "[red]FAIL[/red]",
            "inconclusive": "[yellow]INCONCLUSIVE[/yellow]",
        }[outcome]
        iv = r.get("interval")
        within = f", {level} CI {_span(iv, 'g')}" if iv is not None else ""
        why = f": {escape(r['reason'])}" if r.get("reason") else ""
        actual = "none" if r["actual"] is None else r["actual"]
        con.print(
            f"SLO {escape(r['slo'])}: {mark} (actual {actual}{within}, "
            f"threshold {r['threshold']:g}){why}"
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


def _print_connections(con: Console, summary: Summary) -> None:
    """`--connections N` (or connections that failed): held, connect times, by kind."""
    conns = summary.get("connections")
    if conns is not None and (
        conns.get("fixed") or conns["errors_total"] or conns["resets_received"]
    ):
        con.print(f"connections: {escape(describe(conns))}", overflow="fold")
        con.print()


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
            (a.get("bottleneck") or "yes") if a["saturated"] else "no",
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
    recycled = [
        a for a in agents if a.get("retried") or a.get("reconnects") or a.get("connect_errors")
    ]
    for a in recycled:  # (only where the server or a proxy closed or refused connections)
        failed = a.get("connect_errors", 0)
        con.print(
            f"agent {escape(str(a['id']))}: {a.get('reconnects', 0)} reconnects, "
            f"{a.get('retried', 0)} requests retried (never processed by the server: "
            "GOAWAY, refused stream, closed idle connection)"
            + (f", {failed} connection attempts failed" if failed else ""),
            overflow="fold",
        )
    if recycled:
        con.print()


def print_repeats(doc: RepeatsDoc, console: Console | None = None) -> None:
    """--repeat: each figure's values across runs, their spread, and the runs' own
    interval widths beside it."""
    con = console or Console()
    t = _table(
        con,
        f"{len(doc['runs'])} runs: spread between runs vs within-run intervals",
        "figure",
        "mean",
        "min",
        "max",
        "sd",
        "spread",
        "within",
        caption="spread: (max - min) / mean between runs; within: the runs' mean relative "
        "interval width; * the runs differ more than their intervals say",
    )
    for name, f in doc["figures"].items():
        within = "?" if f["within_ratio"] is None else f"{f['within_ratio']:.1%}"
        t.add_row(
            name + (" *" if f["spread_exceeds_intervals"] else ""),
            f"{f['mean']:.4g}",
            f"{f['min']:.4g}",
            f"{f['max']:.4g}",
            f"{f['sd']:.3g}",
            f"{f['spread_ratio']:.1%}",
            within,
        )
    con.print(t)
    con.print(f"outcomes: {', '.join(doc['outcomes'])}")
