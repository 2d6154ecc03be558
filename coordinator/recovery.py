"""What a run leaves behind for recovery, and what failures look like in its results (pure).

- `run.json` (the manifest) is written into the run directory as soon as the
  agents are known: run id, agents (address, id, clock offset), schedule size.
  `volley collect` needs it when the coordinator died before writing summary.json.
- `find_outages` turns the per-window error counts into the outages a report
  shows (e.g. the target restarting mid-run), with status codes.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from coordinator.aggregate import Aggregator
from coordinator.clock import ClockEstimate
from coordinator.documents import Outage
from coordinator.summary import AgentInfo
from volley import records as rc

MANIFEST = "run.json"
#: A window is part of an outage when at least this share of its arrivals failed.
OUTAGE_ERROR_SHARE = 0.5


def write_manifest(
    run_dir: Path,
    run_id: str,
    agents: list[AgentInfo],
    start_monotonic_ns: int,
    span_s: float,
    scheduled_total: int | None,
) -> None:
    data = {
        "run_id": run_id,
        "created_unix": time.time(),
        "coordinator_host": socket.gethostname(),
        #: The agreed start instant in the coordinator's monotonic clock (host-local).
        "start_monotonic_ns": start_monotonic_ns,
        "span_s": span_s,
        "scheduled_total": scheduled_total,
        "agents": [
            {
                "index": a.index,
                "address": a.address,
                "id": a.id,
                "host": a.host,
                "workers": a.workers,
                "cores": a.cores,
                "clock": None
                if a.clock is None
                else {
                    "offset_ns": a.clock.offset_ns,
                    "uncertainty_ns": a.clock.uncertainty_ns,
                    "rtt_ns": a.clock.rtt_ns,
                    "samples": a.clock.samples,
                },
            }
            for a in agents
        ],
    }
    tmp = run_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(run_dir / MANIFEST)


class ManifestError(ValueError):
    """run.json is missing or unreadable; the message says which and why."""


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{run_dir} is not a volley run directory (no {MANIFEST})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("agents"), list):
        raise ManifestError(f"{path}: not a volley run manifest")
    if not isinstance(data.get("run_id"), str):
        raise ManifestError(f"{path}: no run id")
    return data


def agent_infos(manifest: dict[str, Any]) -> list[AgentInfo]:
    out: list[AgentInfo] = []
    for i, a in enumerate(manifest["agents"]):
        c = a.get("clock")
        out.append(
            AgentInfo(
                index=int(a.get("index", i)),
                address=str(a.get("address", "")),
                id=str(a.get("id", "")),
                host=str(a.get("host", "")),
                workers=int(a.get("workers", 0)),
                cores=int(a.get("cores", 0)),
                clock=None
                if not c
                else ClockEstimate(
                    offset_ns=int(c["offset_ns"]),
                    uncertainty_ns=int(c["uncertainty_ns"]),
                    rtt_ns=int(c["rtt_ns"]),
                    samples=int(c["samples"]),
                ),
            )
        )
    return out


def find_outages(agg: Aggregator, share: float = OUTAGE_ERROR_SHARE) -> list[Outage]:
    """Runs of consecutive windows (by intended time) where at least `share` of the
    arrivals ended in an error, with their error counts by status code."""
    window_s = agg.window_ns / 1e9
    per_window: dict[int, tuple[int, int, Counter[int]]] = {}
    for (w, _a), st in agg.windows.items():
        records, errors, codes = per_window.get(w, (0, 0, Counter()))
        codes = codes + st.error_codes
        per_window[w] = (records + st.records, errors + st.errors, codes)
    out: list[Outage] = []
    codes_of: list[Counter[int]] = []  #: status codes of out[i]
    cur: Outage | None = None
    last = None
    for w in sorted(per_window):
        records, errors, codes = per_window[w]
        bad = records > 0 and errors >= share * records
        if bad and cur is not None and last == w - 1:
            cur["end_s"] = round((w + 1) * window_s, 3)
            cur["records"] += records
            cur["errors"] += errors
            codes_of[-1].update(codes)
        elif bad:
            cur = {
                "start_s": round(w * window_s, 3),
                "end_s": round((w + 1) * window_s, 3),
                "records": records,
                "errors": errors,
                "error_codes": {},
            }
            out.append(cur)
            codes_of.append(Counter(codes))
        else:
            cur = None
        last = w
    for o, counts in zip(out, codes_of, strict=True):
        o["error_codes"] = {rc.status_name(c): n for c, n in sorted(counts.items())}
    return out
