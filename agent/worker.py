"""One agent worker process: its own uvloop loop and connections, one schedule slice.

The worker regenerates the global schedule from the plan's seed, keeps its own
slice (agent slice, then worker slice), and fires pre-serialized requests through
the plan's transport (agent/transport.py) at each intended time. Completed
requests are appended to a preallocated `RecordBuffer`; blocks go to the agent
process through a multiprocessing queue every `flush_s`.

A worker started with a `StartGate` (the two-phase start) prepares first (payload
pool, connections), reports Ready with how long that took, and waits for the agent to
open the gate with the agreed start instant.

Split along its seams: this module is the hot loop (`Worker`: open loop, closed loop,
completions) and the process entry (`worker_main`); the task and the messages it puts
on the queue are in agent/worker_messages.py, the ticker, the timeout sweeper and
pinning in agent/worker_upkeep.py. Every name is still importable from here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import time
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

import numpy as np

from agent.conns import fit_pool, raise_nofile, worker_plan
from agent.limits import Pacer, worker_quotas
from agent.sequences import SequenceDriver
from agent.timer import LoopTimer, make_timer
from agent.transports import Transport, make_transport
from agent.worker_messages import (
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
from agent.worker_upkeep import (
    HELD_UPKEEP_S,
    IDLE_STATUS_S,
    WorkerUpkeep,
    pin_from_env,
    sweep_delay,
)
from volley import records as rc
from volley.arrivals import concurrency_profile, global_schedule
from volley.plan import Plan
from volley.records import RecordBuffer
from volley.schedule import split_count, worker_slice
from volley.wire.payloads import Payloads, Wire, build_payloads

__all__ = [
    "HELD_UPKEEP_S",
    "IDLE_STATUS_S",
    "MAX_USER_BACKOFF_S",
    "Done",
    "Exited",
    "Ready",
    "Records",
    "StartGate",
    "Status",
    "Worker",
    "WorkerCounters",
    "WorkerMessage",
    "WorkerTask",
    "pin_from_env",
    "sweep_delay",
    "worker_main",
]

#: Closed loop: a user whose request failed UNAVAILABLE waits (doubling up to this)
#: before its next one, instead of spinning on a dead server.
MAX_USER_BACKOFF_S = 1.0
#: Open loop: the in-flight cap of a plan without one.
_NO_CAP = 1 << 62


class Worker(WorkerUpkeep):
    """The hot loop. All state is local to one process and one event loop.

    Requests go out through a transport (agent/transport.py) built from the plan; its
    completions call `_complete` from the event loop. Nothing per request is created
    here beyond what the transport keeps while the request is in flight.
    """

    def __init__(
        self,
        task: WorkerTask,
        out: Queue[Any],
        stop: Event,
        clock: Callable[[], int] = time.monotonic_ns,
        gate: StartGate | None = None,
    ) -> None:
        self.task = task
        #: two-phase start: the start instant comes through the gate once prepared
        self.gate = gate
        self.entered_ns = time.monotonic_ns()
        self.plan = Plan.from_json(task.plan_json)
        self.out = out
        self.stop_event = stop
        self.clock = clock
        self.start = task.start_at_ns
        self.buf = RecordBuffer(8192)
        self.buf.worker = task.worker_index
        self.counters = WorkerCounters()
        self.stopping = False
        #: the ticker found nothing to send last time: it sleeps IDLE_STATUS_S, and the
        #: next completion flushes at once
        self.quiet = False
        #: set by the first record after a quiet spell: the ticker's idle sleep ends, so
        #: the records after it wait a flush interval, not the rest of IDLE_STATUS_S
        self._woken = asyncio.Event()
        #: the counters the last status told, and when (`_tell`)
        self._told: tuple[int, ...] = ()
        self._told_at = time.monotonic()
        self.payloads: Payloads | None = None
        self.wires: list[Wire] = []
        self.tp: Transport | None = None
        self.backlog: collections.deque[tuple[int, int, int]] = collections.deque()
        #: closed loop: users (virtual clients) wanted now, which are running, and the end
        self.level = 0
        self.active: list[bool] = []
        #: closed loop: per-user backoff (s) after UNAVAILABLE
        self.user_backoff: dict[int, float] = {}
        self.end_ns = 0
        self.seq = 0
        #: open loop: wake with a timerfd (ns-precise) where the clock is the system's
        self._use_timerfd = clock is time.monotonic_ns
        self._timer: LoopTimer | None = None
        #: open loop on the timerfd: an arrival due within the horizon when a completion
        #: wakes the worker goes in that wake-up (`_ride_along`)
        self._ride = False
        #: CPU spent before the load (imports, pool build) is not the load's cost.
        self.cpu_base = time.process_time()
        # The agent's limits, this worker's share (agent/limits.py): a pacer of sends per
        # window and an in-flight cap (-1: none). Without limits nothing below is on the
        # send path: `_issue` and `_user_next` are the plain methods.
        rate_quota, self.if_cap = worker_quotas(task.limits, task.workers, task.worker_index)
        self.pacer = Pacer(rate_quota, task.limits.window_ns) if rate_quota >= 0 else None
        limited = self.pacer is not None or self.if_cap >= 0
        #: open loop: hands an arrival on (plain, or through the pacer)
        self._issue: Callable[[int, int, int], None] = (
            self._send_paced if self.pacer is not None else self._send
        )
        #: closed loop: user uid's next request (plain, or waiting for its turn)
        self._user_next: Callable[[int], None] = self._user_paced if limited else self._user_go
        #: closed loop, limited: users waiting for the pacer (or an in-flight slot)
        self._waiting: collections.deque[int] = collections.deque()
        self._wake_armed = False

    # ---- plumbing ------------------------------------------------------

    def _record(
        self,
        index: int,
        intended: int,
        sent: int,
        done: int,
        status: int,
        req: int,
        resp: int,
        batch: int,
        shape: int,
        model: int = 0,
    ) -> None:
        c = self.counters
        c.completed += 1
        if status != rc.OK:
            if status == rc.DROPPED:
                c.dropped += 1
            else:
                c.errors += 1
        if (
            self.buf.append(index, intended, sent, done, status, req, resp, batch, shape, model)
            or self.quiet
        ):
            self._wake_flush()

    # ---- completions ---------------------------------------------------
    def _complete(
        self, key: int, intended: int, sent: int, done: int, status: int, pidx: int, resp: int
    ) -> None:
        """A request is over (called by the transport from the event loop)."""
        w = self.wires[pidx]
        c = self.counters
        c.completed += 1
        if key < 0 and sent >= 0:
            intended = sent  # closed loop: no schedule, intended = sent
        if status:
            if status == rc.DROPPED:
                c.dropped += 1
            else:
                c.errors += 1
        if (
            self.buf.append(
                key if key >= 0 else -1,
                intended,
                sent,
                done,
                status,
                w.req_bytes if sent >= 0 else 0,
                resp,
                w.batch_size,
                w.shape_id,
                w.model_id,
            )
            or self.quiet
        ):
            self._wake_flush()
        if key < 0:
            uid = -1 - key
            if status == rc.UNAVAILABLE:
                # A dead server: this user waits (doubling up to MAX_USER_BACKOFF_S)
                # instead of spinning on it; its arrivals are closed-loop, so none is lost.
                wait = min(max(self.user_backoff.get(uid, 0.0) * 2, 0.01), MAX_USER_BACKOFF_S)
                self.user_backoff[uid] = wait
                asyncio.get_running_loop().call_later(wait, self._user_next, uid)
            else:
                self.user_backoff.pop(uid, None)
                self._user_next(uid)
        elif self.backlog and not self.stopping:
            # A slot freed: the oldest waiting arrival goes out now (late, and counted so).
            i, t, p = self.backlog.popleft()
            self._issue(i, t, p)
        elif self._ride:
            self._ride_along()

    def _ride_along(self) -> None:
        """Open loop, on the timerfd: a completion woke the worker, and the next arrival is
        due within the send horizon: it goes now (`_tick`, which re-arms the timer for the
        one after), not at a wake-up of its own. The same bound as `_tick`'s horizon: no
        send earlier than `send_horizon_us` before its intended time, each stamped with
        its true send time. Only while the timer waits (never from inside `_tick`)."""
        timer = self._timer
        pos = self._pos
        if (
            timer is not None
            and timer.armed
            and pos < len(self._ts)
            and self._ts[pos] <= self.clock() - self.start + self._horizon_ns
        ):
            self._tick()

    def _send(self, key: int, intended: int, pidx: int) -> None:
        assert self.tp is not None
        c = self.counters
        if c.first_send_lateness_ns is None:
            c.first_send_lateness_ns = self.clock() - self.start - intended
        c.sent += 1
        self.tp.send(key, intended, pidx)

    def _send_paced(self, key: int, intended: int, pidx: int) -> None:
        """Open loop under the agent's rate limit: an arrival that would put more than
        this worker's quota in one window is not sent and is recorded LIMITED."""
        pacer = self.pacer
        assert pacer is not None
        if self.clock() - self.start < pacer.free_at():
            w = self.wires[pidx]
            self._record(key, intended, -1, -1, rc.LIMITED, 0, 0, 0, w.shape_id, w.model_id)
            return
        self._send(key, intended, pidx)
        # taken after the hand-over: the transport's sent stamp is no later than this
        pacer.took(self.clock() - self.start)

    # ---- open loop -----------------------------------------------------
    async def _open_loop(self) -> None:
        """Fire this worker's slice of the schedule, each arrival at its intended time.

        Driven by one timer callback (`_tick`) re-armed for the next arrival: no task,
        future or coroutine step per request."""
        assert self.payloads is not None and self.tp is not None
        plan = self.plan
        cap_total = plan.load.max_in_flight
        self._cap = (
            _NO_CAP
            if cap_total == 0
            else max(1, split_count(cap_total, [1] * self.task.workers)[self.task.worker_index])
        )
        if self.if_cap >= 0:
            self._cap = min(self._cap, self.if_cap)
        #: at least 0.1 ms: a timer can fire ~0.1 ms after its whole-ms delay
        self._spin_ns = max(int(plan.load.spin_us * 1000), 100_000)
        self._spin_us_ns = int(plan.load.spin_us * 1000)
        #: arrivals due this soon after the one that woke the worker go with it
        self._horizon_ns = int(plan.load.send_horizon_us * 1000)
        self._chunks = global_schedule(plan).chunks()
        self._idx: list[int] = []
        self._ts: list[int] = []
        self._pidx: list[int] = []
        self._pos = 0
        self._loop = asyncio.get_running_loop()
        self._finished: asyncio.Future[None] = self._loop.create_future()
        precise = self._use_timerfd and plan.load.timer == "precise"
        self._timer = make_timer(self._loop, self._tick) if precise else None
        # without spin_us every `_tick` ends re-arming the one timer (or finished), so a
        # tick run by a completion replaces the timer's deadline: no second chain of ticks
        self._ride = self._timer is not None and self._horizon_ns > 0 and self._spin_us_ns == 0
        try:
            self._tick()
            await self._finished
        finally:
            self._ride = False
            if self._timer is not None:
                self._timer.close()

    def _next_chunk(self) -> bool:
        assert self.payloads is not None
        plan = self.plan
        for idx, tns in self._chunks:
            idx, tns = worker_slice(
                idx,
                tns,
                plan.agent_weights,
                self.task.agent_index,
                [1] * self.task.workers,
                self.task.worker_index,
            )
            if idx.size == 0:
                continue
            self._idx = idx.tolist()
            self._ts = tns.tolist()
            self._pidx = self.payloads.pick(idx).tolist()
            self._pos = 0
            return True
        return False

    def _tick(self) -> None:
        """Send every arrival that is due, then re-arm the timer for the next one."""
        if self._finished.done():
            return
        if self.stopping or self.stop_event.is_set():
            self.stopping = True
            self._finished.set_result(None)
            return
        tp = self.tp
        assert tp is not None
        clock, start = self.clock, self.start
        cap = self._cap
        backlog = self.backlog
        send = self._issue
        horizon = self._horizon_ns
        now = clock() - start
        # due: every arrival up to `horizon` after now (sent early by at most that, each
        # stamped with its true send time, never before the start); several go out in one
        # write
        edge = now + horizon if now >= 0 else now
        corked = False
        try:
            while True:
                idx, ts, pidx = self._idx, self._ts, self._pidx
                pos, n = self._pos, len(ts)
                while pos < n:
                    t = ts[pos]
                    if t > edge:
                        break
                    if not corked and pos + 1 < n and ts[pos + 1] <= edge:
                        tp.cork()
                        corked = True
                    i, p = idx[pos], pidx[pos]
                    pos += 1
                    if tp.in_flight < cap:
                        send(i, t, p)
                    elif len(backlog) < self.plan.load.max_backlog:
                        backlog.append((i, t, p))  # goes out late when a slot frees
                    else:
                        w = self.wires[p]
                        self._record(i, t, -1, -1, rc.DROPPED, 0, 0, 0, w.shape_id, w.model_id)
                    now = clock() - start
                    edge = now + horizon if now >= 0 else now
                self._pos = pos
                if pos < n:
                    break
                if not self._next_chunk():
                    self._finished.set_result(None)
                    return
                now = clock() - start
                edge = now + horizon if now >= 0 else now
        finally:
            if corked:
                tp.uncork()
        # uvloop's timers have whole-millisecond delays (rounded to the nearest) and fire
        # ~0.1 ms after them: ask for the whole ms that ends just before the arrival is
        # due, and yield to the loop (`call_soon`, a spin) only for the last `margin`.
        gap = self._ts[self._pos] - now
        if self._timer is not None:
            # nanosecond-precise wake-up at the arrival; with spin_us, that much earlier,
            # then yield to the loop until it is due
            if gap > self._spin_us_ns:
                self._timer.arm_at(self.start + self._ts[self._pos] - self._spin_us_ns)
            else:
                self._loop.call_soon(self._tick)
            return
        margin = self._spin_ns
        if gap > margin:
            self._loop.call_later(max(1, -(-(gap - margin) // 1_000_000)) / 1000, self._tick)
        else:
            self._loop.call_soon(self._tick)

    # ---- closed loop ---------------------------------------------------
    def _user_go(self, uid: int) -> None:
        """User `uid` sends its next request, or retires (ramp-down, end, stop)."""
        assert self.payloads is not None
        now = self.clock() - self.start
        if self.stopping or uid >= self.level or now >= self.end_ns:
            self.active[uid] = False
            return
        self.active[uid] = True
        # Closed loop has no global index: a per-(agent, worker) sequence picks payloads.
        key = ((self.task.agent_index * 4096 + self.task.worker_index) << 40) + self.seq
        pidx = self.payloads.pick_one(key)
        self.seq += 1
        self._send(-1 - uid, now, pidx)

    def _blocked(self, now: int) -> bool:
        """Closed loop under limits: the pacer has no send left in this window, or this
        worker's in-flight share is full."""
        pacer = self.pacer
        assert self.tp is not None
        return (
            pacer is not None and now < pacer.free_at()
        ) or 0 <= self.if_cap <= self.tp.in_flight

    def _user_paced(self, uid: int) -> None:
        """`_user_go` under the agent's limits: a user whose request would break them
        waits for its turn (in order, one wake-up timer for all)."""
        now = self.clock() - self.start
        if self.stopping or uid >= self.level or now >= self.end_ns:
            self.active[uid] = False
            return
        pacer, tp = self.pacer, self.tp
        assert tp is not None
        if (
            self._waiting  # behind those already waiting
            or (pacer is not None and now < pacer.free_at())
            or 0 <= self.if_cap <= tp.in_flight
        ):
            self.active[uid] = True
            self._waiting.append(uid)
            self._arm_wake(now)
            return
        self._user_go(uid)
        if pacer is not None:
            # taken after the hand-over: the transport's sent stamp is no later than this
            pacer.took(self.clock() - self.start)

    def _go_paced(self, uid: int) -> None:
        self._user_go(uid)
        if self.pacer is not None:
            self.pacer.took(self.clock() - self.start)

    def _arm_wake(self, now: int) -> None:
        if self._wake_armed:
            return
        self._wake_armed = True
        pacer = self.pacer
        at = pacer.free_at() if pacer is not None else now
        # blocked by the in-flight share alone: look again in a millisecond
        delay_ns = at - now if at > now else 1_000_000
        asyncio.get_running_loop().call_later(delay_ns / 1e9, self._wake)

    def _wake(self) -> None:
        """Waiting users go, oldest first, while the limits allow."""
        self._wake_armed = False
        waiting = self._waiting
        while waiting:
            now = self.clock() - self.start
            uid = waiting[0]
            if self.stopping or uid >= self.level or now >= self.end_ns:
                waiting.popleft()
                self.active[uid] = False
                continue
            if self._blocked(now):
                self._arm_wake(now)
                return
            waiting.popleft()
            self._go_paced(uid)

    async def _closed_loop(self) -> None:
        prof = concurrency_profile(self.plan)
        self.end_ns = prof.duration_ns
        now = self.clock() - self.start
        if now < 0:
            await asyncio.sleep(-now / 1e9)
        while not self.stopping:
            # an early stop is seen here, within this loop's 50 ms, not at the ticker's
            # next look (up to IDLE_STATUS_S later when the worker is quiet)
            if self.stop_event.is_set():
                self.stopping = True
                break
            now = self.clock() - self.start
            if now >= self.end_ns:
                break
            total = prof.level_at(now / 1e9)
            agent_share = split_count(total, self.plan.agent_weights)[self.task.agent_index]
            self.level = split_count(agent_share, [1] * self.task.workers)[self.task.worker_index]
            if len(self.active) < self.level:
                self.active.extend([False] * (self.level - len(self.active)))
            for uid in range(self.level):
                if not self.active[uid]:
                    self._user_next(uid)
            await asyncio.sleep(0.05)
        self.level = 0

    # ---- main ----------------------------------------------------------
    async def run(self) -> None:
        t = self.task  # `connections`: this worker's share of the plan's (agent/conns.py)
        plan = self.plan = worker_plan(self.plan, t.agent_index, t.workers, t.worker_index)
        # Every worker builds the same pools from the plan (seed included): request i's
        # payload does not depend on how the schedule is split.
        access = self.task.access
        self.payloads = build_payloads(plan, headers=access.headers)
        self.wires = self.payloads.wires
        seqs = SequenceDriver(self) if plan.sequence is not None else None
        if seqs is not None:  # stateful sequences: agent/sequences.py drives the load
            self.tp = seqs.make_transport()
        else:
            self.tp = make_transport(
                plan, self.payloads, self._complete, self.clock, self.start, access
            )
        self.tp.note_stream = self.buf.note_stream  # streaming figures of the next record
        fit_pool(self.tp, plan, t.workers, t.worker_index)
        await self.tp.open()
        # Setup objects live for the whole run: keep the collector off them, and make
        # young collections rare (the hot path makes no reference cycles).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 1000)
        self.out.put(Ready(self.task.worker_index, time.monotonic_ns() - self.entered_ns))
        loop = asyncio.get_running_loop()
        if self.gate is not None:
            gate, stop = self.gate, self.stop_event
            at = await loop.run_in_executor(None, gate.wait, stop)
            if at == 0:  # stopped before the start: nothing sent
                with contextlib.suppress(Exception):
                    await self.tp.close()
                self._send_status()
                self.out.put(Done(self.task.worker_index, ""))
                return
            self.start = at
            self.tp.start = at
        self.cpu_base = time.process_time()
        ticker = loop.create_task(self._ticker())
        sweeper = loop.create_task(self._sweeper())
        error = ""
        try:
            if seqs is not None:
                await seqs.run()
            elif plan.load.mode == "open":
                await self._open_loop()
            else:
                await self._closed_loop()
            await self._drain()
        except Exception as exc:  # reported to the agent, never lost silently
            error = f"{type(exc).__name__}: {exc}"
        finally:
            ticker.cancel()
            sweeper.cancel()
            self.tp.note_held()
            with contextlib.suppress(Exception):
                await self.tp.close()
            self._flush()
            self._send_status()
            self.out.put(Done(self.task.worker_index, error))

    async def _drain(self) -> None:
        """Wait for in-flight requests (bounded by the request timeout), then cancel."""
        assert self.tp is not None
        deadline = self.plan.timeout_s + 1.0
        t0 = time.monotonic()
        while (self.tp.in_flight or self.backlog) and time.monotonic() - t0 < deadline:
            if self.stopping and self.backlog:
                self._not_sent()
            await asyncio.sleep(0.01)
        self._not_sent()
        self.tp.abort_all(rc.CANCELLED)

    def _not_sent(self) -> None:
        while self.backlog:
            i, t, p = self.backlog.popleft()
            w = self.wires[p]
            self._record(i, t, -1, -1, rc.NOT_SENT, 0, 0, 0, w.shape_id, w.model_id)


def worker_main(
    task: WorkerTask, out: Queue[Any], stop: Event, gate: StartGate | None = None
) -> None:
    """Entry point of a worker process (spawned)."""
    import uvloop

    pin_from_env(task.worker_index)
    np.seterr(all="ignore")
    raise_nofile()  # each connection is a descriptor
    try:
        uvloop.run(Worker(task, out, stop, gate=gate).run())
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        out.put(Done(task.worker_index, f"{type(exc).__name__}: {exc}"))
