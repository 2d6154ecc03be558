"""The open-loop schedules: `ArrivalSchedule` (unit-rate points through the inverse of a
rate profile; constant, or Poisson drawn in fixed blocks) and `TraceSchedule` (given
times, from `parse_trace`). Both hand out (global index, time) chunks of at most
`max_chunk`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from numbers import Integral
from typing import Final, Literal, Protocol

import numpy as np
import numpy.typing as npt

from volley.schedule.profiles import F64, I64, INT64_MAX, RateProfile
from volley.shown import shown

#: Fixed block size of Exp(1) draws (and of internal generation); never caller-chosen.
BLOCK: Final = 65536
#: Largest trace accepted by :func:`parse_trace`.
MAX_TRACE_ENTRIES: Final = 20_000_000


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
        limit = INT64_MAX // unit_ns
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
