"""A run session's event loop: the workers' messages in, RunEvents out.

`session_events` spawns the session's workers, moves their messages from the
multiprocessing queue into asyncio (a pump thread), merges records into timing batches
(`agent.pacing`), beats (a status event and the watchdog's look) and ends with Finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from agent.pacing import (
    BATCH_HOLD_S,
    BATCH_RECORDS,
    batch_due,
    beat_due,
    beat_period,
    brisk,
    goes_with_beat,
)
from agent.session_types import SessionState
from agent.worker import Done, Exited, Ready, Records, Status, WorkerMessage
from volley.records import RecordBlock, concat
from volley.v1 import control_pb2 as pb

if TYPE_CHECKING:
    from agent.session import RunSession

#: The pump thread looks this often whether every worker process is gone (one that died
#: without its Done); messages wake it at once.
PUMP_POLL_S = 1.0


def _pump(
    session: RunSession,
    loop: asyncio.AbstractEventLoop,
    aq: asyncio.Queue[WorkerMessage],
    finished: threading.Event,
) -> None:
    """Thread: move messages from the multiprocessing queue into asyncio."""
    # RuntimeError: the event loop closed under us, so the session is over.
    with contextlib.suppress(RuntimeError):
        _pump_loop(session, loop, aq, finished)


def _pump_loop(
    session: RunSession,
    loop: asyncio.AbstractEventLoop,
    aq: asyncio.Queue[WorkerMessage],
    finished: threading.Event,
) -> None:
    while not finished.is_set():
        try:
            msg = session._queue.get(timeout=PUMP_POLL_S)
        except queue.Empty:
            if all(not p.is_alive() for p in session._procs):
                # drain what is left, then report dead workers
                with contextlib.suppress(queue.Empty):
                    while True:
                        loop.call_soon_threadsafe(aq.put_nowait, session._queue.get_nowait())
                loop.call_soon_threadsafe(aq.put_nowait, Exited())
                return
            continue
        loop.call_soon_threadsafe(aq.put_nowait, msg)


async def session_events(session: RunSession) -> AsyncIterator[pb.RunEvent]:
    """The session's events: spawn its workers, merge their records into timing batches,
    beat (status, watchdog) and end with Finished; the workers are joined on exit."""
    s = session.spec
    loop = asyncio.get_running_loop()
    aq: asyncio.Queue[WorkerMessage] = asyncio.Queue()
    finished = threading.Event()
    session._start_workers()
    pump = threading.Thread(target=_pump, args=(session, loop, aq, finished), daemon=True)
    pump.start()
    two_phase = not session.start_at_ns
    session.state = SessionState.PREPARING if two_phase else SessionState.WAITING
    ready: dict[int, int] = {}
    yield pb.RunEvent(
        started=pb.Started(
            run_id=s.run_id,
            workers=s.workers,
            agent_index=s.agent_index,
            agent_id=s.agent_id,
            idle_heartbeat_s=beat_period(False, s.heartbeat_s),
        )
    )
    pending: list[RecordBlock] = []
    done: dict[int, str] = {}
    last_beat = pending_since = time.monotonic()
    last_batch = last_beat - BATCH_HOLD_S  # when the last timing batch left
    pending_n = 0
    cpu_mark = (time.monotonic(), 0.0)
    cpu_percent = 0.0
    told: tuple[Any, ...] = ()
    told_sent = 0
    beat_s = s.heartbeat_s
    try:
        while len(done) < s.workers:
            # nothing pending: no flush to wake for, only the heartbeat
            wake = last_beat + beat_s
            if pending:  # the earliest the batch can be due
                first = s.flush_s if pending_n >= BATCH_RECORDS else BATCH_HOLD_S
                wake = min(wake, pending_since + first, last_batch + BATCH_HOLD_S)
            timeout = max(0.0, wake - time.monotonic())
            try:
                msg = await asyncio.wait_for(aq.get(), timeout=timeout)
            except TimeoutError:
                msg = None
            match msg:
                case Records():
                    block = RecordBlock(msg.columns, msg.shapes, msg.gaps)
                    if not pending:
                        pending_since = time.monotonic()
                    pending.append(block)
                    pending_n += len(block)
                case Status():
                    session.counters[msg.worker] = msg.counters
                case Ready():
                    ready[msg.worker] = msg.prepare_ns
                    if two_phase and len(ready) == s.workers and not session.prepared_ns:
                        session.prepared_ns = time.monotonic_ns()
                        if not session.start_at_ns:
                            session.state = SessionState.PREPARED
                        yield pb.RunEvent(prepared=session._prepared(ready))
                case Done():
                    done[msg.worker] = msg.error
                case Exited():
                    for w in range(s.workers):
                        done.setdefault(w, "worker process exited unexpectedly")
            if session.start_at_ns and session.state in (
                SessionState.WAITING,
                SessionState.PREPARED,
                SessionState.PREPARING,
            ):
                if time.monotonic_ns() >= session.start_at_ns:
                    session.state = SessionState.RUNNING
                elif session.state is SessionState.PREPARED:
                    session.state = SessionState.WAITING
            now = time.monotonic()
            batch: pb.TimingBatch | None = None
            since_beat = now - last_beat
            if batch_due(now - pending_since, pending_n, s.flush_s, now - last_batch) or (
                goes_with_beat(pending_n, since_beat, beat_s)
            ):
                batch = concat(pending).to_proto()
                pending, pending_n, last_batch = [], 0, now
            if beat_due(since_beat, beat_s, s.heartbeat_s, batch is not None):
                session._watchdog(now)
                cpu = sum(c.cpu_s for c in session.counters.values())
                dt = now - cpu_mark[0]
                if dt > 0:
                    cpu_percent = max(0.0, (cpu - cpu_mark[1]) / dt * 100.0)
                cpu_mark = (now, cpu)
                last_beat = now
                # fast heartbeats while the state changes or requests go out at
                # least one a heartbeat; else every IDLE_HEARTBEAT_S (still with the figures)
                figures = (session.state, session.stop_reason)
                sent = sum(c.sent for c in session.counters.values())
                busy = brisk(sent - told_sent, dt, s.heartbeat_s)
                beat_s = beat_period(figures != told or busy, s.heartbeat_s)
                told, told_sent = figures, sent
                if batch is None:
                    yield pb.RunEvent(status=session.status(cpu_percent))
                else:  # the status rides on the batch
                    batch.agent_status.CopyFrom(session.status(cpu_percent))
            if batch is not None:
                yield pb.RunEvent(timings=batch)
        if pending:
            yield pb.RunEvent(timings=concat(pending).to_proto())
        errors = "; ".join(f"worker {w}: {e}" for w, e in sorted(done.items()) if e)
        session.state = SessionState.FAILED if errors else SessionState.DONE
        yield pb.RunEvent(
            finished=pb.Finished(
                run_id=s.run_id,
                ok=not errors,
                error=errors,
                final_status=session.status(cpu_percent),
            )
        )
    finally:
        session._stop.set()
        finished.set()
        await loop.run_in_executor(None, session._join)
