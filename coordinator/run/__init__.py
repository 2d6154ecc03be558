"""The coordinator's run: preflight, handshake, clocks, one synchronized start, merge, write.

`execute()` is the async core of `volley run`: startup (preflight, agents' Hello and
clock probes, run directory, the two-phase start of `start.py`: every agent prepared,
then the start instant with a measured lead), main loop (`loop.RunLoop`: one event
stream per agent, merged as batches arrive; heartbeats, stop and deadline watched),
shutdown (`results.finish`: summary and files).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter

from coordinator.agents import AgentError
from coordinator.preflight import preflight_check
from coordinator.recovery import write_manifest
from coordinator.run.loop import SEAL_EVERY_NS, RunLoop, StopReason
from coordinator.run.options import Progress, RunOptions, RunResult
from coordinator.run.results import (
    add_input_pool,
    finish,
    remove_unused_run_dir,
    scheduled_total,
)
from coordinator.run.start import (
    StartProblem,
    prepare,
    ready_round,
    send_start,
    start_lead_ns,
)
from coordinator.run.stream import REFUSALS, AgentStream, handshake
from coordinator.rundir import RequestWriter, new_run_dir, write_plan
from coordinator.stats.monitor import ServerMonitor
from coordinator.summary import AgentInfo
from volley.conns import fit_workers
from volley.plan import AgentSpec, Plan
from volley.sequence import resolve_ranges
from volley.target import read_access

__all__ = [
    "REFUSALS",
    "SEAL_EVERY_NS",
    "AgentStream",
    "Progress",
    "RunLoop",
    "RunOptions",
    "RunResult",
    "StartProblem",
    "StopReason",
    "add_input_pool",
    "execute",
    "fit_to_connections",
    "scheduled_total",
]

log = logging.getLogger("volley.run")


def fit_to_connections(plan: Plan, infos: list[AgentInfo], opts: RunOptions) -> str:
    """`--connections N` below an agent's worker count (every worker holds at least one
    connection): without `--workers`, the agents' workers are capped at their shares
    (`volley.conns.fit_workers`) and a one-line note says so ("" when nothing changed);
    with `--workers`, AgentError (one line)."""
    total = plan.connections_total
    if total <= 0:
        return ""
    before = [i.workers for i in infos]
    after = fit_workers(total, before, opts.weight_by_workers)
    if after == before:
        return ""
    if opts.workers:
        k = next(k for k, (b, a) in enumerate(zip(before, after, strict=True)) if a < b)
        raise AgentError(
            f"--connections {total} gives agent {infos[k].id or infos[k].address} {after[k]}, "
            f"fewer than its {before[k]} workers (--workers {opts.workers}): every worker "
            f"needs one (more --connections, or fewer --workers)"
        )
    for info, n in zip(infos, after, strict=True):
        info.workers = n
    moved = Counter((b, a) for b, a in zip(before, after, strict=True) if a < b)
    what = ", ".join(
        f"{c} agent{'s' if c > 1 else ''} {b} -> {a}" for (b, a), c in sorted(moved.items())
    )
    return (
        f"--connections {total}: workers capped to one per connection ({what} workers); "
        "--workers sets them"
    )


async def execute(plan: Plan, addresses: list[str], opts: RunOptions) -> RunResult:
    """Run `plan` on the agents at `addresses`; AgentError if one refuses it."""
    # ---- startup ------------------------------------------------------------
    pre = await preflight_check(plan)
    plan = pre.plan
    # Secrets are read here, on the coordinator, and go to the agents in memory only.
    access = read_access(plan)
    streams = await handshake(addresses, opts)
    for s in streams:
        s.access = access
    try:
        note = fit_to_connections(plan, [s.info for s in streams], opts)
    except AgentError:
        for s in streams:
            await s.client.close()
        raise
    if note and opts.note is not None:
        opts.note(note)
    elif note:
        log.info("%s", note)
    weights = [s.info.workers if opts.weight_by_workers else 1 for s in streams]
    plan = plan.with_agents(
        [AgentSpec(s.info.address, w) for s, w in zip(streams, weights, strict=True)]
    )
    # sequences: one disjoint ID range per agent, part of the plan (plan.yaml records it)
    plan = resolve_ranges(plan)
    run_id = uuid.uuid4().hex[:12]
    run_dir = opts.run_dir or new_run_dir(opts.out_dir, plan.name)
    write_plan(run_dir / "plan.yaml", plan)
    expected = scheduled_total(plan)
    writer = RequestWriter(run_dir / "requests.parquet") if plan.raw_records else None
    run = RunLoop(plan, streams, opts, run_id=run_id, writer=writer)
    # coordinator.stats: the server monitor's 'before' sample while the agents prepare
    # (no load yet); it samples windows from the start instant on
    monitor = ServerMonitor.for_plan(plan, opts.server_metrics, opts.server_stats)
    monitor.prime(plan.load.warmup_s)
    # two-phase start: every agent prepares (workers, pools, connections) first
    try:
        await prepare(run, opts.prepare_timeout_s)
        bad = run.refusal()
        if bad is not None:
            await run.shutdown()
            raise AgentError(f"agent {bad.info.address} refuses the run: {bad.refused}")
        # the fan-out to every agent as it is now, right before the instant is fixed
        # (inside: a cancellation here ends the prepared agents' runs too)
        round_ns = await ready_round(run)
    except AgentError:
        monitor.abort()
        remove_unused_run_dir(run_dir)
        raise
    except BaseException:
        monitor.abort()
        await run.shutdown(failed=True)
        raise
    start_ns = run.agree_start(start_lead_ns(streams, round_ns))
    monitor.set_start(start_ns)
    infos = [s.info for s in streams]
    write_manifest(run_dir, run_id, infos, start_ns, run.span_s, expected, opts.local_spools)
    try:
        await send_start(run)
    except BaseException:
        monitor.abort()
        raise
    if opts.at_start is not None:
        opts.at_start()

    # ---- main loop ------------------------------------------------------------
    try:
        await run.main_loop()
    except BaseException:
        monitor.abort()
        await run.shutdown(failed=True)
        raise
    await run.shutdown()

    # ---- shutdown: results ------------------------------------------------
    bad = run.refusal()
    if bad is not None:
        remove_unused_run_dir(run_dir)
        raise AgentError(f"agent {bad.info.address} refuses the run: {bad.refused}")
    return await finish(run, run_dir, pre.pool, monitor, expected)
