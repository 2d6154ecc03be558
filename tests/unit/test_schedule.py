"""Unit tests for volley.schedule (one global schedule, disjoint exact slices)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from volley import schedule as sched
from volley.schedule import (
    ArrivalSchedule,
    ConcurrencyProfile,
    RateProfile,
    Stage,
    TraceSchedule,
    local_ordinal,
    owner_of,
    parse_trace,
    slice_for,
    split_count,
    weighted_pattern,
    worker_slice,
)

I64 = npt.NDArray[np.int64]

# ~150k arrivals: crosses the fixed 65,536 generation-block boundary twice.
POISSON = ArrivalSchedule(RateProfile.constant(15_000, 10.0), "poisson", seed=1234)


def _agent_slices(index: I64, t: I64, weights: list[int]) -> list[tuple[I64, I64]]:
    return [slice_for(index, t, weights, k) for k in range(len(weights))]


def _union(parts: list[tuple[I64, I64]]) -> tuple[I64, I64]:
    idx = np.concatenate([p[0] for p in parts])
    t = np.concatenate([p[1] for p in parts])
    order = np.argsort(idx, kind="stable")
    return idx[order], t[order]


# ----------------------------------------------------------------------------- profiles
def test_constant_rate_exact_count_evenly_spaced() -> None:
    s = ArrivalSchedule(RateProfile.constant(1000, 10.0), "constant", seed=0)
    idx, t = s.all()
    assert len(t) == 10_000 == s.expected_count()
    assert t[0] == 0
    assert np.all(np.diff(t) == 1_000_000)
    assert np.array_equal(idx, np.arange(10_000))
    # A rate that does not divide 1e9: gaps differ by at most the 1-ns rounding.
    idx, t = ArrivalSchedule(RateProfile.constant(3, 7.0), "constant", seed=0).all()
    assert len(t) == 21
    assert set(np.diff(t).tolist()) <= {333_333_333, 333_333_334}
    assert np.all(t < 7 * 10**9)
    # Float noise in rate*duration does not add an arrival (0.1 * 30 = 3.0000000000000004).
    assert len(ArrivalSchedule(RateProfile.constant(0.1, 30), "constant", seed=0).all()[0]) == 3


def test_profile_functions() -> None:
    p = RateProfile.from_stages([Stage(10, 2000), Stage(5, 2000)], start=0)
    assert p.duration_ns == 15 * 10**9
    assert p.rate_at(5) == pytest.approx(1000)
    assert p.rate_at(12) == pytest.approx(2000)
    assert p.rate_at(-1) == 0.0 and p.rate_at(16) == 0.0
    assert p.cumulative(10) == pytest.approx(10_000)
    assert p.cumulative(100) == pytest.approx(20_000) == p.expected_count()
    u = np.array([0.0, 1.0, 100.0, 10_000.0, 15_000.0, 20_000.0])
    assert np.allclose(p.inverse_cumulative(u), [0.0, 0.1, 1.0, 10.0, 12.5, 15.0])
    tt = np.linspace(0, 15, 101)
    lam = np.array([p.cumulative(x) for x in tt])
    assert np.allclose(p.inverse_cumulative(lam)[1:], tt[1:], rtol=1e-9, atol=1e-9)
    # Ramp down, and the default start (first stage's target).
    q = RateProfile.from_stages([Stage(2, 100), Stage(2, 0)])
    assert q.rate_at(0) == 100 and q.rate_at(3) == pytest.approx(50)
    assert q.expected_count() == pytest.approx(300)
    assert np.allclose(q.inverse_cumulative([250.0, 299.0]), [4.0 - math.sqrt(2.0), 3.8])


@pytest.mark.parametrize(
    "stages, start",
    [
        ([], None),
        ([Stage(-1, 10)], None),
        ([Stage(1, -10)], None),
        ([Stage(0, 10)], None),
        ([Stage(0, 10), Stage(0, 5)], None),
        ([Stage(float("nan"), 10)], None),
        ([Stage(1, float("inf"))], None),
        ([Stage(1, 10)], -1.0),
    ],
)
def test_profile_validation(stages: list[Stage], start: float | None) -> None:
    with pytest.raises(ValueError, match=r"stage|duration|start"):
        RateProfile.from_stages(stages, start=start)


def test_schedule_validation() -> None:
    p = RateProfile.constant(10, 1)
    with pytest.raises(ValueError):
        ArrivalSchedule(p, "uniform", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ArrivalSchedule(p, "poisson", -1)
    with pytest.raises(ValueError):
        list(ArrivalSchedule(p, "poisson", 1).chunks(0))
    with pytest.raises(ValueError):
        p.inverse_cumulative([-1.0])


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_schedule_whatever_chunk_size() -> None:
    ref_idx, ref_t = POISSON.all()
    assert 140_000 < len(ref_t) < 160_000
    assert np.array_equal(ref_idx, np.arange(len(ref_t)))
    assert np.all(np.diff(ref_t) >= 0) and ref_t[0] >= 0 and ref_t[-1] < POISSON.duration_ns
    for chunk in (7, 1000, 65_535, 65_536, 100_003):
        parts = list(POISSON.chunks(chunk))
        assert all(0 < len(i) <= chunk for i, _ in parts)
        assert np.array_equal(np.concatenate([i for i, _ in parts]), ref_idx)
        assert np.array_equal(np.concatenate([t for _, t in parts]), ref_t)
    again = ArrivalSchedule(RateProfile.constant(15_000, 10.0), "poisson", seed=1234).all()
    assert np.array_equal(again[1], ref_t)
    other = ArrivalSchedule(RateProfile.constant(15_000, 10.0), "poisson", seed=1235).all()
    assert not np.array_equal(other[1][:100], ref_t[:100])


@pytest.mark.parametrize("weights", [[1], [1, 1], [1, 3, 2], [2, 1, 1, 3], [5, 1, 2, 1, 4]])
def test_union_of_agent_slices_is_the_global_schedule(weights: list[int]) -> None:
    ref_idx, ref_t = POISSON.all()
    # Each agent slices the chunks it generates itself (chunking differs per agent).
    slices = []
    for k in range(len(weights)):
        chunk = 997 * (k + 1)
        parts = [slice_for(i, t, weights, k) for i, t in POISSON.chunks(chunk)]
        slices.append(
            (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        )
        whole = slice_for(ref_idx, ref_t, weights, k)
        assert np.array_equal(slices[-1][0], whole[0]) and np.array_equal(slices[-1][1], whole[1])
    sizes = [len(s[0]) for s in slices]
    assert sum(sizes) == len(ref_idx)  # disjoint + covering (with the equality below)
    idx, t = _union(slices)
    assert np.array_equal(idx, ref_idx) and np.array_equal(t, ref_t)
    # Shares follow the weights to within one pattern cycle.
    for k, w in enumerate(weights):
        assert abs(sizes[k] - len(ref_idx) * w / sum(weights)) <= w
        # Local ordinals of each slice are 0..n-1 in order.
        assert np.array_equal(
            local_ordinal(slices[k][0], weighted_pattern(weights), k), np.arange(sizes[k])
        )


def test_nested_agent_worker_split_is_exact() -> None:
    ref_idx, ref_t = POISSON.all()
    agent_w = [1, 3, 2]
    worker_w = {0: [1], 1: [2, 1, 1], 2: [1, 1, 1, 1, 1]}
    parts = []
    for k, ww in worker_w.items():
        agent = slice_for(ref_idx, ref_t, agent_w, k)
        mine = [worker_slice(ref_idx, ref_t, agent_w, k, ww, j) for j in range(len(ww))]
        assert sum(len(m[0]) for m in mine) == len(agent[0])
        a_idx, a_t = _union(mine)
        assert np.array_equal(a_idx, agent[0]) and np.array_equal(a_t, agent[1])
        parts.extend(mine)
    idx, t = _union(parts)
    assert np.array_equal(idx, ref_idx) and np.array_equal(t, ref_t)
    # Chunk-wise nested slicing equals slicing the whole schedule.
    chunked = [worker_slice(i, t, agent_w, 1, [2, 1, 1], 2) for i, t in POISSON.chunks(4099)]
    whole = worker_slice(ref_idx, ref_t, agent_w, 1, [2, 1, 1], 2)
    assert np.array_equal(np.concatenate([c[0] for c in chunked]), whole[0])


def test_documented_nested_example() -> None:
    idx = np.arange(13, dtype=np.int64)
    assert weighted_pattern([1, 3, 2]).tolist() == [1, 2, 0, 1, 2, 1]
    assert slice_for(idx, idx, [1, 3, 2], 1)[0].tolist() == [0, 3, 5, 6, 9, 11, 12]
    assert worker_slice(idx, idx, [1, 3, 2], 1, [1, 1], 0)[0].tolist() == [0, 5, 9, 12]
    assert worker_slice(idx, idx, [1, 3, 2], 1, [1, 1], 1)[0].tolist() == [3, 6, 11]


# ----------------------------------------------------------------------------- statistics
def test_ks_merged_poisson_slices_are_exponential() -> None:
    rate = 20_000.0
    s = ArrivalSchedule(RateProfile.constant(rate, 10.0), "poisson", seed=7)
    idx, _ = s.all()
    weights = [1, 2, 3, 4]  # 4 agents
    parts = [
        (np.concatenate(a), np.concatenate(b))
        for a, b in (
            zip(*[slice_for(i, tt, weights, k) for i, tt in s.chunks(30_000)], strict=True)
            for k in range(4)
        )
    ]
    m_idx, m_t = _union(parts)
    assert np.array_equal(m_idx, idx)
    assert len(m_t) >= 100_000
    gaps_s = np.diff(m_t) / 1e9
    res = stats.kstest(gaps_s, "expon", args=(0, 1 / rate))
    print(f"KS merged 4-agent Poisson: n={len(gaps_s)} D={res.statistic:.6f} p={res.pvalue:.4f}")
    assert res.pvalue > 0.01
    assert abs(len(m_t) - rate * 10) < 5 * math.sqrt(rate * 10)


def test_ks_time_rescaled_ramp_is_unit_exponential() -> None:
    p = RateProfile.from_stages([Stage(10, 20_000), Stage(5, 20_000)], start=0)
    _, t = ArrivalSchedule(p, "poisson", seed=99).all()
    lam = np.array([p.cumulative(x) for x in (t / 1e9).tolist()])
    res = stats.kstest(np.diff(lam), "expon")
    print(f"KS time-rescaled ramp: n={len(lam) - 1} D={res.statistic:.6f} p={res.pvalue:.4f}")
    assert res.pvalue > 0.01


@pytest.mark.parametrize("process", ["constant", "poisson"])
def test_stage_ramp_window_counts(process: str) -> None:
    # 0 -> 2000/s over 10 s, then hold 2000/s for 5 s.
    p = RateProfile.from_stages([Stage(10, 2000), Stage(5, 2000)], start=0)
    _, t = ArrivalSchedule(p, process, seed=5).all()  # type: ignore[arg-type]
    counts = np.bincount(t // 10**9, minlength=15)
    assert len(counts) == 15
    for w in range(15):
        expected = p.cumulative(w + 1) - p.cumulative(w)  # ramp: 100 * (2w + 1)
        # constant: deterministic, only window-edge rounding; Poisson: 5 sigma.
        tol = 1.0 if process == "constant" else 5 * math.sqrt(expected) + 1
        assert abs(counts[w] - expected) <= tol, (w, counts[w], expected)
    assert counts[14] == pytest.approx(2000, abs=tol)


@pytest.mark.parametrize("process", ["constant", "poisson"])
def test_zero_rate_segment(process: str) -> None:
    p = RateProfile.from_stages(
        [Stage(2, 1000), Stage(1, 0), Stage(2, 0), Stage(0, 500), Stage(2, 500)]
    )
    assert p.expected_count() == pytest.approx(2000 + 500 + 1000)
    _, t = ArrivalSchedule(p, process, seed=11).all()  # type: ignore[arg-type]
    s = t / 1e9
    assert not np.any((s > 3.0) & (s < 5.0))  # rate is exactly 0 in (3 s, 5 s)
    assert np.all(np.diff(t) >= 0) and t[-1] < p.duration_ns
    if process == "constant":
        assert len(t) == 3500
        assert np.count_nonzero(s >= 5.0) == 1000
        assert np.allclose(np.diff(t[s >= 5.0]), 2_000_000, atol=1)
    # A leading zero-rate stage: the first arrival is where the rate becomes positive.
    q = RateProfile.from_stages([Stage(2, 0), Stage(0, 100), Stage(1, 100)], start=0)
    _, tq = ArrivalSchedule(q, "constant", seed=0).all()
    assert len(tq) == 100 and tq[0] == 2 * 10**9
    # All-zero profile: no arrivals at all.
    z = ArrivalSchedule(RateProfile.constant(0, 5), process, seed=1)  # type: ignore[arg-type]
    assert len(z.all()[0]) == 0


# ----------------------------------------------------------------------------- traces
def test_parse_trace_timestamps_and_gaps() -> None:
    text = "# recorded trace\n100.5\n\n100.75  # inline comment\n101\n101\n"
    assert parse_trace(text, "timestamps").tolist() == [0, 250_000_000, 500_000_000, 500_000_000]
    assert parse_trace("5\n6\n8\n", "timestamps", unit="ms", speed=2).tolist() == [
        0,
        500_000,
        1_500_000,
    ]
    assert parse_trace("10\n0\n20\n", "gaps", unit="us").tolist() == [10_000, 10_000, 30_000]
    # Large integer ns timestamps stay exact.
    base = 1_717_000_000_123_456_789
    ts = "\n".join(str(base + d) for d in (0, 1, 7, 1_000_000_001))
    assert parse_trace(ts, "timestamps", unit="ns").tolist() == [0, 1, 7, 1_000_000_001]
    assert parse_trace("1\r\n2\r\n", "timestamps").tolist() == [0, 10**9]


@pytest.mark.parametrize(
    "text, fmt, line",
    [
        ("1\n2\nabc\n4\n", "timestamps", 3),
        ("1\n2\n\n1.5\n", "timestamps", 4),
        ("# c\n1\n2 # ok\n0.5\n", "timestamps", 4),
        ("1\n2 3\n", "timestamps", 2),
        ("1\n-2\n", "gaps", 2),
        ("1\nnan\n", "gaps", 2),
        ("0.5\n\n\ninf\n", "timestamps", 4),
    ],
)
def test_parse_trace_bad_line(text: str, fmt: str, line: int) -> None:
    with pytest.raises(ValueError, match=rf"line {line}\b"):
        parse_trace(text, fmt)  # type: ignore[arg-type]


def test_parse_trace_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="no entries"):
        parse_trace("# nothing\n\n", "gaps")
    with pytest.raises(ValueError):
        parse_trace("1\n", "gaps", speed=0)
    with pytest.raises(ValueError):
        parse_trace("1\n", "gaps", unit="min")  # type: ignore[arg-type]
    monkeypatch.setattr(sched.schedules, "MAX_TRACE_ENTRIES", 5)  # where parse_trace reads it
    parse_trace("1\n" * 5, "gaps")
    with pytest.raises(ValueError, match="more than"):
        parse_trace("1\n" * 6, "gaps")
    with pytest.raises(ValueError, match="more than"):
        parse_trace("# c\n" + "1\n" * 6, "gaps")


def test_trace_schedule_replay_and_slices() -> None:
    times = parse_trace("\n".join(str(x) for x in range(0, 50_000, 3)), "timestamps", unit="us")
    ts = TraceSchedule(times)
    idx, t = ts.all()
    assert np.array_equal(t, times) and np.array_equal(idx, np.arange(len(times)))
    assert len(ts) == ts.expected_count() == len(times)
    chunks = list(ts.chunks(1000))
    assert np.array_equal(np.concatenate([c[1] for c in chunks]), times)
    _, t2 = _union([slice_for(idx, t, [2, 1, 1], k) for k in range(3)])
    assert np.array_equal(t2, times)
    with pytest.raises(ValueError):
        TraceSchedule(np.array([5, 3]))
    with pytest.raises(ValueError):
        TraceSchedule(np.array([0.5, 1.0]))


# ----------------------------------------------------------------------------- slicing
@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=7))
def test_weighted_pattern_proportions(weights: list[int]) -> None:
    p = weighted_pattern(weights)
    total = sum(weights)
    assert len(p) == total
    assert np.bincount(p, minlength=len(weights)).tolist() == weights
    # Smooth: every prefix is close to the ideal share (bounded by the number of owners).
    n = np.arange(1, total + 1)
    for k, w in enumerate(weights):
        dev = np.abs(np.cumsum(p == k) - n * w / total)
        assert dev.max() < max(1, len(weights) - 1) + 1e-9
        # No owner waits much longer than its fair interval between turns.
        pos = np.flatnonzero(p == k)
        cyc = np.concatenate([pos, pos[:1] + total])
        assert np.diff(cyc).max() <= math.ceil(total / w) * 2


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 9), min_size=1, max_size=6),
    st.integers(0, 10**12),
    st.integers(1, 500),
)
def test_slices_partition_any_index_window(weights: list[int], start: int, n: int) -> None:
    idx = np.arange(start, start + n, dtype=np.int64)
    p = weighted_pattern(weights)
    own = owner_of(idx, p)
    seen = np.zeros(n, dtype=np.int64)
    for k in range(len(weights)):
        mine, _ = slice_for(idx, idx, weights, k)
        assert np.array_equal(mine, idx[own == k])
        seen[mine - start] += 1
        if mine.size:
            lo = local_ordinal(mine, p, k)
            # Arithmetic ordinals: consecutive, and consistent with counting from 0.
            assert np.array_equal(lo, lo[0] + np.arange(mine.size))
            assert (
                lo[0]
                == np.count_nonzero(owner_of(np.arange(mine[0] % len(p)), p) == k)
                + (mine[0] // len(p)) * weights[k]
            )
    assert np.all(seen == 1)


def test_slicing_validation() -> None:
    idx = np.arange(10, dtype=np.int64)
    for bad in ([], [0, 1], [1, -1], [1.5], [True]):
        with pytest.raises(ValueError):
            weighted_pattern(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        slice_for(idx, idx, [1, 1], 2)
    with pytest.raises(ValueError):
        local_ordinal(idx, weighted_pattern([1, 1]), 0)  # odd indices are owner 1's
    with pytest.raises(ValueError):
        worker_slice(idx, idx, [1, 1], 0, [1, 2], 2)


# ----------------------------------------------------------------------------- closed loop
def test_split_count() -> None:
    assert split_count(10, [1, 3, 2]) == [2, 5, 3]
    assert split_count(7, [1, 1, 1]) == [3, 2, 2]
    assert split_count(0, [4, 5]) == [0, 0]
    assert split_count(1, [1, 1, 1]) == [1, 0, 0]
    assert split_count(100, [1]) == [100]
    with pytest.raises(ValueError):
        split_count(-1, [1])
    with pytest.raises(ValueError):
        split_count(3, [0, 1])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(1, 50), min_size=1, max_size=8))
def test_split_count_properties(total: int, weights: list[int]) -> None:
    parts = split_count(total, weights)
    assert sum(parts) == total
    for part, w in zip(parts, weights, strict=True):
        assert abs(part - total * w / sum(weights)) < 1
    assert split_count(total, weights) == parts


def test_concurrency_profile() -> None:
    c = ConcurrencyProfile.from_stages([Stage(10, 10), Stage(0, 3), Stage(5, 3)], start=0)
    assert c.duration_ns == 15 * 10**9
    assert [c.level_at(x) for x in (0, 0.4, 0.5, 1.0, 4.96, 9.99, 10.0, 12, 15)] == [
        0,
        0,
        1,
        1,
        5,
        10,
        3,
        3,
        3,
    ]
    assert c.level_at(-0.1) == 0 and c.level_at(15.01) == 0
    assert c.max_level == 10
    tr = c.transitions()
    assert tr[0] == (0, 0)
    assert [lvl for _, lvl in tr] == [*range(11), 3]
    for t_ns, lvl in tr:
        assert c.level_at_ns(t_ns) == lvl
        assert t_ns == 0 or c.level_at_ns(t_ns - 2) != lvl
    assert ConcurrencyProfile.constant(4, 2).level_at(1) == 4
    assert ConcurrencyProfile.from_stages([Stage(2, 8)]).level_at(0) == 8
    down = ConcurrencyProfile.from_stages([Stage(4, 0)], start=4)
    assert [lvl for _, lvl in down.transitions()] == [4, 3, 2, 1, 0]
    with pytest.raises(ValueError):
        ConcurrencyProfile.from_stages([Stage(0, 4)])
