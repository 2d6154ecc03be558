"""Unit tests for volley.histogram.LogHistogram."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volley.histogram import LINEAR_LIMIT_NS, LogHistogram

QS = [0.0, 0.1, 1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0]
N = 200_000


def _rel_errors(h: LogHistogram, x: npt.NDArray[np.int64]) -> list[float]:
    got = h.percentiles(QS)
    exact = np.percentile(x, QS, method="inverted_cdf")
    return [abs(got[q] - float(e)) / max(float(e), 1.0) for q, e in zip(QS, exact, strict=True)]


def _datasets() -> dict[str, npt.NDArray[np.int64]]:
    rng = np.random.default_rng(20240601)
    lognormal = rng.lognormal(mean=math.log(5e6), sigma=1.2, size=N)
    uniform = rng.uniform(0, 2e8, size=N)
    bimodal = np.concatenate(
        [rng.normal(2e6, 2e5, size=N * 3 // 4), rng.normal(80e6, 10e6, size=N // 4)]
    )
    rng.shuffle(bimodal)
    sub_us = rng.integers(0, 5000, size=N)  # crosses the linear/log boundary
    return {
        "lognormal": lognormal.astype(np.int64),
        "uniform": uniform.astype(np.int64),
        "bimodal": np.maximum(bimodal, 0).astype(np.int64),
        "sub_us": sub_us.astype(np.int64),
    }


DATA = _datasets()


@pytest.mark.parametrize("name", sorted(DATA))
def test_percentiles_within_one_percent_of_numpy(name: str) -> None:
    x = DATA[name]
    h = LogHistogram()
    h.record_many(x)
    errs = _rel_errors(h, x)
    print(f"{name}: max relative percentile error {max(errs):.5%}")
    assert max(errs) <= 0.01
    # The design target: half a bucket (sqrt(1.01) - 1 ≈ 0.499 %).
    assert max(errs) <= math.sqrt(1.01) - 1 + 1e-12
    assert h.count == len(x)
    assert h.total_ns == int(x.astype(object).sum())
    assert h.min_ns == int(x.min()) and h.max_ns == int(x.max())
    assert h.percentile(100) == float(x.max())
    assert h.percentile(0) == float(x.min())
    assert h.mean_ns == pytest.approx(float(x.mean()), rel=1e-12)


def test_merge_of_agents_equals_whole() -> None:
    x = DATA["lognormal"]
    cuts = [0, 7_000, 60_000, 61_000, 150_000, len(x)]  # four uneven "agents" + one
    parts = []
    for a, b in itertools.pairwise(cuts):
        h = LogHistogram()
        h.record_many(x[a:b])
        parts.append(h)
    merged = LogHistogram()
    for p in parts:
        merged.merge(p)
    whole = LogHistogram()
    whole.record_many(x)
    assert merged == whole
    assert merged.percentiles(QS) == whole.percentiles(QS)
    assert max(_rel_errors(merged, x)) <= 0.01


def test_sub_microsecond_values_are_exact() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, LINEAR_LIMIT_NS, size=50_001)
    h = LogHistogram()
    h.record_many(x)
    exact = np.percentile(x, QS, method="inverted_cdf")
    assert [h.percentile(q) for q in QS] == [float(e) for e in exact]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, LINEAR_LIMIT_NS - 1), min_size=1, max_size=300), st.floats(0, 100))
def test_nearest_rank_matches_numpy_inverted_cdf(values: list[int], q: float) -> None:
    h = LogHistogram()
    h.record_many(np.array(values, dtype=np.int64))
    assert h.percentile(q) == float(np.percentile(values, q, method="inverted_cdf"))


def test_bucket_edges_and_width() -> None:
    h = LogHistogram()
    rng = np.random.default_rng(5)
    x = np.concatenate(
        [rng.integers(0, 2**62, size=20_000), np.array([0, 999, 1000, 1009, 1010, 2**63 - 1])]
    )
    h.record_many(x)
    lo, hi, counts = h.buckets()
    assert counts.sum() == len(x)
    assert np.all(lo[1:] >= hi[:-1])
    log = lo >= LINEAR_LIMIT_NS
    # Integer edges: the largest integer in a log bucket is within 1.01x its smallest.
    assert np.all((hi[log] - 1) / lo[log] <= 1.01 + 1e-12)
    assert np.all(hi[~log] - lo[~log] == 1)
    # Every value lies in the bucket that buckets() reports for it.
    for v in [0, 999, 1000, 1009, 1010, 123_456_789, 2**63 - 1]:
        one = LogHistogram()
        one.record(v)
        (blo,), (bhi,), (c,) = one.buckets()
        assert c == 1 and blo <= v and (v < bhi or v == 2**63 - 1)


def test_record_matches_record_many_at_bucket_edges() -> None:
    # Values straddling every log edge (exact integer edges, float log only a guess).
    vals = []
    e = 1000.0
    while e < 9e18:
        c = math.ceil(e)
        vals.extend([c - 1, c, c + 1])
        e *= 1.01
    a, b = LogHistogram(), LogHistogram()
    for v in vals:
        a.record(v)
    b.record_many(np.array(vals, dtype=np.int64))
    assert a == b


def test_empty_and_validation() -> None:
    h = LogHistogram()
    assert h.count == 0 and len(h) == 0
    assert h.percentile(50) == 0.0 and h.percentile(100) == 0.0
    assert h.mean_ns == 0.0 and h.min_ns == 0 and h.max_ns == 0
    lo, hi, c = h.buckets()
    assert lo.size == hi.size == c.size == 0
    assert LogHistogram.from_dict(json.loads(json.dumps(h.to_dict()))) == h
    for bad in (-0.1, 100.1, float("nan")):
        with pytest.raises(ValueError):
            h.percentile(bad)
    h.record_many(np.zeros(0, dtype=np.int64))
    assert h.count == 0
    with pytest.raises(TypeError):
        h.record_many(np.array(["1"]))


def test_negatives_are_clamped_and_counted() -> None:
    h = LogHistogram()
    h.record(-5)
    h.record_many(np.array([-1, -2, 3000], dtype=np.int64))
    assert h.negatives == 3 and h.count == 4
    assert h.min_ns == 0 and h.total_ns == 3000
    assert h.percentile(50) == 0.0
    g = LogHistogram.from_dict(h.to_dict())
    assert g.negatives == 3


def test_float_input_is_rounded() -> None:
    h = LogHistogram()
    h.record_many(np.array([1.4, 1.6, 2500.5]))
    assert h.total_ns == 1 + 2 + 2500  # rint: banker's rounding of .5
    with pytest.raises(ValueError):
        h.record_many(np.array([np.inf]))


def test_to_dict_round_trip_is_exact_and_compact() -> None:
    h = LogHistogram()
    h.record_many(DATA["bimodal"])
    h.record(-1)
    d = h.to_dict()
    text = json.dumps(d)
    g = LogHistogram.from_dict(json.loads(text))
    assert g == h
    assert g.percentiles(QS) == h.percentiles(QS)
    assert g.buckets()[2].tolist() == h.buckets()[2].tolist()
    counts = d["counts"]
    assert isinstance(counts, list) and counts[0] > 0 and counts[-1] > 0
    assert len(text) < 20_000
    # from_dict validates
    bad = dict(d, count=h.count + 1)
    with pytest.raises(ValueError):
        LogHistogram.from_dict(bad)
    with pytest.raises(ValueError):
        LogHistogram.from_dict(dict(d, scheme="other"))


def test_copy_is_independent() -> None:
    h = LogHistogram()
    h.record_many(np.array([1, 2000, 3_000_000]))
    c = h.copy()
    c.record(10**9)
    assert h.count == 3 and c.count == 4 and h.max_ns == 3_000_000


def test_large_values_sum_exact() -> None:
    h = LogHistogram()
    x = np.full(10, 2**62, dtype=np.int64)
    h.record_many(x)
    assert h.total_ns == 10 * 2**62
    assert h.percentile(50) == pytest.approx(2**62, rel=0.005)


values_st = st.lists(
    st.one_of(st.integers(-10, 2_000), st.integers(0, 2**62)), min_size=0, max_size=60
)


def _hist(values: list[int]) -> LogHistogram:
    h = LogHistogram()
    h.record_many(np.array(values, dtype=np.int64))
    return h


@settings(max_examples=150, deadline=None)
@given(values_st, values_st, values_st)
def test_merge_is_associative_and_commutative(a: list[int], b: list[int], c: list[int]) -> None:
    ha, hb, hc = _hist(a), _hist(b), _hist(c)
    left = ha.copy()
    left.merge(hb)
    left.merge(hc)  # (a+b)+c
    bc = hb.copy()
    bc.merge(hc)
    right = ha.copy()
    right.merge(bc)  # a+(b+c)
    swapped = hc.copy()
    swapped.merge(ha)
    swapped.merge(hb)  # (c+a)+b
    whole = _hist(a + b + c)
    assert left == right == swapped == whole


@settings(max_examples=200, deadline=None)
@given(values_st)
def test_exact_statistics(values: list[int]) -> None:
    h = _hist(values)
    one = LogHistogram()
    for v in values:
        one.record(v)
    assert h == one
    clamped = [max(v, 0) for v in values]
    assert h.count == len(values) == len(h)
    assert h.negatives == sum(v < 0 for v in values)
    assert h.total_ns == sum(clamped)
    assert h.min_ns == (min(clamped) if values else 0)
    assert h.max_ns == (max(clamped) if values else 0)
    if values:
        srt = sorted(clamped)
        for q in (0.0, 50.0, 99.0, 100.0):
            exact = srt[max(1, math.ceil(len(srt) * (q / 100))) - 1]
            assert h.percentile(q) == pytest.approx(exact, rel=0.005, abs=0)
