"""volley/confidence.py: intervals hold the true value as often as they claim.

Coverage is checked empirically: T independent trials each draw n values from a known
distribution, and the share of trials whose interval holds the true figure is compared
with what the method promises. A share of T Bernoulli(c) trials has standard deviation
sqrt(c (1 - c) / T); the tests allow Z = 3.29 of them (a correct method fails such a
check once in 1,000 runs) below the level, and above the method's exact nominal coverage
(order statistics are discrete, so a 95 % interval holds 95.6-98 % of the time) plus the
histogram's bucket width, so an interval that is merely very wide also fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from volley.confidence import (
    Interval,
    decide,
    design_effect,
    differ,
    mean_interval,
    min_samples,
    order_ranks,
    percentile_interval,
    proportion_interval,
    rate_interval,
    stable,
    warmup_windows,
)
from volley.histogram import LogHistogram

Z = 3.29
TRIALS = 1000


def _sd(c: float, trials: int = TRIALS) -> float:
    return math.sqrt(c * (1 - c) / trials)


def _nominal(n: int, q: float, level: float) -> float:
    lo, up = order_ranks(n, q, level)
    return float(sps.binom.cdf(up - 1, n, q) - sps.binom.cdf(lo - 1, n, q))


@pytest.mark.parametrize(
    ("n", "q_pct", "level"),
    [(2000, 99.0, 0.95), (500, 50.0, 0.95), (400, 99.0, 0.95), (5000, 99.9, 0.95), (800, 90, 0.9)],
)
def test_percentile_interval_covers_the_true_percentile(n: int, q_pct: float, level: float) -> None:
    rng = np.random.default_rng(int(n + q_pct * 10))
    mean_ns = 2e6  # exponential latencies, mean 2 ms
    true = -math.log(1 - q_pct / 100) * mean_ns
    draws = rng.exponential(mean_ns, size=(TRIALS, n))
    hits = 0
    for row in draws:
        h = LogHistogram()
        h.record_many(row)
        iv = percentile_interval(h, q_pct, level)
        assert iv.high is not None  # n is past min_samples
        hits += iv.low <= true <= iv.high
    cover = hits / TRIALS
    nominal = _nominal(n, q_pct / 100, level)
    assert nominal >= level
    assert cover >= level - Z * _sd(level), (cover, nominal)
    assert cover <= nominal + 0.02 + Z * _sd(nominal), (cover, nominal)


def test_percentile_interval_is_narrow_and_holds_the_point() -> None:
    rng = np.random.default_rng(3)
    h = LogHistogram()
    h.record_many(rng.lognormal(math.log(5e6), 0.3, size=100_000))
    point = h.percentile(99)
    iv = percentile_interval(h, 99)
    assert iv.high is not None
    assert iv.low <= point <= iv.high
    assert iv.width_ratio(point) < 0.05  # 100k values: p99 known to a few percent
    # the bucket error is folded in: never narrower than the buckets of its ends
    assert iv.high - iv.low >= 0.005 * point


@pytest.mark.parametrize(("q_pct", "deff"), [(99.0, 1.0), (50.0, 1.0), (99.0, 1.8), (90.0, 2.5)])
def test_pending_values_widen_the_interval_to_hold_every_outcome(q_pct: float, deff: float) -> None:
    """With m values still to come, the interval holds the interval of the complete values
    whatever they are: all faster than every known value, all slower, or a mix."""
    rng = np.random.default_rng(int(q_pct * deff))
    known = rng.lognormal(math.log(5e6), 0.4, size=3000)
    h = LogHistogram()
    h.record_many(known)
    m = 8  # p99's upper rank of ~3,000 values is ~10 below the top
    wide = percentile_interval(h, q_pct, 0.95, deff, pending=m)
    assert percentile_interval(h, q_pct, 0.95, deff, pending=0) == percentile_interval(
        h, q_pct, 0.95, deff
    )
    for rest in (np.full(m, 1e3), np.full(m, 5e9), rng.lognormal(math.log(5e6), 2.0, size=m)):
        full = LogHistogram()
        full.record_many(np.concatenate([known, rest]))
        iv = percentile_interval(full, q_pct, 0.95, deff)
        assert wide.high is not None and iv.high is not None
        assert wide.low <= iv.low and iv.high <= wide.high, (wide, iv)
    # enough pending to reach past the known values' top: no upper bound yet
    assert percentile_interval(h, 99.0, 0.95, deff, pending=100).high is None


def test_min_samples_is_where_the_upper_bound_appears() -> None:
    assert min_samples(99, 0.95) == 368
    assert min_samples(99.9, 0.95) == 3688
    assert min_samples(50, 0.95) == 6
    for q in (50.0, 90.0, 99.0):
        need = min_samples(q)
        h = LogHistogram()
        h.record_many(np.arange(1, need) * 1000)
        assert percentile_interval(h, q).high is None
        h.record(need * 1000)
        assert percentile_interval(h, q).high is not None


def test_empty_and_maximum() -> None:
    assert percentile_interval(LogHistogram(), 99).high is None
    h = LogHistogram()
    h.record_many([5, 7, 9_000_000])
    assert percentile_interval(h, 100) == Interval(9e6, 9e6, 0.95)


def test_proportion_interval_coverage() -> None:
    rng = np.random.default_rng(5)
    for n, p in ((1000, 0.01), (200, 0.3), (5000, 0.001)):
        ks = rng.binomial(n, p, size=TRIALS)
        hits = 0
        for k in ks.tolist():
            iv = proportion_interval(k, n)
            assert iv.high is not None
            hits += iv.low <= p <= iv.high
        assert hits / TRIALS >= 0.95 - Z * _sd(0.95)
    assert proportion_interval(0, 0).high == 1.0
    assert proportion_interval(0, 1000).low == 0.0


def test_rate_interval_coverage() -> None:
    rng = np.random.default_rng(7)
    rate, seconds = 200.0, 3.0
    counts = rng.poisson(rate * seconds, size=TRIALS)
    hits = 0
    for c in counts.tolist():
        iv = rate_interval(c, seconds)
        assert iv.high is not None
        hits += iv.low <= rate <= iv.high
    assert hits / TRIALS >= 0.95 - Z * _sd(0.95)
    assert hits / TRIALS <= 0.95 + 0.02 + Z * _sd(0.95)


def test_mean_interval_coverage() -> None:
    rng = np.random.default_rng(9)
    hits = 0
    for row in rng.exponential(1e6, size=(300, 2000)):
        h = LogHistogram()
        h.record_many(row)
        iv = mean_interval(h)
        assert iv.high is not None
        hits += iv.low <= 1e6 <= iv.high
    assert hits / 300 >= 0.95 - Z * _sd(0.95, 300)


def test_decide_three_ways() -> None:
    iv = Interval(40.0, 60.0, 0.95)
    assert decide(iv, "<", 70) == "pass"
    assert decide(iv, "<", 30) == "fail"
    assert decide(iv, "<", 50) == "inconclusive"
    assert decide(iv, ">=", 30) == "pass"
    assert decide(iv, ">", 60) == "fail"
    assert decide(Interval(10.0, None, 0.95), "<", 50) == "inconclusive"
    assert decide(Interval(60.0, None, 0.95), "<", 50) == "fail"


def test_differ_is_non_overlap() -> None:
    assert differ(Interval(1, 2, 0.95), Interval(3, 4, 0.95))
    assert differ(Interval(3, 4, 0.95), Interval(1, 2, 0.95))
    assert not differ(Interval(1, 3, 0.95), Interval(2, 4, 0.95))
    assert not differ(Interval(1, None, 0.95), Interval(2, 4, 0.95))


def test_differ_false_alarms_are_rare_and_real_shifts_found() -> None:
    """Same distribution: p99 intervals of two samples overlap nearly always; a 30 %
    slower server is found nearly always at 5,000 values each."""
    rng = np.random.default_rng(11)
    same = shifted = 0
    trials = 200
    for _ in range(trials):
        a, b, c = LogHistogram(), LogHistogram(), LogHistogram()
        a.record_many(rng.exponential(1e6, 5000))
        b.record_many(rng.exponential(1e6, 5000))
        c.record_many(rng.exponential(1.3e6, 5000))
        ia, ib, ic = (percentile_interval(x, 99) for x in (a, b, c))
        same += differ(ia, ib)
        shifted += differ(ia, ic)
    assert same / trials <= 0.05
    assert shifted / trials >= 0.8


def test_warmup_windows_finds_a_slow_start() -> None:
    rng = np.random.default_rng(13)
    warm = np.linspace(50, 11, 10)  # 10 windows settling from 50 ms to 10 ms
    steady = 10 + rng.normal(0, 0.5, 50)
    found = warmup_windows(np.concatenate([warm, steady]).tolist())
    assert 5 <= found <= 15
    assert warmup_windows((10 + rng.normal(0, 0.5, 60)).tolist()) <= 5
    assert warmup_windows([1.0, 2.0, 3.0]) == 0


def test_stable() -> None:
    assert stable([100.0] * 10)
    assert stable([100.0] * 5 + [105.0] * 5)
    assert not stable([100.0] * 5 + [130.0] * 5)
    assert stable([100.0, 80, 120, 90, 110, 125.0, 95, 135, 105, 115])  # noisy, level
    assert not stable([100.0, 98, 102, 99, 101, 150.0, 148, 152, 149, 151])
    assert not stable([100.0] * 9)


def _mixture_p99(scale: float, sigma: float) -> float:
    """True p99 of exponential values whose mean is scale * exp(sigma * Z), Z ~ N(0, 1)."""
    from scipy import optimize

    z, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()

    def tail(x: float) -> float:
        return float(np.sum(w * np.exp(-x / (scale * np.exp(sigma * z))))) - 0.01

    return float(optimize.brentq(tail, 1e3, 1e12))


def test_design_effect_restores_coverage_under_time_correlation() -> None:
    """A server with slow and fast seconds: each 1 s batch of 100 latencies has its own
    mean (lognormal, sigma 0.4). Taken as independent, the p99 interval holds the true p99
    in only ~65% of runs; with n divided by the measured design effect, in ~95%."""
    rng = np.random.default_rng(21)
    true = _mixture_p99(1e6, 0.4)
    trials, batches, per = 300, 30, 100
    naive = corrected = 0
    for _ in range(trials):
        scale = 1e6 * np.exp(0.4 * rng.standard_normal(batches))
        hs = []
        for row in rng.exponential(1.0, (batches, per)) * scale[:, None]:
            h = LogHistogram()
            h.record_many(row)
            hs.append(h)
        total = LogHistogram()
        for h in hs:
            total.merge(h)
        iid = percentile_interval(total, 99)
        naive += iid.high is not None and iid.low <= true <= iid.high
        fixed = percentile_interval(total, 99, deff=design_effect(hs, 99))
        corrected += fixed.low <= true and (fixed.high is None or true <= fixed.high)
    assert naive / trials < 0.85
    assert corrected / trials >= 0.95 - Z * _sd(0.95, trials)


def test_design_effect_is_near_one_for_independent_values() -> None:
    rng = np.random.default_rng(22)
    effects = []
    for _ in range(50):
        hs = []
        for row in rng.exponential(1e6, (30, 100)):
            h = LogHistogram()
            h.record_many(row)
            hs.append(h)
        effects.append(design_effect(hs, 99))
    assert float(np.median(effects)) < 1.4
    assert design_effect(hs[:5], 99) == 1.0  # too few batches to tell
