"""The generator is blamed for lateness only on a run of late sends, not on one or two."""

from __future__ import annotations

from coordinator.aggregate import Stats
from coordinator.summary import MIN_LATE_SENDS, AgentInfo, _behind, sends_later_than
from volley.histogram import LogHistogram
from volley.plan import plan_from_dict

PLAN = plan_from_dict(
    {"target": "grpc://127.0.0.1:8001", "model": "m", "load": {"rate": 40, "duration": "3s"}}
)


def stats_with(late_ms: list[float], on_time: int) -> Stats:
    st = Stats()
    for ms in late_ms:
        st.lateness.record(int(ms * 1e6))
    for _ in range(on_time):
        st.lateness.record(200_000)  # 0.2 ms: on time
    st.sent = st.records = st.ok = st.lateness.count
    return st


def test_sends_later_than_never_over_counts() -> None:
    h = LogHistogram()
    for ms in (9.99, 10.0, 10.2, 15.0, 30.0):
        h.record(int(ms * 1e6))
    # 10.0 shares a bucket with the limit: left out; 10.2, 15 and 30 are surely later
    assert sends_later_than(h, 10e6) == 3
    assert sends_later_than(h, 100e6) == 0
    assert sends_later_than(LogHistogram(), 10e6) == 0


def test_two_stalls_in_a_short_step_do_not_blame_the_generator() -> None:
    info = AgentInfo(index=0, address="a", id="t0", workers=1, cpu_seconds=0.3)
    st = stats_with([21.0, 20.5], on_time=124)  # p99 of 126 sends is the 2nd latest
    assert st.lateness.percentile(99) > 10e6
    behind = _behind(PLAN, st, info, span_s=3.0)
    assert behind is None, behind


def test_a_run_of_late_sends_does() -> None:
    info = AgentInfo(index=0, address="a", id="t0", workers=1, cpu_seconds=0.3)
    st = stats_with([20.0] * MIN_LATE_SENDS, on_time=116)
    behind = _behind(PLAN, st, info, span_s=3.0)
    assert behind is not None and "send lateness p99 20.0 ms" in behind.reason, behind


def test_a_high_late_fraction_of_a_few_sends_does_not_either() -> None:
    """64 agents at 2 req/s for 3 s: 6 sends each, 4 of them 1-3 ms late on a busy host
    is 67 % late, but four sends are not a run of them."""
    info = AgentInfo(index=0, address="a", id="t0", workers=1, cpu_seconds=0.01)
    few = Stats()
    for ms in (1.5, 2.0, 2.5, 3.0, 0.2, 0.2):
        few.lateness.record(int(ms * 1e6))
    few.sent = few.records = few.ok = 6
    few.late = 4
    assert _behind(PLAN, few, info, span_s=3.0) is None
    many = Stats()
    for ms in [1.5, 2.0, 2.5] * 4 + [0.2] * 6:
        many.lateness.record(int(ms * 1e6))
    many.sent = many.records = many.ok = 18
    many.late = 12
    behind = _behind(PLAN, many, info, span_s=3.0)
    assert behind is not None and "66.7% of sends >1 ms late" in behind.reason
