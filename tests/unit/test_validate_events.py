"""An agent is not trusted: crafted TimingBatch / AgentStatus events (NaN, inf, negative
clocks, duplicates, another agent's indices, out of range, unknown status, wrong lengths)
are dropped and counted (coordinator/validate.py, through coordinator/run/stream.py),
never ingested; the honest agent's figures stay exact and the summary is built."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from coordinator.agents import AgentState
from coordinator.aggregate import Aggregator
from coordinator.clock import ClockEstimate
from coordinator.run import AgentStream, RunLoop, RunOptions
from coordinator.summary import AgentInfo, build_summary
from coordinator.validate import AgentCheck, Fault, RunShape, clean_text
from volley import records as rc
from volley.arrivals import global_schedule
from volley.plan import AgentSpec, Plan, plan_from_dict
from volley.records import COLUMNS, RecordBlock, concat, known_status
from volley.schedule import slice_for
from volley.v1 import control_pb2 as pb

S = 1_000_000_000
WEIGHTS = [1, 2]  # agent 0 owns a third of the schedule, agent 1 two thirds


def _plan(mode: str = "open", slos: tuple[str, ...] = ()) -> Plan:
    load: dict[str, object] = {"mode": mode, "duration": "3s"}
    load.update({"rate": 20, "arrival": "constant"} if mode == "open" else {"concurrency": 2})
    plan = plan_from_dict(
        {
            "target": "127.0.0.1:8001",
            "model": "add",
            "load": load,
            "timeout_s": 2.0,
            "slos": list(slos),
            "validity": {"min_duration_s": 1, "min_requests": 1},
        }
    )
    return plan.with_agents([AgentSpec(f"agent{i}:7070", w) for i, w in enumerate(WEIGHTS)])


def _slice(plan: Plan, k: int) -> tuple[np.ndarray, np.ndarray]:
    idx, t = global_schedule(plan).all()
    return slice_for(idx, t, plan.agent_weights, k)


def _block(idx: np.ndarray, t: np.ndarray, status: int = rc.OK) -> RecordBlock:
    """Honest records: sent 0.1 ms late, done 2 ms later."""
    n = idx.size
    cols = {k: np.zeros(n, dt) for k, dt in COLUMNS.items()}
    cols["index"][:] = idx
    cols["intended_ns"][:] = t
    if status in rc.NEVER_SENT:
        cols["sent_ns"][:] = -1
        cols["done_ns"][:] = -1
    else:
        cols["sent_ns"][:] = t + 100_000
        cols["done_ns"][:] = t + 2_100_000
    cols["status"][:] = status
    cols["req_bytes"][:] = 64
    cols["resp_bytes"][:] = 32
    cols["batch_size"][:] = 1
    return RecordBlock(cols, ["1x4"])


def _check(plan: Plan, k: int) -> AgentCheck:
    return AgentCheck(RunShape.of(plan), k, workers=1, cores=4)


def _one(block: RecordBlock, i: int, **values: int) -> RecordBlock:
    """A copy of `block` whose record i has these values."""
    cols = {k: v.copy() for k, v in block.columns.items()}
    for name, v in values.items():
        cols[name][i] = v
    return RecordBlock(cols, block.input_shapes)


# ---------------------------------------------------------------- one record, one fault

INT64_MIN = -(2**63)


def _cases(plan: Plan) -> list[tuple[str, dict[str, int], Fault]]:
    idx0, _ = _slice(plan, 0)
    n = int(global_schedule(plan).all()[0].size)
    # an index past the schedule's end that would be agent 1's by the pattern
    beyond = next(i for i in range(n, n + 3) if i % 3 != int(idx0[0]) % 3)
    return [
        ("negative intended", {"intended_ns": -5}, Fault.BAD_TIMES),
        ("int64 min sent (a NaN-like sentinel)", {"sent_ns": INT64_MIN}, Fault.BAD_TIMES),
        ("done before sent", {"done_ns": 10}, Fault.BAD_TIMES),
        ("done past the run's horizon", {"done_ns": 10**15}, Fault.BAD_TIMES),
        ("intended past the load's span", {"intended_ns": 4 * S}, Fault.BAD_TIMES),
        ("OK but never sent", {"sent_ns": -1, "done_ns": -1}, Fault.BAD_TIMES),
        ("never sent but done", {"sent_ns": -1}, Fault.BAD_TIMES),
        ("dropped but sent", {"status": rc.DROPPED}, Fault.BAD_TIMES),
        ("another agent's index", {"index": int(idx0[0])}, Fault.OUTSIDE_SLICE),
        ("index past the schedule", {"index": beyond}, Fault.OUTSIDE_SLICE),
        ("negative index", {"index": -1}, Fault.OUTSIDE_SLICE),
        ("huge index", {"index": 2**62 + 1}, Fault.OUTSIDE_SLICE),
        ("unknown status 17", {"status": 17}, Fault.UNKNOWN_STATUS),
        ("unknown status 999", {"status": 999}, Fault.UNKNOWN_STATUS),
        ("HTTP base without a status", {"status": rc.HTTP_ERROR_BASE}, Fault.UNKNOWN_STATUS),
        ("unknown status 65535", {"status": 65535}, Fault.UNKNOWN_STATUS),
        ("model id of no model", {"model_id": 3}, Fault.BAD_FIELD),
        ("worker it does not have", {"worker": 7}, Fault.BAD_FIELD),
        ("shape id past the table", {"shape_id": 1}, Fault.BAD_FIELD),
    ]


@pytest.mark.parametrize("case", range(19))
def test_each_kind_of_bad_record_is_dropped_and_counted(case: int) -> None:
    plan = _plan()
    what, values, kind = _cases(plan)[case]
    idx, t = _slice(plan, 1)
    honest = _block(idx, t)
    check = _check(plan, 1)
    kept = check.records(_one(honest, 3, **values))
    assert len(kept) == len(honest) - 1, what
    assert "index" in values or int(idx[3]) not in kept.col("index").tolist()
    assert dict(check.faults) == {kind.value: 1}, what
    assert check.invalid == 1 and check.valid == len(honest) - 1


def test_honest_records_pass_untouched() -> None:
    plan = _plan()
    idx, t = _slice(plan, 0)
    check = _check(plan, 0)
    block = _block(idx, t)
    assert check.records(block) is block  # no copy on the common path
    dropped = _block(idx[:2], t[:2], rc.DROPPED)
    http = _block(idx[2:4], t[2:4], rc.HTTP_ERROR_BASE + 503)
    limited = _block(idx[4:6], t[4:6], rc.LIMITED)  # never sent: the agent's rate limit
    fresh = AgentCheck(RunShape.of(plan), 0, workers=1)
    assert len(fresh.records(concat([dropped, http, limited]))) == 6 and not fresh.faults
    assert check.slice_size == idx.size == 20


def test_duplicates_within_and_across_batches() -> None:
    plan = _plan()
    idx, t = _slice(plan, 1)
    check = _check(plan, 1)
    first = _block(idx[:10], t[:10])
    assert len(check.records(first)) == 10
    # again, shuffled, with a repeat inside the batch and new ones
    order = np.array([12, 3, 11, 12, 0, 13, 3])
    again = _block(idx[order], t[order])
    kept = check.records(again)
    assert kept.col("index").tolist() == [int(idx[12]), int(idx[11]), int(idx[13])]
    assert dict(check.faults) == {Fault.DUPLICATE.value: 4}
    assert check.valid == 13 and check.invalid == 4
    # never more records than the slice, whatever is replayed
    for _ in range(3):
        check.records(_block(idx, t))
    assert check.valid == idx.size == check.slice_size


def test_closed_loop_indices_are_minus_one_and_intended_is_sent() -> None:
    plan = _plan("closed")
    check = _check(plan, 0)
    assert check.slice_size == 0
    t = np.arange(5, dtype=np.int64) * 100_000_000
    block = _block(np.full(5, -1, np.int64), t)
    block.columns["intended_ns"][:] = block.columns["sent_ns"]  # what the worker does
    assert len(check.records(block)) == 5
    kept = check.records(_one(_one(block, 0, index=7), 1, intended_ns=1))
    assert len(kept) == 3
    assert dict(check.faults) == {Fault.OUTSIDE_SLICE.value: 1, Fault.BAD_TIMES.value: 1}


def test_an_agent_slot_outside_the_weights_owns_nothing() -> None:
    plan = _plan()
    idx, t = _slice(plan, 1)
    check = _check(plan, 5)
    assert check.slice_size == 0 and len(check.records(_block(idx, t))) == 0
    assert check.faults == {Fault.OUTSIDE_SLICE.value: idx.size}


def test_known_status_table() -> None:
    codes = np.array(
        [0, 16, 17, 99, 100, 101, 102, 103, 104, 105, 106, 1000, 1001, 1999, 2000], np.uint16
    )
    assert known_status(codes).tolist() == [
        True,
        True,
        False,
        False,
        True,
        True,
        True,
        True,  # LIMITED (the agent's rate limit)
        True,  # STREAM_ERROR (an error after some responses)
        True,  # STREAM_CUT (the stream ended under a streaming request)
        False,
        False,
        True,
        True,
        False,
    ]


def test_status_messages_with_bad_numbers_are_refused() -> None:
    check = _check(_plan(), 0)
    good = pb.AgentStatus(cpu_percent=80.0, cpu_seconds=1.5, sent=3, completed=2)
    assert check.status(good)
    for bad in (
        pb.AgentStatus(cpu_percent=math.nan),
        pb.AgentStatus(cpu_percent=math.inf),
        pb.AgentStatus(cpu_percent=-1e308),
        pb.AgentStatus(cpu_percent=1e9),  # far beyond 4 cores
        pb.AgentStatus(cpu_seconds=math.inf),
        pb.AgentStatus(cpu_seconds=-0.5),
        pb.AgentStatus(cpu_seconds=1e12),
        pb.AgentStatus(in_flight=-1),
        pb.AgentStatus(sent=-(2**63)),
    ):
        assert not check.status(bad), bad
    assert check.faults == {Fault.BAD_STATUS.value: 9}
    assert check.cpu_window(10 * S + 3 * S + 5, 10 * S) == 3
    assert check.cpu_window(10 * S - 1, 10 * S) is None  # before the start
    assert check.cpu_window(2**62, 10 * S) is None  # an absurd clock


def test_clean_text() -> None:
    assert clean_text("boom\n\x1b[31mred") == "boom  [31mred"
    long = clean_text("x" * 10_000)
    assert len(long) == 500 and long.endswith("…")


# ---------------------------------------------------------------- through the stream


@dataclass
class FakeClient:
    """A Run stream that replays a fixed list of events."""

    address: str
    events: list[pb.RunEvent] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)

    async def run(self, request: pb.RunRequest) -> AsyncIterator[pb.RunEvent]:
        for ev in self.events:
            yield ev
            await asyncio.sleep(0)

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
        pass


def _timings(block: RecordBlock) -> pb.RunEvent:
    return pb.RunEvent(timings=block.to_proto())


def _finished(ok: bool = True, error: str = "") -> pb.RunEvent:
    return pb.RunEvent(finished=pb.Finished(ok=ok, error=error))


def _honest_events(plan: Plan) -> list[pb.RunEvent]:
    idx, t = _slice(plan, 0)
    half = idx.size // 2
    return [
        pb.RunEvent(started=pb.Started(agent_index=0, scheduled=idx.size, workers=1)),
        _timings(_block(idx[:half], t[:half])),
        pb.RunEvent(status=pb.AgentStatus(cpu_percent=30.0, cpu_seconds=0.2)),
        _timings(_block(idx[half:], t[half:])),
        _finished(),
    ]


def _garbage(n: int, seed: int = 1) -> RecordBlock:
    rng = np.random.default_rng(seed)
    cols = {k: rng.integers(0, 60000, n).astype(dt) for k, dt in COLUMNS.items()}
    for name in ("index", "intended_ns", "sent_ns", "done_ns"):
        cols[name] = rng.integers(-(2**62), 2**62, n).astype(np.int64)
    cols["status"] = rng.integers(0, 2**16, n).astype(np.uint16)
    return RecordBlock(cols, ["x", "y"])


def _rogue_events(plan: Plan) -> tuple[list[pb.RunEvent], int]:
    """A buggy agent: its own records (some twice), agent 0's, garbage, bad numbers.
    Returns the events and how many of its records are valid."""
    idx1, t1 = _slice(plan, 1)
    idx0, t0 = _slice(plan, 0)
    mine = _block(idx1[:30], t1[:30])
    events = [
        pb.RunEvent(started=pb.Started(agent_index=1, scheduled=123, workers=1)),
        pb.RunEvent(status=pb.AgentStatus(cpu_percent=math.nan, cpu_seconds=1.0)),
        pb.RunEvent(status=pb.AgentStatus(cpu_percent=10.0, cpu_seconds=math.inf)),
        pb.RunEvent(status=pb.AgentStatus(cpu_percent=-1e308)),
        _timings(mine),
        _timings(_block(idx1[:10], t1[:10])),  # duplicates
        _timings(_block(idx0, t0)),  # agent 0's slice
        _timings(_garbage(1000)),
        _timings(_one(_block(idx1[30:35], t1[30:35]), 0, status=999)),  # 4 good, 1 bad
        pb.RunEvent(
            finished=pb.Finished(
                ok=True,
                error="",
                final_status=pb.AgentStatus(cpu_seconds=math.inf, cpu_percent=math.nan),
            )
        ),
    ]
    return events, 34


def _run_loop(plan: Plan, clients: list[FakeClient]) -> RunLoop:
    streams = [
        AgentStream(
            i,
            c,
            AgentInfo(
                index=i, address=c.address, workers=1, cores=2, clock=ClockEstimate(0, 1, 1, 4)
            ),
        )
        for i, c in enumerate(clients)
    ]
    return RunLoop(plan, streams, RunOptions(keepalive_s=0.0), run_id="r1")


async def _play(loop: RunLoop) -> None:
    loop.agree_start()
    loop.startup()
    await asyncio.wait_for(asyncio.gather(*(s.task for s in loop.streams if s.task)), 10)
    await loop.shutdown()


def _reference(plan: Plan) -> Aggregator:
    """Agent 0's figures when it is the only one sending."""
    agg = Aggregator(2, 0)
    for ev in _honest_events(plan):
        if ev.WhichOneof("event") == "timings":
            agg.ingest(0, RecordBlock.from_proto(ev.timings))
    return agg


async def test_a_rogue_agent_is_filtered_and_the_honest_one_is_exact() -> None:
    plan = _plan(slos=("p99<50ms",))
    rogue, valid = _rogue_events(plan)
    loop = _run_loop(plan, [FakeClient("a0:1", _honest_events(plan)), FakeClient("a1:1", rogue)])
    await _play(loop)
    honest, bad = (s.info for s in loop.streams)
    assert [s.state for s in loop.streams] == [AgentState.DONE, AgentState.DONE]
    # the honest agent's figures are what they are without the rogue one
    ref = _reference(plan).agents[0].measured
    got = loop.agg.agents[0].measured
    assert (got.records, got.ok, got.sent) == (ref.records, ref.ok, ref.sent) == (20, 20, 20)
    assert got.latency.count == ref.latency.count and got.latency.max_ns == ref.latency.max_ns
    assert honest.faults == {} and honest.invalid_records == 0
    # the rogue one: only its valid records; its bad numbers never reached a figure
    assert loop.agg.agents[1].measured.records == valid
    assert bad.invalid_records == 10 + 20 + 1000 + 1
    assert bad.faults[Fault.DUPLICATE.value] == 10
    assert bad.faults[Fault.OUTSIDE_SLICE.value] >= 20
    assert bad.faults[Fault.BAD_STATUS.value] == 4
    assert bad.faults[Fault.BAD_START.value] == 1
    assert bad.cpu_seconds == 0.0 and bad.cpu_percent == 0.0 and bad.cpu_percent_peak == 0.0
    # the summary: built, plain JSON, the schedule never over-counted, the agent named
    total = int(global_schedule(plan).all()[0].size)
    summary = build_summary(plan, "r1", loop.agg, [honest, bad], 3.0, total)
    json.dumps(summary, allow_nan=False)
    req = summary["requests"]
    got_all = req["scheduled"] + summary["warmup_requests"]["scheduled"]
    assert req["schedule_total"] - got_all == total - 20 - valid >= 0
    row = summary["agents"][1]
    assert row["invalid_records"] == bad.invalid_records
    assert row["faults"] == dict(sorted(bad.faults.items()))
    assert summary["agents"][0]["invalid_records"] == 0 and summary["agents"][0]["faults"] == {}
    reasons = summary["verdict"]["reasons"]
    assert any(r.startswith("agent a1:1 sent mostly invalid records (1031 of") for r in reasons)
    assert any("dropped as invalid" in r for r in reasons)
    assert not summary["verdict"]["valid"]


async def test_a_few_bad_records_are_a_warning() -> None:
    plan = _plan()
    idx1, t1 = _slice(plan, 1)
    events = [
        _timings(_block(idx1, t1)),
        _timings(_block(idx1[:2], t1[:2])),
        _finished(),
    ]
    loop = _run_loop(plan, [FakeClient("a0:1", _honest_events(plan)), FakeClient("a1:1", events)])
    await _play(loop)
    infos = [s.info for s in loop.streams]
    summary = build_summary(plan, "r1", loop.agg, infos, 3.0, 60)
    assert summary["verdict"]["valid"], summary["verdict"]
    assert summary["verdict"]["warnings"] == [
        "agent a1:1: 2 invalid records dropped, invalid events ignored (duplicate index: 2)"
    ]
    assert summary["requests"]["schedule_total"] == summary["requests"]["scheduled"] == 60


async def test_wrong_lengths_fail_that_agent_only() -> None:
    plan = _plan()
    short = pb.TimingBatch(count=7, index=b"short")
    shapes = _block(*_slice(plan, 1)).to_proto()
    shapes.input_shapes[:] = ["x" * 1000]
    for bad_batch in (short, shapes):
        events = [pb.RunEvent(timings=bad_batch), _finished()]
        clients = [FakeClient("a0:1", _honest_events(plan)), FakeClient("a1:1", events)]
        loop = _run_loop(plan, clients)
        await _play(loop)
        honest, bad = loop.streams
        assert bad.state is AgentState.FAILED and "malformed timing batch" in bad.info.error
        assert bad.info.faults == {Fault.MALFORMED_BATCH.value: 1}
        assert clients[1].stops == ["malformed timing batch"]
        assert honest.state is AgentState.DONE and loop.agg.agents[0].measured.ok == 20
        assert loop.agg.agents[1].measured.records == 0


async def test_an_agent_error_text_is_cleaned() -> None:
    plan = _plan()
    events = [_finished(ok=False, error="boom\x1b[2J" + "!" * 5000)]
    loop = _run_loop(plan, [FakeClient("a0:1", _honest_events(plan)), FakeClient("a1:1", events)])
    await _play(loop)
    err = loop.streams[1].info.error
    assert err.startswith("boom [2J!!") and len(err) == 500


def test_an_agent_id_and_host_from_hello_are_cleaned() -> None:
    """A rogue agent's Hello: an id with terminal escapes and 100 kB, a host with a
    newline; what reaches the terminal and summary.json is one printable, short line."""
    from coordinator.run.stream import MAX_NAME_TEXT, hello_info

    reply = pb.HelloReply(agent_id="evil\x1b[2J\x1b]0;x\x07" + "x" * 100_000, host="h\nost")
    clock = ClockEstimate(offset_ns=0, uncertainty_ns=1, rtt_ns=1, samples=1)
    info = hello_info(0, "a:1", reply, 0, clock)
    assert info.id.startswith("evil [2J ]0;x ") and len(info.id) == MAX_NAME_TEXT
    assert info.id.isprintable() and info.host == "h ost"
