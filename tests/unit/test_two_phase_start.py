"""The two-phase start, coordinator side (coordinator/run/start.py), with fake agents and
a fake clock: prepare, the measured lead, Start, and what a failed or slow prepare says."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from coordinator.clock import ClockEstimate
from coordinator.run import AgentStream, RunLoop, RunOptions
from coordinator.run.start import (
    FANOUT_NS,
    LEAD_RTTS,
    MAX_LEAD_NS,
    MAX_ROUND_LEAD_NS,
    MIN_LEAD_NS,
    ROUND_FACTOR,
    StartProblem,
    prepare,
    ready_round,
    send_start,
    start_block,
    start_lead_ns,
    start_lines,
)
from coordinator.summary import AgentInfo
from tests.unit.test_run_loop import T0, FakeClient, FakeClock, S, _plan
from volley.v1 import control_pb2 as pb

MS = 1_000_000


@dataclass
class StartClient(FakeClient):
    """A fake agent that also takes Start (answering at `agent_ns`)."""

    starts: list[int] = field(default_factory=list)
    accept: bool = True
    agent_ns: int = T0

    async def start(self, run_id: str, at_agent_ns: int, timeout_s: float = 2.0) -> pb.StartReply:
        self.starts.append(at_agent_ns)
        return pb.StartReply(accepted=self.accept, agent_ns=self.agent_ns, error="busy")


def _run(n: int = 2, clock: FakeClock | None = None, **opts: object) -> RunLoop:
    clock = clock or FakeClock()
    streams = [
        AgentStream(
            i,
            StartClient(f"agent{i}:7070"),
            AgentInfo(
                index=i, address=f"agent{i}:7070", id=f"a{i}", clock=ClockEstimate(0, 1, 1000, 4)
            ),
            clock,
        )
        for i in range(n)
    ]
    options = RunOptions(keepalive_s=0.0, **opts)  # type: ignore[arg-type]
    return RunLoop(_plan(), streams, options, run_id="r1", clock=clock)


def _client(run: RunLoop, i: int) -> StartClient:
    c = run.streams[i].client
    assert isinstance(c, StartClient)
    return c


def _prepared(ms: int) -> pb.RunEvent:
    return pb.RunEvent(
        prepared=pb.Prepared(run_id="r1", workers=1, prepare_ns=ms * MS, worker_prepare_ns=[ms])
    )


def _started(i: int) -> pb.RunEvent:
    return pb.RunEvent(started=pb.Started(run_id="r1", workers=1, agent_index=i))


async def test_prepare_waits_for_every_agent_then_start_goes_out() -> None:
    run = _run()
    for i in range(2):
        _client(run, i).events.put_nowait(_started(i))
    task = asyncio.create_task(prepare(run, timeout_s=10))
    await asyncio.sleep(0.05)
    assert not task.done()  # nobody prepared yet
    _client(run, 0).events.put_nowait(_prepared(300))
    await asyncio.sleep(0.05)
    assert not task.done()  # one of two
    _client(run, 1).events.put_nowait(_prepared(900))
    await asyncio.wait_for(task, 1.0)
    assert all(c.requests[0].prepare_first for c in (_client(run, 0), _client(run, 1)))
    assert all(c.requests[0].start_at_agent_ns == 0 for c in (_client(run, 0), _client(run, 1)))
    assert [s.info.prepare_s for s in run.streams] == [0.3, 0.9]
    lead = start_lead_ns(run.streams)
    start = run.agree_start(lead)
    assert start == T0 + lead and run.lead_ns == lead
    _client(run, 0).agent_ns = start - 7 * MS  # took it 7 ms before the instant
    _client(run, 1).agent_ns = start + 2 * MS  # 2 ms after it had passed
    await send_start(run)
    assert _client(run, 0).starts == [start] and _client(run, 1).starts == [start]
    assert [s.info.start_margin_ms for s in run.streams] == [7.0, -2.0]
    lines = start_lines(run)
    assert len(lines) == 1 and "agent a1" in lines[0] and "start-up" in lines[0]
    await run.shutdown()


async def test_the_lead_comes_from_the_worst_round_trip_and_the_clocks() -> None:
    run = _run(3)
    assert start_lead_ns(run.streams) == MIN_LEAD_NS  # a fast loopback: the floor
    run.streams[1].rtts = [3 * MS, 9 * MS]  # keepalives while preparing
    run.streams[2].info.clock = ClockEstimate(0, 2 * MS, 1000, 4)  # ± 2 ms
    assert start_lead_ns(run.streams) == LEAD_RTTS * 9 * MS + 2 * 2 * MS + 3 * FANOUT_NS


@dataclass
class SlowPingClient(StartClient):
    """A fake agent whose keepalive reply comes `delay_ns` of the fake clock later."""

    clock: FakeClock = field(default_factory=FakeClock)
    delay_ns: int = 0

    async def keepalive(self, run_id: str, timeout_s: float = 1.0) -> bool:
        self.clock.now += self.delay_ns
        return True


async def test_the_ready_round_makes_the_lead_on_a_busy_host() -> None:
    """64 agents on 2 busy cores: each round trip alone is short, but the round to all of
    them takes long; the lead is ROUND_FACTOR rounds, not the per-agent estimate."""
    clock = FakeClock()
    run = _run(3, clock=clock)
    for i, s in enumerate(run.streams):
        s.client = SlowPingClient(f"agent{i}:7070", clock=clock, delay_ns=100 * MS)
    round_ns = await ready_round(run)
    assert round_ns == run.round_ns == 300 * MS  # the last of three replies
    assert [s.rtts[-1] for s in run.streams] == [100 * MS, 200 * MS, 300 * MS]
    # the round trips measured now are kept with the others (the RTT formula sees them)
    unc = 2 * 1  # the fake clocks' ±1 ns, twice
    rtt_lead = LEAD_RTTS * 300 * MS + unc + 3 * FANOUT_NS
    assert start_lead_ns(run.streams, 0) == rtt_lead
    assert start_lead_ns(run.streams, 500 * MS) == max(rtt_lead, ROUND_FACTOR * 500 * MS + unc)
    assert start_lead_ns(run.streams, 3600 * S) == MAX_ROUND_LEAD_NS  # bounded


async def test_after_the_ready_round_spawning_time_round_trips_do_not_set_the_lead() -> None:
    """64 agents spawning on a busy host: keepalives took seconds while they prepared;
    the lead after the ready round follows the round's replies (measured prepared), not
    those, so it does not sit at MAX_LEAD_NS."""
    clock = FakeClock()
    run = _run(3, clock=clock)
    for i, s in enumerate(run.streams):
        s.rtts = [2 * S, 3 * S]  # while spawning
        s.client = SlowPingClient(f"agent{i}:7070", clock=clock, delay_ns=10 * MS)
    assert start_lead_ns(run.streams, 0) == MAX_LEAD_NS  # the worst ever: capped
    round_ns = await ready_round(run)
    assert [s.round_rtt_ns for s in run.streams] == [10 * MS, 20 * MS, 30 * MS]
    unc = 2 * 1
    lead = start_lead_ns(run.streams, round_ns)
    assert lead == max(LEAD_RTTS * 30 * MS + unc + 3 * FANOUT_NS, ROUND_FACTOR * round_ns + unc)
    assert lead < MAX_LEAD_NS // 10
    # an agent that did not answer the round keeps its worst round trip
    run.streams[0].round_rtt_ns = 0
    assert start_lead_ns(run.streams, round_ns) == MAX_LEAD_NS


async def test_start_lead_option_is_a_floor_from_opening_the_streams() -> None:
    clock = FakeClock()
    run = _run(clock=clock, start_lead_s=1.5)
    run.startup(prepare_first=True)
    clock.now += S // 2  # prepared half a second later
    start = run.agree_start(30 * MS)
    assert start == T0 + 3 * S // 2  # 1.5 s after the streams opened, not now + 30 ms
    await run.shutdown()


async def test_a_failed_prepare_is_named_and_the_others_stopped() -> None:
    run = _run()
    _client(run, 0).events.put_nowait(_started(0))
    _client(run, 0).events.put_nowait(_prepared(100))
    _client(run, 1).events.put_nowait(_started(1))
    _client(run, 1).events.put_nowait(
        pb.RunEvent(finished=pb.Finished(run_id="r1", ok=False, error="worker 0: MemoryError"))
    )
    with pytest.raises(
        StartProblem,
        match=r"agent a1 \(agent1:7070\) failed to prepare: "
        r"worker 0: MemoryError",
    ):
        await prepare(run, timeout_s=10)
    assert _client(run, 0).stops  # told to stop: no load was sent
    assert not any(s.active for s in run.streams)


async def test_a_slow_prepare_is_named_after_the_timeout() -> None:
    clock = FakeClock()
    run = _run(3, clock=clock)
    for i in range(3):
        _client(run, i).events.put_nowait(_started(i))
    _client(run, 1).events.put_nowait(_prepared(100))
    task = asyncio.create_task(prepare(run, timeout_s=30))
    await asyncio.sleep(0.05)
    clock.now += 31 * S
    with pytest.raises(StartProblem, match=r"2 of 3 agents not prepared after 30s .*: a0, a2$"):
        await asyncio.wait_for(task, 1.0)


async def test_an_agent_that_does_not_take_its_start_is_named() -> None:
    run = _run()
    run.startup(prepare_first=True)
    run.agree_start(MIN_LEAD_NS)
    _client(run, 1).accept = False
    with pytest.raises(StartProblem, match=r"agent a1 .* did not take the start instant: busy"):
        await send_start(run)


async def test_start_block_reports_prepare_margins_and_skews() -> None:
    infos = [AgentInfo(0, "a:1", id="a0"), AgentInfo(1, "a:2", id="a1")]
    infos[0].prepare_s, infos[1].prepare_s = 0.5, 1.25
    infos[0].start_margin_ms, infos[1].start_margin_ms = 30.0, 12.5
    rows = [{"start_skew_ms": 0.4}, {"start_skew_ms": -7.0}]
    block = start_block(infos, 42 * MS, {"agents": rows}, 9 * MS)  # type: ignore[typeddict-item]
    assert block == {
        "two_phase": True,
        "lead_ms": 42.0,
        "ready_round_ms": 9.0,
        "agents": 2,
        "prepare_s_max": 1.25,
        "prepare_s_median": 0.875,
        "slowest_agent": "a1",
        "margin_ms_min": 12.5,
        "start_late_agents": [],
        "skew_ms_max": 7.0,
        "skew_ms_median": 3.7,
        "agents_within_5ms": 1,
    }


# ---------------------------------------------------------------- the agent's side


async def test_agent_takes_one_start_for_its_prepared_run_only() -> None:
    import time

    from agent.config import AgentConfig
    from agent.service import AgentService
    from agent.session import RunSession, SessionSpec

    plan = _plan()
    service = AgentService(AgentConfig(listen="127.0.0.1:0", workers=1))
    ctx: object = None
    reply = await service.Start(pb.StartRequest(run_id="r1", start_at_agent_ns=1), ctx)  # type: ignore[arg-type]
    assert not reply.accepted and reply.error == "no such run here"
    spec = SessionSpec("r1", plan, plan.to_json(), 0, 0, 1, 0)
    session = RunSession(spec)  # prepare first: no start instant yet
    assert session.start_at_ns == 0 and not session.gate.go.is_set()
    service.session = session
    at = time.monotonic_ns() + S
    wrong = await service.Start(pb.StartRequest(run_id="r2", start_at_agent_ns=at), ctx)  # type: ignore[arg-type]
    assert not wrong.accepted
    far = await service.Start(pb.StartRequest(run_id="r1", start_at_agent_ns=at + 3600 * S), ctx)  # type: ignore[arg-type]
    assert not far.accepted and "ahead" in far.error
    ok = await service.Start(pb.StartRequest(run_id="r1", start_at_agent_ns=at), ctx)  # type: ignore[arg-type]
    assert ok.accepted and at - S <= ok.agent_ns <= at
    assert session.gate.go.is_set() and session.gate.at.value == at == session.start_at_ns
    again = await service.Start(pb.StartRequest(run_id="r1", start_at_agent_ns=at + S), ctx)  # type: ignore[arg-type]
    assert not again.accepted and session.start_at_ns == at  # the first instant stands


async def test_a_prepared_agent_that_ends_before_the_start_is_named() -> None:
    run = _run()
    for i in range(2):
        _client(run, i).events.put_nowait(_started(i))
    _client(run, 0).events.put_nowait(_prepared(100))
    final = pb.AgentStatus(message="coordinator gone (no keepalive for 5.1s)")
    _client(run, 0).events.put_nowait(
        pb.RunEvent(finished=pb.Finished(run_id="r1", ok=True, final_status=final))
    )
    with pytest.raises(StartProblem, match=r"agent a0 .* ended before the start: coordinator gone"):
        await prepare(run, timeout_s=10)
