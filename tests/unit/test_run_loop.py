"""The run loop's tick steps, one by one, with a fake clock and fake agents (no process,
no network, no sleep inside the logic)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.session import SessionState
from coordinator.agents import AgentState
from coordinator.clock import ClockEstimate
from coordinator.run import (
    SEAL_EVERY_NS,
    AgentStream,
    Progress,
    RunLoop,
    RunOptions,
    StopReason,
)
from coordinator.run.loop import IDLE_TICK_S, TICK_S, records_flow, tick_period
from coordinator.run.results import annotate
from coordinator.run.stream import MAX_PINGS_IN_FLIGHT, Silence
from coordinator.rundir import timeseries_rows
from coordinator.summary import AgentInfo
from volley.liveness import MISSED_BEATS, SilenceClock
from volley.plan import Plan, plan_from_dict
from volley.records import RecordBuffer
from volley.v1 import control_pb2 as pb

S = 1_000_000_000  # ns per second
T0 = 1_000 * S  # the fake clock's reading at construction


class FakeClock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def at(self, start: int, seconds: float) -> int:
        self.now = start + round(seconds * S)
        return self.now


@dataclass
class FakeClient:
    """An agent's Run stream fed from a queue; records every Stop it is sent."""

    address: str
    events: asyncio.Queue[pb.RunEvent | BaseException | None] = field(default_factory=asyncio.Queue)
    stops: list[str] = field(default_factory=list)
    requests: list[pb.RunRequest] = field(default_factory=list)
    closed: bool = False

    async def run(self, request: pb.RunRequest) -> AsyncIterator[pb.RunEvent]:
        self.requests.append(request)
        while True:
            ev = await self.events.get()
            if ev is None:
                return
            if isinstance(ev, BaseException):
                raise ev
            yield ev

    async def keepalive(self, run_id: str, timeout_s: float = 1.0) -> bool:
        return True

    async def ping(self, run_id: str, timeout_s: float = 1.0) -> bool:
        return await self.keepalive(run_id, timeout_s)

    async def stop(self, run_id: str, reason: str, timeout_s: float = 2.0) -> bool:
        self.stops.append(reason)
        return True

    async def discard(self, run_id: str, slot: int | None = None, timeout_s: float = 5.0) -> bool:
        return True

    async def close(self) -> None:
        self.closed = True


def _plan(duration_s: float = 10.0, timeout_s: float = 2.0) -> Plan:
    return plan_from_dict(
        {
            "target": "127.0.0.1:8001",
            "model": "add",
            "load": {"mode": "open", "rate": 10, "duration": f"{duration_s}s"},
            "timeout_s": timeout_s,
        }
    )


def _loop(
    n: int = 2,
    plan: Plan | None = None,
    clock: FakeClock | None = None,
    **opts: Any,
) -> tuple[RunLoop, list[FakeClient], FakeClock]:
    clock = clock or FakeClock()
    clients = [FakeClient(f"agent{i}:7070") for i in range(n)]
    streams = [
        AgentStream(
            i,
            c,
            AgentInfo(index=i, address=c.address, clock=ClockEstimate(7 * i, 1, 1000 * i, 4)),
            clock,
        )
        for i, c in enumerate(clients)
    ]
    options = RunOptions(start_lead_s=2.0, keepalive_s=0.0, **opts)
    loop = RunLoop(plan or _plan(), streams, options, run_id="r1", clock=clock)
    return loop, clients, clock


async def _settle() -> None:
    """Let the stream tasks take what is queued (the clock does not move)."""
    for _ in range(5):
        await asyncio.sleep(0)


def _status(agent_ns: int, cpu: float = 50.0) -> pb.RunEvent:
    return pb.RunEvent(status=pb.AgentStatus(state="running", agent_ns=agent_ns, cpu_percent=cpu))


def _finished(ok: bool = True, error: str = "") -> pb.RunEvent:
    return pb.RunEvent(finished=pb.Finished(run_id="r1", ok=ok, error=error))


# ---------------------------------------------------------------- start instant


def test_agree_start_adds_lead_and_worst_rtt() -> None:
    loop, _, _ = _loop()
    start = loop.agree_start()
    assert start == T0 + 2 * S + 1000  # lead 2 s + the largest RTT
    assert [s.start_at_agent_ns for s in loop.streams] == [start, start + 7]
    # deadline: the load's span + the request timeout + 15 s
    assert loop.deadline_ns == start + (10 + 2 + 15) * S
    assert loop.next_seal_ns == start + SEAL_EVERY_NS


async def test_startup_sends_each_agent_its_request() -> None:
    loop, clients, _ = _loop()
    loop.agree_start()
    loop.startup()
    await _settle()
    for i, c in enumerate(clients):
        (req,) = c.requests
        assert req.run_id == "r1" and req.agent_index == i
        assert req.start_at_agent_ns == loop.streams[i].start_at_agent_ns
        assert loop.streams[i].state is AgentState.RUNNING
    await loop.shutdown()


# ---------------------------------------------------------------- liveness


async def test_silent_agent_is_missing_after_the_heartbeat_timeout() -> None:
    loop, clients, clock = _loop(heartbeat_timeout_s=2.5)
    start = loop.agree_start()
    clock.at(start, 0.0)
    loop.startup()
    await _settle()
    a, b = loop.streams
    missing_at = None
    for tick in range(1, 40):
        now = clock.at(start, tick / 10)
        if tick == 10:  # agent 1 sends a heartbeat at 1.0 s
            clients[1].events.put_nowait(_status(now))
            await _settle()
        loop.check_liveness(now)
        await _settle()
        if a.state is AgentState.MISSING and missing_at is None:
            missing_at = tick
            assert b.state is AgentState.RUNNING
    assert missing_at == 26  # silent 2.6 s > 2.5 s (2.5 s itself is not enough)
    assert a.lost_ns == start + 26 * S // 10
    assert a.info.error == "no heartbeat for 2.6s"
    # agent 1 was heard at 1.0 s: missing at 3.6 s
    assert b.state is AgentState.MISSING and b.lost_ns == start + 36 * S // 10
    # missing, not given up on: the streams stay open, nobody is told to stop
    assert a.active and b.active and clients[0].stops == clients[1].stops == []
    # silent 7.5 s more (10 s in all): cut, told to stop
    cut_at = None
    for tick in range(40, 120):
        loop.check_liveness(clock.at(start, tick / 10))
        await _settle()
        if not a.active and cut_at is None:
            cut_at = tick
            assert b.active
    assert cut_at == 101
    assert a.task is not None and a.task.cancelled()
    assert a.state is AgentState.MISSING and a.info.error == "no heartbeat for 2.6s"
    assert clients[0].stops == ["declared missing"]
    assert not b.active and clients[1].stops == ["declared missing"]  # cut at 11.1 s
    await loop.shutdown()


async def test_on_tick_checks_liveness() -> None:
    loop, clients, clock = _loop(n=1, heartbeat_timeout_s=2.5)
    start = loop.agree_start()
    clock.at(start, 0.0)
    loop.startup()
    await _settle()
    assert await loop.on_tick(clock.at(start, 2.5))
    assert [s.state for s in loop.streams] == [AgentState.RUNNING]
    assert await loop.on_tick(clock.at(start, 2.6))
    await _settle()
    assert [s.state for s in loop.streams] == [AgentState.MISSING] and loop.running
    for tick in range(27, 102):  # silent past the wait: cut
        assert await loop.on_tick(clock.at(start, tick / 10))
    await _settle()
    assert not loop.running
    await loop.shutdown()
    assert clients[0].stops == ["declared missing"] and not clients[0].closed


def test_silence_clock_counts_only_the_checkers_running_time() -> None:
    watch = SilenceClock(max_gap=S // 2)
    assert watch.check(T0, T0) == 0
    assert watch.check(T0 + S // 10, T0) == S // 10  # ticks 0.1 s apart: all counts
    # a 5 s gap between ticks: this side was not running; 0.5 s of it counts
    assert watch.check(T0 + 51 * S // 10, T0) == S // 10 + S // 2
    assert watch.check(T0 + 52 * S // 10, T0) == S // 10 + S // 2 + S // 10
    # heard in the middle of a gap: at most the gap's credit counts after it
    watch = SilenceClock(max_gap=S // 2)
    watch.check(T0, T0)
    assert watch.check(T0 + 5 * S, T0 + S // 100) == S // 2
    # heard since the last tick, within the credit: counted exactly
    assert watch.check(T0 + 5 * S + S // 10, T0 + 5 * S + S // 20) == S // 20
    # an older instant than one already seen changes nothing
    assert watch.check(T0 + 5 * S + S // 5, T0) == S // 20 + S // 10


async def test_a_coordinator_pause_is_not_the_agents_silence() -> None:
    """The coordinator stopped for 5 s (SIGSTOP): its agents' heartbeats queue up in the
    sockets. At the first tick after it resumes (before the queued events are read)
    nobody is missing; an agent that really is silent is missing after 2.5 s of the
    coordinator's running time (its silence before the pause, + 0.5 s, + after)."""
    loop, clients, clock = _loop(heartbeat_timeout_s=2.5)
    start = loop.agree_start()
    clock.at(start, 0.0)
    loop.startup()
    await _settle()
    for tick in range(1, 21):  # 2 s of heartbeats every 0.1 s, both agents
        now = clock.at(start, tick / 10)
        for c in clients:
            c.events.put_nowait(_status(now))
        await _settle()
        assert await loop.on_tick(now)
    # paused from 2.0 s to 7.0 s; the first tick runs before any queued event is read
    assert await loop.on_tick(clock.at(start, 7.0))
    await _settle()
    assert [s.state for s in loop.streams] == [AgentState.RUNNING] * 2
    # now the queued heartbeats of agent 0 are read; agent 1 really went silent at 2.0 s
    for _ in range(20):
        clients[0].events.put_nowait(_status(clock.now))
    await _settle()
    a, b = loop.streams
    missing_at = None
    for tick in range(71, 120):
        now = clock.at(start, tick / 10)
        clients[0].events.put_nowait(_status(now))
        await _settle()
        assert await loop.on_tick(now)
        await _settle()
        if b.state is AgentState.MISSING and missing_at is None:
            missing_at = tick
            assert b.info.error == "no heartbeat for 2.6s"
    assert a.state is AgentState.RUNNING and a.lost_ns == 0
    assert missing_at == 91  # 0.5 s of the pause + 2.1 s after it: 2.6 s > 2.5 s
    assert all(c.stops == [] for c in clients)
    await loop.shutdown()


async def test_a_missing_agent_that_speaks_again_is_taken_back() -> None:
    loop, clients, clock = _loop(n=1, heartbeat_timeout_s=2.5)
    start = loop.agree_start()
    clock.at(start, 0.0)
    loop.startup()
    await _settle()
    s = loop.streams[0]
    for tick in range(1, 41):
        now = clock.at(start, tick / 10)
        if tick == 40:  # paused agent resumes at 4.0 s: its backlog arrives
            clients[0].events.put_nowait(_status(now))
            await _settle()
        assert await loop.on_tick(now)
        await _settle()
        if tick == 26:
            assert s.state is AgentState.MISSING and s.lost_ns == start + 26 * S // 10
    assert s.state is AgentState.RUNNING and s.lost_ns == 0 and s.info.error == ""
    assert s.silences == [Silence(start, start + 26 * S // 10, start + 4 * S)]
    assert clients[0].stops == []
    clients[0].events.put_nowait(_finished())
    await _settle()
    assert s.state is AgentState.DONE and not s.state.partial
    summary: Any = {"agents": [{}], "verdict": {"warnings": []}}
    annotate(summary, loop.streams, start, Path("/runs/x"))
    assert summary["agents"][0]["silences"] == [{"heard_s": 0.0, "missing_s": 2.6, "back_s": 4.0}]
    assert summary["agents"][0]["lost_detected_s"] is None
    assert summary["partial_agents"] == [] and "recovery" not in summary
    (warning,) = summary["verdict"]["warnings"]
    assert "agent agent0:7070 was silent for 4.0s" in warning
    assert "declared missing at 2.6s, heard again at 4.0s" in warning
    await loop.shutdown()


async def test_a_missing_agent_is_cut_once_the_run_is_over_without_it() -> None:
    """The others have ended and the schedule and request timeout have passed (5 + 2 s):
    no use waiting the rest of the 10 s for the missing one."""
    loop, clients, clock = _loop(plan=_plan(duration_s=5.0), heartbeat_timeout_s=2.5)
    start = loop.agree_start()
    clock.at(start, 0.0)
    loop.startup()
    await _settle()
    a, b = loop.streams
    for tick in range(1, 80):
        now = clock.at(start, tick / 10)
        if tick < 65:
            clients[0].events.put_nowait(_status(now))
        elif tick == 65:
            clients[0].events.put_nowait(_finished())
        await _settle()
        assert await loop.on_tick(now)
        await _settle()
        if tick == 69:
            assert a.state is AgentState.DONE and b.state is AgentState.MISSING and b.active
    assert not b.active and clients[1].stops == ["declared missing"]
    assert b.state is AgentState.MISSING and b.lost_ns == start + 26 * S // 10
    await loop.shutdown()


async def test_a_stopped_run_does_not_wait_for_a_missing_agent() -> None:
    stop = asyncio.Event()
    loop, clients, clock = _loop(n=1, heartbeat_timeout_s=2.5, stop_event=stop)
    start = loop.agree_start()
    clock.at(start, 0.0)
    loop.startup()
    await _settle()
    assert await loop.on_tick(clock.at(start, 2.6))
    await _settle()
    assert loop.streams[0].state is AgentState.MISSING and loop.running
    stop.set()  # the user interrupts: nothing else to wait for
    assert await loop.on_tick(clock.at(start, 2.7))
    assert await loop.on_tick(clock.at(start, 2.8))
    await _settle()
    assert not loop.running
    assert clients[0].stops == ["interrupted by the user", "declared missing"]
    await loop.shutdown()


async def test_keepalive_does_not_wait_for_the_previous_answer() -> None:
    """A stalled agent: pings go out every period anyway (a resuming agent finds fresh
    ones), at most MAX_PINGS_IN_FLIGHT at a time."""
    loop, clients, _ = _loop(n=1)
    loop.agree_start()
    loop.startup()
    hang = asyncio.Event()
    pings: list[str] = []

    async def keepalive(run_id: str, timeout_s: float = 1.0) -> bool:
        pings.append(run_id)
        await hang.wait()
        return True

    clients[0].keepalive = keepalive  # type: ignore[method-assign]
    s = loop.streams[0]
    task = asyncio.create_task(s.keepalive("r1", 0.001))
    for _ in range(200):
        await asyncio.sleep(0.001)
    assert pings == ["r1"] * MAX_PINGS_IN_FLIGHT
    hang.set()
    for _ in range(20):
        await asyncio.sleep(0.001)
    assert len(pings) > MAX_PINGS_IN_FLIGHT
    clients[0].events.put_nowait(None)  # the stream ends: so does the keepalive
    await asyncio.wait_for(task, 5)
    await loop.shutdown()


async def test_liveness_skips_streams_that_ended() -> None:
    loop, clients, clock = _loop(heartbeat_timeout_s=2.5)
    start = loop.agree_start()
    clock.at(start, 0.0)
    loop.startup()
    clients[0].events.put_nowait(_finished())
    await _settle()
    loop.check_liveness(clock.at(start, 10.0))
    await _settle()
    assert loop.streams[0].state is AgentState.DONE
    assert loop.streams[1].state is AgentState.MISSING
    assert clients[0].stops == []
    await loop.shutdown()


# ---------------------------------------------------------------- stop and deadline


async def test_stop_event_tells_every_agent_once() -> None:
    stop = asyncio.Event()
    loop, clients, clock = _loop(stop_event=stop)
    start = loop.agree_start()
    await loop.check_stop()
    assert loop.stopped is None and loop.stop_reason is StopReason.COMPLETED
    stop.set()
    await loop.check_stop()
    await loop.check_stop()
    assert loop.stopped is StopReason.INTERRUPTED
    assert loop.stop_reason.value == "interrupted by the user"
    assert all(c.stops == ["interrupted by the user"] for c in clients)
    # already stopped when the deadline passes: the streams are cut at once
    loop.startup()
    await _settle()
    await loop.check_deadline(clock.at(start, 28.0))
    await _settle()
    assert all(s.task is not None and s.task.cancelled() for s in loop.streams)
    assert all(c.stops == ["interrupted by the user"] for c in clients)
    await loop.shutdown()


async def test_deadline_stops_then_cuts_after_the_grace() -> None:
    loop, clients, _ = _loop()
    start = loop.agree_start()
    loop.startup()
    await _settle()
    deadline = start + 27 * S
    await loop.check_deadline(deadline)  # not past it yet
    assert loop.stopped is None and all(c.stops == [] for c in clients)
    await loop.check_deadline(deadline + 1)
    assert loop.stopped is StopReason.DEADLINE
    assert all(c.stops == ["run overran its deadline"] for c in clients)
    assert loop.deadline_ns == deadline + 1 + 5 * S
    await loop.check_deadline(deadline + 1 + 5 * S)  # the agents still have time
    await _settle()
    assert all(s.active for s in loop.streams)
    await loop.check_deadline(deadline + 2 + 5 * S)
    await _settle()
    assert not any(s.active for s in loop.streams)
    assert all(c.stops == ["run overran its deadline"] for c in clients)
    # cut while running: missing, "cancelled"
    assert all(s.state is AgentState.MISSING and s.info.error == "cancelled" for s in loop.streams)
    await loop.shutdown()


async def test_on_tick_checks_stop_then_deadline() -> None:
    stop = asyncio.Event()
    loop, clients, clock = _loop(stop_event=stop, heartbeat_timeout_s=1e9)
    start = loop.agree_start()
    loop.startup()
    await _settle()
    assert await loop.on_tick(clock.at(start, 27.5))  # past the deadline (27 s)
    assert loop.stopped is StopReason.DEADLINE
    await _settle()
    assert all(s.active for s in loop.streams)
    stop.set()  # a stop after the deadline's: no second Stop, no new reason
    assert await loop.on_tick(clock.at(start, 28.0))
    assert loop.stopped is StopReason.DEADLINE
    assert all(c.stops == ["run overran its deadline"] for c in clients)
    assert await loop.on_tick(clock.at(start, 32.6))  # past the 5 s grace: cut
    await _settle()
    assert not loop.running
    await loop.shutdown()


async def test_on_tick_a_stop_before_the_deadline_cuts_at_once_past_it() -> None:
    stop = asyncio.Event()
    loop, clients, clock = _loop(stop_event=stop, heartbeat_timeout_s=1e9)
    start = loop.agree_start()
    loop.startup()
    await _settle()
    stop.set()
    assert await loop.on_tick(clock.at(start, 27.5))  # stop, then the deadline: cut
    await _settle()
    assert loop.stopped is StopReason.INTERRUPTED and not loop.running
    assert all(c.stops == ["interrupted by the user"] for c in clients)
    await loop.shutdown()


# ---------------------------------------------------------------- refusal


def _refusal(details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.PERMISSION_DENIED, grpc.aio.Metadata(), grpc.aio.Metadata(), details
    )


async def test_a_refusal_stops_the_others_and_ends_the_loop() -> None:
    loop, clients, clock = _loop()
    start = loop.agree_start()
    loop.startup()
    await _settle()
    assert await loop.on_tick(clock.at(start, 0.1))
    clients[1].events.put_nowait(_refusal("agent refuses: rate over its limit"))
    await _settle()
    bad = loop.refusal()
    assert bad is loop.streams[1] and bad.refused == "rate over its limit"
    assert bad.state is AgentState.FAILED and bad.info.error == "rate over its limit"
    assert not await loop.on_tick(clock.at(start, 0.2))
    assert loop.stopped is StopReason.REFUSED
    assert all(c.stops == ["another agent refused the run"] for c in clients)
    await loop.shutdown()
    assert all(c.closed for c in clients)  # a refused run closes the channels


async def test_an_error_after_the_start_is_a_lost_agent_not_a_refusal() -> None:
    loop, clients, clock = _loop(n=1)
    start = loop.agree_start()
    loop.startup()
    clients[0].events.put_nowait(pb.RunEvent(started=pb.Started(run_id="r1")))
    clock.at(start, 1.5)
    clients[0].events.put_nowait(_refusal("late"))
    await _settle()
    s = loop.streams[0]
    assert loop.refusal() is None
    assert s.state is AgentState.MISSING and s.lost_ns == start + 3 * S // 2
    assert s.info.error == "connection lost: PERMISSION_DENIED: late"
    await loop.shutdown()
    assert not clients[0].closed  # results still to be written


# ---------------------------------------------------------------- the stream's events


async def test_stream_events_set_state_and_cpu() -> None:
    loop, clients, _ = _loop()
    loop.agree_start()
    loop.startup()
    a0 = loop.streams[0].start_at_agent_ns
    clients[0].events.put_nowait(_status(a0 - 1, 10.0))  # before the start: no window
    clients[0].events.put_nowait(_status(a0 + 3 * S + 5, 80.0))
    clients[0].events.put_nowait(_status(a0 + 4 * S, 20.0))
    clients[0].events.put_nowait(_finished())
    clients[1].events.put_nowait(_finished(ok=False, error="worker 0: boom"))
    await _settle()
    a, b = loop.streams
    assert loop.cpu == {(3, 0): 80.0, (4, 0): 20.0}
    assert a.info.cpu_percent == 20.0 and a.info.cpu_percent_peak == 80.0
    assert a.state is AgentState.DONE and not a.active
    assert b.state is AgentState.FAILED and b.info.error == "worker 0: boom"
    assert not loop.running
    await loop.main_loop()  # returns at once: no stream left
    await loop.shutdown()


async def test_stream_end_without_finish_is_missing() -> None:
    loop, clients, clock = _loop(n=1)
    start = loop.agree_start()
    loop.startup()
    clock.at(start, 4.0)
    clients[0].events.put_nowait(None)
    await _settle()
    s = loop.streams[0]
    assert s.state is AgentState.MISSING and s.lost_ns == start + 4 * S
    assert s.info.error == "its stream ended without a finish"
    await loop.shutdown()


async def test_malformed_batch_fails_the_agent() -> None:
    loop, clients, _ = _loop(n=1)
    loop.agree_start()
    loop.startup()
    bad = pb.TimingBatch(count=3, index=b"\x00")  # columns shorter than the count
    clients[0].events.put_nowait(pb.RunEvent(timings=bad))
    await _settle()
    s = loop.streams[0]
    assert s.state is AgentState.FAILED and "malformed timing batch" in s.info.error
    assert clients[0].stops == ["malformed timing batch"]
    await loop.shutdown()


# ---------------------------------------------------------------- window sealing


def _records(loop: RunLoop, seconds: int) -> None:
    """Records of both agents in windows 0 .. seconds-1 (by intended time)."""
    for agent in range(len(loop.streams)):
        buf = RecordBuffer(4 * seconds)
        for i in range(2 * seconds):
            intended = i * S // 2 + agent
            buf.append(i, intended, intended + 1000, intended + 2_000_000, 0, 10, 10, 1, 0)
        block = buf.take(["4"])
        assert block is not None
        loop.ingest(agent, block)


async def test_sealing_every_5s_with_the_timeout_cutoff() -> None:
    plan = _plan(duration_s=60.0, timeout_s=2.5)  # int(2.5) + 10: 12 windows behind
    loop, _, _ = _loop(plan=plan)
    start = loop.agree_start()
    _records(loop, 30)
    assert loop.seal_windows(start + 4 * S) == []  # first seal 5 s after the start
    assert loop.seal_windows(start + 5 * S) == []  # horizon 5 - 12 < 0
    assert loop.next_seal_ns == start + 10 * S
    expected_rows = timeseries_rows(loop.agg, loop.names, loop.cpu, [0, 1, 2, 3])
    assert loop.seal_horizon(start + 16 * S + S // 2) == 4
    assert loop.seal_windows(start + 16 * S + S // 2) == [0, 1, 2, 3]
    assert loop.sealed == {0, 1, 2, 3} and loop.sealed_rows == expected_rows
    assert all(loop.agg.windows[(w, a)].latency.count == 0 for w in range(4) for a in (0, 1))
    assert loop.agg.windows[(4, 0)].latency.count == 2
    assert loop.seal_windows(start + 20 * S) == []  # next one due at 21.5 s
    assert loop.seal_windows(start + 22 * S) == [4, 5, 6, 7, 8, 9]
    # through on_tick too
    loop.next_seal_ns = start + 25 * S
    assert await loop.on_tick(start + 25 * S)
    assert max(loop.sealed) == 12
    assert len(loop.sealed_rows) == 13 * 3  # a row per agent and one 'all' per window


# ---------------------------------------------------------------- progress


async def test_progress_reports_elapsed_and_window() -> None:
    got: list[Progress] = []
    loop, _, _ = _loop(progress=got.append)
    start = loop.agree_start()
    loop.report_progress(start - S // 2)
    assert await loop.on_tick(start + 3 * S + S // 4)
    (before, during) = got
    assert before.elapsed_s == -0.5 and before.total_s == 10.0
    assert during.elapsed_s == 3.25 and during.window == 3
    assert during.agg is loop.agg and during.agents == [s.info for s in loop.streams]


# ---------------------------------------------------------------- shutdown


async def test_shutdown_on_failure_closes_the_channels() -> None:
    loop, clients, _ = _loop()
    loop.agree_start()
    loop.startup()
    await _settle()
    await loop.shutdown(failed=True)
    assert all(c.closed for c in clients)
    assert all(s.task is not None and s.task.done() for s in loop.streams)


# ---------------------------------------------------------------- the strings files keep


def test_enum_values_are_the_strings_written_today() -> None:
    assert [r.value for r in StopReason] == [
        "",
        "interrupted by the user",
        "run overran its deadline",
        "another agent refused the run",
        "measured enough (--duration auto)",
    ]
    assert [s.value for s in AgentState] == [
        "ready",
        "running",
        "done",
        "failed",
        "missing",
        "stopped",
    ]
    assert [s.value for s in SessionState] == [
        "ready",
        "waiting",
        "preparing",
        "prepared",
        "running",
        "done",
        "failed",
    ]
    assert [s for s in AgentState if s.partial] == [AgentState.FAILED, AgentState.MISSING]
    assert AgentInfo(0, "a").state == AgentState.READY


@pytest.mark.parametrize("reason", list(StopReason))
def test_stop_reason_is_falsy_only_when_completed(reason: StopReason) -> None:
    assert bool(reason.value) is (reason is not StopReason.COMPLETED)


def test_tick_period_is_slow_only_while_no_records_arrive() -> None:
    assert tick_period(True, 10.0) == TICK_S
    assert tick_period(False, 10.0) == IDLE_TICK_S
    # an agent's silence passes its limit in 0.4 s: the loop looks then, not 1 s later
    assert tick_period(False, 0.4) == pytest.approx(0.4)
    assert tick_period(False, -1.0) == TICK_S  # overdue: a normal tick


async def test_idle_ticks_count_their_whole_gap_and_shorten_before_the_limit() -> None:
    """Ticks 1 s apart on purpose (no records): each whole second is the agents'
    silence (a 0.5 s credit would let a silent agent live twice as long), and the wait
    shrinks so that the silent agent is declared missing when it passes 2.5 s."""
    loop, clients, clock = _loop(n=1, heartbeat_timeout_s=2.5)
    start = loop.agree_start()
    clock.at(start, 0.0)
    loop.startup()
    await _settle()
    clients[0].events.put_nowait(_status(clock.now))
    await _settle()
    assert await loop.on_tick(clock.now)
    s = loop.streams[0]
    t = 0.0
    waits = []
    while s.state is not AgentState.MISSING and t < 10:
        loop._period_s = tick_period(False, loop._due_s)
        waits.append(round(loop._period_s, 3))
        t += loop._period_s
        assert await loop.on_tick(clock.at(start, t))
    assert waits[:2] == [IDLE_TICK_S, IDLE_TICK_S]
    assert waits[2] == pytest.approx(0.5)  # 2.0 s silent: the limit is 0.5 s away
    assert s.state is AgentState.MISSING and t <= 2.5 + TICK_S + 1e-9
    await loop.shutdown()


async def test_an_agent_announcing_a_slower_idle_beat_gets_missed_beats_of_silence() -> None:
    """The silence limit is never under MISSED_BEATS of the agent's announced idle beats:
    one that beats every 1.5 s is missing only past 4.5 s, not at 2.5 s."""
    loop, clients, clock = _loop(n=1, heartbeat_timeout_s=2.5)
    start = loop.agree_start()
    clock.at(start, 0.0)
    loop.startup()
    clients[0].events.put_nowait(
        pb.RunEvent(started=pb.Started(run_id="r1", agent_index=0, idle_heartbeat_s=1.5))
    )
    await _settle()
    s = loop.streams[0]
    assert s.idle_beat_s == 1.5
    t = 0.0
    while s.state is not AgentState.MISSING and t < 10:
        t += TICK_S
        assert await loop.on_tick(clock.at(start, t))
    assert MISSED_BEATS * 1.5 < t <= MISSED_BEATS * 1.5 + TICK_S + 1e-9
    await loop.shutdown()


async def test_a_status_riding_on_a_timing_batch_counts_as_a_heartbeat() -> None:
    loop, clients, clock = _loop(n=1)
    start = loop.agree_start()
    clock.at(start, 0.5)
    loop.startup()
    buf = RecordBuffer(4)
    buf.append(0, 0, 1000, 2_000_000, 0, 10, 10, 1, 0)
    block = buf.take(["4"])
    assert block is not None
    batch = block.to_proto()
    batch.agent_status.CopyFrom(
        pb.AgentStatus(state="running", agent_ns=clock.now, cpu_percent=42.0, cpu_seconds=0.3)
    )
    clients[0].events.put_nowait(pb.RunEvent(timings=batch))
    await _settle()
    s = loop.streams[0]
    assert s.info.cpu_percent == 42.0 and s.info.cpu_seconds == 0.3
    assert loop._blocks == 1  # and its records were taken
    await loop.shutdown()


def test_records_flow_only_at_two_batches_a_second_or_more() -> None:
    """1 req/s sends a batch a second: slow ticks (4 a second for it was most of the
    coordinator's idle cost); a fast run's batches every 0.25 s keep the ticks fast, even
    across one tick that saw none."""
    assert not records_flow([])
    assert not records_flow([(IDLE_TICK_S, 1)])  # 1 req/s
    assert records_flow([(IDLE_TICK_S, 2)])  # 2 req/s and up
    fast = [(TICK_S, 1), (TICK_S, 1), (TICK_S, 0), (TICK_S, 1), (TICK_S, 1)]
    assert records_flow(fast)
    assert not records_flow([(TICK_S, 1), (TICK_S, 0), (TICK_S, 0), (TICK_S, 0)])
