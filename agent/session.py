"""One run on one agent: start worker processes (`agent.procs`), merge their records, stream events.

The session is transport-free: `events()` produces protobuf RunEvents
(`agent.session_events`: the event loop; `agent.pacing`: its batch and heartbeat
cadences; `agent.session_types`: the spec and states). Records from the workers are
merged into one columnar batch per flush interval before they leave the agent.

The session runs on its own task (`start()`), not on the Run stream's: every
event goes to the local spool first, then to a bounded outbox the servicer
drains into the stream (`stream()`). If the stream closes or falls behind, the
session carries on detached (events only spooled) and stops its workers once
the coordinator has been silent past the grace period; it never holds an
unbounded backlog in memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from agent.conns import merged_figures
from agent.hostcpu import HostCpu
from agent.lifeline import worker_entry
from agent.pacing import (
    BATCH_HOLD_S,
    BATCH_RECORDS,
    IDLE_HEARTBEAT_S,
    MAX_BATCH_RECORDS,
    batch_due,
    beat_period,
    brisk,
)
from agent.procs import worker_context
from agent.session_events import PUMP_POLL_S, session_events
from agent.session_types import SessionSpec, SessionState
from agent.spool import SpoolWriter
from agent.worker import StartGate, WorkerCounters, WorkerTask
from volley.liveness import SilenceClock
from volley.v1 import control_pb2 as pb

#: Names that moved out of this module, still importable from it.
__all__ = [
    "BATCH_HOLD_S",
    "BATCH_RECORDS",
    "IDLE_HEARTBEAT_S",
    "MAX_BATCH_RECORDS",
    "PUMP_POLL_S",
    "RunSession",
    "SessionSpec",
    "SessionState",
    "batch_due",
    "beat_period",
    "brisk",
]


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

log = logging.getLogger("volley.agent")


class RunSession:
    def __init__(self, spec: SessionSpec, spool: SpoolWriter | None = None) -> None:
        self.spec = spec
        self._ctx = worker_context()
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

    def events(self) -> AsyncIterator[pb.RunEvent]:
        """The session's events (`agent.session_events`)."""
        return session_events(self)

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
