"""The plan's `load` section: mode, rate or concurrency, stages, arrival process, trace,
duration and warm-up, checked against the hard limits.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, cast

from volley.plan.fields import as_dict, as_list, check_keys, get_choice, get_int, get_num, get_str
from volley.plan.spec import (
    MAX_BACKLOG,
    MAX_CONCURRENCY,
    MAX_DURATION_S,
    MAX_IN_FLIGHT,
    MAX_RATE,
    MAX_SEND_HORIZON_US,
    MAX_STAGES,
    MAX_TRACE_ENTRIES,
    Arrival,
    LoadSpec,
    Mode,
    PlanError,
    StageSpec,
    TraceSpec,
)
from volley.plan.text import parse_duration
from volley.shown import shown


def _stage(raw: object, i: int, key: str) -> StageSpec:
    where = f"load.stages[{i}]"
    d = as_dict(raw, where)
    check_keys(d, {"duration", "duration_s", key, "target"}, where)
    dur = parse_duration(d.get("duration", d.get("duration_s", 0)), f"{where}.duration")
    if key in d:
        target = get_num(d, key, where, 0.0)
    elif "target" in d:
        target = get_num(d, "target", where, 0.0)
    else:
        raise PlanError(f"{where}: needs '{key}'")
    if target < 0:
        raise PlanError(f"{where}.{key}: must be >= 0")
    return StageSpec(dur, target)


def load_section(raw: object) -> LoadSpec:
    d = as_dict(raw, "load")
    allowed = {f.name for f in fields(LoadSpec)} | {"duration", "warmup"}
    check_keys(d, allowed, "load")
    mode = cast(Mode, get_choice(d, "mode", "load", "open", ("open", "closed")))
    arrival = cast(
        Arrival, get_choice(d, "arrival", "load", "constant", ("constant", "poisson", "trace"))
    )
    stage_key = "rate" if mode == "open" else "concurrency"
    stages = tuple(
        _stage(s, i, stage_key) for i, s in enumerate(as_list(d.get("stages"), "load.stages"))
    )
    duration_s = parse_duration(d.get("duration", d.get("duration_s", 30.0)), "load.duration")
    raw_warmup = d.get("warmup", d.get("warmup_s", 0.0))
    warmup_auto = raw_warmup == "auto" or d.get("warmup_auto") is True
    warmup_s = 0.0 if raw_warmup == "auto" else parse_duration(raw_warmup, "load.warmup")
    trace: TraceSpec | None = None
    if d.get("trace") is not None:
        t = as_dict(d["trace"], "load.trace")
        check_keys(t, {f.name for f in fields(TraceSpec)}, "load.trace")
        times = as_list(t.get("times_ns"), "load.trace.times_ns")
        if len(times) > MAX_TRACE_ENTRIES:
            raise PlanError(f"load.trace: more than {MAX_TRACE_ENTRIES} entries")
        times_ns = _trace_times(times)
        trace = TraceSpec(
            file=get_str(t, "file", "load.trace", ""),
            format=cast(
                Any, get_choice(t, "format", "load.trace", "timestamps", ("timestamps", "gaps"))
            ),
            unit=cast(Any, get_choice(t, "unit", "load.trace", "s", ("s", "ms", "us", "ns"))),
            speed=get_num(t, "speed", "load.trace", 1.0),
            times_ns=times_ns,
        )
        if trace.speed <= 0:
            raise PlanError("load.trace.speed: must be > 0")
    spec = LoadSpec(
        mode=mode,
        arrival=arrival,
        rate=get_num(d, "rate", "load", 0.0),
        concurrency=get_int(d, "concurrency", "load", 0),
        stages=stages,
        duration_s=duration_s,
        warmup_s=warmup_s,
        warmup_auto=warmup_auto,
        max_in_flight=get_int(d, "max_in_flight", "load", 1024),
        max_backlog=get_int(d, "max_backlog", "load", 10_000),
        spin_us=get_num(d, "spin_us", "load", 0.0),
        trace=trace,
        timer=cast(Any, get_choice(d, "timer", "load", "precise", ("precise", "loop"))),
        send_horizon_us=get_num(d, "send_horizon_us", "load", 200.0),
    )
    _validate_load(spec)
    return spec


def _trace_times(raw: list[Any]) -> tuple[int, ...]:
    """Trace arrival times: integer nanoseconds, >= 0, non-decreasing."""
    out: list[int] = []
    prev = 0
    for i, x in enumerate(raw):
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise PlanError(
                f"load.trace.times_ns[{i}]: expected integer nanoseconds, got {shown(x)}"
            )
        if isinstance(x, float) and not (math.isfinite(x) and x.is_integer()):
            raise PlanError(
                f"load.trace.times_ns[{i}]: expected integer nanoseconds, got {shown(x)}"
            )
        v = int(x)
        if v < prev or v > 2**62:
            raise PlanError(
                f"load.trace.times_ns[{i}]: times must be >= 0, non-decreasing and < 2^62"
            )
        out.append(v)
        prev = v
    return tuple(out)


def _validate_load(s: LoadSpec) -> None:
    if s.mode == "open":
        if s.arrival == "trace":
            if s.trace is None:
                raise PlanError("load.trace: arrival 'trace' needs a trace file")
        elif not s.stages and s.rate <= 0:
            raise PlanError("load.rate: open-loop load needs a rate > 0 (or stages)")
        if s.rate > MAX_RATE or any(st.target > MAX_RATE for st in s.stages):
            raise PlanError(f"load.rate: above the hard limit of {MAX_RATE:g}/s")
    else:
        if not s.stages and s.concurrency <= 0:
            raise PlanError(
                "load.concurrency: closed-loop load needs a concurrency > 0 (or stages)"
            )
        if s.concurrency > MAX_CONCURRENCY or any(st.target > MAX_CONCURRENCY for st in s.stages):
            raise PlanError(f"load.concurrency: above the hard limit of {MAX_CONCURRENCY}")
    if s.arrival != "trace" and s.total_s <= 0:
        raise PlanError("load.duration: must be > 0")
    if s.total_s > MAX_DURATION_S:
        raise PlanError(f"load.duration: above the hard limit of {MAX_DURATION_S:g}s")
    if s.warmup_auto and (s.stages or s.trace is not None):
        raise PlanError("load.warmup: 'auto' needs a steady load (no stages or trace)")
    if s.warmup_s >= s.total_s > 0:
        raise PlanError("load.warmup: must be shorter than the duration")
    if len(s.stages) > MAX_STAGES:
        raise PlanError(f"load.stages: more than {MAX_STAGES} stages")
    if s.max_in_flight < 0 or s.max_in_flight > MAX_IN_FLIGHT:
        raise PlanError(f"load.max_in_flight: must be between 0 and {MAX_IN_FLIGHT}")
    if not 0 <= s.spin_us <= 100_000:
        raise PlanError("load.spin_us: must be between 0 and 100000")
    if not 0 <= s.send_horizon_us <= MAX_SEND_HORIZON_US:
        raise PlanError(
            f"load.send_horizon_us: must be between 0 and {MAX_SEND_HORIZON_US:g} "
            "(a send is never more than 1 ms early)"
        )
    if s.max_backlog < 0 or s.max_backlog > MAX_BACKLOG:
        raise PlanError(f"load.max_backlog: must be between 0 and {MAX_BACKLOG}")
