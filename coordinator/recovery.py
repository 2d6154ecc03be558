"""What a run leaves behind for recovery, and what failures look like in its results (pure).

- `run.json` (the manifest) is written into the run directory as soon as the
  agents are known: run id, agents (address, id, clock offset), schedule size.
  `volley collect` needs it when the coordinator died before writing summary.json.
- `find_outages` turns the per-window error counts into the outages a report
  shows (e.g. the target restarting mid-run), with status codes.
- `count_schedule` regenerates the one global schedule from the plan and counts its
  arrivals (measured period, warm-up, per agent slice, per model);
  `add_schedule_counts` writes them into a summary beside the records: `scheduled` is
  the schedule's count, `recorded` the records, `no_record` the difference (arrivals
  lost with an agent, or never sent because the run ended early).
- `recovered_measured_s`: the measured period of a run rebuilt from records.
- Local agents (`--local-agents`) spool inside the run directory; run.json records
  where (`agents[].spool_dir`), so `volley collect` reads the files once they are gone.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.aggregate import Aggregator
from coordinator.clock import ClockEstimate
from coordinator.documents import Outage, RequestCounts, Summary
from coordinator.summary import AgentInfo
from volley import records as rc
from volley.arrivals import global_schedule, schedule_span_s
from volley.mix import ModelMix
from volley.plan import Plan, plan_models
from volley.schedule import owner_of, weighted_pattern

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
    spool_dirs: Mapping[str, Path] | None = None,
) -> None:
    """spool_dirs: address -> spool folder of the agents that spool on this host for
    the run (`--local-agents`), recorded relative to the run directory when inside it."""
    spools = spool_dirs or {}
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
                **(
                    {"spool_dir": _relative(spools[a.address], run_dir)}
                    if a.address in spools
                    else {}
                ),
            }
            for a in agents
        ],
    }
    tmp = run_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(run_dir / MANIFEST)


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path.resolve())


def spool_dirs(manifest: Mapping[str, Any], run_dir: Path) -> dict[int, Path]:
    """Agent index -> the spool folder run.json names for it (local agents)."""
    out: dict[int, Path] = {}
    for i, a in enumerate(manifest.get("agents") or []):
        d = a.get("spool_dir") if isinstance(a, dict) else None
        if isinstance(d, str) and d:
            out[int(a.get("index", i))] = run_dir / d  # an absolute d stays absolute
    return out


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


# ---------------------------------------------------------------- the schedule's counts
@dataclass
class ScheduleCounts:
    """The one global schedule counted from the plan (open loop)."""

    total: int = 0
    measured: int = 0  #: intended at or after the end of the warm-up
    warmup: int = 0
    agent_measured: list[int] = field(default_factory=list)  #: per agent slot
    agent_warmup: list[int] = field(default_factory=list)
    model_measured: list[int] = field(default_factory=list)  #: per model of the plan
    #: intended time of the arrival after `after_index` (None: there is none)
    next_ns: int | None = None


def count_schedule(plan: Plan, after_index: int | None = None) -> ScheduleCounts | None:
    """Regenerate the plan's global schedule and count it (None for a closed loop, which
    has no schedule). One pass in bounded memory; `after_index`: also find the intended
    time of the arrival that follows that one."""
    if plan.load.mode != "open" or plan.sequence is not None:
        return None  # sequences: the schedule is of starts (summary.sequences counts them)
    weights = plan.agent_weights
    pattern = weighted_pattern(weights)
    models = plan_models(plan)
    mix = ModelMix([m.weight for m in models], plan.seed)
    warmup_ns = int(plan.load.warmup_s * 1e9)
    c = ScheduleCounts(
        agent_measured=[0] * len(weights),
        agent_warmup=[0] * len(weights),
        model_measured=[0] * len(models),
    )
    want = None if after_index is None else after_index + 1
    for idx, t_ns in global_schedule(plan).chunks():
        n = int(idx.size)
        if n == 0:
            continue
        if want is not None and c.next_ns is None and idx[0] <= want <= idx[-1]:
            c.next_ns = int(t_ns[want - int(idx[0])])
        measured = t_ns >= warmup_ns
        owners = owner_of(idx, pattern)
        per_agent = np.bincount(owners[measured], minlength=len(weights))
        per_agent_w = np.bincount(owners[~measured], minlength=len(weights))
        per_model = np.bincount(mix.pick(idx[measured]), minlength=len(models))
        m = int(measured.sum())
        c.total += n
        c.measured += m
        c.warmup += n - m
        for k in range(len(weights)):
            c.agent_measured[k] += int(per_agent[k])
            c.agent_warmup[k] += int(per_agent_w[k])
        for k in range(len(models)):
            c.model_measured[k] += int(per_model[k])
    return c


def _recorded(block: RequestCounts, scheduled: int) -> None:
    block["recorded"] = block["scheduled"]
    block["scheduled"] = scheduled
    block["no_record"] = scheduled - block["recorded"]


def add_schedule_counts(summary: Summary, counts: ScheduleCounts | None) -> None:
    """Put the schedule's counts beside the records (build_summary counts records only):
    `requests`, `warmup_requests`, `models[].requests` and `agents[]` get `scheduled`
    (the schedule's count), `recorded` and `no_record` (scheduled - recorded); the top
    level also `schedule_total` (warm-up included). A closed loop (no schedule) is left
    as it is."""
    if counts is None:
        return
    _recorded(summary["requests"], counts.measured)
    summary["requests"]["schedule_total"] = counts.total
    _recorded(summary["warmup_requests"], counts.warmup)
    for row, n in zip(summary["models"], counts.model_measured, strict=False):
        _recorded(row["requests"], n)
    for i, arow in enumerate(summary["agents"]):
        if i < len(counts.agent_measured):
            arow["recorded"] = arow["scheduled"]
            arow["scheduled"] = counts.agent_measured[i]
            arow["no_record"] = arow["scheduled"] - arow["recorded"]


def recovered_measured_s(
    plan: Plan,
    last_index: int | None,
    next_ns: int | None,
    last_done_ns: int | None,
    complete: bool,
) -> float:
    """Seconds of the measured period of a run rebuilt from its records.

    A normal run's measured period runs, on the intended-time axis, from the end of the
    warm-up to the end of the schedule (`schedule_span_s - warmup_s`). A rebuilt run's
    is the same interval cut where its records stop: open loop, up to the intended time
    of the first scheduled arrival after the last one recorded (the end of the schedule
    when the records reach it); closed loop (no schedule), up to the last response of
    the measured records, or the planned end when every agent finished. Offered and
    achieved rates are divided by it."""
    warmup_s = plan.load.warmup_s
    span_s = schedule_span_s(plan)
    if plan.load.mode == "open":
        if last_index is None:
            return 0.0
        end_s = span_s if next_ns is None else min(next_ns / 1e9, span_s)
    elif complete:
        end_s = span_s
    else:
        end_s = min((last_done_ns or 0) / 1e9, span_s)
    return max(end_s - warmup_s, 0.0)
