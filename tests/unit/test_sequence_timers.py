"""The sequence driver never sends a step before its intended time, even when the event
loop's timers fire early (uvloop's timers take whole milliseconds and compare against a
millisecond loop clock, so a sleep can end up to ~1.5 ms before its deadline when other
events keep the loop busy).

A start sent more than 1 ms early is refused by the coordinator's check (`sent <
intended - SEND_TOLERANCE_NS`: a bad clock), while the rest of its sequence is valid: the
run then counts one sequence fewer started than completed (seen once as 115 started,
116 completed). Here the worker's clock runs at half the loop's speed, so every loop
timer fires early by the driver's clock: half of the delay it asked for.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from agent.config import AgentLimits
from agent.sequences import SequenceDriver
from agent.transports.grpc_seq import GrpcSequence
from agent.worker import Worker, WorkerTask
from coordinator.sequences import SequenceStats
from coordinator.validate import AgentCheck
from volley import records as rc
from volley.plan import AgentSpec, Plan, plan_from_dict
from volley.sequence import resolve_ranges
from volley.wire.payloads import build_payloads

#: the fake server answers each step this long (loop time) after it was sent
SERVICE_S = 0.002


class SlowClock:
    """Monotonic ns at half the real rate: a loop timer set for d (by this clock) fires
    after d of real time, when this clock has moved d/2: early by d/2."""

    def __init__(self) -> None:
        self.t0 = time.monotonic_ns()

    def __call__(self) -> int:
        return self.t0 + (time.monotonic_ns() - self.t0) // 2


class InstantServer(GrpcSequence):
    """Answers every step OK after SERVICE_S; keeps (intended, sent) of every send."""

    def __init__(self, driver: SequenceDriver) -> None:  # no connection: nothing of super's
        self.driver = driver
        self.value = None
        self.sends: list[tuple[int, int]] = []

    def send_step(self, key: int, intended: int, pidx: int, body: bytes) -> None:
        sent = self.driver.now()
        self.sends.append((intended, sent))
        loop = asyncio.get_running_loop()
        loop.call_later(SERVICE_S, self._answer, key, intended, sent, pidx)

    def _answer(self, key: int, intended: int, sent: int, pidx: int) -> None:
        self.driver.complete(key, intended, sent, self.driver.now(), rc.OK, pidx, 8)


def _plan(**seq: Any) -> Plan:
    plan = plan_from_dict(
        {
            "target": "127.0.0.1:8001",
            "model": "acc",
            "seed": 16,
            "load": {"mode": "open", "arrival": "poisson", "rate": 60, "duration": "400ms"},
            "sequence": {"length": "2..4", "max_live": 50, "drain_s": 2, **seq},
        }
    )
    return resolve_ranges(plan.with_agents([AgentSpec("a0:1", 1)]))


async def _run(plan: Plan) -> tuple[InstantServer, Worker]:
    clock = SlowClock()
    task = WorkerTask(plan.to_json(), "r", 0, 0, 1, clock())
    w = Worker(task, None, threading.Event(), clock=clock)  # type: ignore[arg-type]
    w.payloads = build_payloads(plan)
    w.wires = w.payloads.wires
    drv = SequenceDriver(w)
    tp = InstantServer(drv)
    drv.tp = tp
    await asyncio.wait_for(drv.run(), 20)
    return tp, w


def _accounting(plan: Plan, w: Worker) -> tuple[AgentCheck, SequenceStats]:
    block = w.buf.take(w.payloads.shapes if w.payloads else [])
    assert block is not None
    check = AgentCheck.for_run(plan.to_json(), 0, workers=1)
    stats = SequenceStats(1)
    stats.ingest(0, check.records(block))
    return check, stats


async def test_early_timers_do_not_send_a_start_before_its_time() -> None:
    plan = _plan()
    tp, w = await _run(plan)
    assert len(tp.sends) > 40  # ~24 starts of 2..4 steps
    early = [(t, s) for t, s in tp.sends if s < t]
    assert not early, early[:5]
    check, stats = _accounting(plan, w)
    assert not check.faults and check.invalid == 0, check.faults
    assert stats.started > 10 and stats.refused == 0
    assert stats.started == stats.completed + stats.failed + stats.cut, vars(stats)
    assert stats.ended == stats.started and stats.finals == stats.started


async def test_early_timers_do_not_send_a_step_before_its_think_time() -> None:
    """Think times wait on loop timers too: a step is sent no earlier than its previous
    response plus its think time (its intended time)."""
    plan = _plan(think_ms="8")
    tp, w = await _run(plan)
    assert not [(t, s) for t, s in tp.sends if s < t]
    check, stats = _accounting(plan, w)
    assert not check.faults, check.faults
    assert stats.started == stats.completed + stats.failed + stats.cut == stats.ended
    assert stats.steps_ok > 2 * stats.started  # every step of every sequence was kept


async def test_a_start_held_by_the_rate_limit_at_a_stop_is_sent_then_ended() -> None:
    """Stopped while starts wait for the agent's --max-rate: each held start still goes
    (START), then gets its END; none gets an END without its START (which would count
    one sequence more ended than started)."""
    plan = _plan(max_live=8)
    limits = AgentLimits(max_rate=40)  # far below the 60 starts/s of 2..4 steps
    task = WorkerTask(plan.to_json(), "r", 0, 0, 1, time.monotonic_ns(), limits=limits)
    stop = threading.Event()
    w = Worker(task, None, stop)  # type: ignore[arg-type]
    w.payloads = build_payloads(plan)
    w.wires = w.payloads.wires
    drv = SequenceDriver(w)
    tp = InstantServer(drv)
    drv.tp = tp
    held: list[int] = []
    cut_all = drv._cut_all

    def counting_cut() -> None:
        held.append(sum(1 for s in drv.live.values() if s.step == 0 and not s.in_flight))
        cut_all()

    drv._cut_all = counting_cut  # type: ignore[method-assign]
    asyncio.get_running_loop().call_later(0.3, stop.set)
    await asyncio.wait_for(drv.run(), 20)
    assert held and held[0] >= 1, held  # the stop found starts waiting for their turn
    assert not drv.live
    check, stats = _accounting(plan, w)
    assert not check.faults, check.faults
    assert stats.cut >= 1 and stats.started == stats.completed + stats.failed + stats.cut
    assert stats.ended == stats.started, vars(stats)
