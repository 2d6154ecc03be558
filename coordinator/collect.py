"""`volley collect RUN_DIR`: bring agents' spooled records back into a run directory.

Agents spool every event of a run locally until the coordinator has stored the
run. When the coordinator died (no summary.json, a truncated requests.parquet)
or an agent was cut off or killed (the summary says partial), `collect` reads the
agents' spools, merges them with what the run directory already holds (a record is
identified by its schedule index, worker and clocks, so nothing is counted twice),
and rewrites requests.parquet, timeseries.parquet, histograms.json, summary.json and
report.html from the union.

Where the spools come from: a remote agent replays its spool (Collect RPC); a local
agent (`--local-agents`, which dies with its coordinator) spooled inside the run
directory, at the folder run.json names (`agents[].spool_dir`), and its files are read
directly (`volley/spool.py`). The spools are dropped afterwards (unless `keep`).

The rebuilt figures: the measured duration comes from the records
(`recovery.recovered_measured_s`: the normal run's measured period, cut where the
records stop), offered and achieved rates are divided by it; `requests.scheduled` is
the schedule's count regenerated from plan.yaml, beside `recorded` and `no_record`
(per agent too; `recovery.add_schedule_counts`).
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
from coordinator.local import SPOOL_FOLDER
from coordinator.recovery import (
    add_schedule_counts,
    agent_infos,
    count_schedule,
    find_outages,
    read_manifest,
    recovered_measured_s,
    spool_dirs,
)
from coordinator.report import write_report_safely
from coordinator.rundir import (
    RequestWriter,
    timeseries_rows,
    write_histograms,
    write_json,
    write_timeseries,
)
from coordinator.sequences import SequenceStats
from coordinator.slo import goodput_limits
from coordinator.summary import AgentInfo, build_summary
from coordinator.validate import AgentCheck, Fault, RunShape, clean_text, record_keys, vet_recovered
from volley import spool as spoolfile
from volley.arrivals import schedule_span_s
from volley.plan import Plan, load_plan_yaml, plan_from_dict
from volley.records import COLUMNS, STREAM_DEFAULTS, RecordBlock
from volley.security import ClientSecurity
from volley.v1 import control_pb2 as pb

log = logging.getLogger("volley.collect")

#: An agent id from a spool is cut to this many characters.
MAX_ID_TEXT = 200


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
    #: the spool folder read directly (a local agent), None: replayed by the agent
    folder: Path | None = None
    #: what it said when its run started, and batches that could not be decoded
    started: pb.Started | None = None
    malformed: int = 0
    #: what the checks dropped (records) and what it got wrong (fault -> count)
    invalid: int = 0
    faults: dict[str, int] = field(default_factory=dict)

    def state(self) -> tuple[str, str]:
        """(state, why) of the agent's slice as its spool tells it."""
        f = self.finished
        if f is None:
            return "missing", "its spool ends without a finish (the agent was killed?)"
        if not f.ok:
            return "failed", clean_text(f.error) or "failed"
        if f.final_status.message:
            return "stopped", clean_text(f.final_status.message)
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
    #: the rebuilt summary (None when only recovered.parquet was written)
    summary: Summary | None = None


class _SpoolParser:
    """Turns one spool's events (replayed by an agent, or read from its files) into
    AgentSpools, one per slot (a Started event opens each)."""

    def __init__(self, run_id: str, address: str, slot: int | None, folder: Path | None) -> None:
        self.run_id, self.address, self.slot, self.folder = run_id, address, slot, folder
        self.out: list[AgentSpool] = []
        self.cur: AgentSpool | None = None

    def feed(self, ev: pb.RunEvent) -> None:
        kind = ev.WhichOneof("event")
        if kind == "started":
            if ev.started.run_id and ev.started.run_id != self.run_id:
                raise CollectError(f"agent {self.address}: spool of another run")
            self.cur = AgentSpool(
                index=int(ev.started.agent_index),
                address=self.address,
                agent_id=clean_text(ev.started.agent_id, MAX_ID_TEXT),
                folder=self.folder,
                started=ev.started,
            )
            self.out.append(self.cur)
            return
        cur = self.cur
        if cur is None:  # events before any Started: a damaged spool
            if self.slot is None:
                return
            cur = self.cur = AgentSpool(index=self.slot, address=self.address, folder=self.folder)
            cur.notes.append("the spool lacks its start event")
            self.out.append(cur)
        if kind == "timings":
            try:
                block = RecordBlock.from_proto(ev.timings)
            except ValueError as exc:
                cur.notes.append(f"skipped a malformed batch ({exc})")
                cur.malformed += 1
                return
            cur.blocks.append(block)
            cur.records += len(block)
        elif kind == "status":
            if ev.status.state == "spool-full":
                cur.notes.append(ev.status.message)
            else:
                cur.last_status = ev.status
        elif kind == "finished":
            cur.finished = ev.finished


async def fetch_spools(client: AgentClient, run_id: str, slot: int | None) -> list[AgentSpool]:
    """Replay one agent's spool of the run (one slot, or all it holds); raises
    grpc.aio.AioRpcError from the agent, CollectError for another run's spool."""
    parser = _SpoolParser(run_id, client.address, slot, None)
    async for ev in client.collect(run_id, slot):
        parser.feed(ev)
    return parser.out


def read_spool_folder(folder: Path, run_id: str, address: str) -> list[AgentSpool]:
    """Read a local agent's spool files of the run (the agent need not be alive);
    CollectError when there are none or they cannot be read."""
    found = spoolfile.slots(folder, run_id)
    if not found:
        raise CollectError(f"agent {address}: no spool of run {run_id} in {folder}")
    out: list[AgentSpool] = []
    for k in found:
        parser = _SpoolParser(run_id, address, k, folder)
        try:
            for ev in spoolfile.read_events(folder, run_id, k):
                parser.feed(ev)
        except OSError as exc:
            raise CollectError(f"{spoolfile.slot_path(folder, run_id, k)}: {exc}") from None
        out += parser.out
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
    names = set(rows.column_names)
    cols: dict[str, npt.NDArray[np.generic]] = {
        # a run written before the streaming columns: their unary values
        k: rows.column(k).to_numpy().astype(dt, copy=False)
        if k in names or k not in STREAM_DEFAULTS
        else np.full(rows.num_rows, STREAM_DEFAULTS[k], dt)
        for k, dt in COLUMNS.items()
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
    _, first = np.unique(record_keys(block), return_index=True)
    if len(first) == n:
        return block
    first.sort()
    return block.select(first)


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
    explicit = addresses is not None
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
    # local agents spooled in the run directory: read there, unless asked for by address
    folders = spool_dirs(manifest, run_dir) if not explicit else {}
    local_of = {i.address: folders[i.index] for i in infos if i.index in folders}

    spools: list[AgentSpool] = []
    failures: dict[str, str] = {}
    for addr in addresses:
        if addr in local_of:
            try:
                spools += read_spool_folder(local_of[addr], run_id, addr)
            except CollectError as exc:
                failures[addr] = str(exc)
            continue
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
            by_slot[sp.index].malformed += sp.malformed
        else:
            by_slot[sp.index] = sp
    spools = [by_slot[k] for k in sorted(by_slot)]
    if not spools:
        raise CollectError("; ".join(failures.values()) or "no agent answered")

    req_path = run_dir / "requests.parquet"
    existing, how = _read_existing(req_path)
    checks = _checks(plan, infos, spools, old_rows)
    if old is not None and existing is None:
        # the run finished without raw records: the others' records are not here to merge
        return _write_recovered_only(run_dir, run_id, spools, failures, old, checks)

    agg = Aggregator(len(infos), int(plan.load.warmup_s * 1e9), good=goodput_limits(plan.slos))
    if plan.sequence is not None:
        agg.sequences = SequenceStats(len(infos), int(plan.load.warmup_s * 1e9))
    tmp = run_dir / "requests.parquet.tmp"
    writer = RequestWriter(tmp)
    before = existing.num_rows if existing is not None else 0
    after = 0
    spooled = {sp.index: sp for sp in spools}
    last_index: int | None = None  #: the latest arrival (schedule index) with a record
    last_done_ns: int | None = None  #: the last response among the measured records
    warmup_ns = int(plan.load.warmup_s * 1e9)
    try:
        for info in infos:
            stored = _block_of(existing, info.index) if existing is not None else None
            got = spooled.get(info.index)
            if got is None:
                if stored is None:
                    continue
                merged = stored  # not collected: what the run stored (and vetted)
            else:
                vetted = vet_recovered(checks[info.index], stored, got.blocks)
                info.invalid_records = checks[info.index].invalid
                if vetted is None:
                    continue
                merged = _dedupe(vetted)
            agg.ingest(info.index, merged)
            writer.write(info.index, merged)
            after += len(merged)
            last_index, last_done_ns = _latest(merged, warmup_ns, last_index, last_done_ns)
    finally:
        writer.close()
    if how == "unreadable":
        req_path.replace(run_dir / "requests.parquet.broken")
    tmp.replace(req_path)

    stopped = _apply_states(infos, spools, old_rows, checks)
    _note_faults(spools, checks)
    if not stopped and old is None:
        stopped = "the coordinator ended before the run did"
    counts = count_schedule(plan, last_index)
    complete = all(i.state == "done" for i in infos)
    measured_s = recovered_measured_s(
        plan, last_index, counts.next_ns if counts else None, last_done_ns, complete
    )
    summary = build_summary(
        plan,
        run_id,
        agg,
        infos,
        measured_s,
        counts.total if counts else manifest.get("scheduled_total"),
        server=old.get("server") if old else None,
        stopped=stopped,
    )
    add_schedule_counts(summary, counts)
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
                "source": "agent" if sp.folder is None else str(sp.folder),
            }
            for sp in spools
        ],
        "planned_duration_s": round(max(schedule_span_s(plan) - plan.load.warmup_s, 0.0), 3),
        "duration_from": "records",
        "records_before": before,
        "records_after": after,
        "recovered": after - before,
        "unreachable": sorted(failures.values()),
        "requests_parquet_was": how,
    }
    names = [i.id or i.address for i in infos]
    write_timeseries(run_dir / "timeseries.parquet", timeseries_rows(agg, names))
    write_histograms(run_dir / "histograms.json", agg, names)
    write_json(run_dir / "summary.json.tmp", summary)
    (run_dir / "summary.json.tmp").replace(run_dir / "summary.json")
    write_report_safely(run_dir)
    discarded = [] if keep else await _discard(run_id, spools, security)
    return CollectReport(
        run_dir, run_id, spools, failures, before, after, after - before, True, discarded, summary
    )


def _latest(
    block: RecordBlock, warmup_ns: int, last_index: int | None, last_done_ns: int | None
) -> tuple[int | None, int | None]:
    """The latest schedule index with a record, and the last response of the measured
    records, so far."""
    index = block.col("index")
    if index.size and int(index.max()) >= 0:
        top = int(index.max())
        last_index = top if last_index is None else max(last_index, top)
    done = block.col("done_ns")[block.col("intended_ns") >= warmup_ns]
    if done.size:
        top = int(done.max())
        last_done_ns = top if last_done_ns is None else max(last_done_ns, top)
    return last_index, last_done_ns


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


def _write_recovered_only(
    run_dir: Path,
    run_id: str,
    spools: list[AgentSpool],
    failures: dict[str, str],
    old: Summary,
    checks: dict[int, AgentCheck],
) -> CollectReport:
    path = run_dir / "recovered.parquet"
    writer = RequestWriter(path)
    n = 0
    try:
        for sp in spools:
            vetted = vet_recovered(checks[sp.index], None, sp.blocks)
            if vetted is None:
                continue
            blk = _dedupe(vetted)
            writer.write(sp.index, blk)
            n += len(blk)
    finally:
        writer.close()
    _note_faults(spools, checks)
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
        if sp.folder is not None:  # a local agent's files: dropped here
            if spoolfile.discard(sp.folder, run_id, sp.index):
                done.append(f"{sp.folder} (slot {sp.index})")
            with contextlib.suppress(OSError):
                sp.folder.rmdir()  # the agent's folder, when nothing else is left
                if sp.folder.parent.name == SPOOL_FOLDER:
                    sp.folder.parent.rmdir()
            continue
        client = AgentClient(sp.address, 5.0, security)
        try:
            if await client.discard(run_id, sp.index):
                done.append(f"{sp.address} (slot {sp.index})")
        finally:
            with contextlib.suppress(Exception):
                await client.close()
    return done
