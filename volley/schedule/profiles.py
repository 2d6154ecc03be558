"""Load over time: k6-style stages, the arrival rate r(t) and its integral and inverse
(`RateProfile`, open loop), and virtual users over time (`ConcurrencyProfile`, closed
loop; ramps rounded to whole users). Pure; times are int64 ns from the run start.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from volley.shown import shown

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
NS_PER_S: Final = 1_000_000_000
INT64_MAX: Final = (1 << 63) - 1


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
            end_ns = round(acc_s * NS_PER_S)
            if end_ns > bounds[-1]:
                bounds.append(end_ns)
                v0.append(cur)
                v1.append(float(st.target))
            cur = float(st.target)
        if len(bounds) == 1:
            raise ValueError(f"the {what} profile's total duration is 0; give a stage a duration")
        if bounds[-1] > INT64_MAX:
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
        return self.duration_ns / NS_PER_S

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
        d_s = np.diff(self._bounds).astype(np.float64) / NS_PER_S
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
        t_ns = float(t_s) * NS_PER_S
        if not 0.0 <= t_ns <= self.duration_ns:
            return 0.0
        return self._value_at_ns(t_ns)

    def cumulative(self, t_s: float) -> float:
        """Λ(t): expected number of arrivals in ``[0, t_s]`` (t clamped to the profile)."""
        t_ns = min(max(float(t_s) * NS_PER_S, 0.0), float(self.duration_ns))
        j = int(np.searchsorted(self._bounds, t_ns, side="right")) - 1
        j = min(max(j, 0), len(self._v0) - 1)
        tau = (t_ns - float(self._bounds[j])) / NS_PER_S
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
                u / self._single_rate * NS_PER_S, seg
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
        tau_ns = np.minimum(tau_s * NS_PER_S, seg_ns)
        return j.astype(np.int64), tau_ns

    def inverse_cumulative(self, u: npt.ArrayLike) -> F64:
        """Vectorised Λ⁻¹(u) in seconds (``sup{t : Λ(t) <= u}``; the profile's end for
        u >= Λ(end)); zero-rate segments are skipped over."""
        uu = np.asarray(u, dtype=np.float64)
        j, tau_ns = self._inverse(uu.ravel())
        t = (self._bounds[j].astype(np.float64) + tau_ns) / NS_PER_S
        return t.reshape(uu.shape)

    def inverse_cumulative_ns(self, u: npt.ArrayLike) -> I64:
        """Λ⁻¹(u) rounded to int64 ns (non-decreasing in u; at most ``duration_ns``)."""
        uu = np.asarray(u, dtype=np.float64)
        j, tau_ns = self._inverse(uu.ravel())
        t = self._bounds[j] + np.rint(tau_ns).astype(np.int64)
        return t.reshape(uu.shape)


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
        return self.level_at_ns(float(t_s) * NS_PER_S)

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
