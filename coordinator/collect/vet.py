"""What `volley collect` checks in what it recovers, as a live run checks it: one
AgentCheck per collected slot, the agents' states and faults, and one record per key
(a record both stored and spooled counts once)."""

from __future__ import annotations

import numpy as np

from coordinator.collect.spools import AgentSpool
from coordinator.documents import AgentRow
from coordinator.summary import AgentInfo
from coordinator.validate import AgentCheck, Fault, RunShape, record_keys
from volley.plan import Plan
from volley.records import RecordBlock


def _dedupe(block: RecordBlock) -> RecordBlock:
    """One record per (schedule index, worker, sent, intended): the same record from the
    run directory and from a spool counts once."""
    n = len(block)
    if n == 0:
        return block
    _, first = np.unique(record_keys(block), return_index=True)
    if len(first) == n:
        return block
    first.sort()
    return block.select(first)


def _checks(
    plan: Plan, infos: list[AgentInfo], spools: list[AgentSpool], old_rows: list[AgentRow]
) -> dict[int, AgentCheck]:
    """One AgentCheck per collected slot, as a live run builds them (its faults go to the
    agent's AgentInfo, so summary.json reports them the same way); the spool's undecodable
    batches and a Started that disagrees with the run counted already. An agent not
    collected keeps the invalid records and faults the run's summary had for it."""
    shape = RunShape.of(plan)
    spooled = {sp.index: sp for sp in spools}
    out: dict[int, AgentCheck] = {}
    for info in infos:
        sp = spooled.get(info.index)
        row = old_rows[info.index] if info.index < len(old_rows) else None
        if sp is None:
            if row:
                info.invalid_records = int(row.get("invalid_records") or 0)
                info.faults.update({str(k): int(v) for k, v in (row.get("faults") or {}).items()})
            continue
        check = AgentCheck(shape, info.index, info.workers, info.cores, info.faults)
        if sp.malformed:
            check.fault(Fault.MALFORMED_BATCH, sp.malformed)
        if sp.started is not None:
            check.started(sp.started)
        out[info.index] = check
    return out


def _note_faults(spools: list[AgentSpool], checks: dict[int, AgentCheck]) -> None:
    for sp in spools:
        c = checks[sp.index]
        sp.invalid, sp.faults = c.invalid, dict(sorted(c.faults.items()))


def _apply_states(
    infos: list[AgentInfo],
    spools: list[AgentSpool],
    old_rows: list[AgentRow],
    checks: dict[int, AgentCheck],
) -> str:
    """Fill the agents' states (from their spools, else the old summary); returns why the
    run stopped early, if it did. A spooled status with bad numbers is not read (counted
    as a live run counts it)."""
    stopped = ""
    spooled = {sp.index: sp for sp in spools}
    for info in infos:
        sp = spooled.get(info.index)
        row = old_rows[info.index] if info.index < len(old_rows) else None
        peak = float(row.get("cpu_percent_peak") or 0.0) if row else 0.0
        host_avg = row.get("host_cpu_percent_avg") if row else None
        if host_avg is not None:  # what the run saw of the host (the spool keeps no series)
            info.host_cpu_samples = [float(host_avg)]
        if sp is not None:
            info.state, info.error = sp.state()
            info.id = info.id or sp.agent_id
            st = sp.finished.final_status if sp.finished is not None else sp.last_status
            if st is not None and checks[info.index].status(st):
                info.cpu_seconds = st.cpu_seconds
                info.retried, info.reconnects = st.retried, st.reconnects
                info.connect_errors = st.connect_errors
            info.cpu_percent_peak = peak
            if info.state == "stopped" and not stopped:
                stopped = f"agent {info.id or info.address}: {info.error}"
        elif row:
            info.state = str(row.get("state", "missing"))
            info.error = str(row.get("error", ""))
            info.cpu_seconds = float(row.get("cpu_seconds") or 0.0)
            info.cpu_percent_peak = peak
        else:
            info.state, info.error = "missing", "not collected, and the coordinator kept nothing"
    return stopped
