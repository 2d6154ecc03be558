"""Periodic work in proportion to activity (issue 19's idle cost), and where local agents'
workers run (CPU affinity). Pure rules and fake inputs: nothing sleeps."""

from __future__ import annotations

import os

import pytest

from agent.pacing import beat_due, goes_with_beat
from agent.session import (
    BATCH_HOLD_S,
    BATCH_RECORDS,
    IDLE_HEARTBEAT_S,
    MAX_BATCH_RECORDS,
    batch_due,
    beat_period,
    brisk,
)
from agent.worker import pin_from_env, sweep_delay
from coordinator.affinity import plan_affinity
from coordinator.run.options import RunOptions
from volley.liveness import MAX_ANNOUNCED_BEAT_S, MISSED_BEATS, silence_limit_s
from volley.security import WORKER_CPUS_ENV


def test_the_sweeper_sleeps_a_whole_timeout_with_nothing_in_flight() -> None:
    # busy: a fiftieth of the timeout; idle: nothing can time out before a timeout
    assert sweep_delay(0.1, 30.0, idle=False) == 0.1
    assert sweep_delay(0.1, 30.0, idle=True) == 30.0
    # a timeout shorter than the period never shortens the sleep below the period
    assert sweep_delay(0.1, 0.05, idle=True) == 0.1
    # held connections (--connections) are looked after by the sweep: at least each second
    assert sweep_delay(0.1, 30.0, idle=True, held=True) == 1.0
    assert sweep_delay(0.1, 30.0, idle=False, held=True) == 0.1


def test_the_heartbeat_slows_while_nothing_moves() -> None:
    assert beat_period(True, 0.25) == 0.25
    assert beat_period(False, 0.25) == IDLE_HEARTBEAT_S
    # a heartbeat configured longer than the idle one is kept
    assert beat_period(False, 2.0) == 2.0


def test_an_idle_agent_misses_two_whole_beats_and_more_before_it_is_called_missing() -> None:
    """The margin is stated, not luck: the coordinator's default limit holds MISSED_BEATS
    (3) idle beats, so a busy-but-alive idle agent may stall over 1.5 s (two beats and
    most of a third) and one lost status is never enough to call it missing."""
    limit = RunOptions().heartbeat_timeout_s
    assert MISSED_BEATS >= 3
    assert limit >= MISSED_BEATS * IDLE_HEARTBEAT_S  # the default limit is unchanged
    assert silence_limit_s(limit, IDLE_HEARTBEAT_S) == limit
    assert limit - IDLE_HEARTBEAT_S >= 2 * IDLE_HEARTBEAT_S  # stall margin: two beats
    # an agent announcing a slower beat gets MISSED_BEATS of it; none announced: the limit
    assert silence_limit_s(limit, 1.5) == pytest.approx(4.5)
    assert silence_limit_s(limit, 0.0) == limit
    # an announced beat is bounded (and nonsense ignored): no agent buys minutes of silence
    assert silence_limit_s(limit, 1e9) == MISSED_BEATS * MAX_ANNOUNCED_BEAT_S
    assert silence_limit_s(limit, float("nan")) == limit
    assert silence_limit_s(limit, -1.0) == limit


def test_a_heartbeat_rides_on_a_timing_batch_and_restarts_its_period() -> None:
    idle = IDLE_HEARTBEAT_S
    # no batch: the beat waits for its period
    assert not beat_due(idle - 0.01, idle, 0.25, batch=False)
    assert beat_due(idle, idle, 0.25, batch=False)
    # a batch leaving now takes the status along once a fast heartbeat has passed...
    assert beat_due(0.3, idle, 0.25, batch=True)
    # ...but not right after the last one (a busy run's batches do not add beats)
    assert not beat_due(0.1, idle, 0.25, batch=True)


def test_pending_records_leave_with_a_due_heartbeat() -> None:
    """A fast run: a beat due with records pending takes them along (the batch and the
    beat stay in step, one message); nothing pending or no beat due: no batch for it."""
    assert goes_with_beat(40, 0.25, 0.25)
    assert not goes_with_beat(0, 0.25, 0.25)
    assert not goes_with_beat(40, 0.2, 0.25)


def test_heartbeats_are_fast_only_at_a_request_a_heartbeat_or_more() -> None:
    assert brisk(2000, 1.0, 0.25)  # a busy run: every quarter second has news
    assert brisk(1, 0.25, 0.25)  # one request in a fast beat
    assert brisk(4, 1.0, 0.25)
    # 1 req/s: one request a second is news once a second, not four times
    assert not brisk(1, 1.0, 0.25)
    assert not brisk(3, 1.0, 0.25)
    assert not brisk(0, 0.25, 0.25)  # nothing sent


def test_a_timing_batch_waits_for_records_or_its_hold_time() -> None:
    flush = 0.1
    assert not batch_due(5.0, 0, flush)  # nothing to send
    # a fast run: the flush interval and enough records
    assert batch_due(flush, BATCH_RECORDS, flush)
    assert not batch_due(flush / 2, BATCH_RECORDS, flush)
    # a slow one: a few records wait up to the hold time, then go
    assert not batch_due(BATCH_HOLD_S - 0.01, 3, flush)
    assert batch_due(BATCH_HOLD_S, 1, flush)
    # too many: at once
    assert batch_due(0.0, MAX_BATCH_RECORDS + 1, flush)
    # a slow run: the last batch left a hold ago, holding gathers nothing: at once
    assert batch_due(0.0, 1, flush, since_last_s=BATCH_HOLD_S)
    assert not batch_due(0.0, 1, flush, since_last_s=BATCH_HOLD_S / 2)
    assert not batch_due(0.0, 0, flush, since_last_s=5.0)


def test_each_worker_gets_its_own_core_and_the_rest_the_others() -> None:
    a = plan_affinity([0, 1, 2, 3, 4], agents=2, workers=2)
    assert a.pinned and a.rest == (0,)
    assert a.workers == ((1, 2), (3, 4))
    assert a.env(1) == {WORKER_CPUS_ENV: "3,4"}
    doc = a.doc()
    assert doc["worker_cores"] == [[1, 2], [3, 4]] and doc["coordinator_cores"] == [0]
    one = plan_affinity([0, 1], agents=1, workers=1)
    assert one.pinned and one.rest == (0,) and one.workers == ((1,),)


def test_too_few_cores_or_turned_off_pins_nothing_and_says_why() -> None:
    few = plan_affinity([0, 1], agents=1, workers=2)
    assert not few.pinned and few.env(0) == {}
    assert few.note == (
        "workers not pinned: 2 worker(s) need 3 cores (one each and one for the "
        "coordinator), 2 allowed"
    )
    off = plan_affinity([0, 1, 2, 3], agents=1, workers=1, enabled=False)
    assert not off.pinned and "--no-pin" in off.note
    assert not plan_affinity([], 1, 1).pinned


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux affinity")
def test_a_worker_pins_itself_to_its_core_from_the_environment() -> None:
    before = os.sched_getaffinity(0)
    core = max(before)
    try:
        assert pin_from_env(1, {WORKER_CPUS_ENV: f"{min(before)},{core}"}) == core
        assert os.sched_getaffinity(0) == {core}
    finally:
        os.sched_setaffinity(0, before)
    assert pin_from_env(0, {}) == -1
    assert pin_from_env(0, {WORKER_CPUS_ENV: "x,"}) == -1


class _Out:
    def __init__(self) -> None:
        self.items: list[object] = []

    def put(self, item: object) -> None:
        self.items.append(item)


def test_a_quiet_workers_first_record_and_its_status_leave_together() -> None:
    """After a quiet spell the first completion sends its record and a status in the same
    wake-up; the ticker's next look then has nothing new to tell. Not quiet: records
    wait for the ticker, and no status goes with them."""
    import multiprocessing as mp
    from types import SimpleNamespace

    from agent.worker import Records, Status, Worker, WorkerTask
    from volley import records as rc
    from volley.plan import plan_from_dict

    plan = plan_from_dict({"target": "127.0.0.1:1", "model": "m", "load": {"rate": 1}})
    out = _Out()
    w = Worker(WorkerTask(plan.to_json(), "r", 0, 0, 1, 0), out, mp.get_context("spawn").Event())  # type: ignore[arg-type]
    w.payloads = SimpleNamespace(shapes=["1"])  # type: ignore[assignment]
    w.quiet = True
    w._record(0, 10, 11, 12, rc.OK, 1, 1, 1, 0)
    assert [type(m) for m in out.items] == [Records, Status]
    assert not w.quiet and w._counts() == w._told
    w._record(1, 20, 21, 22, rc.OK, 1, 1, 1, 0)  # not quiet: held for the ticker
    assert len(out.items) == 2 and w.buf.n == 1


async def test_after_a_quiet_spell_the_next_records_wait_a_flush_interval_not_a_second() -> None:
    """The quiet ticker sleeps up to IDLE_STATUS_S; the first record after it goes at once
    and wakes the ticker, so the records that follow wait one flush interval (0.1 s), not
    the rest of that second."""
    import asyncio
    import multiprocessing as mp
    import time
    from types import SimpleNamespace

    from agent.worker import IDLE_STATUS_S, Records, Worker, WorkerTask
    from volley import records as rc
    from volley.plan import plan_from_dict

    plan = plan_from_dict({"target": "127.0.0.1:1", "model": "m", "load": {"rate": 1}})
    out = _Out()
    w = Worker(WorkerTask(plan.to_json(), "r", 0, 0, 1, 0), out, mp.get_context("spawn").Event())  # type: ignore[arg-type]
    w.payloads = SimpleNamespace(shapes=["1"])  # type: ignore[assignment]
    w.quiet = True
    ticker = asyncio.create_task(w._ticker())
    await asyncio.sleep(0.05)  # the ticker is in its quiet sleep
    w._record(0, 10, 11, 12, rc.OK, 1, 1, 1, 0)  # goes at once, wakes the ticker
    w._record(1, 20, 21, 22, rc.OK, 1, 1, 1, 0)  # held for the ticker
    t0 = time.monotonic()
    while w.buf.n and time.monotonic() - t0 < IDLE_STATUS_S:
        await asyncio.sleep(0.01)
    waited = time.monotonic() - t0
    ticker.cancel()
    assert w.buf.n == 0 and sum(isinstance(m, Records) for m in out.items) == 2
    assert waited < 0.5 * IDLE_STATUS_S, waited


class _FedProcess:
    """Stands for a worker process that a test thread feeds through the session's queue."""

    def is_alive(self) -> bool:
        return True

    def join(self, timeout: float | None = None) -> None:
        return None

    def kill(self) -> None:
        return None


async def test_a_fast_runs_statuses_ride_on_its_timing_batches() -> None:
    """A real session's event loop, fed as a busy worker would (a block of 20 records and
    a status every 10 ms, for 1 s): the heartbeats go inside the timing batches, not as
    messages of their own (before: about one status per batch besides)."""
    import asyncio
    import threading
    import time

    from agent.session import RunSession, SessionSpec
    from agent.worker import Done, Records, Status, WorkerCounters
    from volley.plan import plan_from_dict
    from volley.records import RecordBuffer

    plan = plan_from_dict(
        {"target": "127.0.0.1:8001", "model": "add", "load": {"rate": 2000, "duration": "60s"}}
    )
    session = RunSession(SessionSpec("r1", plan, plan.to_json(), 0, time.monotonic_ns(), 1, 0))
    session._start_workers = lambda: None  # type: ignore[method-assign]
    session._procs = [_FedProcess()]

    def feed() -> None:
        t0, k = time.monotonic(), 0
        while time.monotonic() - t0 < 1.0:
            buf = RecordBuffer(32)
            for _ in range(20):
                buf.append(k, k, k + 1000, k + 2_000_000, 0, 10, 10, 1, 0)
                k += 1
            block = buf.take(["4"])
            assert block is not None
            session._queue.put(Records(0, block.columns, block.input_shapes))
            session._queue.put(Status(0, WorkerCounters(sent=k, completed=k)))
            time.sleep(0.01)
        session._queue.put(Done(0, ""))

    threading.Thread(target=feed, daemon=True).start()
    alone = riding = 0
    async for ev in session.events():
        kind = ev.WhichOneof("event")
        alone += kind == "status"
        riding += kind == "timings" and ev.timings.HasField("agent_status")
    session._queue.put(Done(0, ""))  # wakes the pump thread, which then sees the end
    for t in threading.enumerate():
        if "_pump" in t.name:
            await asyncio.to_thread(t.join, 3.0)
    assert riding >= 2 and riding > alone, (riding, alone)
