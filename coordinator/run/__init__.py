"""The coordinator's run: preflight, handshake, clocks, one synchronized start, merge, write.

`execute()` is the async core of `volley run`: startup (preflight, agents'
Hello and clock probes, run directory), main loop (one event stream per agent,
merged as batches arrive; heartbeats watched), shutdown (summary and files).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from coordinator.agents import AgentClient, AgentError
from coordinator.aggregate import Aggregator
from coordinator.preflight import preflight_check
from coordinator.recovery import MANIFEST, find_outages, write_manifest
from coordinator.report import write_report_safely
from coordinator.rundir import (
    RequestWriter,
    new_run_dir,
    timeseries_rows,
    write_histograms,
    write_json,
    write_plan,
    write_timeseries,
)
from coordinator.stats.monitor import ServerMonitor, summary_block, write_server_json
from coordinator.summary import AgentInfo, build_summary
from volley.arrivals import global_schedule, schedule_span_s
from volley.plan import AgentSpec, Plan
from volley.records import RecordBlock
from volley.security import ClientSecurity
from volley.v1 import control_pb2 as pb

log = logging.getLogger("volley.coordinator")

#: How often finished windows are sealed (rows computed, histograms freed).
SEAL_EVERY_NS = 5_000_000_000


@dataclass
class RunOptions:
    out_dir: Path = Path("runs")
    #: Seconds between the start command and the agreed start instant.
    start_lead_s: float = 2.0
    connect_timeout_s: float = 5.0
    #: An agent silent for this long is declared missing (agents send a heartbeat
    #: every 0.25 s and the check runs every 0.1 s: detection within 3 s).
    heartbeat_timeout_s: float = 2.5
    #: The coordinator's keepalive to each agent during a run (agents stop a run whose
    #: coordinator stays silent past their grace period).
    keepalive_s: float = 0.5
    #: Token / TLS for the control plane.
    security: ClientSecurity | None = None
    clock_samples: int = 16
    #: Workers per agent for this run (0 = each agent's own default).
    workers: int = 0
    #: Weigh each agent's slice by its worker count (else equal).
    weight_by_workers: bool = True
    progress: Callable[[Progress], None] | None = None
    #: Triton's Prometheus metrics: URL or HOST:PORT, "off", None = find it.
    server_metrics: str | None = None
    #: Sample the server's statistics and metrics (server.json).
    server_stats: bool = True
    stop_event: asyncio.Event | None = None


@dataclass
class Progress:
    elapsed_s: float
    total_s: float
    agents: list[AgentInfo]
    agg: Aggregator
    window: int


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    plan: Plan
    agents: list[AgentInfo] = field(default_factory=list)


class _AgentStream:
    def __init__(self, index: int, client: AgentClient, info: AgentInfo) -> None:
        self.index = index
        self.client = client
        self.info = info
        self.task: asyncio.Task[None] | None = None
        self.start_at_agent_ns = 0
        self.started = False
        #: Why the agent refused the run (before starting it), if it did.
        self.refused = ""
        #: When (coordinator monotonic ns) it was found missing or its stream broke.
        self.lost_ns = 0


#: Errors of a Run call that mean "the agent refuses this run", not "it was lost".
REFUSALS = (
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
)


async def _handshake(addresses: list[str], opts: RunOptions) -> list[_AgentStream]:
    clients = [AgentClient(a, opts.connect_timeout_s, opts.security) for a in addresses]

    async def one(i: int, c: AgentClient) -> _AgentStream:
        reply = await c.hello()
        clock = await c.probe_clock(opts.clock_samples)
        info = AgentInfo(
            index=i,
            address=c.address,
            id=reply.agent_id,
            host=reply.host,
            workers=min(opts.workers or reply.workers, reply.workers),
            cores=reply.cores,
            clock=clock,
        )
        return _AgentStream(i, c, info)

    results = await asyncio.gather(
        *(one(i, c) for i, c in enumerate(clients)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for c in clients:
            await c.close()
        first = errors[0]
        raise first if isinstance(first, AgentError) else AgentError(str(first))
    return [r for r in results if isinstance(r, _AgentStream)]


def scheduled_total(plan: Plan) -> int | None:
    if plan.load.mode != "open":
        return None
    return sum(int(idx.size) for idx, _ in global_schedule(plan).chunks())


def add_input_pool(summary: dict[str, Any], pool: dict[str, Any], infos: list[AgentInfo]) -> None:
    """summary.input_pool: the payload pool every worker built (preflight built the same)."""
    workers = sum(i.workers for i in infos)
    summary["input_pool"] = {
        **pool,
        "workers": workers,
        "bytes_all_workers": pool["bytes_per_worker"] * workers,
    }
    for row, info in zip(summary.get("agents", []), infos, strict=False):
        row["input_pool_bytes"] = pool["bytes_per_worker"] * info.workers


async def execute(plan: Plan, addresses: list[str], opts: RunOptions) -> RunResult:
    # ---- startup ------------------------------------------------------------
    pre = await preflight_check(plan)
    plan = pre.plan
    streams = await _handshake(addresses, opts)
    weights = [s.info.workers if opts.weight_by_workers else 1 for s in streams]
    plan = plan.with_agents(
        [AgentSpec(s.info.address, w) for s, w in zip(streams, weights, strict=True)]
    )
    run_id = uuid.uuid4().hex[:12]
    run_dir = new_run_dir(opts.out_dir, plan.name)
    write_plan(run_dir / "plan.yaml", plan)
    expected = scheduled_total(plan)
    agg = Aggregator(len(streams), int(plan.load.warmup_s * 1e9))
    writer = RequestWriter(run_dir / "requests.parquet") if plan.raw_records else None
    agent_cpu: dict[tuple[int, int], float] = {}
    span_s = schedule_span_s(plan)
    plan_json = plan.to_json()
    stopped = ""

    max_rtt = max((s.info.clock.rtt_ns if s.info.clock else 0) for s in streams)
    start_coord_ns = time.monotonic_ns() + int(opts.start_lead_s * 1e9) + max_rtt
    for s in streams:
        assert s.info.clock is not None
        s.start_at_agent_ns = s.info.clock.to_agent(start_coord_ns)
    monitor = ServerMonitor.for_plan(plan, opts.server_metrics, opts.server_stats)
    monitor.begin(start_coord_ns, plan.load.warmup_s)
    write_manifest(run_dir, run_id, [s.info for s in streams], start_coord_ns, span_s, expected)

    def ingest(s: _AgentStream, batch: pb.TimingBatch) -> None:
        block = RecordBlock.from_proto(batch)
        agg.ingest(s.index, block)
        if writer is not None:
            writer.write(s.index, block)

    def lost(s: _AgentStream, why: str) -> None:
        """The agent's stream broke or went silent: keep what it sent, go on without it."""
        if s.info.state in ("running", "ready"):
            s.info.state = "missing"
            s.info.error = why
            s.lost_ns = time.monotonic_ns()
            log.warning("agent %s missing: %s", s.info.address, why)

    async def consume(s: _AgentStream) -> None:
        req = pb.RunRequest(
            run_id=run_id,
            plan_json=plan_json,
            agent_index=s.index,
            start_at_agent_ns=s.start_at_agent_ns,
            clock_offset_ns=s.info.clock.offset_ns if s.info.clock else 0,
            workers=s.info.workers,
            keepalive_ms=int(opts.keepalive_s * 1000),
        )
        s.info.state = "running"
        s.info.last_seen_ns = time.monotonic_ns()
        try:
            async for ev in s.client.run(req):
                s.info.last_seen_ns = time.monotonic_ns()
                kind = ev.WhichOneof("event")
                if kind == "timings":
                    try:
                        ingest(s, ev.timings)
                    except ValueError as exc:
                        s.info.state = "failed"
                        s.info.error = f"sent a malformed timing batch ({exc})"
                        await s.client.stop(run_id, "malformed timing batch", timeout_s=1.0)
                        return
                elif kind == "started":
                    s.started = True
                elif kind == "status":
                    st = ev.status
                    s.info.cpu_seconds = st.cpu_seconds
                    s.info.cpu_percent = st.cpu_percent
                    s.info.cpu_percent_peak = max(s.info.cpu_percent_peak, st.cpu_percent)
                    w = (st.agent_ns - s.start_at_agent_ns) // 1_000_000_000
                    if w >= 0:
                        agent_cpu[(int(w), s.index)] = st.cpu_percent
                elif kind == "finished":
                    f = ev.finished
                    s.info.cpu_seconds = f.final_status.cpu_seconds or s.info.cpu_seconds
                    s.info.state = "done" if f.ok else "failed"
                    s.info.error = f.error
                    return
            if s.info.state == "running":
                lost(s, "its stream ended without a finish")
        except grpc.aio.AioRpcError as exc:
            if not s.started and exc.code() in REFUSALS:
                s.refused = (exc.details() or exc.code().name).removeprefix("agent refuses: ")
                s.info.state = "failed"
                s.info.error = s.refused
            elif s.info.state == "running":
                lost(s, f"connection lost: {exc.code().name}: {exc.details() or 'no details'}")
        except asyncio.CancelledError:
            if s.info.state == "running":
                lost(s, "cancelled")
            raise

    async def keepalive(s: _AgentStream) -> None:
        """Tell the agent the coordinator is still here (it stops the run otherwise)."""
        while s.task is not None and not s.task.done():
            await s.client.keepalive(run_id, timeout_s=max(opts.keepalive_s * 2, 1.0))
            await asyncio.sleep(opts.keepalive_s)

    def refusal() -> _AgentStream | None:
        return next((s for s in streams if s.refused), None)

    # ---- main loop ------------------------------------------------------------
    for s in streams:
        s.task = asyncio.create_task(consume(s))
    pingers = [asyncio.create_task(keepalive(s)) for s in streams] if opts.keepalive_s > 0 else []
    background: set[asyncio.Task[Any]] = set()
    deadline = start_coord_ns + int((span_s + plan.timeout_s + 15.0) * 1e9)
    stop_event = opts.stop_event or asyncio.Event()
    names = [s.info.id or s.info.address for s in streams]
    # Windows older than the request timeout (+10 s) get no more records: their rows are
    # computed and their histograms freed as the run goes, so memory stays flat.
    sealed: set[int] = set()
    sealed_rows: list[dict[str, Any]] = []
    next_seal_ns = start_coord_ns + SEAL_EVERY_NS
    try:
        while any(s.task is not None and not s.task.done() for s in streams):
            await asyncio.sleep(0.1)
            now = time.monotonic_ns()
            if now >= next_seal_ns:
                next_seal_ns = now + SEAL_EVERY_NS
                horizon = (now - start_coord_ns) // 1_000_000_000 - int(plan.timeout_s) - 10
                old = [w for w in agg.window_keys() if w < horizon and w not in sealed]
                if old:
                    sealed_rows += timeseries_rows(agg, names, agent_cpu, old)
                    sealed.update(old)
                    agg.release_windows(set(old))
            bad = refusal()
            if bad is not None:
                await asyncio.gather(
                    *(s.client.stop(run_id, "another agent refused the run") for s in streams)
                )
                break
            for s in streams:
                if s.task is None or s.task.done():
                    continue
                silent = (now - s.info.last_seen_ns) / 1e9
                if silent > opts.heartbeat_timeout_s:
                    lost(s, f"no heartbeat for {silent:.1f}s")
                    s.task.cancel()
                    # best effort: a merely stalled agent stops firing now (a cut-off one
                    # stops by itself once our keepalives stop reaching it)
                    t = asyncio.create_task(s.client.stop(run_id, "declared missing", 1.0))
                    background.add(t)
                    t.add_done_callback(background.discard)
            if stop_event.is_set() and not stopped:
                stopped = "interrupted by the user"
                await asyncio.gather(*(s.client.stop(run_id, stopped) for s in streams))
            if now > deadline and not stopped:
                stopped = "run overran its deadline"
                await asyncio.gather(*(s.client.stop(run_id, stopped) for s in streams))
                deadline = now + int(5e9)
            elif now > deadline:
                for s in streams:
                    if s.task is not None:
                        s.task.cancel()
            if opts.progress is not None:
                opts.progress(
                    Progress(
                        (now - start_coord_ns) / 1e9,
                        span_s,
                        [s.info for s in streams],
                        agg,
                        int((now - start_coord_ns) // 1_000_000_000),
                    )
                )
    except BaseException:
        monitor.abort()
        raise
    finally:
        for s in streams:
            if s.task is not None and not s.task.done():
                s.task.cancel()
        await asyncio.gather(
            *(s.task for s in streams if s.task is not None),
            *pingers,
            *background,
            return_exceptions=True,
        )
        if writer is not None:
            writer.close()
        bad = refusal()
        if bad is not None or sys.exc_info()[0] is not None:
            for s in streams:
                with contextlib.suppress(Exception):
                    await s.client.close()
    if bad is not None:
        _remove_unused_run_dir(run_dir)
        raise AgentError(f"agent {bad.info.address} refuses the run: {bad.refused}")

    # ---- shutdown: results ------------------------------------------------
    infos = [s.info for s in streams]
    measured_s = max(span_s - plan.load.warmup_s, 0.0)
    server_doc = await monitor.stop()
    server = summary_block(server_doc, agg.total().ok)
    summary = build_summary(
        plan, run_id, agg, infos, measured_s, expected, server=server, stopped=stopped
    )
    add_input_pool(summary, pre.pool, infos)
    _annotate(summary, streams, start_coord_ns, run_dir)
    summary["outages"] = find_outages(agg)
    rest = [w for w in agg.window_keys() if w not in sealed]
    write_timeseries(
        run_dir / "timeseries.parquet",
        sealed_rows + timeseries_rows(agg, names, agent_cpu, rest),
    )
    write_server_json(run_dir / "server.json", server_doc)
    write_histograms(run_dir / "histograms.json", agg, names)
    write_json(run_dir / "summary.json", summary)
    write_report_safely(run_dir)
    # The run is stored: agents that delivered everything may drop their spools; the
    # others keep theirs for `volley collect`.
    await asyncio.gather(
        *(s.client.discard(run_id, s.index) for s in streams if s.info.state == "done"),
        return_exceptions=True,
    )
    for s in streams:
        with contextlib.suppress(Exception):
            await s.client.close()
    return RunResult(run_dir, summary, dataclasses.replace(plan), infos)


def _annotate(
    summary: dict[str, Any], streams: list[_AgentStream], start_ns: int, run_dir: Path
) -> None:
    """Per-agent failure detection figures, and how to recover what a lost agent kept."""
    for s, row in zip(streams, summary["agents"], strict=True):
        row["last_seen_s"] = round((s.info.last_seen_ns - start_ns) / 1e9, 3)
        row["lost_detected_s"] = round((s.lost_ns - start_ns) / 1e9, 3) if s.lost_ns else None
    lost = [s for s in streams if s.info.state in ("missing", "failed")]
    summary["partial_agents"] = [s.info.id or s.info.address for s in lost]
    if lost:
        agents = " ".join(f"--agent {s.info.address}" for s in lost)
        summary["recovery"] = {
            "agents": [s.info.address for s in lost],
            "hint": f"their spooled records: volley collect {run_dir} {agents}",
        }


def _remove_unused_run_dir(run_dir: Path) -> None:
    """A run refused before any load leaves no run directory behind."""
    ours = {"plan.yaml", "requests.parquet", MANIFEST}
    with contextlib.suppress(OSError):
        if {p.name for p in run_dir.iterdir()} <= ours:
            shutil.rmtree(run_dir)
