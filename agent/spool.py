"""The agent's local spool: every event of a run, on disk, until the coordinator has it.

One folder per run, `<spool dir>/<run_id>/`, holding one file per slot of the run
the agent served, `slot-<k>.bin` (RunEvent messages, each preceded by its length as
a 4-byte little-endian integer), and its `slot-<k>.json` (so agents on one host may
share a spool folder). The agent appends every event it produces (Started, timing batches,
a status each second, Finished) as it produces it, before the event is offered
to the Run stream. When the coordinator has stored the run it discards the
spool (Collect with discard); if it died, or the agent was cut off, the spool
stays and `volley collect` replays it (Collect). The file format and its reader
(`read_events`: stops at a truncated tail, keeping everything before it) are the core's
`volley/spool.py`, so `volley collect` can read a dead local agent's files directly.

Bounds: one run's spool stops taking timing batches past `max_bytes` (a status
event says so); at most `keep` spools of past runs are kept, oldest removed first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

from volley.spool import (
    LENGTH,
    MAX_EVENT_BYTES,
    MAX_SLOT,
    RUN_ID_RE,
    discard,
    read_events,
    run_path,
    slot_path,
    slots,
    valid_run_id,
)
from volley.v1 import control_pb2 as pb

__all__ = [
    "DEFAULT_KEEP",
    "DEFAULT_MAX_BYTES",
    "MAX_EVENT_BYTES",
    "MAX_SLOT",
    "RUN_ID_RE",
    "SpoolWriter",
    "default_spool_dir",
    "discard",
    "exists",
    "list_runs",
    "prune",
    "read_events",
    "run_path",
    "slot_path",
    "slots",
    "valid_run_id",
]

log = logging.getLogger("volley.agent.spool")

SPOOL_ENV = "VOLLEY_SPOOL_DIR"
DEFAULT_MAX_BYTES = 2 * 1024 * 1024 * 1024
DEFAULT_KEEP = 20


def default_spool_dir() -> Path:
    env = os.environ.get(SPOOL_ENV)
    return Path(env) if env else Path.home() / ".volley" / "spool"


class SpoolWriter:
    """Appends a run's events to its spool. Never raises: a disk problem disables
    spooling for the run (logged once) and the run goes on."""

    def __init__(
        self,
        root: Path,
        run_id: str,
        slot: int,
        meta: dict[str, object],
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.path = slot_path(root, run_id, slot)
        self.max_bytes = max_bytes
        self.bytes = 0
        self.events = 0
        self.full = False
        self.error = ""
        self._fh = None
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.path.parent.mkdir(mode=0o700, exist_ok=True)
            meta_path = self.path.with_suffix(".json")
            meta_path.write_text(json.dumps({**meta, "slot": slot, "created": time.time()}))
            self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.error = f"spool {self.path}: {exc.strerror or exc}"
        log.error("%s; records of this run are not spooled", self.error)
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
        self._fh = None

    @property
    def ok(self) -> bool:
        return self._fh is not None

    def write(self, event: pb.RunEvent) -> None:
        if self._fh is None:
            return
        data = event.SerializeToString()
        if len(data) > MAX_EVENT_BYTES:
            return
        if self.full and event.WhichOneof("event") == "timings":
            return
        if not self.full and self.bytes + len(data) > self.max_bytes:
            self.full = True
            note = pb.RunEvent(
                status=pb.AgentStatus(
                    state="spool-full",
                    message=f"spool reached {self.max_bytes} bytes: later timing batches "
                    "were not spooled",
                    agent_ns=time.monotonic_ns(),
                )
            )
            log.warning("%s: %s", self.path, note.status.message)
            self.write(note)
            if event.WhichOneof("event") == "timings":
                return
        try:
            self._fh.write(LENGTH.pack(len(data)))
            self._fh.write(data)
            self._fh.flush()
        except OSError as exc:
            self._fail(exc)
            return
        self.bytes += len(data) + LENGTH.size
        self.events += 1

    def close(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None


def exists(root: Path, run_id: str, slot: int | None = None) -> bool:
    if slot is None:
        return bool(slots(root, run_id))
    return (
        valid_run_id(run_id) and 0 <= slot <= MAX_SLOT and slot_path(root, run_id, slot).is_file()
    )


def list_runs(root: Path) -> list[tuple[float, str]]:
    """(modification time, run id) of the spools under root, oldest first."""
    out: list[tuple[float, str]] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return out
    for p in entries:
        if p.is_dir() and valid_run_id(p.name):
            with contextlib.suppress(OSError):
                times = [f.stat().st_mtime for f in p.glob("slot-*.bin")]
                if times:
                    out.append((max(times), p.name))
    return sorted(out)


def prune(root: Path, keep: int = DEFAULT_KEEP, active: str = "") -> list[str]:
    """Remove the oldest spools beyond `keep` (never `active`); returns the run ids removed."""
    runs = [r for r in list_runs(root) if r[1] != active]
    removed = [rid for _, rid in runs[: max(len(runs) - keep, 0)]]
    for rid in removed:
        discard(root, rid)
        log.warning("removed the old spool of run %s (more than %d kept)", rid, keep)
    return removed
