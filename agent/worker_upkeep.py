"""The worker's upkeep beside its hot loop (agent/worker.py): the ticker (records and
status to the agent every flush interval, quiet when nothing moves), the timeout
sweeper, and pinning the worker process to its core."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Mapping
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

from agent.transports import Transport
from agent.worker_messages import Records, Status, WorkerCounters, WorkerTask
from volley.plan import Plan
from volley.records import RecordBuffer
from volley.security import WORKER_CPUS_ENV
from volley.wire.payloads import Payloads

#: A worker whose counters did not move sends its status this often (else every flush),
#: and its ticker, finding nothing to send, sleeps this long.
IDLE_STATUS_S = 1.0


#: Held connections (`--connections`) are looked after by the sweep (PINGs, their
#: deadlines, reopening empty slots): it runs at least this often while they are held.
HELD_UPKEEP_S = 1.0


def sweep_delay(period_s: float, timeout_s: float, idle: bool, held: bool = False) -> float:
    """The timeout sweeper's next sleep. With nothing in flight (`idle`) no request can
    time out before a whole timeout from now (one sent right away is due then at the
    earliest), so it sleeps that long; the next sweep after it is again `period_s` on.
    While connections are `held`, their upkeep rides on the sweep: at most HELD_UPKEEP_S."""
    delay = max(timeout_s, period_s) if idle else period_s
    return min(delay, HELD_UPKEEP_S) if held else delay


class WorkerUpkeep:
    """The ticker and the sweeper of a `Worker` (a base class: the state is the worker's,
    set in `Worker.__init__`)."""

    task: WorkerTask
    plan: Plan
    out: Queue[Any]
    stop_event: Event
    buf: RecordBuffer
    counters: WorkerCounters
    payloads: Payloads | None
    tp: Transport | None
    backlog: deque[tuple[int, int, int]]
    cpu_base: float
    stopping: bool
    quiet: bool
    _woken: asyncio.Event
    _told: tuple[int, ...]
    _told_at: float

    def _flush(self) -> None:
        assert self.payloads is not None
        block = self.buf.take(self.payloads.shapes)
        if block is not None:
            self.out.put(
                Records(self.task.worker_index, block.columns, block.input_shapes, block.gaps)
            )

    def _send_status(self) -> None:
        self.counters.cpu_s = time.process_time() - self.cpu_base
        if self.tp is not None:
            self.counters.in_flight = self.tp.in_flight + len(self.backlog)
            self.counters.retried = self.tp.retried
            self.counters.reconnects = self.tp.reconnects
            self.counters.connect_errors = self.tp.connect_errors
            self.counters.conns = self.tp.conn_figures()
        self.out.put(Status(self.task.worker_index, self.counters))

    def _wake_flush(self) -> None:
        """The buffer is full, or this is the first record after a quiet spell: the
        records go at once. After a quiet spell the status goes with them (one wake-up
        for both here and in the agent; the ticker then has nothing new to tell)."""
        self._flush()
        if self.quiet:
            self._tell()
            self._woken.set()
        self.quiet = False

    def _tell(self) -> None:
        self._send_status()
        self._told, self._told_at = self._counts(), time.monotonic()

    def _counts(self) -> tuple[int, ...]:
        """What a status tells the agent, less the CPU (unchanged: nothing to tell)."""
        c, tp = self.counters, self.tp
        moving = (tp.in_flight, tp.retried, tp.reconnects, tp.connect_errors) if tp else ()
        return (c.sent, c.completed, c.errors, c.dropped, len(self.backlog), *moving)

    async def _ticker(self) -> None:
        """Every flush interval: records to the agent; a status when the counters moved,
        else one every IDLE_STATUS_S (a message costs a pickle, a feeder-thread wake-up
        and the agent's reading it: idle, the worker stays quiet)."""
        while True:
            if self.quiet:  # until IDLE_STATUS_S, or a flush interval after a record comes
                self._woken.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), IDLE_STATUS_S)
                    await asyncio.sleep(self.task.flush_s)
            else:
                await asyncio.sleep(self.task.flush_s)
            if self.stop_event.is_set():
                self.stopping = True
            had_records = self.buf.n > 0
            self._flush()
            moved = self._counts() != self._told
            if moved or time.monotonic() - self._told_at >= IDLE_STATUS_S:
                self._tell()
            # nothing moved: wake once a second (a completion meanwhile is sent at once)
            self.quiet = not (moved or had_records)

    async def _sweeper(self) -> None:
        """Finds requests past their timeout (precision: a fiftieth of the timeout);
        with nothing in flight it sleeps a whole timeout (`sweep_delay`)."""
        period = min(max(self.plan.timeout_s / 50, 0.002), 0.1)
        while True:
            idle = self.tp is None or (self.tp.in_flight == 0 and not self.backlog)
            held = self.tp is not None and self.tp.fixed
            await asyncio.sleep(sweep_delay(period, self.plan.timeout_s, idle, held))
            if self.tp is not None:
                self.tp.sweep()


def pin_from_env(worker_index: int, env: Mapping[str, str] = os.environ) -> int:
    """A local agent's worker pins itself to its own core (`WORKER_CPUS_ENV`, set by the
    coordinator's --local-agents); the core, or -1 when none is given or it cannot."""
    cores = [int(c) for c in env.get(WORKER_CPUS_ENV, "").split(",") if c.strip().isdigit()]
    if not cores or not hasattr(os, "sched_setaffinity"):
        return -1
    core = cores[worker_index % len(cores)]
    try:
        os.sched_setaffinity(0, {core})
    except OSError:
        return -1
    return core
