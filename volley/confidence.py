"""How sure a figure is: confidence intervals from merged histograms and counts (pure).

Every figure here is distribution-free or exact for its model; nothing is bootstrapped,
so the same counts always give the same interval and the intervals of merged runs are
those of the merged histograms.

* **Percentile** (`percentile_interval`). For the q-quantile xi of a continuous
  distribution and n independent values, the number B of values below xi is
  Binomial(n, q). The ranks l <= u are chosen so that P(B < l) <= a/2 and
  P(B >= u) <= a/2 (a = 1 - level); then [X(l), X(u)] holds xi with probability at
  least `level` (the order-statistic interval; ties only make it more so). The
  histogram does not keep X(l) itself but the bucket that holds it: the interval
  reported runs from the *lower edge* of X(l)'s bucket to the *upper edge* of X(u)'s
  bucket (clamped to the exact min and max), so the histogram's own error (buckets
  1 % wide, volley/histogram.py) is folded in, never ignored.
* **Time correlation** (`design_effect`). Requests of one run are not independent: a
  slow spell of the server delays many in a row. The variance of the share of values
  below the percentile is measured across the run's 1 s windows (batch means); its ratio
  to the independent-values variance divides n into an *effective* count, and the ranks
  are those of that many independent values. Without it, two runs of the same
  configuration at 80 % utilisation gave p99 intervals that did not overlap.
* **Enough values** (`min_samples`). When u would be past n, no upper bound exists
  from the data: the figure cannot be bounded at that confidence. That happens while
  q**n > a/2, so the least n is ceil(ln(a/2) / ln(q)): 368 for p99 at 95 %, 3,688 for
  p99.9. This is MLPerf LoadGen's early-stopping reasoning (a binomial bound on the
  tail) applied to a two-sided interval.
* **Error rate** (`proportion_interval`): Clopper-Pearson, exact for k of n.
* **Throughput** (`rate_interval`): the exact (Garwood) Poisson interval of a count
  over a time. For a paced (constant-rate) open loop the count varies less than
  Poisson, so this interval is conservative there.
* **Mean** (`mean_interval`): normal approximation with the histogram's variance
  (bucket centres), widened by the bucket error; fine for the thousands of values of
  a run, stated as approximate.
* **Differences** (`differ`): two figures differ beyond noise when their intervals do
  not overlap. That is conservative (for two 95 % intervals of similar width a false
  alarm is rarer than 1 %), which is what a comparison of two load runs needs:
  latencies of one run are correlated in time (a queue builds and drains), so a test
  that assumes independent values would call noise significant.
* **Steady state** (`warmup_windows`): MSER-5 (White, 1997), the truncation that
  minimises the standard error of the mean of what is kept, on per-window series.
* **Stability** (`stable`): the last windows' mean agrees with the ones before within
  a relative tolerance.

The tests draw repeatedly from known distributions and check that the 95 % intervals
hold the true value in ~95 % of the trials (tests/unit/test_confidence.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from volley.histogram import LogHistogram

__all__ = [
    "DEFAULT_LEVEL",
    "Interval",
    "Outcome",
    "decide",
    "design_effect",
    "differ",
    "mean_interval",
    "min_samples",
    "percentile_interval",
    "proportion_interval",
    "rate_interval",
    "stable",
    "warmup_windows",
]

#: The default confidence level of every interval.
DEFAULT_LEVEL: Final = 0.95
#: The histogram's relative bucket width (volley/histogram.py GROWTH).
_BUCKET: Final = 0.01

Outcome = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class Interval:
    """[low, high] at `level`; high is None when the data cannot bound it (too few values)."""

    low: float
    high: float | None
    level: float

    @property
    def bounded(self) -> bool:
        return self.high is not None

    def width_ratio(self, point: float) -> float:
        """(high - low) / point; infinite when unbounded or the point is 0."""
        if self.high is None or point <= 0:
            return math.inf
        return (self.high - self.low) / point


def _check_level(level: float) -> float:
    if not 0.5 <= level < 1.0:
        raise ValueError(f"confidence level must be within [0.5, 1), got {level}")
    return level


def min_samples(q_pct: float, level: float = DEFAULT_LEVEL) -> int:
    """The fewest values for which the q-th percentile has an upper confidence bound."""
    _check_level(level)
    q = q_pct / 100.0
    if q <= 0.0:
        return 1
    if q >= 1.0:
        return 1  # the maximum is exact
    return max(1, math.ceil(math.log((1.0 - level) / 2.0) / math.log(q)))


def _special() -> Any:
    """scipy.special's ufuncs module, imported at first use: the very quantile functions
    scipy.stats calls for these distributions (scipy 1.17: `_binom_ppf`, `_beta_ppf`),
    without scipy.stats' own import (~2 s of CPU at the end of each run on a busy 2-core
    host, against ~0.5 s)."""
    from scipy.special import _ufuncs

    return _ufuncs


def _binom_ppf(p: float, n: int, q: float) -> int:
    """scipy.stats.binom.ppf(p, n, q) for 0 < p < 1: the smallest k with P(B <= k) >= p."""
    sc = _special()
    if hasattr(sc, "_binom_ppf"):
        return int(sc._binom_ppf(p, n, q))
    from scipy import stats  # a scipy without the ufunc: the public (slower) import

    return int(stats.binom.ppf(p, n, q))


def _beta_ppf(p: float, a: float, b: float) -> float:
    """scipy.stats.beta.ppf(p, a, b) for 0 < p < 1."""
    sc = _special()
    if hasattr(sc, "_beta_ppf"):
        return float(sc._beta_ppf(p, a, b))
    from scipy import stats

    return float(stats.beta.ppf(p, a, b))


def order_ranks(n: int, q: float, level: float) -> tuple[int, int]:
    """1-based ranks (l, u) of the order-statistic interval for the q-quantile of n values:
    l = 0 means no lower bound from the data, u = n + 1 no upper bound."""
    sc = _special()
    half = (1.0 - _check_level(level)) / 2.0
    # l: the largest rank with P(B <= l - 1) <= half (B ~ Binomial(n, q))
    k = _binom_ppf(half, n, q)
    lo = k if float(sc.bdtr(k, n, q)) > half else k + 1
    # u: the smallest rank with P(B <= u - 1) >= 1 - half
    up = _binom_ppf(1.0 - half, n, q) + 1
    return max(lo, 0), min(up, n + 1)


def _at_most(h: LogHistogram, value_ns: float) -> int:
    """Values in buckets whose lower edge is at most `value_ns` (the same buckets in every
    histogram, so counts of several histograms against one value compare exactly)."""
    lower, _, counts = h.buckets()
    return int(counts[lower <= value_ns].sum())


def design_effect(batches: Sequence[LogHistogram], q_pct: float, min_batches: int = 8) -> float:
    """How much time correlation inflates the variance of the q-th percentile, from
    consecutive batches of a run (its 1 s windows): the variance of the share of values at
    or below the pooled percentile, estimated across batches (a ratio estimator), over the
    variance independent values would give, p (1 - p) / n. At least 1; 1 with fewer than
    `min_batches` non-empty batches (too few to tell). Latencies of a busy queue come in
    bursts (one slow spell delays many requests), so their percentile moves more from run
    to run than n independent values would let it; dividing n by this factor (the
    *effective* number of values) makes the interval honest about it."""
    full = [b for b in batches if b.count]
    if len(full) < min_batches or not 0.0 < q_pct < 100.0:
        return 1.0
    merged = LogHistogram()
    for b in full:
        merged.merge(b)
    n = merged.count
    value = merged.percentile(q_pct)
    ks = np.array([_at_most(b, value) for b in full], dtype=np.float64)
    ns = np.array([b.count for b in full], dtype=np.float64)
    p = float(ks.sum()) / n
    if not 0.0 < p < 1.0:
        return 1.0
    m = len(full)
    var = m / (m - 1) * float(np.sum((ks - p * ns) ** 2)) / (n * n)
    return max(1.0, var / (p * (1.0 - p) / n))


def percentile_interval(
    h: LogHistogram,
    q_pct: float,
    level: float = DEFAULT_LEVEL,
    deff: float = 1.0,
    pending: int = 0,
) -> Interval:
    """The `level` interval of the q-th percentile (0 < q < 100) from a histogram, in ns,
    bucket error included (see the module docstring). `deff` (`design_effect`): the ranks
    are those of n / deff independent values, scaled back to n. `pending`: values not
    known yet (requests still in flight), each of which may be anything: the ranks are
    those of n + pending values, the pending ones counted below every known value for the
    lower bound and above every one for the upper bound, so the interval holds the one
    the complete values will give. An empty histogram: [0, None]."""
    n = h.count
    if n == 0:
        return Interval(0.0, None, level)
    if q_pct >= 100.0:
        return Interval(float(h.max_ns), None if pending else float(h.max_ns), level)
    m = max(pending, 0)
    total = n + m
    if deff > 1.0:
        n_eff = max(1, math.floor(total / deff))
        lo_eff, hi_eff = order_ranks(n_eff, q_pct / 100.0, level)
        lo_rank = math.floor(lo_eff * total / n_eff)
        hi_rank = total + 1 if hi_eff > n_eff else min(math.ceil(hi_eff * total / n_eff), total)
    else:
        lo_rank, hi_rank = order_ranks(total, q_pct / 100.0, level)
    lo_rank -= m  # the pending values below every known one
    lower, upper, counts = h.buckets()
    cum = np.cumsum(counts)
    low = 0.0
    if lo_rank >= 1:
        low = max(float(lower[int(np.searchsorted(cum, lo_rank, side="left"))]), float(h.min_ns))
    high: float | None = None
    if hi_rank <= n:
        i = int(np.searchsorted(cum, hi_rank, side="left"))
        # upper edges are exclusive: the largest value in the bucket is one below
        high = min(float(upper[i]) - 1.0, float(h.max_ns))
        high = max(high, low)
    return Interval(low, high, level)


def proportion_interval(k: int, n: int, level: float = DEFAULT_LEVEL) -> Interval:
    """Clopper-Pearson interval of a proportion k / n (n = 0: [0, 1])."""
    half = (1.0 - _check_level(level)) / 2.0
    if n <= 0:
        return Interval(0.0, 1.0, level)
    low = 0.0 if k <= 0 else _beta_ppf(half, k, n - k + 1)
    high = 1.0 if k >= n else _beta_ppf(1.0 - half, k + 1, n - k)
    return Interval(low, high, level)


def rate_interval(count: int, seconds: float, level: float = DEFAULT_LEVEL) -> Interval:
    """Exact Poisson (Garwood) interval of a rate: `count` events in `seconds`."""
    sc = _special()
    half = (1.0 - _check_level(level)) / 2.0
    if seconds <= 0:
        return Interval(0.0, None, level)
    # the Gamma(a) quantile at p: gammaincinv(a, p), what scipy.stats.gamma.ppf computes
    low = 0.0 if count <= 0 else float(sc.gammaincinv(count, half)) / seconds
    high = float(sc.gammaincinv(count + 1, 1.0 - half)) / seconds
    return Interval(low, high, level)


def mean_interval(h: LogHistogram, level: float = DEFAULT_LEVEL) -> Interval:
    """Approximate interval of the mean (normal, histogram variance, bucket error added)."""
    n = h.count
    if n == 0:
        return Interval(0.0, None, level)
    mean = h.mean_ns
    if n == 1:
        return Interval(float(h.min_ns), float(h.max_ns), level)
    lower, upper, counts = h.buckets()
    centres = np.sqrt(lower * np.maximum(upper - 1.0, lower))
    var = float(np.sum(counts * (centres - mean) ** 2) / (n - 1))
    z = float(_special().ndtri(1.0 - (1.0 - _check_level(level)) / 2.0))  # the normal quantile
    half = z * math.sqrt(var / n) + mean * _BUCKET / 2.0
    return Interval(max(mean - half, float(h.min_ns)), min(mean + half, float(h.max_ns)), level)


def decide(interval: Interval, op: str, threshold: float) -> Outcome:
    """An SLO `figure OP threshold` judged on the figure's interval: pass when the whole
    interval satisfies it, fail when none of it does, inconclusive when it straddles the
    threshold (or the figure cannot be bounded)."""
    low, high = interval.low, interval.high
    if op in ("<", "<="):
        strict = op == "<"
        if high is not None and (high < threshold if strict else high <= threshold):
            return "pass"
        if low >= threshold if strict else low > threshold:
            return "fail"
        return "inconclusive"
    if op in (">", ">="):
        strict = op == ">"
        if low > threshold if strict else low >= threshold:
            return "pass"
        if high is not None and (high <= threshold if strict else high < threshold):
            return "fail"
        return "inconclusive"
    raise ValueError(f"unknown comparison {op!r}")


def differ(a: Interval, b: Interval) -> bool:
    """Two figures differ beyond noise: their intervals do not overlap (see the module
    docstring for why this, not a test assuming independent values)."""
    if a.high is not None and a.high < b.low:
        return True
    return b.high is not None and b.high < a.low


def warmup_windows(series: Sequence[float], batch: int = 5) -> int:
    """MSER-5: how many leading windows to drop so the mean of the rest has the least
    standard error, searched over the first half (batches of `batch` windows), kept only
    when the dropped start differs from the rest beyond noise; 0 for a series too short
    to judge (fewer than 4 batches)."""
    x = np.asarray(series, dtype=np.float64)
    nb = len(x) // batch
    if nb < 4:
        return 0
    means = x[: nb * batch].reshape(nb, batch).mean(axis=1)
    best_d, best = 0, math.inf
    for d in range(nb // 2 + 1):
        rest = means[d:]
        m = len(rest)
        score = float(np.sum((rest - rest.mean()) ** 2)) / (m * m)
        if d == 0 or score < best * (1 - 1e-9):
            best_d, best = d, score
    if best_d == 0:
        return 0
    # MSER also truncates pure noise now and then: drop only a start that differs from
    # the rest beyond its own noise (3 standard errors of the dropped batches' mean)
    rest, dropped = means[best_d:], means[:best_d]
    se = float(np.std(rest, ddof=1)) / math.sqrt(best_d)
    if abs(float(dropped.mean()) - float(rest.mean())) <= 3.0 * se:
        return 0
    return best_d * batch


def stable(series: Sequence[float], windows: int = 5, tolerance: float = 0.1) -> bool:
    """The last `windows` values' mean agrees with the `windows` before them: within
    `tolerance` (relative), or within 3 standard errors of their difference (a noisy but
    level series, e.g. Poisson counts of a low rate); False with fewer than 2 x `windows`
    values."""
    if len(series) < 2 * windows:
        return False
    recent_w = np.asarray(series[-windows:], dtype=np.float64)
    before_w = np.asarray(series[-2 * windows : -windows], dtype=np.float64)
    recent, before = float(recent_w.mean()), float(before_w.mean())
    scale = max(abs(recent), abs(before))
    se = math.sqrt((recent_w.var(ddof=1) + before_w.var(ddof=1)) / windows)
    return scale == 0.0 or abs(recent - before) <= max(tolerance * scale, 3.0 * se)
