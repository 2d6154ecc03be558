"""The one global arrival schedule and its split into disjoint slices.

Everything here is pure and deterministic: no I/O, no clocks, no sleeping. All times
are ``int64`` nanoseconds from the run start (t = 0).

Open loop
---------
A :class:`RateProfile` gives the arrival rate r(t) (per second) as a piecewise-linear
function built from k6-style :class:`Stage` s, and its integral Λ(t) (expected arrivals
by t). An :class:`ArrivalSchedule` maps a sequence of "unit-rate" points u_i through
the inverse Λ⁻¹:

* ``process="constant"``: u_i = i (i = 0, 1, …), so the first arrival is at t = 0 and a
  constant rate R for D seconds gives exactly R·D evenly spaced arrivals;
* ``process="poisson"``: u_i = cumulative sum of Exp(1) draws (a non-homogeneous
  Poisson process by time change), drawn from ``Generator(PCG64(seed))`` in FIXED
  blocks of 65,536, so the result never depends on how callers chunk.

Arrivals stop at the profile's end. A :class:`TraceSchedule` replays given times.

Slicing (invariant 1: one schedule, disjoint slices, exact union)
-----------------------------------------------------------------
Every arrival carries its global index i. ``weighted_pattern(weights)`` is a smooth
weighted round-robin sequence (nginx style) of length ``P = sum(weights)``; arrival i
belongs to owner ``pattern[i % P]``. Within owner k's slice, the *local ordinal* of
arrival i is ``(i // P) * weights[k] + (number of slots of k in pattern before i % P)``
-- computed arithmetically from i, so any chunk of the global schedule can be sliced
without knowing what came before.

Nested split (agents, then workers): an agent's slice is split among its workers by
applying the very same functions to the *agent-local ordinals*. Example with agent
weights ``[1, 3, 2]`` (pattern ``[1, 2, 0, 1, 2, 1]``): agent 1 owns global indices
0, 3, 5, 6, 9, 11, 12, … whose agent-local ordinals are 0, 1, 2, 3, 4, 5, 6, …; with
worker weights ``[1, 1]`` (pattern ``[0, 1]``) worker 0 of agent 1 gets local ordinals
0, 2, 4, 6, … = global 0, 5, 9, 12, … and worker 1 gets global 3, 6, 11, …. The workers'
slices partition the agent's slice, which partitions the global schedule.

Closed loop
-----------
A :class:`ConcurrencyProfile` gives the number of virtual users over time (ramps
rounded to whole users); :func:`split_count` divides a level among agents/workers by
the largest-remainder method.

Modules: `profiles` (stages, rate and concurrency profiles), `schedules` (arrival and
trace schedules, trace parsing), `slicing` (patterns, owners, slices, split counts).
"""

from __future__ import annotations

from volley.schedule.profiles import ConcurrencyProfile, RateProfile, Stage
from volley.schedule.schedules import (
    BLOCK,
    MAX_TRACE_ENTRIES,
    ArrivalSchedule,
    Schedule,
    TraceSchedule,
    parse_trace,
)
from volley.schedule.slicing import (
    local_ordinal,
    owner_of,
    slice_for,
    split_count,
    weighted_pattern,
    worker_slice,
)

__all__ = [
    "BLOCK",
    "MAX_TRACE_ENTRIES",
    "ArrivalSchedule",
    "ConcurrencyProfile",
    "RateProfile",
    "Schedule",
    "Stage",
    "TraceSchedule",
    "local_ordinal",
    "owner_of",
    "parse_trace",
    "slice_for",
    "split_count",
    "weighted_pattern",
    "worker_slice",
]
