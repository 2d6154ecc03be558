"""sweep.json: written atomically after each step, read back to resume, and its analysis
(each target's outcome, the ranking, the capacity plan, the scaling check).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from coordinator.sweep.capacity import (
    ScaleCheck,
    plan_capacity,
    rank_configs,
    scale_check,
)
from coordinator.sweep.search import (
    StepResult,
    SweepOutcome,
    superseded,
)
from coordinator.sweep.spec import SweepSpec
from volley.plan import PlanError

SWEEP_FILE = "sweep.json"
FORMAT = "volley-sweep/1"


@dataclass
class TargetResult:
    steps: list[StepResult] = field(default_factory=list)
    outcome: SweepOutcome | None = None
    #: The start actually used (the scaling check computes its own).
    start: float | None = None


# ---------------------------------------------------------------- sweep.json


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_sweep(sweep_dir: Path) -> tuple[SweepSpec, dict[str, list[StepResult]], dict[str, Any]]:
    """Read a sweep directory: its spec and the finished steps of each target."""
    path = sweep_dir / SWEEP_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"{sweep_dir} is not a sweep directory (no {SWEEP_FILE})") from None
    except UnicodeDecodeError:
        raise PlanError(f"{path}: not UTF-8 text (not a volley sweep file)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"{path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PlanError(f"{path}: not a volley sweep file (format {FORMAT} expected)")
    spec = SweepSpec.from_dict(doc.get("spec") or {})
    steps: dict[str, list[StepResult]] = {}
    for t in doc.get("targets") or []:
        try:
            steps[str(t["name"])] = [StepResult.from_dict(s) for s in t.get("steps") or []]
        except (KeyError, TypeError) as exc:
            raise PlanError(f"{path}: bad step record ({exc})") from None
    return spec, steps, doc


def max_rps(outcome: SweepOutcome | None) -> float | None:
    """The maximum sustainable request rate a search found (rate mode: the offered rate
    of the highest passing step; concurrency mode: that step's throughput)."""
    if outcome is None or outcome.max_load is None:
        return None
    if outcome.mode == "rate":
        return outcome.max_load
    return outcome.max_throughput_rps


def tokens_per_request(result: TargetResult | None) -> float | None:
    """A streamed model's output tokens per request at the highest passing step (its mean
    over successful requests, else its tokens/s over its throughput); None for unary
    models or when nothing passed."""
    if result is None or result.outcome is None or result.outcome.max_step is None:
        return None
    for s in reversed(result.steps):
        if s.index == result.outcome.max_step:
            if s.tokens_per_request is not None:
                return s.tokens_per_request
            if s.tokens_per_s is None or s.throughput_rps <= 0:
                return None
            return s.tokens_per_s / s.throughput_rps
    return None


def analyse(spec: SweepSpec, results: dict[str, TargetResult]) -> dict[str, Any]:
    """Ranking, scaling checks and capacity plans from the targets' outcomes (pure)."""
    out: dict[str, Any] = {"ranking": [], "scaling": {}, "capacity": {}}
    per_replica: dict[str, float | None] = {}
    for t in spec.targets:
        r = results.get(t.name)
        m = max_rps(r.outcome if r else None)
        per_replica[t.name] = m / t.replicas if m is not None else None
    cap = spec.capacity
    ranked = [t for t in spec.targets if not t.scale_of]
    out["ranking"] = [
        row.to_dict()
        for row in rank_configs(
            [
                {
                    "name": t.name,
                    "max_rps": per_replica[t.name],
                    "cost_per_hour": t.cost_per_hour
                    if t.cost_per_hour is not None
                    else (cap.cost_per_hour if cap else None),
                    "limited_by": (
                        results[t.name].outcome.limited_by  # type: ignore[union-attr]
                        if t.name in results and results[t.name].outcome
                        else ""
                    ),
                }
                for t in ranked
            ]
        )
    ]
    checks: dict[str, ScaleCheck] = {}
    for t in spec.targets:
        if not t.scale_of:
            continue
        base = per_replica.get(t.scale_of)
        r = results.get(t.name)
        measured = max_rps(r.outcome if r else None)
        if base and measured is not None and r is not None and r.outcome is not None:
            sc = scale_check(
                base, measured, t.replicas, lower_bound=r.outcome.limited_by == "generator"
            )
            checks[t.scale_of] = sc
            out["scaling"][t.name] = {"of": t.scale_of, **sc.to_dict()}
        else:
            out["scaling"][t.name] = {
                "of": t.scale_of,
                "replicas": t.replicas,
                "error": "no maximum measured to compare",
            }
    if cap is not None:
        for t in ranked:
            m = per_replica[t.name]
            if m is None:
                out["capacity"][t.name] = {"error": "no step passed: nothing to plan from"}
                continue
            inputs = replace(
                cap,
                cost_per_hour=t.cost_per_hour if t.cost_per_hour is not None else cap.cost_per_hour,
                gpus_per_replica=(
                    t.gpus_per_replica if t.gpus_per_replica is not None else cap.gpus_per_replica
                ),
                cpus_per_replica=(
                    t.cpus_per_replica if t.cpus_per_replica is not None else cap.cpus_per_replica
                ),
            )
            cp = plan_capacity(
                m,
                inputs,
                checks.get(t.name),
                spec.plan.slos,
                measured_on=f"{t.name}",
                confidence=spec.plan.validity.confidence,
                tokens_per_request=tokens_per_request(results.get(t.name)),
            )
            res = results[t.name].outcome
            if res is not None and (
                res.limited_by in ("generator", "max-load")
                or (res.limited_by == "max-steps" and res.fail_load is None)
            ):
                cp.assumptions.insert(
                    0,
                    "the per-replica maximum is a LOWER BOUND ("
                    + (
                        "volley was the bottleneck"
                        if res.limited_by == "generator"
                        else "no step failed"
                    )
                    + "): this plan over-provisions",
                )
            if t.replicas > 1:
                cp.assumptions.insert(
                    0, f"the endpoint measured holds {t.replicas} replicas: max / {t.replicas}"
                )
            out["capacity"][t.name] = cp.to_dict()
    return out


def sweep_document(
    spec: SweepSpec,
    results: dict[str, TargetResult],
    state: str,
    created: str,
    error: str = "",
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": FORMAT,
        "name": spec.name,
        "created": created,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "state": state,
        "error": error,
        "spec": spec.to_dict(),
        "targets": [],
    }
    for t in spec.targets:
        r = results.get(t.name) or TargetResult()
        redone = superseded(r.steps)
        doc["targets"].append(
            {
                "name": t.name,
                "address": t.address,
                "model": t.model or spec.plan.model,
                "replicas": t.replicas,
                "scale_of": t.scale_of,
                "start": r.start,
                "steps": [{**s.to_dict(), "superseded": s.index in redone} for s in r.steps],
                "outcome": r.outcome.to_dict() if r.outcome else None,
                "max_rps": max_rps(r.outcome),
            }
        )
    doc.update(analyse(spec, results))
    return doc
