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
:mod:`coordinator.sweep.search` (pure); the planning maths in
:mod:`coordinator.sweep.capacity`; the spec in :mod:`coordinator.sweep.spec`; sweep.json
and its analysis in :mod:`coordinator.sweep.document`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from coordinator.documents import Summary
from coordinator.sweep.conns import FailureKind, failure_kind
from coordinator.sweep.document import (
    SWEEP_FILE,
    TargetResult,
    load_sweep,
    max_rps,
    sweep_document,
    tokens_per_request,
    write_atomic,
)
from coordinator.sweep.search import (
    Measure,
    StepResult,
    SweepSettings,
    completion_rate,
    judge_step,
    load_label,
    search,
    step_plan,
)
from coordinator.sweep.spec import SweepSpec, SweepTarget
from volley.plan import Plan
from volley.security import ClientSecurity

__all__ = [
    "REPORT_FILE",
    "SCALE_START",
    "SWEEP_FILE",
    "MeasureFactory",
    "SweepInterrupted",
    "SweepSpec",
    "SweepTarget",
    "TargetResult",
    "load_sweep",
    "read_timeseries",
    "real_measure",
    "run_sweep",
    "step_from_summary",
    "steps_dir",
    "target_settings",
    "tokens_per_request",
]


log = logging.getLogger("volley.sweep")
REPORT_FILE = "sweep.html"
#: The scaling check starts at this share of (replicas x the single-replica maximum).
SCALE_START = 0.8


class SweepInterrupted(Exception):
    """The user stopped the sweep; the step in progress was not recorded."""


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
    passed, kind, reasons, server_failures = judge_step(
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
        connections=summary.get("connections"),
        failed_first=failure_kind(summary, passed, server_failures)
        if settings.mode == "connections"
        else FailureKind.NONE,
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
