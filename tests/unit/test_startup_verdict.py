"""An agent that started late is late at the start, then keeps up: the verdict names its
start-up, never its capacity (issue 19). One that is late throughout is still blamed."""

from __future__ import annotations

from coordinator.aggregate import Aggregator
from coordinator.summary import AgentInfo, build_summary
from volley import records as rc
from volley.plan import plan_from_dict
from volley.records import RecordBuffer

MS = 1_000_000
RATE = 200  # per second, constant
SPAN_S = 3
PLAN = plan_from_dict(
    {
        "target": "grpc://127.0.0.1:8001",
        "model": "m",
        "load": {"rate": RATE, "duration": f"{SPAN_S}s"},
        "validity": {"min_duration_s": 1, "min_requests": 10},
    }
)


def _summary(start_late_ms: float, steady_late_ms: float) -> dict[str, object]:
    """One agent, one worker: it first sends `start_late_ms` after the start (every arrival
    due by then goes at once), then each arrival `steady_late_ms` after its time."""
    agg = Aggregator(1, 0)
    buf = RecordBuffer(RATE * SPAN_S + 1)
    for i in range(RATE * SPAN_S):
        intended = i * 1_000_000_000 // RATE
        sent = max(intended, int(start_late_ms * MS)) + int(steady_late_ms * MS)
        buf.append(i, intended, sent, sent + 2 * MS, rc.OK, 100, 100, 1, 0, 0)
    block = buf.take(["1"])
    assert block is not None
    agg.ingest(0, block)
    info = AgentInfo(index=0, address="127.0.0.1:1", id="local-7", workers=1, cpu_seconds=0.2)
    info.prepare_s, info.start_margin_ms = 4.2, -850.0
    s = build_summary(PLAN, "r", agg, [info], float(SPAN_S), RATE * SPAN_S)
    return dict(s)


def test_a_late_start_is_named_start_up_not_capacity() -> None:
    s = _summary(start_late_ms=900, steady_late_ms=0.2)
    (row,) = s["agents"]  # type: ignore[misc]
    assert row["start_skew_ms"] > 899
    assert row["send_lateness_ms"]["p99"] > 10  # the start-up broke the limit ...
    assert not row["saturated"] and row["saturation"] == ""  # ... not its capacity
    assert "started 900 ms late (start-up, not capacity" in row["startup"]
    assert "prepared in 4.20s" in row["startup"]
    reasons = s["verdict"]["reasons"]  # type: ignore[index]
    assert any("start-up" in r for r in reasons), reasons
    assert not any("worker" in r and "more" in r for r in reasons), reasons


def test_an_agent_late_throughout_is_still_the_bottleneck() -> None:
    s = _summary(start_late_ms=900, steady_late_ms=15)
    (row,) = s["agents"]  # type: ignore[misc]
    assert row["saturated"] and "more worker(s)" in row["saturation"]
    assert "startup" not in row


def test_an_agent_on_time_has_no_start_up_note() -> None:
    s = _summary(start_late_ms=0, steady_late_ms=0.2)
    (row,) = s["agents"]  # type: ignore[misc]
    assert not row["saturated"] and "startup" not in row
    assert s["verdict"]["valid"], s["verdict"]  # type: ignore[index]
