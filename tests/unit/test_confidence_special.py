"""volley.confidence computes its quantiles with scipy.special's ufuncs, the very ones
scipy.stats calls, without importing scipy.stats (seconds of CPU at each run's end):
the same ranks and bounds as scipy.stats, to the bit."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from scipy import stats

from volley import confidence as c


def test_quantiles_equal_scipy_stats() -> None:
    rng = np.random.default_rng(2)
    ns = [*range(1, 40), *rng.integers(40, 10**8, 300).tolist()]
    for n in ns:
        for q in (0.5, 0.9, 0.99, 0.999, float(rng.random())):
            for p in (0.005, 0.025, 0.975, 0.995):
                assert c._binom_ppf(p, n, q) == int(stats.binom.ppf(p, n, q)), (p, n, q)
        k = int(rng.integers(1, n + 1))
        assert c._beta_ppf(0.025, k, n - k + 1) == float(stats.beta.ppf(0.025, k, n - k + 1))
        half = (1.0 - 0.95) / 2.0  # as the module computes it (not exactly 0.025)
        got = c.rate_interval(n, 3.0)
        assert got.low == float(stats.gamma.ppf(half, n)) / 3.0
        assert got.high == float(stats.gamma.ppf(1.0 - half, n + 1)) / 3.0
        m = c.proportion_interval(k - 1, n)
        assert m.high == float(stats.beta.ppf(1.0 - half, k, n - k + 1))


def test_order_ranks_by_the_binomial_definition() -> None:
    for n, q in ((1, 0.5), (10, 0.5), (100, 0.99), (12345, 0.999), (10**7, 0.9)):
        lo, up = c.order_ranks(n, q, 0.95)
        half = (1.0 - 0.95) / 2.0
        k = int(stats.binom.ppf(half, n, q))
        want_lo = k if stats.binom.cdf(k, n, q) > half else k + 1
        want_up = int(stats.binom.ppf(1.0 - half, n, q)) + 1
        assert (lo, up) == (max(want_lo, 0), min(want_up, n + 1))


def test_a_summary_interval_does_not_import_scipy_stats() -> None:
    code = (
        "import sys; from volley import confidence as c; from volley.histogram import "
        "LogHistogram; h = LogHistogram(); h.record_many(list(range(1000, 5000)));"
        "c.percentile_interval(h, 99.0); c.proportion_interval(3, 100); c.rate_interval(9, 1.0);"
        "c.mean_interval(h); print('scipy.stats' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
