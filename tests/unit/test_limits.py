"""The agent's limits: the plan-time window check on the agent's own slice (against a
brute-force count), the per-worker pacer, the workers' shares, LIMITED in the summaries,
and the worker's send path under a pacer (fake transport and clock, no server)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import AgentConfig, AgentLimits
from agent.limits import (
    Pacer,
    agent_times,
    check_plan,
    first_crowded_window,
    send_time_note,
    worker_quotas,
)
from agent.worker import Worker, WorkerTask
from coordinator.aggregate import Stats
from volley import records as rc
from volley.plan import Plan, plan_from_dict
from volley.schedule import RateProfile

S = 1_000_000_000


def _plan(load: dict[str, Any], agents: list[int] | None = None, seed: int = 0) -> Plan:
    d: dict[str, Any] = {"target": "127.0.0.1:8001", "model": "add", "load": load, "seed": seed}
    if agents:
        d["agents"] = [
            {"address": f"127.0.0.1:{7000 + i}", "weight": w} for i, w in enumerate(agents)
        ]
    return plan_from_dict(d)


def _burst_trace() -> list[int]:
    """A 190 req/s burst (190 arrivals within one second) in a 20 s trace of 200 arrivals:
    an average of 10 req/s."""
    burst = [5 * S + i * (S // 190) for i in range(190)]
    calm = [s * S for s in (0, 2, 4, 7, 9, 11, 13, 15, 17, 20)]
    times = sorted(calm + burst)
    assert len(times) == 200 and times[-1] == 20 * S
    return times


def _brute_peak(times: npt.NDArray[np.int64], window: int) -> int:
    """The most arrivals in any half-open window [t, t + window), by brute force."""
    if times.size == 0:
        return 0
    ends = np.searchsorted(times, times + window, side="left")
    return int((ends - np.arange(times.size)).max())


# ---------------------------------------------------------------- plan time
def test_a_burst_above_the_rate_limit_is_refused_whatever_the_average() -> None:
    plan = _plan({"arrival": "trace", "trace": {"times_ns": _burst_trace()}})
    why = check_plan(plan, 0, AgentLimits(max_rate=50))
    assert why is not None and "\n" not in why
    assert "190 arrivals in the 1 s window from 5.000s" in why, why
    assert "above its limit of 50/s (50 in any 1 s window)" in why
    assert check_plan(plan, 0, AgentLimits(max_rate=190)) is None
    assert check_plan(plan, 0, AgentLimits(max_rate=189)) is not None


def test_constant_rate_at_the_limit_passes_and_just_above_is_refused() -> None:
    assert check_plan(_plan({"rate": 50, "duration": "10s"}), 0, AgentLimits(max_rate=50)) is None
    # 50.5/s: 51 arrivals in 0.99 s; the limit allows floor(50.5) = 50 per second
    why = check_plan(_plan({"rate": 50.5, "duration": "10s"}), 0, AgentLimits(max_rate=50.5))
    assert why is not None and "51 arrivals in the 1 s window" in why
    why = check_plan(_plan({"rate": 100, "duration": "10s"}), 0, AgentLimits(max_rate=50))
    assert why is not None and "above its limit of 50/s" in why


def test_poisson_bursts_count_exactly() -> None:
    """No tolerance: the schedule is deterministic from the seed, so a Poisson plan whose
    mean is under the limit is refused when its own bursts go over it."""
    plan = _plan({"arrival": "poisson", "rate": 40, "duration": "60s"})
    peak = _brute_peak(np.concatenate(list(agent_times(plan, 0))), S)
    assert peak > 50  # Poisson(40) over 60 s of sliding windows
    why = check_plan(plan, 0, AgentLimits(max_rate=50))
    assert why is not None and "arrivals in the 1 s window from" in why
    assert check_plan(plan, 0, AgentLimits(max_rate=peak)) is None


def test_agent_slices_are_checked_on_their_own_share() -> None:
    plan = _plan({"rate": 100, "duration": "5s"}, agents=[1, 3])
    assert check_plan(plan, 1, AgentLimits(max_rate=75)) is None
    assert check_plan(plan, 1, AgentLimits(max_rate=74)) is not None
    assert check_plan(plan, 0, AgentLimits(max_rate=25)) is None


@settings(max_examples=40, deadline=None)
@given(
    arrival=st.sampled_from(["constant", "poisson", "stages"]),
    rate=st.floats(1.0, 300.0),
    limit=st.floats(1.0, 300.0),
    weights=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    seed=st.integers(0, 1000),
    data=st.data(),
)
def test_the_check_matches_a_brute_force_count(
    arrival: str, rate: float, limit: float, weights: list[int], seed: int, data: st.DataObject
) -> None:
    k = data.draw(st.integers(0, len(weights) - 1))
    load: dict[str, Any] = {"arrival": "poisson" if arrival == "poisson" else "constant"}
    if arrival == "stages":
        load["stages"] = [
            {"duration": "2s", "rate": rate / 3},
            {"duration": "1s", "rate": rate},
            {"duration": "0s", "rate": rate / 2},
            {"duration": "2s", "rate": rate / 2},
        ]
    else:
        load.update(rate=rate, duration="4s")
    plan = _plan(load, weights if len(weights) > 1 else None, seed)
    lim = AgentLimits(max_rate=limit)
    times = np.concatenate([np.zeros(0, np.int64), *agent_times(plan, k)])
    over = _brute_peak(times, S) > lim.window_quota
    # the rate curve alone over the limit is refused without counting (conservative)
    curve_over = rate * weights[k] / sum(weights) > limit
    assert (check_plan(plan, k, lim) is not None) == (over or curve_over)


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.integers(0, 3 * S // 10), min_size=0, max_size=300),
    k=st.integers(0, 20),
    cuts=st.lists(st.integers(0, 300), max_size=8),
)
def test_the_window_scan_does_not_depend_on_the_chunks(
    gaps: list[int], k: int, cuts: list[int]
) -> None:
    times = np.cumsum(np.array(gaps, dtype=np.int64))
    parts = np.split(times, sorted(c for c in cuts if c <= times.size))
    found = first_crowded_window(iter(parts), k, S)
    assert (found is not None) == (_brute_peak(times, S) > k)
    if found is not None:
        start, count = found
        assert count > k
        assert count == int(np.searchsorted(times, start + S) - np.searchsorted(times, start))


def test_closed_loop_is_accepted_under_a_rate_limit_and_left_to_the_pacer() -> None:
    plan = _plan({"mode": "closed", "concurrency": 8, "duration": "3s"})
    lim = AgentLimits(max_rate=10)
    assert check_plan(plan, 0, lim) is None
    note = send_time_note(plan, lim)
    assert "closed loop" in note and "send time" in note and "1 s window" in note
    assert send_time_note(plan, AgentLimits()) == ""
    # the concurrency share against the in-flight limit, from the exact split
    assert check_plan(plan, 0, AgentLimits(max_in_flight=8)) is None
    why = check_plan(plan, 0, AgentLimits(max_in_flight=7))
    assert why is not None and "concurrency (8)" in why
    two = _plan({"mode": "closed", "concurrency": 9, "duration": "3s"}, agents=[1, 1])
    assert check_plan(two, 0, AgentLimits(max_in_flight=4)) is not None  # 5 users
    assert check_plan(two, 1, AgentLimits(max_in_flight=4)) is None  # 4 users


def test_a_big_plan_is_checked_in_bounded_time() -> None:
    import time

    plan = _plan({"rate": 20_000, "duration": "120s"})
    t0 = time.process_time()
    assert check_plan(plan, 0, AgentLimits(max_rate=20_000)) is None
    assert time.process_time() - t0 < 2.0


def test_the_constant_rate_fast_path_gives_the_same_bits() -> None:
    rng = np.random.default_rng(7)
    for r, d in [(20_000.0, 600.0), (1 / 3, 30.0), (0.1, 30.0), (7.7, 1 / 3), (4_999_999.5, 3.0)]:
        fast = RateProfile.constant(r, d)
        general = copy.copy(fast)
        general._single_rate = 0.0  # the general root
        total = fast.expected_count()
        u = np.concatenate([np.arange(min(total, 10_000)), rng.uniform(0, 1.1 * total, 10_000)])
        assert np.array_equal(fast.inverse_cumulative_ns(u), general.inverse_cumulative_ns(u))


# ---------------------------------------------------------------- shares and pacer
@given(
    rate=st.floats(0.01, 1e5),
    in_flight=st.integers(0, 1000),
    workers=st.integers(1, 64),
)
def test_worker_shares_sum_to_the_agent_limit(rate: float, in_flight: int, workers: int) -> None:
    cfg = AgentConfig(workers=workers, limits=AgentLimits(max_rate=rate, max_in_flight=in_flight))
    n = cfg.workers
    assert 1 <= n <= workers
    shares = [worker_quotas(cfg.limits, n, j) for j in range(n)]
    assert sum(r for r, _ in shares) == cfg.limits.window_quota
    assert all(r >= 1 for r, _ in shares)  # never a worker that can send nothing
    if in_flight:
        assert sum(f for _, f in shares) == in_flight and all(f >= 1 for _, f in shares)
    else:
        assert all(f == -1 for _, f in shares)
    assert worker_quotas(AgentLimits(), 4, 0) == (-1, -1)


def test_a_rate_below_one_per_second_widens_the_window() -> None:
    lim = AgentLimits(max_rate=0.5)
    assert (lim.window_quota, lim.window_ns) == (1, 2 * S)
    assert (AgentLimits(max_rate=2.5).window_quota, AgentLimits(max_rate=2.5).window_ns) == (2, S)


@given(
    quota=st.integers(1, 30),
    gaps=st.lists(st.integers(0, S // 8), min_size=1, max_size=400),
)
def test_the_pacer_allows_at_most_its_quota_in_any_window(quota: int, gaps: list[int]) -> None:
    pacer = Pacer(quota, S)
    sent: list[int] = []
    now = 0
    for g in gaps:
        now += g
        if now >= pacer.free_at():
            pacer.took(now)
            sent.append(now)
    assert _brute_peak(np.array(sent, dtype=np.int64), S) <= quota
    # exact: a full quota at once, then nothing until a window later
    p = Pacer(quota, S)
    for _ in range(quota):
        assert p.free_at() <= 0
        p.took(0)
    assert p.free_at() == S
    assert Pacer(0, S).free_at() > 1 << 61


# ---------------------------------------------------------------- LIMITED in summaries
def test_limited_is_its_own_status_and_counts_as_an_error() -> None:
    assert rc.LIMITED not in (rc.DROPPED, rc.NOT_SENT) and rc.status_name(rc.LIMITED) == "LIMITED"
    stats = Stats()
    status = np.array([rc.OK, rc.LIMITED, rc.LIMITED], dtype=np.uint16)
    neg = np.array([0, -1, -1], dtype=np.int64)
    stats.add(
        {
            "status": status,
            "intended_ns": np.zeros(3, np.int64),
            "sent_ns": neg,
            "done_ns": neg + 5,
            "req_bytes": np.zeros(3, np.int64),
            "resp_bytes": np.zeros(3, np.int64),
        }
    )
    assert stats.errors == 2 and stats.error_codes == {rc.LIMITED: 2} and stats.sent == 1


# ---------------------------------------------------------------- the worker's send path
class FakeTransport:
    """Records what the worker hands over; nothing completes."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.sent: list[tuple[int, int]] = []

    def send(self, key: int, intended: int, pidx: int) -> None:
        self.in_flight += 1
        self.sent.append((key, intended))


class Wire:
    shape_id = 0
    model_id = 0
    req_bytes = 10
    batch_size = 1


def _worker(limits: AgentLimits, workers: int = 1, clock: list[int] | None = None) -> Worker:
    plan = _plan({"rate": 100, "duration": "5s", "max_in_flight": 0})
    task = WorkerTask(plan.to_json(), "r", 0, 0, workers, 0, limits=limits)
    now = clock if clock is not None else [0]
    w = Worker(task, None, None, clock=lambda: now[0])  # type: ignore[arg-type]
    w.tp = FakeTransport()  # type: ignore[assignment]
    w.wires = [Wire()]  # type: ignore[list-item]
    return w


def test_without_limits_the_send_path_is_the_plain_one() -> None:
    w = _worker(AgentLimits())
    assert w.pacer is None and w._issue == w._send and w._user_next == w._user_go


def test_open_loop_arrivals_past_the_rate_limit_are_recorded_limited() -> None:
    clock = [0]
    w = _worker(AgentLimits(max_rate=10), workers=2, clock=clock)  # this worker: 5 a second
    tp = w.tp
    assert isinstance(tp, FakeTransport)
    for i in range(40):  # 20 arrivals a second for 2 s
        clock[0] = i * S // 20
        w._issue(i, clock[0], 0)
    sent = np.array([t for _, t in tp.sent], dtype=np.int64)
    assert len(sent) == 10 and _brute_peak(sent, S) == 5
    block = w.buf.take([])
    assert block is not None and len(block) == 30 and w.counters.errors == 30
    assert (block.col("status") == rc.LIMITED).all() and (block.col("sent_ns") == -1).all()
