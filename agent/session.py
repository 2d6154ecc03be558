"""One run on one agent: spawn worker processes, merge their records, stream events.

The session is transport-free: `events()` yields protobuf RunEvents that the
servicer forwards as they come. Records from the workers are merged into one
columnar batch per flush interval before they leave the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from agent.worker import WorkerCounters, WorkerTask, worker_main
from volley.plan import Plan
from volley.records import RecordBlock, concat
from volley.v1 import control_pb2 as pb


@dataclass(frozen=True)
class SessionSpec:
    run_id: str
    plan: Plan
    plan_json: str
    agent_index: int
    start_at_ns: int
    workers: int
    expected_outputs: int
    flush_s: float = 0.1
    heartbeat_s: float = 0.25


class RunSession:
    def __init__(self, spec: SessionSpec) -> None:
        self.spec = spec
        self._ctx = mp.get_context("spawn")
        self._queue: Any = self._ctx.Queue()
        self._stop = self._ctx.Event()
        self._procs: list[Any] = []
        self.state = "ready"
        self.counters: dict[int, WorkerCounters] = {}
        self.stop_reason = ""

    def stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    def status(self, cpu_percent: float) -> pb.AgentStatus:
        cs = self.counters.values()
        return pb.AgentStatus(
            state=self.state,
            sent=sum(c.sent for c in cs),
            completed=sum(c.completed for c in cs),
            errors=sum(c.errors for c in cs),
            dropped=sum(c.dropped for c in cs),
            in_flight=sum(c.in_flight for c in cs),
            cpu_percent=cpu_percent,
            cpu_seconds=sum(c.cpu_s for c in cs),
            agent_ns=time.monotonic_ns(),
            message=self.stop_reason,
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
            )
            p = self._ctx.Process(
                target=worker_main,
                args=(task, self._queue, self._stop),
                daemon=True,
                name=f"volley-worker-{w}",
            )
            p.start()
            self._procs.append(p)

    def _pump(
        self, loop: asyncio.AbstractEventLoop, aq: asyncio.Queue[Any], finished: threading.Event
    ) -> None:
        """Thread: move messages from the multiprocessing queue into asyncio."""
        with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody listens
            self._pump_until(loop, aq, finished)

    def _pump_until(
        self, loop: asyncio.AbstractEventLoop, aq: asyncio.Queue[Any], finished: threading.Event
    ) -> None:
        while not finished.is_set():
            try:
                msg = self._queue.get(timeout=0.1)
            except queue.Empty:
                if all(not p.is_alive() for p in self._procs):
                    # drain what is left, then report dead workers
                    with contextlib.suppress(queue.Empty):
                        while True:
                            loop.call_soon_threadsafe(aq.put_nowait, self._queue.get_nowait())
                    loop.call_soon_threadsafe(aq.put_nowait, ("exited",))
                    return
                continue
            loop.call_soon_threadsafe(aq.put_nowait, msg)

    async def events(self) -> AsyncIterator[pb.RunEvent]:
        s = self.spec
        loop = asyncio.get_running_loop()
        aq: asyncio.Queue[Any] = asyncio.Queue()
        finished = threading.Event()
        self._start_workers()
        pump = threading.Thread(target=self._pump, args=(loop, aq, finished), daemon=True)
        pump.start()
        self.state = "waiting"
        yield pb.RunEvent(started=pb.Started(run_id=s.run_id, workers=s.workers))
        pending: list[RecordBlock] = []
        done: dict[int, str] = {}
        last_flush = last_beat = time.monotonic()
        cpu_mark = (time.monotonic(), 0.0)
        cpu_percent = 0.0
        try:
            while len(done) < s.workers:
                timeout = max(
                    0.0, min(last_flush + s.flush_s, last_beat + s.heartbeat_s) - time.monotonic()
                )
                try:
                    msg = await asyncio.wait_for(aq.get(), timeout=timeout)
                except TimeoutError:
                    msg = None
                if msg is not None:
                    kind = msg[0]
                    if kind == "records":
                        pending.append(RecordBlock(msg[2], msg[3]))
                    elif kind == "status":
                        self.counters[msg[1]] = msg[2]
                    elif kind == "ready":
                        if time.monotonic_ns() < s.start_at_ns:
                            self.state = "waiting"
                    elif kind == "done":
                        done[msg[1]] = msg[2]
                    elif kind == "exited":
                        for w in range(s.workers):
                            done.setdefault(w, "worker process exited unexpectedly")
                if self.state == "waiting" and time.monotonic_ns() >= s.start_at_ns:
                    self.state = "running"
                now = time.monotonic()
                if pending and (now - last_flush >= s.flush_s or sum(map(len, pending)) > 65536):
                    yield pb.RunEvent(timings=concat(pending).to_proto())
                    pending = []
                    last_flush = now
                elif now - last_flush >= s.flush_s:
                    last_flush = now
                if now - last_beat >= s.heartbeat_s:
                    cpu = sum(c.cpu_s for c in self.counters.values())
                    dt = now - cpu_mark[0]
                    if dt > 0:
                        cpu_percent = max(0.0, (cpu - cpu_mark[1]) / dt * 100.0)
                    cpu_mark = (now, cpu)
                    last_beat = now
                    yield pb.RunEvent(status=self.status(cpu_percent))
            if pending:
                yield pb.RunEvent(timings=concat(pending).to_proto())
            errors = "; ".join(f"worker {w}: {e}" for w, e in sorted(done.items()) if e)
            self.state = "failed" if errors else "done"
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

    def _join(self) -> None:
        deadline = time.monotonic() + 5.0
        for p in self._procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(timeout=1.0)
