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
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from numbers import Integral
from typing import Final, Literal, Protocol

import numpy as np
import numpy.typing as npt

from volley.shown import shown

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

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

#: Fixed block size of Exp(1) draws (and of internal generation); never caller-chosen.
BLOCK: Final = 65536
#: Largest trace accepted by :func:`parse_trace`.
MAX_TRACE_ENTRIES: Final = 20_000_000
#: Largest ``sum(weights)`` accepted for a round-robin pattern.
MAX_PATTERN: Final = 1_000_000
_NS_PER_S: Final = 1_000_000_000
_INT64_MAX: Final = (1 << 63) - 1


# =============================================================================== stages
@dataclass(frozen=True)
class Stage:
    """k6-style stage: over ``duration_s`` the rate (or concurrency) ramps linearly from
    the previous stage's end value to ``target``; ``duration_s == 0`` is an instant step."""

    duration_s: float
    target: float


def _check_nonneg(value: float, what: str) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {shown(value)}")
    return v


class _Piecewise:
    """Piecewise-linear function of time from stages (shared by rate and concurrency).

    Segments of zero length (instant steps) are dropped; boundaries are int64 ns.
    """

    def __init__(self, stages: Sequence[Stage], start: float | None, what: str) -> None:
        stages = list(stages)
        if not stages:
            raise ValueError(f"a {what} profile needs at least one stage")
        for n, st in enumerate(stages, 1):
            _check_nonneg(st.duration_s, f"stage {n} duration_s")
            _check_nonneg(st.target, f"stage {n} target {what}")
        cur = _check_nonneg(stages[0].target if start is None else start, f"start {what}")
        bounds = [0]
        v0: list[float] = []
        v1: list[float] = []
        acc_s = 0.0
        for st in stages:
            acc_s += float(st.duration_s)
            end_ns = round(acc_s * _NS_PER_S)
            if end_ns > bounds[-1]:
                bounds.append(end_ns)
                v0.append(cur)
                v1.append(float(st.target))
            cur = float(st.target)
        if len(bounds) == 1:
            raise ValueError(f"the {what} profile's total duration is 0; give a stage a duration")
        if bounds[-1] > _INT64_MAX:
            raise ValueError(f"the {what} profile is too long")
        self.stages: tuple[Stage, ...] = tuple(stages)
        self._bounds: I64 = np.array(bounds, dtype=np.int64)
        self._v0: F64 = np.array(v0, dtype=np.float64)
        self._v1: F64 = np.array(v1, dtype=np.float64)

    @property
    def duration_ns(self) -> int:
        return int(self._bounds[-1])

    @property
    def duration_s(self) -> float:
        return self.duration_ns / _NS_PER_S

    def _value_at_ns(self, t_ns: float) -> float:
        """Interpolated value at ``t_ns`` (caller ensures 0 <= t_ns <= duration)."""
        j = int(np.searchsorted(self._bounds, t_ns, side="right")) - 1
        j = min(max(j, 0), len(self._v0) - 1)
        b0, b1 = float(self._bounds[j]), float(self._bounds[j + 1])
        frac = min(max((t_ns - b0) / (b1 - b0), 0.0), 1.0)
        return float(self._v0[j] + (self._v1[j] - self._v0[j]) * frac)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(stages={list(self.stages)!r})"


# =============================================================================== rate
class RateProfile(_Piecewise):
    """Arrival rate r(t) (per second), piecewise linear; Λ(t) = ∫₀ᵗ r is piecewise
    quadratic. Outside ``[0, duration]`` the rate is 0."""

    def __init__(self, stages: Sequence[Stage], start: float | None = None) -> None:
        super().__init__(stages, start, "rate")
        d_s = np.diff(self._bounds).astype(np.float64) / _NS_PER_S
        self._d_s: F64 = d_s
        mass = 0.5 * (self._v0 + self._v1) * d_s
        self._cum: F64 = np.concatenate([[0.0], np.cumsum(mass)])
        #: one segment of constant positive rate: Λ⁻¹ is a division (the same bits as
        #: the general root below, which reduces to 2Δ / (r0 + sqrt(r0²)) = Δ / r0)
        self._single_rate = (
            float(self._v0[0]) if len(self._v0) == 1 and self._v0[0] == self._v1[0] > 0 else 0.0
        )

    @classmethod
    def constant(cls, rate: float, duration_s: float) -> RateProfile:
        """``rate`` arrivals/s for ``duration_s`` seconds."""
        return cls([Stage(duration_s, rate)])

    @classmethod
    def from_stages(cls, stages: Sequence[Stage], start: float | None = None) -> RateProfile:
        """Profile from stages; ``start`` (default: first stage's target) is the rate at
        t = 0, so a single stage is a constant rate."""
        return cls(stages, start)

    def rate_at(self, t_s: float) -> float:
        """Rate (per second) at time ``t_s``; 0 outside ``[0, duration]``."""
        t_ns = float(t_s) * _NS_PER_S
        if not 0.0 <= t_ns <= self.duration_ns:
            return 0.0
        return self._value_at_ns(t_ns)

    def cumulative(self, t_s: float) -> float:
        """Λ(t): expected number of arrivals in ``[0, t_s]`` (t clamped to the profile)."""
        t_ns = min(max(float(t_s) * _NS_PER_S, 0.0), float(self.duration_ns))
        j = int(np.searchsorted(self._bounds, t_ns, side="right")) - 1
        j = min(max(j, 0), len(self._v0) - 1)
        tau = (t_ns - float(self._bounds[j])) / _NS_PER_S
        d = float(self._d_s[j])
        r0, r1 = float(self._v0[j]), float(self._v1[j])
        return float(self._cum[j] + r0 * tau + 0.5 * (r1 - r0) / d * tau * tau)

    def expected_count(self) -> float:
        """Λ(end): expected number of arrivals over the whole profile."""
        return float(self._cum[-1])

    def _inverse(self, u: F64) -> tuple[I64, F64]:
        """Segment index and offset into it (ns, float, clipped) of Λ⁻¹(u)."""
        if u.size and not (np.all(np.isfinite(u)) and u.min() >= 0):
            raise ValueError("inverse_cumulative needs finite u >= 0")
        if self._single_rate:
            # 5x cheaper than the general path for the common constant-rate profile
            seg = float(self._bounds[1])
            return np.zeros(u.size, dtype=np.int64), np.minimum(
                u / self._single_rate * _NS_PER_S, seg
            )
        # Largest j with cum[j] <= u: zero-mass segments are skipped automatically, so
        # Λ⁻¹(u) = sup{t : Λ(t) <= u} (an arrival never falls inside a zero-rate span).
        j = np.searchsorted(self._cum, u, side="right") - 1
        np.clip(j, 0, len(self._v0) - 1, out=j)
        delta = u - self._cum[j]
        r0 = self._v0[j]
        d = self._d_s[j]
        a = (self._v1[j] - r0) / d
        disc = np.maximum(r0 * r0 + 2.0 * a * delta, 0.0)
        denom = r0 + np.sqrt(disc)
        # Stable root of a/2 τ² + r0 τ - Δ = 0 (also right for a = 0 and for r0 = 0).
        tau_s = np.divide(2.0 * delta, denom, out=np.zeros_like(delta), where=denom > 0)
        seg_ns = (self._bounds[j + 1] - self._bounds[j]).astype(np.float64)
        tau_ns = np.minimum(tau_s * _NS_PER_S, seg_ns)
        return j.astype(np.int64), tau_ns

    def inverse_cumulative(self, u: npt.ArrayLike) -> F64:
        """Vectorised Λ⁻¹(u) in seconds (``sup{t : Λ(t) <= u}``; the profile's end for
        u >= Λ(end)); zero-rate segments are skipped over."""
        uu = np.asarray(u, dtype=np.float64)
        j, tau_ns = self._inverse(uu.ravel())
        t = (self._bounds[j].astype(np.float64) + tau_ns) / _NS_PER_S
        return t.reshape(uu.shape)

    def inverse_cumulative_ns(self, u: npt.ArrayLike) -> I64:
        """Λ⁻¹(u) rounded to int64 ns (non-decreasing in u; at most ``duration_ns``)."""
        uu = np.asarray(u, dtype=np.float64)
        j, tau_ns = self._inverse(uu.ravel())
        t = self._bounds[j] + np.rint(tau_ns).astype(np.int64)
        return t.reshape(uu.shape)


# =============================================================================== schedules
class Schedule(Protocol):
    """What the runner needs from any open-loop schedule."""

    @property
    def duration_ns(self) -> int: ...

    def chunks(self, max_chunk: int = BLOCK) -> Iterator[tuple[I64, I64]]: ...

    def all(self) -> tuple[I64, I64]: ...

    def expected_count(self) -> float: ...


def _split(index: I64, t_ns: I64, max_chunk: int) -> Iterator[tuple[I64, I64]]:
    for s in range(0, len(index), max_chunk):
        yield index[s : s + max_chunk], t_ns[s : s + max_chunk]


def _check_chunk(max_chunk: int) -> int:
    if isinstance(max_chunk, bool) or not isinstance(max_chunk, Integral) or max_chunk < 1:
        raise ValueError(f"max_chunk must be a positive integer, got {shown(max_chunk)}")
    return int(max_chunk)


def _concat(parts: list[tuple[I64, I64]]) -> tuple[I64, I64]:
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
    )


class ArrivalSchedule:
    """The global open-loop schedule: t_i = Λ⁻¹(u_i), deterministic from ``seed``.

    ``constant``: u_i = i (first arrival at t = 0). ``poisson``: u_i = cumulative sum of
    Exp(1) gaps drawn from ``Generator(PCG64(seed))`` in fixed blocks of :data:`BLOCK`.
    Arrivals with u_i >= Λ(end) are not generated. Times are non-decreasing, in
    ``[0, duration_ns]``.
    """

    def __init__(
        self,
        profile: RateProfile,
        process: Literal["constant", "poisson"],
        seed: int,
    ) -> None:
        if process not in ("constant", "poisson"):
            raise ValueError(f"process must be 'constant' or 'poisson', got {shown(process)}")
        if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {shown(seed)}")
        self.profile: RateProfile = profile
        self.process: Literal["constant", "poisson"] = process
        self.seed: int = int(seed)

    @property
    def duration_ns(self) -> int:
        return self.profile.duration_ns

    def expected_count(self) -> float:
        return self.profile.expected_count()

    def constant_count(self) -> int:
        """Number of arrivals of the constant process: #{i >= 0 : i < Λ(end)}, with a
        1e-9 relative tolerance so that e.g. 0.1/s x 30 s gives 3, not 4."""
        total = self.profile.expected_count()
        r = round(total)
        if abs(total - r) <= 1e-9 * max(1.0, total):
            return int(r)
        return math.ceil(total)

    def _u_blocks(self) -> Iterator[F64]:
        """The unit-rate points u_i in fixed blocks of :data:`BLOCK`."""
        if self.process == "constant":
            n = self.constant_count()
            for s in range(0, n, BLOCK):
                yield np.arange(s, min(n, s + BLOCK), dtype=np.float64)
            return
        total = self.profile.expected_count()
        rng = np.random.Generator(np.random.PCG64(self.seed))
        carry = 0.0
        while True:
            u = np.cumsum(rng.standard_exponential(BLOCK))
            u += carry
            carry = float(u[-1])
            if carry >= total:
                cut = int(np.searchsorted(u, total, side="left"))
                if cut:
                    yield u[:cut]
                return
            yield u

    def chunks(self, max_chunk: int = BLOCK) -> Iterator[tuple[I64, I64]]:
        """Yield ``(global_index, t_ns)`` int64 arrays in order, at most ``max_chunk``
        long each, in bounded memory. The values never depend on ``max_chunk``."""
        max_chunk = _check_chunk(max_chunk)
        start = 0
        for u in self._u_blocks():
            t = self.profile.inverse_cumulative_ns(u)
            idx = np.arange(start, start + len(u), dtype=np.int64)
            start += len(u)
            yield from _split(idx, t, max_chunk)

    def all(self) -> tuple[I64, I64]:
        """The whole schedule at once (tests and small runs)."""
        return _concat(list(self.chunks(BLOCK)))

    def __repr__(self) -> str:
        return f"ArrivalSchedule({self.profile!r}, process={self.process!r}, seed={self.seed})"


class TraceSchedule:
    """Replay of given arrival times (int64 ns, non-decreasing, >= 0)."""

    def __init__(self, times_ns: npt.ArrayLike) -> None:
        t = np.asarray(times_ns)
        if t.ndim != 1:
            raise ValueError("trace times must be a 1-D array")
        if t.size and t.dtype.kind not in "iu":
            raise ValueError(f"trace times must be integer nanoseconds, got dtype {t.dtype}")
        t = t.astype(np.int64)
        if t.size and (t[0] < 0 or np.any(np.diff(t) < 0)):
            raise ValueError("trace times must be >= 0 and non-decreasing")
        t.flags.writeable = False
        self.times_ns: I64 = t

    @property
    def duration_ns(self) -> int:
        """Smallest duration containing every arrival (last time + 1 ns; 0 if empty)."""
        return int(self.times_ns[-1]) + 1 if self.times_ns.size else 0

    def expected_count(self) -> float:
        return float(self.times_ns.size)

    def __len__(self) -> int:
        return int(self.times_ns.size)

    def chunks(self, max_chunk: int = BLOCK) -> Iterator[tuple[I64, I64]]:
        max_chunk = _check_chunk(max_chunk)
        n = self.times_ns.size
        for s in range(0, n, max_chunk):
            e = min(n, s + max_chunk)
            yield np.arange(s, e, dtype=np.int64), self.times_ns[s:e].copy()

    def all(self) -> tuple[I64, I64]:
        return np.arange(self.times_ns.size, dtype=np.int64), self.times_ns.copy()


# =============================================================================== traces
_UNIT_NS: Final[dict[str, int]] = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_TWO_TOKENS: Final = re.compile(r"\S[ \t\f\v]+\S")


class _BadEntry(Exception):
    def __init__(self, entry: int, msg: str) -> None:
        super().__init__(msg)
        self.entry = entry
        self.msg = msg


def _parse_slow(text: str) -> tuple[list[int | float], list[int]]:
    """Line-by-line parse: values and their 1-based line numbers (ValueError on a bad line)."""
    values: list[int | float] = []
    lines: list[int] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        s = raw.split("#", 1)[0].strip()
        if not s:
            continue
        try:
            v: int | float = int(s)
        except ValueError:
            try:
                v = float(s)
            except ValueError:
                raise ValueError(
                    f"trace line {lineno}: not a number: {shown(raw.strip())}"
                ) from None
            if not math.isfinite(v):
                raise ValueError(
                    f"trace line {lineno}: not a finite number: {shown(raw.strip())}"
                ) from None
        values.append(v)
        lines.append(lineno)
        if len(values) > MAX_TRACE_ENTRIES:
            raise ValueError(f"trace has more than {MAX_TRACE_ENTRIES:,} entries")
    return values, lines


def _to_array(values: list[int | float]) -> npt.NDArray[np.int64] | F64:
    if all(isinstance(v, int) for v in values):
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:
            pass
    return np.array(values, dtype=np.float64)


def _parse_fast(text: str) -> npt.NDArray[np.int64] | F64 | None:
    """Vectorised parse for the common case (one plain number per line, no comments);
    None when the slow path must decide (or report the bad line)."""
    if "#" in text or _TWO_TOKENS.search(text):
        return None
    tokens = text.split()
    if len(tokens) > MAX_TRACE_ENTRIES:
        raise ValueError(f"trace has more than {MAX_TRACE_ENTRIES:,} entries")
    try:
        return np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    try:
        arr = np.array(tokens, dtype=np.float64)
    except ValueError:
        return None
    return arr if np.all(np.isfinite(arr)) else None


def _trace_to_ns(v: npt.NDArray[np.int64] | F64, fmt: str, unit_ns: int, speed: float) -> I64:
    """Convert parsed values to re-based int64 ns; raises _BadEntry(entry index)."""
    if fmt == "timestamps":
        if v.size > 1:
            bad = np.flatnonzero(np.diff(v) < 0)
            if bad.size:
                raise _BadEntry(int(bad[0]) + 1, "timestamp is earlier than the previous one")
        rel = v - v[0]
    else:
        bad = np.flatnonzero(v < 0)
        if bad.size:
            raise _BadEntry(int(bad[0]), "gap is negative")
        # Line i is the gap before arrival i (the first one: from the run start), as in
        # perf_analyzer's --request-intervals.
        rel = v
    if rel.dtype == np.int64 and speed == 1.0:
        ints = rel.astype(np.int64)  # exact path
        limit = _INT64_MAX // unit_ns
        if int(ints.max()) > limit or (fmt == "gaps" and float(ints.sum(dtype=np.float64)) > limit):
            raise ValueError("trace is too long to express in int64 nanoseconds")
        scaled_ints: I64 = ints * unit_ns
        return np.cumsum(scaled_ints, dtype=np.int64) if fmt == "gaps" else scaled_ints
    scaled: F64 = rel.astype(np.float64) * (unit_ns / speed)
    if fmt == "gaps":
        scaled = np.cumsum(scaled)
    if scaled.size and scaled[-1] >= 2.0**63:
        raise ValueError("trace is too long to express in int64 nanoseconds")
    out: I64 = np.rint(scaled).astype(np.int64)
    return out


def parse_trace(
    text: str,
    fmt: Literal["timestamps", "gaps"],
    unit: Literal["s", "ms", "us", "ns"] = "s",
    speed: float = 1.0,
) -> I64:
    """Parse a replay trace into non-decreasing int64 ns arrival times (first at 0 for
    timestamps).

    One number per line; ``#`` starts a comment; blank lines are ignored.
    ``timestamps``: absolute times, must be non-decreasing, re-based so the first is 0.
    ``gaps``: each line is the (non-negative) gap before the next arrival, the first
    measured from the run start, so arrival i is at gap_0 + … + gap_i.
    ``speed`` > 1 replays faster (times divided by ``speed``). Integers are handled
    exactly; fractional values go through float64. A bad line raises ``ValueError``
    naming its line number. At most :data:`MAX_TRACE_ENTRIES` entries.
    """
    if fmt not in ("timestamps", "gaps"):
        raise ValueError(f"trace format must be 'timestamps' or 'gaps', got {shown(fmt)}")
    if unit not in _UNIT_NS:
        raise ValueError(f"trace unit must be one of {sorted(_UNIT_NS)}, got {shown(unit)}")
    sp = float(speed)
    if not math.isfinite(sp) or sp <= 0:
        raise ValueError(f"speed must be a finite number > 0, got {shown(speed)}")
    arr = _parse_fast(text)
    lines: list[int] | None = None
    if arr is None:
        values, lines = _parse_slow(text)
        arr = _to_array(values)
    if arr.size == 0:
        raise ValueError("trace has no entries")
    try:
        return _trace_to_ns(arr, fmt, _UNIT_NS[unit], sp)
    except _BadEntry as e:
        if lines is None:
            lines = _parse_slow(text)[1]
        raise ValueError(f"trace line {lines[e.entry]}: {e.msg}") from None


# =============================================================================== slicing
def _check_weights(weights: Sequence[int]) -> tuple[int, ...]:
    w = tuple(weights)
    if not w:
        raise ValueError("weights must not be empty")
    for x in w:
        if isinstance(x, bool) or not isinstance(x, Integral) or x <= 0:
            raise ValueError(f"weights must be positive integers, got {shown(list(w))}")
    if sum(int(x) for x in w) > MAX_PATTERN:
        raise ValueError(f"sum(weights) must be at most {MAX_PATTERN:,}")
    return tuple(int(x) for x in w)


@lru_cache(maxsize=256)
def _pattern(weights: tuple[int, ...]) -> I64:
    total = sum(weights)
    current = [0] * len(weights)
    out = np.empty(total, dtype=np.int64)
    for slot in range(total):
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        out[slot] = best
    out.flags.writeable = False
    return out


def weighted_pattern(weights: Sequence[int]) -> I64:
    """Smooth weighted round-robin (nginx): a sequence of length ``sum(weights)`` in which
    owner k appears exactly ``weights[k]`` times, spread evenly (ties go to the lowest
    index). E.g. ``[1, 3, 2]`` → ``[1, 2, 0, 1, 2, 1]``. The array is read-only."""
    return _pattern(_check_weights(weights))


def _as_pattern(pattern: npt.ArrayLike) -> I64:
    p = np.asarray(pattern, dtype=np.int64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError("pattern must be a non-empty 1-D array")
    return p


def owner_of(global_index: npt.ArrayLike, pattern: npt.ArrayLike) -> I64:
    """Owner of each arrival: ``pattern[index % len(pattern)]``."""
    p = _as_pattern(pattern)
    idx = np.asarray(global_index, dtype=np.int64)
    return p[idx % len(p)]


def local_ordinal(global_index: npt.ArrayLike, pattern: npt.ArrayLike, k: int) -> I64:
    """Position of each of owner k's arrivals within k's own slice (0, 1, 2, …),
    computed arithmetically: ``(i // P) * w_k + rank of slot i % P among k's slots``.
    Raises ``ValueError`` if an index is not owned by k."""
    p = _as_pattern(pattern)
    idx = np.asarray(global_index, dtype=np.int64)
    mine = np.flatnonzero(p == k)
    if mine.size == 0:
        raise ValueError(f"owner {k} does not appear in the pattern")
    rank = np.full(len(p), -1, dtype=np.int64)
    rank[mine] = np.arange(mine.size, dtype=np.int64)
    r = rank[idx % len(p)]
    if r.size and r.min() < 0:
        raise ValueError(f"some indices are not owned by {k}")
    return (idx // len(p)) * mine.size + r


def _check_owner(k: int, n: int, what: str) -> None:
    if not 0 <= k < n:
        raise ValueError(f"{what} {k} out of range for {n} weights")


def slice_for(
    index: npt.ArrayLike, t_ns: npt.ArrayLike, weights: Sequence[int], k: int
) -> tuple[I64, I64]:
    """Owner k's arrivals from a chunk ``(global_index, t_ns)`` of the global schedule."""
    w = _check_weights(weights)
    _check_owner(k, len(w), "owner")
    idx = np.asarray(index, dtype=np.int64)
    t = np.asarray(t_ns, dtype=np.int64)
    mask = owner_of(idx, _pattern(w)) == k
    return idx[mask], t[mask]


def worker_slice(
    index: npt.ArrayLike,
    t_ns: npt.ArrayLike,
    agent_weights: Sequence[int],
    agent_k: int,
    worker_weights: Sequence[int],
    worker_j: int,
) -> tuple[I64, I64]:
    """Worker j of agent k's arrivals (global index, t_ns): agent k's slice, split among
    its workers by the same round-robin applied to the agent-local ordinals."""
    ww = _check_weights(worker_weights)
    _check_owner(worker_j, len(ww), "worker")
    aidx, at = slice_for(index, t_ns, agent_weights, agent_k)
    local = local_ordinal(aidx, _pattern(_check_weights(agent_weights)), agent_k)
    mask = owner_of(local, _pattern(ww)) == worker_j
    return aidx[mask], at[mask]


# =============================================================================== closed loop
def split_count(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` by the largest-remainder method
    (exact integer arithmetic; ties go to the lowest index). Sums to ``total``."""
    w = _check_weights(weights)
    if isinstance(total, bool) or not isinstance(total, Integral) or total < 0:
        raise ValueError(f"total must be a non-negative integer, got {shown(total)}")
    n, s = int(total), sum(w)
    base = [n * x // s for x in w]
    rem = [n * x % s for x in w]
    left = n - sum(base)
    for i in sorted(range(len(w)), key=lambda i: (-rem[i], i))[:left]:
        base[i] += 1
    return base


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


class ConcurrencyProfile(_Piecewise):
    """Number of concurrent virtual users over time (closed loop), from k6-style stages;
    ramps are rounded half-up to whole users. 0 outside ``[0, duration]``."""

    def __init__(self, stages: Sequence[Stage], start: float | None = None) -> None:
        super().__init__(stages, start, "concurrency")

    @classmethod
    def constant(cls, concurrency: int, duration_s: float) -> ConcurrencyProfile:
        return cls([Stage(duration_s, concurrency)])

    @classmethod
    def from_stages(cls, stages: Sequence[Stage], start: float | None = None) -> ConcurrencyProfile:
        """Profile from stages; ``start`` defaults to the first stage's target."""
        return cls(stages, start)

    def level_at(self, t_s: float) -> int:
        """Whole number of users at ``t_s`` (0 outside the profile)."""
        return self.level_at_ns(float(t_s) * _NS_PER_S)

    def level_at_ns(self, t_ns: float) -> int:
        if not 0.0 <= t_ns <= self.duration_ns:
            return 0
        return _round_half_up(self._value_at_ns(t_ns))

    @property
    def max_level(self) -> int:
        """Highest level reached (workers to provision)."""
        return _round_half_up(float(max(self._v0.max(), self._v1.max())))

    def transitions(self) -> list[tuple[int, int]]:
        """``(t_ns, level)`` at t = 0 and wherever the level changes (to within 1 ns)."""
        cand: list[int] = [0]
        for j in range(len(self._v0)):
            a, b = float(self._v0[j]), float(self._v1[j])
            b0, b1 = int(self._bounds[j]), int(self._bounds[j + 1])
            cand.append(b0)
            if a != b:
                lo, hi = min(a, b), max(a, b)
                for h in range(math.ceil(lo - 0.5), math.floor(hi - 0.5) + 1):
                    tc = b0 + (h + 0.5 - a) / (b - a) * (b1 - b0)
                    cand.extend((math.floor(tc), math.floor(tc) + 1))
        out: list[tuple[int, int]] = []
        for t in sorted({min(max(c, 0), self.duration_ns) for c in cand}):
            lvl = self.level_at_ns(t)
            if not out or out[-1][1] != lvl:
                out.append((t, lvl))
        return out
