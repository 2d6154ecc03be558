"""The agents' spools of a run, as `volley collect` reads them: replayed by a remote
agent (Collect RPC) or read from a local agent's files (`volley/spool.py`), parsed into
one AgentSpool per slot, and discarded once the run directory holds them."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.agents import AgentClient
from coordinator.local import SPOOL_FOLDER
from coordinator.validate import clean_text
from volley import spool as spoolfile
from volley.records import RecordBlock
from volley.security import ClientSecurity
from volley.v1 import control_pb2 as pb

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
            if ev.timings.HasField("agent_status"):  # a status that rode on the batch
                cur.last_status = ev.timings.agent_status
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
