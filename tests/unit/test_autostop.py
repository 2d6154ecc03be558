"""`--duration auto`: the stop rule on merged figures, the run loop's one stop instant,
and the plan a stopped run amounts to (fake clock, records built here)."""

from __future__ import annotations

import asyncio

import numpy as np

from coordinator.aggregate import Aggregator
from coordinator.clock import ClockEstimate
from coordinator.intervals import run_confidence
from coordinator.run import RunLoop, RunOptions, StopReason
from coordinator.run.autostop import AutoDuration, look
from coordinator.run.loop import HOLD_S
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
    early = look(plan, agg, 6, AutoDuration())
    assert not early.done and "at least" in early.checks[0]
    agg.ingest(0, _records(6, 16, rng))
    later = look(plan, agg, 16, AutoDuration())
    assert later.done, later.checks
    assert later.checks[0].startswith("p99<50ms: pass")
    # a threshold at the true p99 (5 ms + 4.6 ms) stays undecided, and its interval is
    # wider than a 0.1 % target
    straddled = look(_plan(["p99<9.6ms"]), agg, 16, AutoDuration(target_width=0.001))
    assert not straddled.done and "wide" in straddled.checks[0]
    # a server falling behind: completions drop in the last windows
    agg2 = Aggregator(1, 0)
    agg2.ingest(0, _records(0, 16, np.random.default_rng(2)))
    for w in range(13, 16):  # the last three whole windows
        agg2.completions[(w, 0)] //= 2
    assert not look(plan, agg2, 16, AutoDuration()).done


def test_requests_in_flight_are_counted_as_unknown() -> None:
    """3,200 values bound p99 with room to spare; with 40 requests still out (each of
    which may be slower than all of them) the upper end is not known yet, and the SLO
    waits."""
    rng = np.random.default_rng(6)
    plan = _plan(["p99<50ms"])
    agg = Aggregator(1, 0)
    agg.ingest(0, _records(0, 16, rng))
    assert look(plan, agg, 16, AutoDuration()).done
    held = look(plan, agg, 16, AutoDuration(), pending=40)
    assert not held.done and "40 in flight, counted as unknown" in held.checks[0], held.checks


def _loop(plan: Plan, clock: FakeClock) -> tuple[RunLoop, list[FakeClient]]:
    clients = [FakeClient("agent0:7070")]
    info = AgentInfo(index=0, address="agent0:7070", clock=ClockEstimate(0, 1, 1000, 4))
    streams = [AgentStream(0, clients[0], info, clock)]
    opts = RunOptions(start_lead_s=0.0, keepalive_s=0.0, auto=AutoDuration())
    return RunLoop(plan, streams, opts, run_id="r1", clock=clock), clients


def _slow(t0_s: float, t1_s: float, rate: float = 200) -> RecordBlock:
    """A slow spell: every request of [t0, t1) takes 400 ms."""
    times = np.arange(int(t0_s * rate), int(t1_s * rate)) * int(S / rate)
    buf = RecordBuffer(max(len(times), 1))
    for i, t in enumerate(times.tolist()):
        buf.append(i, t, t + 10_000, t + 400_000_000, rc.OK, 64, 32, 1, 0, 0)
    block = buf.take([])
    assert block is not None
    return block


async def test_the_stop_instant_ends_what_the_deciding_look_judged() -> None:
    """Records wait HOLD_S past their window before the figures get them; the deciding
    look fixes the stop instant at the end of the windows it judged and stops the agents
    at once. A slow spell right after that instant (records already held, and ones still
    to come) is left out, so the summary's own interval, at the plan's 95 %, is still
    bounded below the threshold (when the stop instant was the next whole second, such a
    spell's first second was in the summary's figures: 200 values at 400 ms, its p99)."""
    rng = np.random.default_rng(4)
    plan = _plan(["p99<50ms"])
    clock = FakeClock()
    loop, clients = _loop(plan, clock)
    start = loop.agree_start()
    decided_at = None
    for sec in range(1, 40):
        loop.ingest(0, _records(sec - 1, sec, rng))
        clock.at(start, sec + 0.3)
        # the records of [sec - 1, sec) wait: the figures have the windows before sec - 1
        assert loop.agg.total().records == 200 * max(sec - 1 - HOLD_S, 0)
        await loop.check_auto(clock.now)
        if loop.cut_ns is not None:
            decided_at = sec
            break
    assert decided_at is not None and decided_at < 25
    judged = decided_at - HOLD_S
    assert loop.cut_ns == judged * S
    assert loop.stopped is StopReason.AUTO and clients[0].stops == [StopReason.AUTO.value]
    assert loop.auto_doc is not None and loop.auto_doc["stopped_at_s"] == judged
    assert loop.agg.total().records == 200 * judged
    assert loop.after_cut == 200 * (decided_at - judged)  # the held records: dropped
    # the agents' last records: a straggler of a judged window counts, the slow spell
    # from the stop instant on does not
    loop.ingest(0, _slow(judged - 0.004, judged + 2))
    assert loop.agg.total().records == 200 * judged + 1
    block = run_confidence(loop.agg, loop.agg.total(), float(judged), 0.95)
    p99 = block["latency_ms"]["p99"]
    assert p99["high"] is not None and p99["high"] < 50, p99
    # had the spell's first second been measured (the old stop instant), p99 would fail
    loop.agg.ingest(0, _slow(judged, judged + 1))
    worse = run_confidence(loop.agg, loop.agg.total(), float(judged + 1), 0.95)
    assert worse["latency_ms"]["p99"]["low"] > 50
    await asyncio.sleep(0)


async def test_held_records_all_reach_the_figures_when_the_run_ends_undecided() -> None:
    """A run that reaches its planned end (or is stopped) keeps every record: what was
    still held goes into the figures and the records file at shutdown."""
    rng = np.random.default_rng(8)
    plan = _plan(["p99<5.2ms"], duration="5s")  # never decided: the p99 is ~9.6 ms
    clock = FakeClock()
    loop, _clients = _loop(plan, clock)
    start = loop.agree_start()
    for sec in range(1, 6):
        loop.ingest(0, _records(sec - 1, sec, rng))
        clock.at(start, sec + 0.3)
        await loop.on_tick(clock.now)
    assert loop.cut_ns is None and 0 < loop.agg.total().records < 1000
    await loop.shutdown()
    assert loop.agg.total().records == 1000 and loop.held == []


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


def _streamed(t0_s: float, t1_s: float, rate: float = 200) -> RecordBlock:
    """Streaming records of [t0, t1): 3 responses each, gaps 2 ms and 3 ms."""
    times = np.arange(int(t0_s * rate), int(t1_s * rate)) * int(S / rate)
    buf = RecordBuffer(max(len(times), 1))
    for i, t in enumerate(times.tolist()):
        buf.note_stream(t + 1_000_000, t + 6_000_000, 3, 3, [2_000_000, 3_000_000])
        buf.append(i, t, t + 10_000, t + 6_000_000, rc.OK, 64, 32, 1, 0, 0)
    block = buf.take([])
    assert block is not None and block.gaps.size == 2 * len(times)
    return block


async def test_held_and_cut_blocks_keep_their_streaming_gaps() -> None:
    """A block split at the release boundary and at the stop instant keeps each record's
    inter-token gaps with it (the ragged column follows the records)."""
    plan = _plan([])
    clock = FakeClock()
    loop, _clients = _loop(plan, clock)
    start = loop.agree_start()
    loop.ingest(0, _streamed(0, 4))  # one block across 4 windows
    clock.at(start, 3.2)  # windows 0-1 whole (HOLD_S past their end)
    await loop.on_tick(clock.now)
    total = loop.agg.total()
    assert total.records == 400 and total.itl.count == 800
    loop.cut_ns = 3 * S  # as a deciding look would: records of window 3 are out
    loop.release(None)
    total = loop.agg.total()
    assert total.records == 600 and total.itl.count == 1200 and loop.after_cut == 200
