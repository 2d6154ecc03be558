"""One agent worker process: its own uvloop loop and gRPC channel, one schedule slice.

The worker regenerates the global schedule from the plan's seed, keeps its own
slice (agent slice, then worker slice), and fires pre-serialized ModelInfer
requests at each intended time. Completed requests are appended to a
preallocated `RecordBuffer`; blocks go to the agent process through a
multiprocessing queue every `flush_s`.

Messages put on the queue (tuples, picklable):
  ("ready", worker)                        pool built, channel up
  ("records", worker, columns, shapes)     a RecordBlock's columns
  ("status", worker, WorkerCounters)       counters and CPU
  ("done", worker, error_or_empty)         the slice is finished
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

import grpc
import numpy as np

from volley import records as rc
from volley.arrivals import concurrency_profile, global_schedule
from volley.plan import Plan
from volley.records import RecordBuffer
from volley.request import RequestPool, build_pool, check_response
from volley.schedule import split_count, worker_slice

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
#: A dead target is retried with bounded backoff (0.1 s doubling up to 1 s): no
#: connection storm, and a restarted server is found again within about a second.
#: Meanwhile calls fail fast with UNAVAILABLE, so every arrival is still recorded.
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
#: Closed loop: a user whose request failed UNAVAILABLE waits (doubling up to this)
#: before its next one, instead of spinning on a dead server.
MAX_USER_BACKOFF_S = 1.0


@dataclass(frozen=True)
class WorkerTask:
    plan_json: str
    run_id: str
    agent_index: int
    worker_index: int
    workers: int
    start_at_ns: int
    flush_s: float = 0.1
    expected_outputs: int = 0


@dataclass
class WorkerCounters:
    sent: int = 0
    completed: int = 0
    errors: int = 0
    dropped: int = 0
    in_flight: int = 0
    cpu_s: float = 0.0
    first_send_lateness_ns: int | None = None


def _grpc_code(exc: grpc.aio.AioRpcError) -> int:
    code = exc.code()
    value = code.value[0] if isinstance(code.value, tuple) else rc.UNKNOWN
    return int(value)


class Worker:
    """The hot loop. All state is local to one process and one event loop."""

    def __init__(
        self,
        task: WorkerTask,
        out: Queue[Any],
        stop: Event,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.task = task
        self.plan = Plan.from_json(task.plan_json)
        self.out = out
        self.stop_event = stop
        self.clock = clock
        self.start = task.start_at_ns
        self.buf = RecordBuffer(8192)
        self.buf.worker = task.worker_index
        self.counters = WorkerCounters()
        self.stopping = False
        self.pool: RequestPool | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.backlog: collections.deque[tuple[int, int]] = collections.deque()
        #: CPU spent before the load (imports, pool build) is not the load's cost.
        self.cpu_base = time.process_time()

    # ---- plumbing ------------------------------------------------------
    def _flush(self) -> None:
        assert self.pool is not None
        block = self.buf.take(self.pool.shapes)
        if block is not None:
            self.out.put(("records", self.task.worker_index, block.columns, block.input_shapes))

    def _send_status(self) -> None:
        self.counters.cpu_s = time.process_time() - self.cpu_base
        self.out.put(("status", self.task.worker_index, self.counters))

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
    ) -> None:
        c = self.counters
        c.completed += 1
        if status != rc.OK:
            if status == rc.DROPPED:
                c.dropped += 1
            else:
                c.errors += 1
        if self.buf.append(index, intended, sent, done, status, req, resp, batch, shape):
            self._flush()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.task.flush_s)
            if self.stop_event.is_set():
                self.stopping = True
            self._flush()
            self._send_status()

    # ---- one request ---------------------------------------------------
    async def _call(self, method: Any, index: int, intended: int, pidx: int) -> int:
        assert self.pool is not None
        p = self.pool.payloads[pidx]
        c = self.counters
        sent = self.clock() - self.start
        if c.first_send_lateness_ns is None:
            c.first_send_lateness_ns = sent - intended
        c.sent += 1
        c.in_flight += 1
        status = rc.OK
        resp_len = 0
        try:
            resp: bytes = await method(p.body, timeout=self.plan.timeout_s)
            resp_len = len(resp)
            if not check_response(resp, self.task.expected_outputs):
                status = rc.BAD_RESPONSE
        except grpc.aio.AioRpcError as exc:
            status = _grpc_code(exc)
        except asyncio.CancelledError:
            status = rc.CANCELLED
        except Exception:
            status = rc.UNKNOWN
        done = self.clock() - self.start
        c.in_flight -= 1
        self._record(
            index, intended, sent, done, status, p.req_bytes, resp_len, p.batch_size, p.shape_id
        )
        if self.backlog and not self.stopping:
            # A slot freed: the oldest waiting arrival goes out now (late, and counted so).
            i, t = self.backlog.popleft()
            self._spawn(self._call(method, i, t, i % len(self.pool.payloads)))
        return status

    def _spawn(self, coro: Any) -> None:
        t: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self._task_done)

    def _task_done(self, t: asyncio.Task[None]) -> None:
        self.tasks.discard(t)

    # ---- open loop -----------------------------------------------------
    async def _open_loop(self, method: Any) -> None:
        assert self.pool is not None
        plan = self.plan
        cap_total = plan.load.max_in_flight
        cap = (
            0
            if cap_total == 0
            else max(1, split_count(cap_total, [1] * self.task.workers)[self.task.worker_index])
        )
        max_backlog = plan.load.max_backlog
        npay = len(self.pool.payloads)
        clock, start = self.clock, self.start
        sched = global_schedule(plan)
        weights = plan.agent_weights
        wweights = [1] * self.task.workers
        spin_ns = int(plan.load.spin_us * 1000)

        for idx, tns in sched.chunks():
            idx, tns = worker_slice(
                idx, tns, weights, self.task.agent_index, wweights, self.task.worker_index
            )
            for i, t in zip(idx.tolist(), tns.tolist(), strict=True):
                if self.stopping:
                    return
                now = clock() - start
                while t > now:
                    # Timers wake late (libuv's are in ms; idle vCPUs wake slowly): sleep
                    # until `spin_ns` before the send, then yield to the loop until it.
                    gap = t - now
                    await asyncio.sleep((gap - spin_ns) / 1e9 if gap > spin_ns else 0)
                    if self.stopping:
                        return
                    now = clock() - start
                if cap == 0 or len(self.tasks) < cap:
                    self._spawn(self._call(method, i, t, i % npay))
                elif len(self.backlog) < max_backlog:
                    self.backlog.append((i, t))  # goes out late when a slot frees
                else:
                    self._record(i, t, -1, -1, rc.DROPPED, 0, 0, 0, 0)
            await asyncio.sleep(0)

    # ---- closed loop ---------------------------------------------------
    async def _user(self, method: Any, uid: int, level: list[int], end_ns: int) -> None:
        assert self.pool is not None
        npay = len(self.pool.payloads)
        n = 0
        backoff = 0.0
        while not self.stopping and uid < level[0]:
            now = self.clock() - self.start
            if now >= end_ns:
                return
            status = await self._call(method, -1, now, (uid + n) % npay)
            n += 1
            if status == rc.UNAVAILABLE:
                backoff = min(max(backoff * 2, 0.01), MAX_USER_BACKOFF_S)
                await asyncio.sleep(backoff)
            else:
                backoff = 0.0

    async def _closed_loop(self, method: Any) -> None:
        prof = concurrency_profile(self.plan)
        end_ns = prof.duration_ns
        level = [0]
        users: dict[int, asyncio.Task[None]] = {}
        loop = asyncio.get_running_loop()
        now = self.clock() - self.start
        if now < 0:
            await asyncio.sleep(-now / 1e9)
        while not self.stopping:
            now = self.clock() - self.start
            if now >= end_ns:
                break
            total = prof.level_at(now / 1e9)
            agent_share = split_count(total, self.plan.agent_weights)[self.task.agent_index]
            level[0] = split_count(agent_share, [1] * self.task.workers)[self.task.worker_index]
            for uid in range(level[0]):
                if uid not in users or users[uid].done():
                    users[uid] = loop.create_task(self._user(method, uid, level, end_ns))
                    self.tasks.add(users[uid])
                    users[uid].add_done_callback(self.tasks.discard)
            await asyncio.sleep(0.05)
        level[0] = 0

    # ---- main ----------------------------------------------------------
    async def run(self) -> None:
        plan = self.plan
        self.pool = build_pool(
            plan.model,
            plan.model_version,
            plan.inputs,
            plan.outputs,
            seed=plan.seed + 7919 * (self.task.worker_index + 1) + 104729 * self.task.agent_index,
            batched=plan.max_batch_size > 0,
        )
        options = [
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            ("grpc.enable_retries", 0),
            *RECONNECT_OPTIONS,
        ]
        async with grpc.aio.insecure_channel(plan.target, options=options) as channel:
            method = channel.unary_unary(MODEL_INFER)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.channel_ready(), timeout=5.0)
            self.cpu_base = time.process_time()
            self.out.put(("ready", self.task.worker_index))
            ticker = asyncio.get_running_loop().create_task(self._ticker())
            error = ""
            try:
                if plan.load.mode == "open":
                    await self._open_loop(method)
                else:
                    await self._closed_loop(method)
                await self._drain()
            except Exception as exc:  # reported to the agent, never lost silently
                error = f"{type(exc).__name__}: {exc}"
            finally:
                ticker.cancel()
                self._flush()
                self._send_status()
                self.out.put(("done", self.task.worker_index, error))

    async def _drain(self) -> None:
        """Wait for in-flight requests (bounded by the request timeout), then cancel."""
        deadline = self.plan.timeout_s + 1.0
        t0 = time.monotonic()
        while (self.tasks or self.backlog) and time.monotonic() - t0 < deadline:
            if self.stopping and self.backlog:
                while self.backlog:
                    i, t = self.backlog.popleft()
                    self._record(i, t, -1, -1, rc.NOT_SENT, 0, 0, 0, 0)
            await asyncio.sleep(0.01)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        while self.backlog:
            i, t = self.backlog.popleft()
            self._record(i, t, -1, -1, rc.NOT_SENT, 0, 0, 0, 0)


def worker_main(task: WorkerTask, out: Queue[Any], stop: Event) -> None:
    """Entry point of a worker process (spawned)."""
    import uvloop

    np.seterr(all="ignore")
    try:
        uvloop.run(Worker(task, out, stop).run())
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        out.put(("done", task.worker_index, f"{type(exc).__name__}: {exc}"))
