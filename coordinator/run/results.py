"""The end of a run: the server's figures, summary.json, the run directory's files."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

from coordinator.agents import AgentState
from coordinator.aggregate import Aggregator
from coordinator.documents import SteadyState, Summary
from coordinator.local import SPOOL_FOLDER
from coordinator.recovery import MANIFEST, add_schedule_counts, count_schedule, find_outages
from coordinator.report import write_report_safely
from coordinator.run.loop import RunLoop, StopReason
from coordinator.run.options import RunResult
from coordinator.run.start import start_block, start_lines
from coordinator.run.stream import AgentStream
from coordinator.rundir import (
    timeseries_rows,
    write_histograms,
    write_json,
    write_plan,
    write_timeseries,
)
from coordinator.stats.documents import ServerDoc, ServerSummary
from coordinator.stats.monitor import ServerMonitor, summary_block, write_server_json
from coordinator.steady import detect, exclude_start, excluded_state, steady_state
from coordinator.summary import AgentInfo, build_summary
from volley.arrivals import global_schedule, schedule_span_s
from volley.plan import Plan
from volley.request import PoolDescription


def auto_stopped_plan(plan: Plan, cut_ns: int) -> Plan:
    """The plan a `--duration auto` run amounts to: its duration ends at the stop instant
    (a whole second), so re-running plan.yaml repeats the measured run."""
    load = dataclasses.replace(plan.load, duration_s=cut_ns / 1e9)
    return dataclasses.replace(plan, load=load)


def scheduled_total(plan: Plan) -> int | None:
    """Requests the schedule plans (None: closed loop, or sequences, whose schedule is of
    sequence starts: summary.sequences counts them)."""
    if plan.load.mode != "open" or plan.sequence is not None:
        return None
    return sum(int(idx.size) for idx, _ in global_schedule(plan).chunks())


def add_input_pool(summary: Summary, pool: PoolDescription, infos: list[AgentInfo]) -> None:
    """summary.input_pool: the payload pool every worker built (preflight built the same)."""
    workers = sum(i.workers for i in infos)
    summary["input_pool"] = {
        **pool,
        "workers": workers,
        "bytes_all_workers": pool["bytes_per_worker"] * workers,
    }
    for row, info in zip(summary.get("agents", []), infos, strict=False):
        row["input_pool_bytes"] = pool["bytes_per_worker"] * info.workers


def annotate(
    summary: Summary,
    streams: list[AgentStream],
    start_ns: int,
    run_dir: Path,
    local: Collection[str] = (),
) -> None:
    """Per-agent failure detection figures (and silences it came back from, as warnings:
    a missing-then-returned agent is partial only if it ends missing or failed), and how
    to recover what a lost agent kept (`local`: addresses of agents that spool in the run
    directory, read from there)."""
    for s, row in zip(streams, summary["agents"], strict=True):
        row["last_seen_s"] = round((s.info.last_seen_ns - start_ns) / 1e9, 3)
        row["lost_detected_s"] = round((s.lost_ns - start_ns) / 1e9, 3) if s.lost_ns else None
        if s.silences:
            row["silences"] = [
                {
                    "heard_s": round((g.heard_ns - start_ns) / 1e9, 3),
                    "missing_s": round((g.missing_ns - start_ns) / 1e9, 3),
                    "back_s": round((g.back_ns - start_ns) / 1e9, 3),
                }
                for g in s.silences
            ]
            summary["verdict"]["warnings"] += [
                f"agent {s.name} was silent for {(g.back_ns - g.heard_ns) / 1e9:.1f}s "
                f"(declared missing at {(g.missing_ns - start_ns) / 1e9:.1f}s, heard again at "
                f"{(g.back_ns - start_ns) / 1e9:.1f}s); what it sent meanwhile arrived late"
                for g in s.silences
            ]
    lost = [s for s in streams if s.state.partial]
    summary["partial_agents"] = [s.name for s in lost]
    if lost:
        # local agents' spool files are in the run directory: RUN_DIR alone finds them
        agents = "".join(f" --agent {s.info.address}" for s in lost if s.info.address not in local)
        summary["recovery"] = {
            "agents": [s.info.address for s in lost],
            "hint": f"their spooled records: volley collect {run_dir}{agents}",
        }


def remove_unused_run_dir(run_dir: Path) -> None:
    """A run refused before any load leaves no run directory behind."""
    ours = {"plan.yaml", "requests.parquet", MANIFEST}
    with contextlib.suppress(OSError):
        spool = run_dir / SPOOL_FOLDER  # local agents' spool folders, empty before a start
        if spool.is_dir() and not any(p.is_file() for p in spool.rglob("*")):
            ours.add(SPOOL_FOLDER)
        if {p.name for p in run_dir.iterdir()} <= ours:
            shutil.rmtree(run_dir)


async def server_figures(monitor: ServerMonitor, client_ok: int) -> tuple[ServerSummary, ServerDoc]:
    """summary.server and server.json's document (the coordinator.stats call site)."""
    server_doc = await monitor.stop()
    return summary_block(server_doc, client_ok), server_doc


def all_rows(run: RunLoop) -> list[dict[str, Any]]:
    """The timeseries rows of the run: sealed ones, then the rest."""
    rest = [w for w in run.agg.window_keys() if w not in run.sealed]
    return run.sealed_rows + timeseries_rows(run.agg, run.names, run.cpu, rest)


def auto_warmup(
    run: RunLoop, plan: Plan, measured_s: float
) -> tuple[Plan, Aggregator, float, SteadyState]:
    """`--warmup auto`: the plan (warm-up = the detected cut), aggregator (measured totals
    re-merged from the windows from the cut on) and measured seconds the summary is built
    from, and its steady_state block."""
    rows = all_rows(run)
    d, by, rule, judged = detect(rows, plan.load.warmup_s, measured_s)
    if d == 0:
        return plan, run.agg, measured_s, excluded_state(0, by, rule, plan.load.warmup_s, 0, judged)
    cut = math.ceil(plan.load.warmup_s - 1e-9) + d
    agg = exclude_start(run.agg, cut)
    excluded = run.agg.total().records - agg.total().records
    steady = excluded_state(d, by, rule, plan.load.warmup_s, excluded, judged)
    load = dataclasses.replace(plan.load, warmup_s=float(cut))
    measured_s -= cut - plan.load.warmup_s
    return dataclasses.replace(plan, load=load), agg, measured_s, steady


def write_files(
    run: RunLoop,
    run_dir: Path,
    summary: Summary,
    server_doc: ServerDoc,
    steady: SteadyState | None = None,
    agg: Aggregator | None = None,
) -> None:
    """timeseries.parquet (sealed rows, then the rest), server.json, histograms.json,
    summary.json (with its steady state, from the rows, unless given), the report."""
    rows = all_rows(run)
    write_timeseries(run_dir / "timeseries.parquet", rows)
    if steady is None:
        steady = steady_state(rows, summary["warmup_s"], summary["duration_s"])
    if steady is not None:
        summary["steady_state"] = steady
        if steady["unsettled_windows"] and steady["action"] == "reported":
            summary["verdict"]["warnings"].append(f"steady state: {steady['note']}")
    write_server_json(run_dir / "server.json", server_doc)
    write_histograms(run_dir / "histograms.json", agg or run.agg, run.names)
    write_json(run_dir / "summary.json", summary)
    write_report_safely(run_dir)


async def finish(
    run: RunLoop,
    run_dir: Path,
    pool: PoolDescription,
    monitor: ServerMonitor,
    expected: int | None,
) -> RunResult:
    """Summary and files of a run that ended (not refused); the agents' spools dropped
    where they delivered everything; channels closed."""
    plan = run.plan
    stopped = run.stop_reason
    if run.cut_ns is not None and stopped is StopReason.AUTO:
        # --duration auto stopped it: the run is the plan with the measured duration
        plan = auto_stopped_plan(plan, run.cut_ns)
        expected = scheduled_total(plan)
        write_plan(run_dir / "plan.yaml", plan)
        stopped = StopReason.COMPLETED
    infos = [s.info for s in run.streams]
    measured_s = max(schedule_span_s(plan) - plan.load.warmup_s, 0.0)
    server, server_doc = await server_figures(monitor, run.agg.total().ok)
    agg, steady, built = run.agg, None, plan
    if plan.load.warmup_auto:
        built, agg, measured_s, steady = auto_warmup(run, plan, measured_s)
    summary = build_summary(
        built,
        run.run_id,
        agg,
        infos,
        measured_s,
        expected,
        server=server,
        stopped=stopped.value,
    )
    auto = run.opts.auto
    if run.auto_doc is not None:
        summary["auto_stop"] = run.auto_doc
    elif auto is not None:
        summary["auto_stop"] = {
            "reason": "max duration" if stopped is StopReason.COMPLETED else stopped.value,
            "stopped_at_s": round(measured_s, 3),
            "max_duration_s": round(measured_s, 3),
            "target_width": auto.target_width,
            "checks": run.last_look,
        }
    # requests.scheduled: the schedule's count (regenerated from the plan), beside the
    # records, and what has no record
    add_schedule_counts(summary, count_schedule(plan))
    add_input_pool(summary, pool, infos)
    annotate(summary, run.streams, run.start_ns, run_dir, run.opts.local_spools)
    summary["outages"] = find_outages(run.agg)
    if run.opts.affinity is not None:
        summary["affinity"] = run.opts.affinity
    if run.two_phase:
        summary["start"] = start_block(infos, run.lead_ns, summary, run.round_ns)
        summary["verdict"]["warnings"] += start_lines(run)
    write_files(run, run_dir, summary, server_doc, steady, agg)
    # The run is stored: agents that delivered everything may drop their spools; the
    # others keep theirs for `volley collect`.
    await asyncio.gather(
        *(s.client.discard(run.run_id, s.index) for s in run.streams if s.state is AgentState.DONE),
        return_exceptions=True,
    )
    await run.close_clients()
    return RunResult(run_dir, summary, dataclasses.replace(plan), infos)
