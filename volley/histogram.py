"""Log-bucketed, mergeable histogram of non-negative integer nanosecond values.

Bucket layout (fixed, identical on every host, so histograms merge exactly):

* **Linear region** -- values ``0 <= v < 1000`` ns (below 1 µs) each get their own
  1-ns bucket: global bucket index ``g = v``. These are exact.
* **Log region** -- values ``v >= 1000`` ns go to bucket ``g = 1000 + k`` with
  ``k = floor(log_{1.01}(v / 1000))``, i.e. ``E[k] <= v < E[k+1]`` where the integer
  edge ``E[k] = ceil(1000 * 1.01**k)`` is computed with exact integer arithmetic
  (no float rounding decides which bucket a value lands in). The float ``log`` is only
  a first guess that is then corrected against the exact edges.

A percentile is reported as the bucket's geometric centre ``1000 * 1.01**(k + 0.5)``
(exact value in the linear region), clamped to the exact observed ``[min, max]``. The
relative error of any reported percentile is therefore at most
``sqrt(1.01) - 1 ≈ 0.499 %``. ``percentile(100)`` is the exact maximum and
``percentile(0)`` the exact minimum.

Percentiles use the nearest-rank definition, the same as
``numpy.percentile(..., method="inverted_cdf")``: the value of rank
``ceil(n * q / 100)`` (at least 1) in sorted order.

Negative inputs (e.g. a clock-offset artefact) are clamped to 0 and also counted in
:attr:`LogHistogram.negatives`; they count towards ``count`` as zeros.

Counts live in a dense, growable ``int64`` array covering the bucket index range
``[offset, offset + len(counts))``; ``to_dict`` stores only the non-empty span.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["GROWTH", "LINEAR_LIMIT_NS", "LogHistogram"]

#: Values below this (ns) are kept in exact 1-ns buckets.
LINEAR_LIMIT_NS: Final = 1000
#: Ratio between consecutive log-bucket edges.
GROWTH: Final = 1.01
_SCHEME: Final = "lin1ns<1000+log1.01"
_INT64_MAX: Final = (1 << 63) - 1
_LOG_GROWTH: Final = math.log(GROWTH)
_INV_LOG_GROWTH: Final = 1.0 / _LOG_GROWTH
_LOG_LIMIT: Final = math.log(LINEAR_LIMIT_NS)


def _exact_edges() -> npt.NDArray[np.uint64]:
    """``E[k] = ceil(1000 * 101**k / 100**k)`` up to the first edge above int64 max."""
    edges: list[int] = []
    num, den = LINEAR_LIMIT_NS, 1
    while True:
        e = -(-num // den)
        edges.append(e)
        if e > _INT64_MAX:
            break
        num *= 101
        den *= 100
    return np.array(edges, dtype=np.uint64)


#: Exact integer lower edges of the log buckets; the last one exceeds int64 max, so
#: every int64 value v >= 1000 has a bucket k in [0, _NLOG) with E[k] <= v < E[k+1].
_EDGES: Final = _exact_edges()
_NLOG: Final = len(_EDGES) - 1
#: The edges as int64 (all but the last, which exceeds int64 max): searched as they are
_EDGES_I64: Final = _EDGES[:-1].astype(np.int64)
#: The edges as Python ints, for one value at a time (no numpy scalar a comparison)
_EDGES_LIST: Final[list[int]] = _EDGES.tolist()
#: Total number of global bucket indices (linear + log).
_NBUCKETS: Final = LINEAR_LIMIT_NS + _NLOG


#: `record_many` records this many values or fewer one by one (numpy's per-call overhead
#: dominates small arrays: ~100 µs for one value against ~4 µs, measured on a busy VM).
_FEW: Final = 16


def _bucket_index(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Global bucket index of each (already non-negative) value; vectorised, exact.

    A binary search over the exact integer edges: the number of edges at or below v is
    k + 1 for the bucket k with E[k] <= v < E[k+1] (3 array passes, where a float log
    guess and its correction took 14: about 2x cheaper on a batch's 200-2,000 values).
    """
    big = np.maximum(values, LINEAR_LIMIT_NS)
    # every int64 value is below the last edge: its bucket is the last for v >= E[_NLOG - 1]
    k: npt.NDArray[np.int64] = np.searchsorted(_EDGES_I64, big, side="right")
    k += LINEAR_LIMIT_NS - 1
    return np.where(values < LINEAR_LIMIT_NS, values, k)


def _bucket_index_scalar(v: int) -> int:
    if v < LINEAR_LIMIT_NS:
        return v
    k = int((math.log(v) - _LOG_LIMIT) * _INV_LOG_GROWTH)
    k = min(max(k, 0), _NLOG - 1)
    if v < _EDGES_LIST[k]:
        k -= 1
    elif v >= _EDGES_LIST[k + 1]:
        k += 1
    return LINEAR_LIMIT_NS + k


def _bucket_lower(g: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Exact lower edge (ns, inclusive) of global buckets ``g``."""
    out = g.astype(np.float64)
    log = g >= LINEAR_LIMIT_NS
    out[log] = _EDGES[g[log] - LINEAR_LIMIT_NS].astype(np.float64)
    return out


def _bucket_upper(g: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Exact upper edge (ns, exclusive) of global buckets ``g``."""
    out = g.astype(np.float64) + 1.0
    log = g >= LINEAR_LIMIT_NS
    out[log] = _EDGES[g[log] - LINEAR_LIMIT_NS + 1].astype(np.float64)
    return out


def _bucket_centre(g: int) -> float:
    """Representative value of bucket ``g``: exact (linear) or geometric centre (log)."""
    if g < LINEAR_LIMIT_NS:
        return float(g)
    return LINEAR_LIMIT_NS * math.exp((g - LINEAR_LIMIT_NS + 0.5) * _LOG_GROWTH)


def _exact_sum(values: npt.NDArray[np.int64], vmax: int | None = None) -> int:
    """Exact sum of non-negative int64 values (no int64 overflow for < 2**31 values);
    `vmax`: their maximum, where the caller knows it."""
    if values.size == 0:
        return 0
    if vmax is None:
        vmax = int(values.max())
    if vmax == 0 or vmax <= _INT64_MAX // values.size:
        return int(values.sum(dtype=np.int64))
    hi = int((values >> 32).sum(dtype=np.int64))
    lo = int((values & 0xFFFFFFFF).sum(dtype=np.int64))
    return (hi << 32) + lo


class LogHistogram:
    """Mergeable histogram of nanosecond values with ≤ 0.5 % relative percentile error.

    See the module docstring for the bucket layout. All statistics except the
    percentiles (``count``, ``total_ns``, ``min_ns``, ``max_ns``, ``negatives``) are
    exact; merging is exact (merging equals recording every value in one histogram).
    """

    __slots__ = ("_count", "_counts", "_max", "_min", "_negatives", "_offset", "_total")

    def __init__(self) -> None:
        self._counts: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._offset = 0
        self._count = 0
        self._total = 0
        self._min = 0
        self._max = 0
        self._negatives = 0

    # ------------------------------------------------------------------ storage
    def _ensure_range(self, lo: int, hi: int) -> None:
        """Grow the dense counts array so it covers bucket indices ``[lo, hi]``."""
        n = len(self._counts)
        if n == 0:
            self._counts = np.zeros(hi - lo + 1, dtype=np.int64)
            self._offset = lo
            return
        cur_lo, cur_hi = self._offset, self._offset + n - 1
        if lo >= cur_lo and hi <= cur_hi:
            return
        new_lo, new_hi = min(lo, cur_lo), max(hi, cur_hi)
        # Grow with some slack (bounded by the index space) to amortise reallocations.
        slack = max(16, (new_hi - new_lo + 1) // 4)
        if new_lo < cur_lo:
            new_lo = max(0, new_lo - slack)
        if new_hi > cur_hi:
            new_hi = min(_NBUCKETS - 1, new_hi + slack)
        grown = np.zeros(new_hi - new_lo + 1, dtype=np.int64)
        grown[cur_lo - new_lo : cur_lo - new_lo + n] = self._counts
        self._counts = grown
        self._offset = new_lo

    def _update_stats(self, n: int, total: int, vmin: int, vmax: int) -> None:
        if self._count == 0:
            self._min, self._max = vmin, vmax
        else:
            self._min = min(self._min, vmin)
            self._max = max(self._max, vmax)
        self._count += n
        self._total += total

    # ------------------------------------------------------------------ recording
    def record(self, value_ns: int) -> None:
        """Record one value (ns). Negative values are clamped to 0 and counted."""
        v = int(value_ns)
        if v < 0:
            self._negatives += 1
            v = 0
        elif v > _INT64_MAX:
            raise ValueError(f"value {v} ns does not fit in int64")
        g = _bucket_index_scalar(v)
        i = g - self._offset
        if not 0 <= i < len(self._counts):
            self._ensure_range(g, g)
            i = g - self._offset
        self._counts[i] += 1
        self._update_stats(1, v, v, v)

    def record_many(self, values_ns: npt.ArrayLike) -> None:
        """Record many values at once (vectorised; no Python loop over values).

        Integer arrays are used as is; float arrays are rounded to the nearest ns.
        Negative values are clamped to 0 and counted in :attr:`negatives`.
        """
        arr = np.asarray(values_ns)
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)):
                raise ValueError("values must be finite")
            arr = np.rint(arr)
        elif arr.dtype.kind not in "iub":
            raise TypeError(f"expected an integer array of nanoseconds, got dtype {arr.dtype}")
        v = arr.astype(np.int64, copy=False).ravel()
        if v.size <= _FEW:  # a few values: one by one is ~20x cheaper than vectorised
            for x in v.tolist():
                self.record(x)
            return
        vmin = int(v.min())
        if vmin < 0:
            neg = v < 0
            self._negatives += int(np.count_nonzero(neg))
            v = np.where(neg, 0, v)
            vmin = 0
        vmax = int(v.max())
        g = _bucket_index(v)
        glo = _bucket_index_scalar(vmin)
        ghi = _bucket_index_scalar(vmax)
        g -= glo
        binned = np.bincount(g, minlength=ghi - glo + 1)
        if self._count == 0 and len(self._counts) == 0:
            # an empty histogram (a batch's own): the counts are the binned values, whose
            # first and last buckets are not empty (those of vmin and vmax)
            self._counts, self._offset = binned, glo
        else:
            self._ensure_range(glo, ghi)
            start = glo - self._offset
            self._counts[start : start + len(binned)] += binned
        self._update_stats(int(v.size), _exact_sum(v, vmax), vmin, vmax)

    def merge(self, other: LogHistogram) -> None:
        """Add ``other`` into this histogram (in place, exact)."""
        if not isinstance(other, LogHistogram):
            raise TypeError(f"cannot merge {type(other).__name__} into LogHistogram")
        if other._count == 0:
            self._negatives += other._negatives
            return
        counts_o = other._counts
        if counts_o[0] and counts_o[-1]:  # no empty ends (a batch's own): nothing to trim
            first, last = 0, len(counts_o) - 1
        elif len(counts_o) <= 4 * _FEW:  # a small one: cheaper without numpy calls
            counts = counts_o.tolist()
            first = next(i for i, c in enumerate(counts) if c)
            last = len(counts) - 1 - next(i for i, c in enumerate(reversed(counts)) if c)
        else:
            nz = np.flatnonzero(other._counts)
            first, last = int(nz[0]), int(nz[-1])
        lo = other._offset + first
        hi = other._offset + last
        self._ensure_range(lo, hi)
        src = other._counts[first : last + 1]
        start = lo - self._offset
        self._counts[start : start + len(src)] += src
        self._update_stats(other._count, other._total, other._min, other._max)
        self._negatives += other._negatives

    def copy(self) -> LogHistogram:
        h = LogHistogram()
        h._counts = self._counts.copy()
        h._offset = self._offset
        h._count = self._count
        h._total = self._total
        h._min = self._min
        h._max = self._max
        h._negatives = self._negatives
        return h

    # ------------------------------------------------------------------ statistics
    @property
    def count(self) -> int:
        return self._count

    def __len__(self) -> int:
        return self._count

    @property
    def total_ns(self) -> int:
        """Exact sum of the recorded values (negatives counted as 0)."""
        return self._total

    @property
    def min_ns(self) -> int:
        """Exact minimum (0 when empty)."""
        return self._min

    @property
    def max_ns(self) -> int:
        """Exact maximum (0 when empty)."""
        return self._max

    @property
    def mean_ns(self) -> float:
        """Exact mean (0.0 when empty)."""
        return self._total / self._count if self._count else 0.0

    @property
    def negatives(self) -> int:
        """How many negative values were recorded (and clamped to 0)."""
        return self._negatives

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile ``q`` (0..100) in ns; 0.0 when empty."""
        return self.percentiles([q])[float(q)]

    def percentiles(self, qs: Sequence[float]) -> dict[float, float]:
        """Several percentiles at once (one cumulative pass): ``{q: value_ns}``."""
        qarr = np.asarray([float(q) for q in qs], dtype=np.float64)
        if qarr.size and (not np.all(np.isfinite(qarr)) or qarr.min() < 0 or qarr.max() > 100):
            raise ValueError(f"percentiles must be within [0, 100], got {list(qs)}")
        if self._count == 0:
            return {float(q): 0.0 for q in qarr}
        n = self._count
        # Same arithmetic as numpy's "inverted_cdf": rank = ceil(n * (q / 100)).
        ranks = np.ceil(n * (qarr / 100.0)).astype(np.int64)
        np.clip(ranks, 1, n, out=ranks)
        cum = np.cumsum(self._counts)
        pos = np.searchsorted(cum, ranks, side="left")
        out: dict[float, float] = {}
        for q, p in zip(qarr.tolist(), pos.tolist(), strict=True):
            if q == 100.0:
                out[q] = float(self._max)
                continue
            c = _bucket_centre(self._offset + int(p))
            out[q] = min(max(c, float(self._min)), float(self._max))
        return out

    def buckets(
        self,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """Non-empty buckets: (lower edges ns inclusive, upper edges ns exclusive, counts)."""
        nz = np.flatnonzero(self._counts)
        g = (nz + self._offset).astype(np.int64)
        return _bucket_lower(g), _bucket_upper(g), self._counts[nz].copy()

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, object]:
        """Compact JSON-safe form: the non-empty span of counts plus exact statistics."""
        nz = np.flatnonzero(self._counts)
        if nz.size:
            offset = self._offset + int(nz[0])
            counts = self._counts[int(nz[0]) : int(nz[-1]) + 1].tolist()
        else:
            offset, counts = 0, []
        return {
            "scheme": _SCHEME,
            "offset": offset,
            "counts": counts,
            "count": self._count,
            "total_ns": self._total,
            "min_ns": self._min,
            "max_ns": self._max,
            "negatives": self._negatives,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogHistogram:
        """Inverse of :meth:`to_dict` (validates the layout and the totals)."""
        if d.get("scheme") != _SCHEME:
            raise ValueError(f"unsupported histogram scheme {d.get('scheme')!r}")
        counts = np.asarray(d["counts"], dtype=np.int64)
        offset = int(d["offset"])
        if counts.ndim != 1 or (counts < 0).any():
            raise ValueError("histogram counts must be a list of non-negative integers")
        if offset < 0 or offset + len(counts) > _NBUCKETS:
            raise ValueError("histogram bucket range out of bounds")
        h = cls()
        h._counts = counts
        h._offset = offset if counts.size else 0
        h._count = int(d["count"])
        h._total = int(d["total_ns"])
        h._min = int(d["min_ns"])
        h._max = int(d["max_ns"])
        h._negatives = int(d.get("negatives", 0))
        if int(counts.sum()) != h._count:
            raise ValueError("histogram count does not match the sum of its bucket counts")
        return h

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LogHistogram):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"LogHistogram(count={self._count}, min_ns={self._min}, max_ns={self._max}, "
            f"mean_ns={self.mean_ns:.1f})"
        )
