"""The spool's file format (no agent code): where a run's events lie, how to read them
back and drop them.

An agent spools every event of a run in `<spool dir>/<run_id>/slot-<k>.bin`: RunEvent
messages, each preceded by its length as a 4-byte little-endian integer, and beside it
`slot-<k>.json` (its metadata). The agent writes them (`agent/spool.py`); the agent's
Collect RPC and `volley collect` (for local agents that died with their coordinator)
read them with `read_events` and drop them with `discard`. `read_events` stops quietly
at a truncated or corrupt tail (an agent killed mid-write), keeping everything before it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

from volley.v1 import control_pb2 as pb

log = logging.getLogger("volley.spool")

MAX_SLOT = 1_000_000
#: A run id names a folder: letters, digits, '_' and '-', not starting with '-'.
RUN_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
#: No single spooled event is larger (a reader treats a larger length as corruption).
MAX_EVENT_BYTES = 64 * 1024 * 1024
LENGTH = struct.Struct("<I")


def valid_run_id(run_id: str) -> bool:
    return bool(RUN_ID_RE.match(run_id))


def run_path(root: Path, run_id: str) -> Path:
    if not valid_run_id(run_id):
        raise ValueError(f"invalid run id {run_id!r}")
    return root / run_id


def slot_path(root: Path, run_id: str, slot: int) -> Path:
    if not 0 <= slot <= MAX_SLOT:
        raise ValueError(f"invalid slot {slot}")
    return run_path(root, run_id) / f"slot-{slot}.bin"


def slots(root: Path, run_id: str) -> list[int]:
    """The slots spooled here for a run."""
    if not valid_run_id(run_id):
        return []
    out = []
    with contextlib.suppress(OSError):
        for p in run_path(root, run_id).glob("slot-*.bin"):
            num = p.stem.removeprefix("slot-")
            if num.isdigit() and int(num) <= MAX_SLOT:
                out.append(int(num))
    return sorted(out)


def read_events(root: Path, run_id: str, slot: int) -> Iterator[pb.RunEvent]:
    """The spooled events of a run's slot, in order; stops quietly at a truncated or
    corrupt tail. FileNotFoundError when there is no such spool."""
    path = slot_path(root, run_id, slot)
    with open(path, "rb") as fh:
        while True:
            head = fh.read(LENGTH.size)
            if len(head) < LENGTH.size:
                return
            (n,) = LENGTH.unpack(head)
            if n > MAX_EVENT_BYTES:
                log.warning("%s: corrupt length %d; stopping there", path, n)
                return
            data = fh.read(n)
            if len(data) < n:
                return
            ev = pb.RunEvent()
            try:
                ev.ParseFromString(data)
            except Exception:  # a DecodeError: corrupt tail
                log.warning("%s: undecodable event; stopping there", path)
                return
            yield ev


def discard(root: Path, run_id: str, slot: int | None = None) -> bool:
    """Delete a run's spool (one slot, or all); False when there was none."""
    path = run_path(root, run_id)
    if not path.is_dir():
        return False
    if slot is None:
        shutil.rmtree(path, ignore_errors=True)
        return True
    f = slot_path(root, run_id, slot)
    if not f.exists():
        return False
    with contextlib.suppress(OSError):
        f.unlink()
        f.with_suffix(".json").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.rmdir()  # only when no other slot is left
    return True
