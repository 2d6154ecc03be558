"""One run on one agent: spawn worker processes, merge their records, stream events.

The session is transport-free: `events()` produces protobuf RunEvents. Records
from the workers are merged into one columnar batch per flush interval before
they leave the agent.

The session runs on its own task (`start()`), not on the Run stream's: every
event goes to the local spool first, then to a bounded outbox the servicer
drains into the stream (`stream()`). If the stream closes or falls behind, the
session carries on detached (events only spooled) and stops its workers once
the coordinator has been silent past the grace period; it never holds an
unbounded backlog in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.config import AgentLimits
from agent.conns import merged_figures
from agent.hostcpu import HostCpu
from agent.lifeline import worker_entry
from agent.spool import SpoolWriter
from agent.worker import (
    Done,
    Exited,
    Ready,
    Records,
    StartGate,
    Status,
    WorkerCounters,
    WorkerMessage,
    WorkerTask,
)
from volley.liveness import SilenceClock
from volley.plan import Plan
from volley.records import RecordBlock, concat
from volley.target import TargetAccess
from volley.v1 import control_pb2 as pb


class SessionState(enum.StrEnum):
    """A session's state (the value goes to AgentStatus.state)."""

    READY = "ready"  #: created, no worker yet
    WAITING = "waiting"  #: workers started, before the start instant
    #: two-phase start: workers spawning, building pools, opening connections
    PREPARING = "preparing"
    #: two-phase start: every worker ready, waiting for the start instant (Start)
    PREPARED = "prepared"
    RUNNING = "running"  #: past the start instant
    DONE = "done"  #: every worker finished without error
    FAILED = "failed"  #: a worker reported an error or exited unexpectedly


@dataclass(frozen=True)
class SessionSpec:
    run_id: str
    plan: Plan
    plan_json: str
    agent_index: int
    #: the start instant (agent clock); 0: prepare first, the instant comes by `set_start`
    start_at_ns: int
    workers: int
    expected_outputs: int
    flush_s: float = 0.1
    heartbeat_s: float = 0.25
    agent_id: str = ""
    #: The coordinator pings this often (0: it does not; only the stream tells).
    keepalive_s: float = 0.0
    #: Stop the workers once the coordinator has been silent (or the stream gone) this long.
    grace_s: float = 5.0
    #: The agent's own duration limit (0 = none): a hard stop past it, whatever happens.
    max_duration_s: float = 0.0
    #: The agent's own limits, which its workers hold at send time.
    limits: AgentLimits = field(default_factory=AgentLimits)
    #: Header values and target TLS material for the workers (in memory only).
    access: TargetAccess = field(default_factory=TargetAccess)


#: The outbox (events waiting for the Run stream) holds at most this many events /
#: bytes; past either, the stream is deemed stalled and the session detaches from it.
OUTBOX_EVENTS = 256
OUTBOX_BYTES = 64 * 1024 * 1024
#: A status event goes to the spool this often (the stream gets one every heartbeat).
SPOOL_STATUS_S = 1.0
#: A prepared session whose start instant has not come this long after it was
#: prepared stops (the coordinator gave up on the run, or never will start it).
START_WAIT_S = 120.0
#: Before the start instant the coordinator may stay silent this long (at least): a host
#: busy spawning many agents' workers can starve its keepalives, and nothing is sent yet.
PREPARE_GRACE_S = 30.0

#: The pump thread looks this often whether every worker process is gone (one that died
#: without its Done); messages wake it at once.
PUMP_POLL_S = 1.0
#: While the workers' figures do not move, the heartbeat (a status to the coordinator,
#: the watchdog's look) comes this often, else every `heartbeat_s`: the coordinator's
#: liveness limit (2.5 s) is longer, and each wake-up is idle cost.
IDLE_HEARTBEAT_S = 1.0

log = logging.getLogger("volley.agent")


#: A timing batch leaves the agent once its oldest record has waited `flush_s` and it
#: holds BATCH_RECORDS records, or once that record has waited BATCH_HOLD_S, whichever is
#: first (or at once past MAX_BATCH_RECORDS): the coordinator pays ~1-2 ms per batch
#: whatever its size, so a fast run sends fewer, bigger batches. The hold bounds what a
#: killed agent loses (records not yet sent) and how late the live view is: 0.25 s. A
#: record arriving a hold or more after the last batch left goes at once (`batch_due`).
BATCH_RECORDS = 256
BATCH_HOLD_S = 0.25
MAX_BATCH_RECORDS = 65536


def batch_due(age_s: float, records: int, flush_s: float, since_last_s: float = 0.0) -> bool:
    """The pending records (the oldest `age_s` old) go to the coordinator now. The last
    batch left `since_last_s` ago: past BATCH_HOLD_S, holding these gathers nothing (a
    slow run), so they go at once, in the wake-up that brought them."""
    if records > MAX_BATCH_RECORDS:
        return True
    if records == 0:
        return False
    if since_last_s >= BATCH_HOLD_S:
        return True
    return age_s >= max(BATCH_HOLD_S, flush_s) or (age_s >= flush_s and records >= BATCH_RECORDS)


def brisk(sent: int, elapsed_s: float, heartbeat_s: float) -> bool:
    """`sent` requests went out over the last `elapsed_s`: at least one per heartbeat, so
    that a status every heartbeat carries news. Slower (1 req/s), a status a second
    says as much for a quarter of the wake-ups."""
    return sent > 0 and sent * heartbeat_s >= elapsed_s


def beat_period(moved: bool, heartbeat_s: float) -> float:
    """The time to the next heartbeat (a status event, the watchdog's look): a heartbeat
    while the figures move, IDLE_HEARTBEAT_S (at least a heartbeat) while they do not."""
    return heartbeat_s if moved else max(IDLE_HEARTBEAT_S, heartbeat_s)


class RunSession:
    def __init__(self, spec: SessionSpec, spool: SpoolWriter | None = None) -> None:
        self.spec = spec
        self._ctx = mp.get_context("spawn")
        self._queue: Any = self._ctx.Queue()
        self._stop = self._ctx.Event()
        #: the start instant, shared with the workers (two-phase start: opened by Start)
        self.gate = StartGate(self._ctx.Event(), self._ctx.RawValue("q", 0))
        self.start_at_ns = 0
        if spec.start_at_ns:
            self.set_start(spec.start_at_ns)
        #: monotonic ns: the session was made (the Run arrived), every worker was ready
        self.created_ns = time.monotonic_ns()
        self.prepared_ns = 0
        self._procs: list[Any] = []
        self.state: SessionState = SessionState.READY
        self.counters: dict[int, WorkerCounters] = {}
        self.host_cpu = HostCpu()
        self.stop_reason = ""
        self.spool = spool
        #: Last sign of life of the coordinator (a keepalive ping), monotonic seconds.
        self.last_contact = time.monotonic()
        self.attached = True
        self.detached_at = 0.0
        self.detach_reason = ""
        self.finished = False
        #: The Finished event has been emitted (the workers may still be exiting): a Run
        #: stream the coordinator closes from here on is the normal end, not a detach.
        self.reported_end = False
        self._outbox: asyncio.Queue[pb.RunEvent | None] = asyncio.Queue()
        self._outbox_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._last_spool_status = 0.0
        #: The coordinator's silence, over this agent's own running time (the watchdog
        #: checks it every heartbeat; a longer gap between checks is the agent's own pause).
        #: An idle agent looks every IDLE_HEARTBEAT_S: a gap up to a quarter past it counts.
        self.silence = SilenceClock(max(1.25 * beat_period(False, spec.heartbeat_s), 0.5))

    def stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    def set_start(self, at_ns: int) -> bool:
        """The agreed start instant (agent clock) is known: open the workers' gate.
        False when the session already has one."""
        if self.start_at_ns:
            return False
        self.start_at_ns = at_ns
        self.gate.at.value = at_ns
        self.gate.go.set()
        return True

    def touch(self) -> None:
        """The coordinator is alive (a keepalive ping for this run arrived)."""
        self.last_contact = time.monotonic()

    def detach(self, reason: str) -> None:
        """The Run stream is gone (or stalled): from now on events are only spooled."""
        if self.attached:
            self.attached = False
            self.detached_at = time.monotonic()
            self.detach_reason = reason
            if not (self.finished or self.reported_end):
                log.warning(
                    "run %s: %s; carrying on detached (records spooled to %s)",
                    self.spec.run_id,
                    reason,
                    self.spool.path if self.spool else "nowhere",
                )
            self._outbox.put_nowait(None)

    # ---- the session's own task ------------------------------------------
    def start(self, on_done: Callable[[RunSession], None] | None = None) -> None:
        """Run the session on its own task (it outlives the Run stream)."""
        self._task = asyncio.get_running_loop().create_task(self._drive(on_done))

    async def _drive(self, on_done: Callable[[RunSession], None] | None) -> None:
        try:
            async for ev in self.events():
                self._emit(ev)
        except Exception as exc:  # never lost quietly: the last event says why
            log.exception("run %s: session failed", self.spec.run_id)
            self._emit(
                pb.RunEvent(
                    finished=pb.Finished(
                        run_id=self.spec.run_id, ok=False, error=f"agent session failed: {exc}"
                    )
                )
            )
        finally:
            self.finished = True
            if self.spool is not None:
                self.spool.close()
            self._outbox.put_nowait(None)
            self._done.set()
            if on_done is not None:
                on_done(self)

    def _emit(self, ev: pb.RunEvent) -> None:
        kind = ev.WhichOneof("event")
        if kind == "finished":
            self.reported_end = True
        if self.spool is not None:
            now = time.monotonic()
            if kind != "status" or now - self._last_spool_status >= SPOOL_STATUS_S:
                self.spool.write(ev)
                if kind == "status":
                    self._last_spool_status = now
        if not self.attached:
            return
        size = ev.ByteSize() if kind == "timings" else 0
        if self._outbox.qsize() >= OUTBOX_EVENTS or self._outbox_bytes + size > OUTBOX_BYTES:
            self.detach("the Run stream fell behind (coordinator not reading)")
            return
        self._outbox_bytes += size
        self._outbox.put_nowait(ev)

    async def stream(self) -> AsyncIterator[pb.RunEvent]:
        """The events for the Run stream, until the session ends or detaches."""
        while True:
            ev = await self._outbox.get()
            if ev is None:
                return
            if ev.WhichOneof("event") == "timings":
                self._outbox_bytes -= ev.ByteSize()
            yield ev

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for the session to end; False on timeout."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _watchdog(self, now: float) -> None:
        """Stop the workers when the coordinator is gone (silent past the grace period,
        counted over the agent's own running time: `SilenceClock`), or past the agent's
        own duration limit (a hard limit: real time)."""
        if self._stop.is_set():
            return
        s = self.spec
        # the coordinator's last sign of life: its keepalive, or (one that does not ping)
        # the Run stream while it is attached
        if s.keepalive_s > 0:
            heard = self.last_contact
        else:
            heard = now if self.attached else self.detached_at
        silent = self.silence.check(now, heard)
        grace = s.grace_s if self.start_at_ns else max(s.grace_s, PREPARE_GRACE_S)
        if silent > grace:
            if s.keepalive_s > 0:
                self.stop(f"coordinator gone (no keepalive for {silent:.1f}s)")
            else:
                self.stop(f"coordinator gone ({self.detach_reason} {silent:.1f}s ago)")
        if not self.start_at_ns:
            waited = (time.monotonic_ns() - self.prepared_ns) / 1e9
            if self.prepared_ns and waited > START_WAIT_S:
                self.stop(f"prepared, but no start instant came in {START_WAIT_S:g}s")
            return
        if s.max_duration_s > 0:
            limit_ns = self.start_at_ns + int((s.max_duration_s + s.plan.timeout_s + 5.0) * 1e9)
            if time.monotonic_ns() > limit_ns:
                self.stop(f"the agent's duration limit of {s.max_duration_s:g}s was reached")

    def status(self, cpu_percent: float) -> pb.AgentStatus:
        cs = self.counters.values()
        return pb.AgentStatus(
            state=self.state.value,
            sent=sum(c.sent for c in cs),
            completed=sum(c.completed for c in cs),
            errors=sum(c.errors for c in cs),
            dropped=sum(c.dropped for c in cs),
            in_flight=sum(c.in_flight for c in cs),
            cpu_percent=cpu_percent,
            cpu_seconds=sum(c.cpu_s for c in cs),
            agent_ns=time.monotonic_ns(),
            message=self.stop_reason,
            retried=sum(c.retried for c in cs),
            reconnects=sum(c.reconnects for c in cs),
            connect_errors=sum(c.connect_errors for c in cs),
            connections=merged_figures(c.conns for c in cs),
            host_cpu_percent=self.host_cpu.sample(),
        )

    def _start_workers(self) -> None:
        s = self.spec
        for w in range(s.workers):
            task = WorkerTask(
                plan_json=s.plan_json,
                run_id=s.run_id,
                agent_index=s.agent_index,
                worker_index=w,
                workers=s.workers,
                start_at_ns=s.start_at_ns,
                flush_s=s.flush_s,
                expected_outputs=s.expected_outputs,
                limits=s.limits,
                access=s.access,
            )
            p = self._ctx.Process(
                target=worker_entry,
                args=(task, self._queue, self._stop, os.getpid(), self.gate),
                daemon=True,
                name=f"volley-worker-{w}",
            )
            p.start()
            self._procs.append(p)

    def _pump(
        self,
        loop: asyncio.AbstractEventLoop,
        aq: asyncio.Queue[WorkerMessage],
        finished: threading.Event,
    ) -> None:
        """Thread: move messages from the multiprocessing queue into asyncio."""
        # RuntimeError: the event loop closed under us, so the session is over.
        with contextlib.suppress(RuntimeError):
            self._pump_loop(loop, aq, finished)

    def _pump_loop(
        self,
        loop: asyncio.AbstractEventLoop,
        aq: asyncio.Queue[WorkerMessage],
        finished: threading.Event,
    ) -> None:
        while not finished.is_set():
            try:
                msg = self._queue.get(timeout=PUMP_POLL_S)
            except queue.Empty:
                if all(not p.is_alive() for p in self._procs):
                    # drain what is left, then report dead workers
                    with contextlib.suppress(queue.Empty):
                        while True:
                            loop.call_soon_threadsafe(aq.put_nowait, self._queue.get_nowait())
                    loop.call_soon_threadsafe(aq.put_nowait, Exited())
                    return
                continue
            loop.call_soon_threadsafe(aq.put_nowait, msg)

    async def events(self) -> AsyncIterator[pb.RunEvent]:
        s = self.spec
        loop = asyncio.get_running_loop()
        aq: asyncio.Queue[WorkerMessage] = asyncio.Queue()
        finished = threading.Event()
        self._start_workers()
        pump = threading.Thread(target=self._pump, args=(loop, aq, finished), daemon=True)
        pump.start()
        two_phase = not self.start_at_ns
        self.state = SessionState.PREPARING if two_phase else SessionState.WAITING
        ready: dict[int, int] = {}
        yield pb.RunEvent(
            started=pb.Started(
                run_id=s.run_id,
                workers=s.workers,
                agent_index=s.agent_index,
                agent_id=s.agent_id,
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
                        self.counters[msg.worker] = msg.counters
                    case Ready():
                        ready[msg.worker] = msg.prepare_ns
                        if two_phase and len(ready) == s.workers and not self.prepared_ns:
                            self.prepared_ns = time.monotonic_ns()
                            if not self.start_at_ns:
                                self.state = SessionState.PREPARED
                            yield pb.RunEvent(prepared=self._prepared(ready))
                    case Done():
                        done[msg.worker] = msg.error
                    case Exited():
                        for w in range(s.workers):
                            done.setdefault(w, "worker process exited unexpectedly")
                if self.start_at_ns and self.state in (
                    SessionState.WAITING,
                    SessionState.PREPARED,
                    SessionState.PREPARING,
                ):
                    if time.monotonic_ns() >= self.start_at_ns:
                        self.state = SessionState.RUNNING
                    elif self.state is SessionState.PREPARED:
                        self.state = SessionState.WAITING
                now = time.monotonic()
                if batch_due(now - pending_since, pending_n, s.flush_s, now - last_batch):
                    yield pb.RunEvent(timings=concat(pending).to_proto())
                    pending, pending_n, last_batch = [], 0, now
                if now - last_beat >= beat_s:
                    self._watchdog(now)
                    cpu = sum(c.cpu_s for c in self.counters.values())
                    dt = now - cpu_mark[0]
                    if dt > 0:
                        cpu_percent = max(0.0, (cpu - cpu_mark[1]) / dt * 100.0)
                    cpu_mark = (now, cpu)
                    last_beat = now
                    # fast heartbeats while the state changes or requests go out at
                    # least one a heartbeat; else once a second (still with the figures)
                    figures = (self.state, self.stop_reason)
                    sent = sum(c.sent for c in self.counters.values())
                    busy = brisk(sent - told_sent, dt, s.heartbeat_s)
                    beat_s = beat_period(figures != told or busy, s.heartbeat_s)
                    told, told_sent = figures, sent
                    yield pb.RunEvent(status=self.status(cpu_percent))
            if pending:
                yield pb.RunEvent(timings=concat(pending).to_proto())
            errors = "; ".join(f"worker {w}: {e}" for w, e in sorted(done.items()) if e)
            self.state = SessionState.FAILED if errors else SessionState.DONE
            yield pb.RunEvent(
                finished=pb.Finished(
                    run_id=s.run_id,
                    ok=not errors,
                    error=errors,
                    final_status=self.status(cpu_percent),
                )
            )
        finally:
            self._stop.set()
            finished.set()
            await loop.run_in_executor(None, self._join)

    def _prepared(self, ready: dict[int, int]) -> pb.Prepared:
        s = self.spec
        return pb.Prepared(
            run_id=s.run_id,
            workers=s.workers,
            prepare_ns=self.prepared_ns - self.created_ns,
            worker_prepare_ns=[ready[w] for w in sorted(ready)],
            agent_ns=self.prepared_ns,
        )

    def _join(self) -> None:
        deadline = time.monotonic() + 5.0
        for p in self._procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(timeout=1.0)
