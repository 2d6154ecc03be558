"""`volley collect RUN_DIR`: bring agents' spooled records back into a run directory.

Agents spool every event of a run locally until the coordinator has stored the
run. When the coordinator died (no summary.json, a truncated requests.parquet)
or an agent was cut off or killed (the summary says partial), `collect` asks the
agents for their spools (Collect RPC), merges them with what the run directory
already holds (a record is identified by its schedule index, worker and clocks,
so nothing is counted twice), and rewrites requests.parquet, timeseries.parquet
and summary.json from the union. The agents then drop their spools (unless
`keep`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from coordinator.agents import AgentClient, describe_error
from coordinator.aggregate import Aggregator
from coordinator.documents import AgentRow, Summary, SummaryError, load_summary
from coordinator.recovery import agent_infos, find_outages, read_manifest
from coordinator.rundir import RequestWriter, timeseries_rows, write_json, write_timeseries
from coordinator.summary import AgentInfo, build_summary
from volley.plan import Plan, load_plan_yaml, plan_from_dict
from volley.records import COLUMNS, RecordBlock, concat
from volley.security import ClientSecurity
from volley.v1 import control_pb2 as pb

log = logging.getLogger("volley.collect")


class CollectError(Exception):
    """Nothing could be recovered; the message says why (one line)."""


@dataclass
class AgentSpool:
    """What one agent had spooled for the run."""

    index: int
    address: str
    agent_id: str = ""
    blocks: list[RecordBlock] = field(default_factory=list)
    records: int = 0
    finished: pb.Finished | None = None
    last_status: pb.AgentStatus | None = None
    notes: list[str] = field(default_factory=list)

    def state(self) -> tuple[str, str]:
        """(state, why) of the agent's slice as its spool tells it."""
        f = self.finished
        if f is None:
            return "missing", "its spool ends without a finish (the agent was killed?)"
        if not f.ok:
            return "failed", f.error or "failed"
        if f.final_status.message:
            return "stopped", f.final_status.message
        return "done", ""


@dataclass
class CollectReport:
    run_dir: Path
    run_id: str
    agents: list[AgentSpool]
    #: address -> why nothing came from it
    failures: dict[str, str]
    records_before: int
    records_after: int
    recovered: int
    rebuilt: bool
    discarded: list[str]


async def fetch_spools(client: AgentClient, run_id: str, slot: int | None) -> list[AgentSpool]:
    """Replay one agent's spool of the run (one slot, or all it holds); raises
    grpc.aio.AioRpcError from the agent, CollectError for another run's spool."""
    out: list[AgentSpool] = []
    cur: AgentSpool | None = None
    async for ev in client.collect(run_id, slot):
        kind = ev.WhichOneof("event")
        if kind == "started":
            if ev.started.run_id and ev.started.run_id != run_id:
                raise CollectError(f"agent {client.address}: spool of another run")
            cur = AgentSpool(
                index=int(ev.started.agent_index),
                address=client.address,
                agent_id=ev.started.agent_id,
            )
            out.append(cur)
            continue
        if cur is None:  # events before any Started: a damaged spool
            if slot is None:
                continue
            cur = AgentSpool(index=slot, address=client.address)
            cur.notes.append("the spool lacks its start event")
            out.append(cur)
        if kind == "timings":
            try:
                block = RecordBlock.from_proto(ev.timings)
            except ValueError as exc:
                cur.notes.append(f"skipped a malformed batch ({exc})")
                continue
            cur.blocks.append(block)
            cur.records += len(block)
        elif kind == "status":
            if ev.status.state == "spool-full":
                cur.notes.append(ev.status.message)
            else:
                cur.last_status = ev.status
        elif kind == "finished":
            cur.finished = ev.finished
    return out


def _read_existing(path: Path) -> tuple[pa.Table | None, str]:
    if not path.exists():
        return None, "none"
    try:
        return pq.read_table(str(path)), "ok"
    except (OSError, pa.ArrowException) as exc:
        log.warning("%s unreadable (%s): rebuilding from the agents' spools", path, exc)
        return None, "unreadable"


def _block_of(table: pa.Table, agent: int) -> RecordBlock | None:
    rows = table.filter(pa.compute.equal(table.column("agent"), agent))
    if rows.num_rows == 0:
        return None
    cols: dict[str, npt.NDArray[np.generic]] = {
        k: rows.column(k).to_numpy().astype(dt, copy=False) for k, dt in COLUMNS.items()
    }
    shape = rows.column("input_shape").combine_chunks()
    if isinstance(shape, pa.DictionaryArray):
        shapes = [str(x) for x in shape.dictionary.to_pylist()]
        idx = shape.indices.to_numpy(zero_copy_only=False)
    else:
        enc = pa.compute.dictionary_encode(shape)
        shapes = [str(x) for x in enc.dictionary.to_pylist()]
        idx = enc.indices.to_numpy(zero_copy_only=False)
    cols["shape_id"] = np.asarray(idx, dtype=np.uint16)
    return RecordBlock(cols, shapes)


def _dedupe(block: RecordBlock) -> RecordBlock:
    """One record per (schedule index, worker, sent, intended): the same record from the
    run directory and from a spool counts once."""
    n = len(block)
    if n == 0:
        return block
    key = np.empty(n, dtype=[("i", "<i8"), ("w", "<u2"), ("s", "<i8"), ("t", "<i8")])
    key["i"] = block.columns["index"]
    key["w"] = block.columns["worker"]
    key["s"] = block.columns["sent_ns"]
    key["t"] = block.columns["intended_ns"]
    _, first = np.unique(key, return_index=True)
    if len(first) == n:
        return block
    first.sort()
    return RecordBlock({k: v[first] for k, v in block.columns.items()}, block.input_shapes)


def _old_summary(run_dir: Path) -> Summary | None:
    try:
        return load_summary(run_dir / "summary.json")
    except SummaryError:
        return None


def _load_plan(run_dir: Path) -> Plan:
    try:
        return plan_from_dict(load_plan_yaml((run_dir / "plan.yaml").read_text()))
    except OSError as exc:
        raise CollectError(f"{run_dir}/plan.yaml: {exc.strerror or exc}") from None


async def collect_run(
    run_dir: Path,
    addresses: list[str] | None = None,
    security: ClientSecurity | None = None,
    keep: bool = False,
    connect_timeout_s: float = 5.0,
) -> CollectReport:
    manifest = read_manifest(run_dir)
    run_id: str = manifest["run_id"]
    plan = _load_plan(run_dir)
    infos = agent_infos(manifest)
    old = _old_summary(run_dir)
    old_rows: list[AgentRow] = list(old.get("agents") or []) if old else []
    if addresses is None:
        # the agents whose records may be incomplete here
        addresses = [
            i.address
            for i in infos
            if not old or i.index >= len(old_rows) or old_rows[i.index].get("state") != "done"
        ]
    if not addresses:
        raise CollectError(f"{run_dir}: every agent delivered all its records; nothing to collect")
    by_address = {i.address: i.index for i in infos}

    spools: list[AgentSpool] = []
    failures: dict[str, str] = {}
    for addr in addresses:
        client = AgentClient(addr, connect_timeout_s, security)
        try:
            spools += await fetch_spools(client, run_id, by_address.get(addr))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                failures[addr] = f"agent {addr}: has no spool for run {run_id}"
            else:
                failures[addr] = describe_error(addr, exc)
        except CollectError as exc:
            failures[addr] = str(exc)
        finally:
            with contextlib.suppress(Exception):
                await client.close()
    for sp in spools:
        if not 0 <= sp.index < len(infos):
            failures[sp.address] = (
                f"agent {sp.address}: its spool is for slot {sp.index}, not one of this run's "
                f"{len(infos)} agents"
            )
    spools = [sp for sp in spools if 0 <= sp.index < len(infos)]
    # the same slot from two answers (agents sharing a spool folder): one spool
    by_slot: dict[int, AgentSpool] = {}
    for sp in spools:
        if sp.index in by_slot:
            by_slot[sp.index].blocks += sp.blocks
            by_slot[sp.index].records += sp.records
        else:
            by_slot[sp.index] = sp
    spools = [by_slot[k] for k in sorted(by_slot)]
    if not spools:
        raise CollectError("; ".join(failures.values()) or "no agent answered")

    req_path = run_dir / "requests.parquet"
    existing, how = _read_existing(req_path)
    if old is not None and existing is None:
        # the run finished without raw records: the others' records are not here to merge
        return _write_recovered_only(run_dir, run_id, spools, failures, old)

    agg = Aggregator(len(infos), int(plan.load.warmup_s * 1e9))
    tmp = run_dir / "requests.parquet.tmp"
    writer = RequestWriter(tmp)
    before = existing.num_rows if existing is not None else 0
    after = 0
    spooled = {sp.index: sp for sp in spools}
    try:
        for info in infos:
            parts: list[RecordBlock] = []
            if existing is not None:
                blk = _block_of(existing, info.index)
                if blk is not None:
                    parts.append(blk)
            got = spooled.get(info.index)
            if got is not None:
                parts.extend(got.blocks)
            if not parts:
                continue
            merged = _dedupe(concat(parts))
            agg.ingest(info.index, merged)
            writer.write(info.index, merged)
            after += len(merged)
    finally:
        writer.close()
    if how == "unreadable":
        req_path.replace(run_dir / "requests.parquet.broken")
    tmp.replace(req_path)

    stopped = _apply_states(infos, spools, old_rows)
    if not stopped and old is None:
        stopped = "the coordinator ended before the run did"
    span_s = float(manifest.get("span_s") or 0.0)
    measured_s = max(span_s - plan.load.warmup_s, 0.0)
    summary = build_summary(
        plan,
        run_id,
        agg,
        infos,
        measured_s,
        manifest.get("scheduled_total"),
        server=old.get("server") if old else None,
        stopped=stopped,
    )
    summary["outages"] = find_outages(agg)
    summary["partial_agents"] = [
        i.id or i.address for i in infos if i.state in ("failed", "missing")
    ]
    summary["recovered"] = {
        "at_unix": round(time.time(), 3),
        "agents": [
            {
                "index": sp.index,
                "address": sp.address,
                "spooled_records": sp.records,
                "state": sp.state()[0],
                "notes": sp.notes,
            }
            for sp in spools
        ],
        "records_before": before,
        "records_after": after,
        "recovered": after - before,
        "unreachable": sorted(failures.values()),
        "requests_parquet_was": how,
    }
    names = [i.id or i.address for i in infos]
    write_timeseries(run_dir / "timeseries.parquet", timeseries_rows(agg, names))
    write_json(run_dir / "summary.json.tmp", summary)
    (run_dir / "summary.json.tmp").replace(run_dir / "summary.json")
    discarded = [] if keep else await _discard(run_id, spools, security)
    return CollectReport(
        run_dir, run_id, spools, failures, before, after, after - before, True, discarded
    )


def _apply_states(
    infos: list[AgentInfo], spools: list[AgentSpool], old_rows: list[AgentRow]
) -> str:
    """Fill the agents' states (from their spools, else the old summary); returns why the
    run stopped early, if it did."""
    stopped = ""
    spooled = {sp.index: sp for sp in spools}
    for info in infos:
        sp = spooled.get(info.index)
        row = old_rows[info.index] if info.index < len(old_rows) else None
        peak = float(row.get("cpu_percent_peak") or 0.0) if row else 0.0
        if sp is not None:
            info.state, info.error = sp.state()
            info.id = info.id or sp.agent_id
            st = sp.finished.final_status if sp.finished is not None else sp.last_status
            if st is not None:
                info.cpu_seconds = st.cpu_seconds
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


def _write_recovered_only(
    run_dir: Path,
    run_id: str,
    spools: list[AgentSpool],
    failures: dict[str, str],
    old: Summary,
) -> CollectReport:
    path = run_dir / "recovered.parquet"
    writer = RequestWriter(path)
    n = 0
    try:
        for sp in spools:
            blk = _dedupe(concat(sp.blocks))
            writer.write(sp.index, blk)
            n += len(blk)
    finally:
        writer.close()
    old["recovered"] = {
        "at_unix": round(time.time(), 3),
        "file": path.name,
        "records": n,
        "note": "the run had no raw records (raw_records: false), so the summary was not "
        "rebuilt; the agents' spooled records are in recovered.parquet",
    }
    write_json(run_dir / "summary.json", old)
    return CollectReport(run_dir, run_id, spools, failures, 0, n, n, False, [])


async def _discard(
    run_id: str, spools: list[AgentSpool], security: ClientSecurity | None
) -> list[str]:
    done: list[str] = []
    for sp in spools:
        client = AgentClient(sp.address, 5.0, security)
        try:
            if await client.discard(run_id, sp.index):
                done.append(f"{sp.address} (slot {sp.index})")
        finally:
            with contextlib.suppress(Exception):
                await client.close()
    return done
