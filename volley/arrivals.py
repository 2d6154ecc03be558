"""From a plan to its one global schedule (pure: the plan carries everything)."""

from __future__ import annotations

import numpy as np

from volley.plan import Plan
from volley.schedule import (
    ArrivalSchedule,
    ConcurrencyProfile,
    RateProfile,
    Stage,
    TraceSchedule,
)


def rate_profile(plan: Plan) -> RateProfile:
    load = plan.load
    if load.stages:
        return RateProfile.from_stages([Stage(s.duration_s, s.target) for s in load.stages])
    return RateProfile.constant(load.rate, load.duration_s)


def global_schedule(plan: Plan) -> ArrivalSchedule | TraceSchedule:
    """The global open-loop arrival schedule every agent regenerates from the seed."""
    load = plan.load
    if load.arrival == "trace":
        assert load.trace is not None
        return TraceSchedule(np.asarray(load.trace.times_ns, dtype=np.int64))
    return ArrivalSchedule(rate_profile(plan), load.arrival, plan.seed)


def concurrency_profile(plan: Plan) -> ConcurrencyProfile:
    load = plan.load
    if load.stages:
        return ConcurrencyProfile.from_stages([Stage(s.duration_s, s.target) for s in load.stages])
    return ConcurrencyProfile.from_stages([Stage(load.duration_s, float(load.concurrency))])


def schedule_span_s(plan: Plan) -> float:
    """Seconds from the start to the end of the load (trace: to its last arrival)."""
    load = plan.load
    if load.arrival == "trace" and load.mode == "open":
        assert load.trace is not None
        return (max(load.trace.times_ns) / 1e9) if load.trace.times_ns else 0.0
    return load.total_s
