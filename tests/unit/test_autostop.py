"""`--duration auto`: the stop rule on merged figures, the run loop's one stop instant,
and the plan a stopped run amounts to (fake clock, records built here)."""

from __future__ import annotations

import asyncio

import numpy as np

from coordinator.aggregate import Aggregator
from coordinator.clock import ClockEstimate
from coordinator.run import RunLoop, RunOptions, StopReason
from coordinator.run.autostop import AutoDuration, look
from coordinator.run.results import auto_stopped_plan, scheduled_total
from coordinator.run.stream import AgentStream
from coordinator.summary import AgentInfo
from tests.unit.test_run_loop import FakeClient, FakeClock
from volley import records as rc
from volley.arrivals import global_schedule
from volley.plan import Plan, plan_from_dict
from volley.records import RecordBlock, RecordBuffer

S = 1_000_000_000


def _plan(slos: list[str], duration: str = "60s", arrival: str = "constant") -> Plan:
    return plan_from_dict(
        {
            "target": "127.0.0.1:8001",
            "model": "sleep",
            "seed": 3,
            "load": {"mode": "open", "arrival": arrival, "rate": 200, "duration": duration},
            "slos": slos,
        }
    )


def _records(t0_s: float, t1_s: float, rng: np.random.Generator, rate: float = 200) -> RecordBlock:
    """Arrivals at `rate`/s in [t0, t1): latency 5 ms + exponential 1 ms."""
    times = np.arange(int(t0_s * rate), int(t1_s * rate)) * int(S / rate)
    buf = RecordBuffer(max(len(times), 1))
    for i, t in enumerate(times.tolist()):
        lat = 5_000_000 + int(rng.exponential(1_000_000))
        buf.append(i, t, t + 10_000, t + lat, rc.OK, 64, 32, 1, 0, 0)
    block = buf.take([])
    assert block is not None
    return block


def test_look_waits_for_a_decision_and_stable_throughput() -> None:
    rng = np.random.default_rng(1)
    plan = _plan(["p99<50ms"])
    agg = Aggregator(1, 0)
    agg.ingest(0, _records(0, 6, rng))
    early = look(plan, agg, 6.5, AutoDuration())
    assert not early.done and "at least" in early.checks[0]
    agg.ingest(0, _records(6, 16, rng))
    later = look(plan, agg, 16.5, AutoDuration())
    assert later.done, later.checks
    assert later.checks[0].startswith("p99<50ms: pass")
    # a threshold at the true p99 (5 ms + 4.6 ms) stays undecided, and its interval is
    # wider than a 0.1 % target
    straddled = look(_plan(["p99<9.6ms"]), agg, 16.5, AutoDuration(target_width=0.001))
    assert not straddled.done and "wide" in straddled.checks[0]
    # a server falling behind: completions drop in the last windows
    agg2 = Aggregator(1, 0)
    agg2.ingest(0, _records(0, 16, np.random.default_rng(2)))
    for w in range(12, 15):
        agg2.completions[(w, 0)] //= 2
    assert not look(plan, agg2, 16.5, AutoDuration()).done


def _loop(plan: Plan, clock: FakeClock) -> tuple[RunLoop, list[FakeClient]]:
    clients = [FakeClient("agent0:7070")]
    info = AgentInfo(index=0, address="agent0:7070", clock=ClockEstimate(0, 1, 1000, 4))
    streams = [AgentStream(0, clients[0], info, clock)]
    opts = RunOptions(start_lead_s=0.0, keepalive_s=0.0, auto=AutoDuration())
    return RunLoop(plan, streams, opts, run_id="r1", clock=clock), clients


async def test_the_loop_fixes_one_stop_instant_and_leaves_later_records_out() -> None:
    rng = np.random.default_rng(4)
    plan = _plan(["p99<50ms"])
    clock = FakeClock()
    loop, clients = _loop(plan, clock)
    start = loop.agree_start()
    cut_at = None
    for sec in range(1, 40):
        loop.ingest(0, _records(sec - 1, sec, rng))
        clock.at(start, sec + 0.3)
        await loop.check_auto(clock.now)
        if loop.cut_ns is not None and cut_at is None:
            cut_at = sec
            # fixed at the next whole second: not yet told to stop
            assert loop.cut_ns == (sec + 1) * S and clients[0].stops == []
            break
    assert cut_at is not None and cut_at < 25
    # records intended from the cut on are left out, earlier ones kept
    before = loop.agg.total().records
    loop.ingest(0, _records(cut_at, cut_at + 2, rng))
    assert loop.agg.total().records == before + 200 * 1  # only [cut_at, cut_at + 1)
    assert loop.after_cut == 200
    clock.at(start, cut_at + 1.0)
    await loop.check_auto(clock.now)
    assert loop.stopped is StopReason.AUTO and clients[0].stops == [StopReason.AUTO.value]
    assert loop.auto_doc is not None and loop.auto_doc["stopped_at_s"] == cut_at + 1
    await asyncio.sleep(0)


def test_the_stopped_plan_is_the_schedule_prefix() -> None:
    """A run stopped at 7 s amounts to the same plan with a 7 s duration: its schedule is
    the first 7 s of the longer one (Poisson arrivals from the same seed)."""
    long = _plan([], "60s", "poisson")
    short = auto_stopped_plan(long, 7 * S)
    assert short.load.duration_s == 7.0
    n = sum(int((t < 7 * S).sum()) for _, t in global_schedule(long).chunks())
    assert scheduled_total(short) == n
    first = next(iter(global_schedule(short).chunks()))[1]
    again = next(iter(global_schedule(long).chunks()))[1]
    k = min(len(first), len(again), 100)
    assert np.array_equal(first[:k], again[:k])
