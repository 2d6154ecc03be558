"""Triton's own per-model statistics over a run: snapshot before, snapshot after, delta.

Fetched over the plan's protocol (coordinator/probe.py). The counters are the
server's, for every client of the model: on a shared server they include traffic that
is not ours (`requests` says how many inferences the server counted). A server without
the statistics extension yields an empty result, never an error.
"""

from __future__ import annotations

from typing import Any

from coordinator.probe import ProbeError, make_probe
from volley.plan import Plan, PlanError, plan_models

Snapshot = dict[tuple[str, str], dict[str, dict[str, int]]]

#: Triton stat name -> summary key (mean ms per inference over the run)
STAGES = {
    "queue": "queue_ms",
    "compute_input": "compute_input_ms",
    "compute_infer": "compute_infer_ms",
    "compute_output": "compute_output_ms",
    "success": "request_ms",
}


async def snapshot(plan: Plan, timeout: float = 5.0) -> Snapshot:
    """Cumulative statistics of every model of the plan ({} if unavailable)."""
    out: Snapshot = {}
    try:
        probe = make_probe(plan, timeout)
        await probe.open()
    except (ProbeError, PlanError, OSError):
        return out
    try:
        for m in plan_models(plan):
            try:
                out[(m.name, m.version)] = await probe.statistics(m.name, m.version)
            except (ProbeError, OSError):
                out[(m.name, m.version)] = {}
    finally:
        await probe.close()
    return out


def _delta(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]], key: str) -> tuple[int, int]:
    x, y = a.get(key, {}), b.get(key, {})
    return y.get("count", 0) - x.get("count", 0), y.get("ns", 0) - x.get("ns", 0)


def server_block(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """summary.json `server`: per-model mean stage times, and the mix over all models."""
    models: list[dict[str, Any]] = []
    totals: dict[str, list[int]] = {k: [0, 0] for k in STAGES}
    for (name, version), b in after.items():
        a = before.get((name, version), {})
        if not b:
            continue
        row: dict[str, Any] = {"name": name, "version": version}
        ok, _ = _delta(a, b, "success")
        failed, _ = _delta(a, b, "fail")
        row["requests"] = ok
        row["failed"] = failed
        for stat, key in STAGES.items():
            n, ns = _delta(a, b, stat)
            row[key] = round(ns / n / 1e6, 4) if n > 0 else None
            totals[stat][0] += n
            totals[stat][1] += ns
        models.append(row)
    if not models:
        return {}
    out: dict[str, Any] = {
        key: (round(totals[stat][1] / totals[stat][0] / 1e6, 4) if totals[stat][0] else None)
        for stat, key in STAGES.items()
    }
    out["requests"] = sum(m["requests"] for m in models)
    out["models"] = models
    out["source"] = "triton statistics extension (all clients of these models)"
    return out
