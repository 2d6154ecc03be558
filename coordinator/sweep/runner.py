"""A sweep on disk and on the wire: steps as real runs, sweep.json, resume, the report.

Layout of one sweep (``runs/<UTC time>-sweep-<name>/``)::

    sweep.json               everything: spec (base plan, settings, targets, capacity
                             inputs, agents), every finished step, outcomes, ranking,
                             capacity plan, scaling check; rewritten after each step
    sweep.html               the report page (inline SVG latency-throughput curve)
    steps/NN-<load>/         one normal run directory per step (one target)
    steps/<target>/NN-<load>/   (several targets: one folder each)

``volley sweep --resume DIR`` reloads sweep.json and replays the search: finished
steps are reused, the rest are measured. The search itself lives in
:mod:`coordinator.sweep.search` (pure); the planning maths in :mod:`coordinator.sweep.capacity`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from coordinator.documents import Summary
from coordinator.slo import parse_slo
from coordinator.sweep.capacity import (
    CapacityInputs,
    ScaleCheck,
    plan_capacity,
    rank_configs,
    scale_check,
)
from coordinator.sweep.search import (
    Measure,
    StepResult,
    SweepOutcome,
    SweepSettings,
    completion_rate,
    judge,
    load_label,
    search,
    step_plan,
    superseded,
)
from volley.plan import Plan, PlanError, parse_address, plan_from_dict
from volley.security import ClientSecurity

log = logging.getLogger("volley.sweep")

SWEEP_FILE = "sweep.json"
REPORT_FILE = "sweep.html"
FORMAT = "volley-sweep/1"
#: The scaling check starts at this share of (replicas x the single-replica maximum).
SCALE_START = 0.8


class SweepInterrupted(Exception):
    """The user stopped the sweep; the step in progress was not recorded."""


@dataclass(frozen=True)
class SweepTarget:
    """One endpoint (or model configuration) to sweep."""

    name: str
    address: str
    #: Model name on this endpoint (default: the base plan's).
    model: str = ""
    #: Replicas (or model instances) behind this endpoint: max per replica = max / this.
    replicas: int = 1
    cost_per_hour: float | None = None
    gpus_per_replica: float | None = None
    cpus_per_replica: float | None = None
    #: Set on a scaling check: the name of the single-replica target it checks.
    scale_of: str = ""
    #: First load of this target's search (default: the sweep's --start).
    start: float | None = None

    def validate(self) -> None:
        if not self.name or not all(c.isalnum() or c in "._-" for c in self.name):
            raise PlanError(
                f"target name {self.name!r}: use letters, digits, '.', '_' and '-' only"
            )
        parse_address(self.address, f"target {self.name}")
        if not 1 <= self.replicas <= 10_000:
            raise PlanError(f"target {self.name}: replicas must be between 1 and 10000")
        for what, v in (
            ("cost_per_hour", self.cost_per_hour),
            ("gpus_per_replica", self.gpus_per_replica),
            ("cpus_per_replica", self.cpus_per_replica),
            ("start", self.start),
        ):
            if v is not None and (not math.isfinite(v) or v < 0):
                raise PlanError(f"target {self.name}: {what} must be >= 0, got {v:g}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "target") -> SweepTarget:
        if not isinstance(data, dict):
            raise PlanError(f"{where}: expected a mapping")
        allowed = set(cls.__dataclass_fields__) | {"target"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise PlanError(f"{where}: unknown key(s) {', '.join(unknown)}")
        d = dict(data)
        if "target" in d:
            d["address"] = d.pop("target")
        if not isinstance(d.get("address"), str):
            raise PlanError(f"{where}: needs 'target: HOST:PORT'")
        d.setdefault("name", d["address"].replace(":", "_").replace("[", "").replace("]", ""))
        for key in ("cost_per_hour", "gpus_per_replica", "cpus_per_replica", "start"):
            v = d.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise PlanError(f"{where}.{key}: expected a number, got {v!r}")
        for key in ("replicas",):
            v = d.get(key, 1)
            if isinstance(v, bool) or not isinstance(v, int):
                raise PlanError(f"{where}.{key}: expected an integer, got {v!r}")
        for key in ("name", "model", "scale_of"):
            v = d.get(key, "")
            if not isinstance(v, str):
                raise PlanError(f"{where}.{key}: expected a string, got {v!r}")
        t = cls(**d)
        t.validate()
        return t


@dataclass
class SweepSpec:
    """Everything that defines a sweep (stored in sweep.json; enough to resume it)."""

    name: str
    plan: Plan
    settings: SweepSettings
    targets: list[SweepTarget]
    capacity: CapacityInputs | None = None
    #: Agent addresses; empty: ``local_agents`` agents spawned on this machine.
    agents: list[str] = field(default_factory=list)
    local_agents: int = 1
    workers: int = 0
    start_lead_s: float = 1.0

    def validate(self) -> None:
        self.settings.validate()
        if not self.targets:
            raise PlanError("a sweep needs at least one --target")
        names = [t.name for t in self.targets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise PlanError(f"target name(s) given twice: {', '.join(dup)}")
        for t in self.targets:
            t.validate()
            if t.scale_of and t.scale_of not in names:
                raise PlanError(f"target {t.name}: scale_of {t.scale_of!r} is no target")
            if t.scale_of and t.replicas < 2:
                raise PlanError(f"target {t.name}: a scaling check needs replicas >= 2")
        if self.settings.mode == "rate" and self.plan.load.arrival == "trace":
            raise PlanError("a rate sweep needs constant or poisson arrivals, not a trace")
        slos = [parse_slo(s) for s in self.plan.slos]
        if self.settings.mode == "concurrency" and not any(
            s.metric.startswith(("latency_ms.", "service_time_ms.")) for s in slos
        ):
            raise PlanError(
                "a concurrency sweep needs a latency SLO to fail on (e.g. --slo 'p99<50ms')"
            )
        if self.capacity is not None:
            self.capacity.validate()
        if not self.agents and self.local_agents < 1:
            raise PlanError("--local-agents must be >= 1 when no --agent is given")
        if self.start_lead_s < 0.2:
            raise PlanError("--start-lead must be at least 0.2 s")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "plan": self.plan.to_dict(),
            "settings": self.settings.to_dict(),
            "targets": [t.to_dict() for t in self.targets],
            "capacity": self.capacity.to_dict() if self.capacity else None,
            "agents": list(self.agents),
            "local_agents": self.local_agents,
            "workers": self.workers,
            "start_lead_s": self.start_lead_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        try:
            spec = cls(
                name=str(data["name"]),
                plan=plan_from_dict(data["plan"]),
                settings=SweepSettings.from_dict(data["settings"]),
                targets=[
                    SweepTarget.from_dict(t, f"targets[{i}]") for i, t in enumerate(data["targets"])
                ],
                capacity=(
                    CapacityInputs.from_dict(data["capacity"]) if data.get("capacity") else None
                ),
                agents=[str(a) for a in data.get("agents") or []],
                local_agents=int(data.get("local_agents", 1)),
                workers=int(data.get("workers", 0)),
                start_lead_s=float(data.get("start_lead_s", 1.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, PlanError):
                raise
            raise PlanError(f"sweep spec: missing or bad field {exc}") from None
        spec.validate()
        return spec

    def target(self, name: str) -> SweepTarget:
        return next(t for t in self.targets if t.name == name)


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


# ---------------------------------------------------------------- the real measurement


def steps_dir(sweep_dir: Path, spec: SweepSpec, target: SweepTarget) -> Path:
    base = sweep_dir / "steps"
    return base / target.name if len(spec.targets) > 1 else base


def _move_aside(path: Path, suffix: str) -> None:
    n = 1
    dest = path.with_name(f"{path.name}.{suffix}")
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.{suffix}{n}")
    path.rename(dest)


def read_timeseries(run_dir: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        rows: list[dict[str, Any]] = pq.read_table(run_dir / "timeseries.parquet").to_pylist()
    except (OSError, ValueError):
        return []
    return rows


def _numbers(block: Mapping[str, object]) -> dict[str, float]:
    """A copy of a summary's figures block (its numbers) for sweep.json."""
    return {k: v for k, v in block.items() if isinstance(v, int | float)}


def step_from_summary(
    index: int,
    load: float,
    plan: Plan,
    settings: SweepSettings,
    summary: Summary,
    rows: Sequence[dict[str, Any]],
    run_dir: str,
) -> StepResult:
    """Judge one finished run (pure, given its summary and timeseries rows)."""
    span = plan.load.total_s
    tp = completion_rate(rows, plan.load.warmup_s, span)
    if tp is None or plan.load.mode == "closed":
        tp = float(summary.get("throughput_rps") or 0.0)
    passed, kind, reasons = judge(
        settings.mode, summary, tp, settings.min_throughput_ratio, plan.validity.max_error_rate
    )
    verdict = summary.get("verdict") or {}
    stream = summary.get("stream")
    tokens_s = stream.get("tokens_per_s") if stream is not None else None
    per_req = stream.get("tokens_per_request_mean") if stream is not None else None
    return StepResult(
        index=index,
        load=load,
        passed=passed,
        kind=kind,
        reasons=reasons,
        offered_rps=float(summary.get("offered_rps") or 0.0),
        throughput_rps=round(tp, 3),
        latency_ms=_numbers(summary.get("latency_ms") or {}),
        service_time_ms=_numbers(summary.get("service_time_ms") or {}),
        error_rate=float(summary.get("error_rate") or 0.0),
        valid=bool(verdict.get("valid", False)),
        slo=list(verdict.get("slo") or []),
        duration_s=float(summary.get("duration_s") or 0.0),
        run_dir=run_dir,
        tokens_per_s=round(float(tokens_s), 3) if tokens_s is not None else None,
        tokens_per_request=round(float(per_req), 4) if per_req is not None else None,
    )


def real_measure(
    spec: SweepSpec,
    target: SweepTarget,
    settings: SweepSettings,
    sweep_dir: Path,
    addresses: list[str],
    stop_event: asyncio.Event | None,
    security: ClientSecurity | None = None,
) -> Measure:
    """A Measure that runs each step as a normal `volley run` (coordinator.run.execute);
    `security`: how to reach the agents (local agents' token)."""
    from coordinator.run import RunOptions, execute

    out = steps_dir(sweep_dir, spec, target)

    async def measure(index: int, load: float, longer: int = 0) -> StepResult:
        if stop_event is not None and stop_event.is_set():
            raise SweepInterrupted()
        label = f"{index + 1:02d}-{load_label(settings.mode, load)}"
        step_settings = settings
        if longer:  # an inconclusive step, measured again for longer
            step_s = min(settings.step_duration_s * 2**longer, 3600.0)
            step_settings = replace(settings, step_duration_s=step_s)
        plan = step_plan(
            spec.plan,
            step_settings,
            load,
            target=target.address,
            model=target.model,
            name=f"{target.name}-{load_label(settings.mode, load)}",
        )
        out.mkdir(parents=True, exist_ok=True)
        opts = RunOptions(
            out_dir=out,
            start_lead_s=spec.start_lead_s,
            workers=spec.workers,
            stop_event=stop_event,
            security=security,
        )
        result = await execute(plan, addresses, opts)
        final = out / label
        if stop_event is not None and stop_event.is_set():
            if final.exists():
                _move_aside(final, "orphan")
            result.run_dir.rename(out / f"{label}.interrupted")
            raise SweepInterrupted()
        if final.exists():  # left by an attempt that never reached sweep.json
            _move_aside(final, "orphan")
        result.run_dir.rename(final)
        rel = str(final.relative_to(sweep_dir))
        return step_from_summary(
            index, load, result.plan, settings, result.summary, read_timeseries(final), rel
        )

    return measure


# ---------------------------------------------------------------- the sweep


MeasureFactory = Callable[[SweepTarget, SweepSettings], Measure]


def target_settings(
    spec: SweepSpec, target: SweepTarget, results: dict[str, TargetResult]
) -> SweepSettings | None:
    """The search settings of one target; None when a scaling check has nothing to scale."""
    s = spec.settings
    if target.start is not None:
        return replace(s, start=target.start)
    if target.scale_of:
        base = results.get(target.scale_of)
        m = max_rps(base.outcome if base else None)
        if m is None:
            return None
        if s.mode == "rate":
            start = m * target.replicas * SCALE_START
            return replace(s, start=round(start, 1), max_load=0.0)
        assert base is not None and base.outcome is not None
        start_c = max(1.0, math.floor((base.outcome.max_load or 1) * target.replicas * SCALE_START))
        return replace(s, start=start_c, max_load=0.0)
    return s


async def run_sweep(
    spec: SweepSpec,
    sweep_dir: Path,
    measure_factory: MeasureFactory,
    previous: dict[str, list[StepResult]] | None = None,
    created: str = "",
    on_step: Callable[[SweepTarget, StepResult, bool], None] | None = None,
) -> dict[str, Any]:
    """Sweep every target in turn, persisting sweep.json (and the report) after each
    step. Returns the final document. SweepInterrupted propagates after the file is
    saved with state ``interrupted``."""
    from coordinator.sweep.html import render_report

    previous = previous or {}
    created = created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results: dict[str, TargetResult] = {}

    def save(state: str, error: str = "") -> dict[str, Any]:
        doc = sweep_document(spec, results, state, created, error)
        write_atomic(sweep_dir / SWEEP_FILE, json.dumps(doc, indent=2, default=str) + "\n")
        write_atomic(sweep_dir / REPORT_FILE, render_report(doc))
        return doc

    sweep_dir.mkdir(parents=True, exist_ok=True)
    save("running")
    try:
        for target in spec.targets:
            res = results[target.name] = TargetResult()
            settings = target_settings(spec, target, results)
            if settings is None:
                res.outcome = None
                log.warning("scaling check %s skipped: no base maximum", target.name)
                continue
            settings.validate()
            res.start = settings.start

            def persist(step: StepResult, reused: bool, t: SweepTarget = target) -> None:
                results[t.name].steps.append(step)
                save("running")
                if on_step is not None:
                    on_step(t, step, reused)

            _, outcome = await search(
                settings,
                measure_factory(target, settings),
                previous.get(target.name, ()),
                persist,
            )
            res.outcome = outcome
            save("running")
    except SweepInterrupted:
        save("interrupted")
        raise
    except Exception as exc:
        save("failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    return save("done")
