"""One worker's stateful sequences: starts, serial steps, think times, ENDs.

Open loop: the worker's slice of the one schedule gives the intended times of sequence
*starts* (arrival i starts the sequence keyed i); closed loop: each user runs one
sequence after another. Either way a sequence's steps go one after another: step k+1 is
due when step k's response came plus the think time (its intended time), and is sent
then. At most `worker_live` sequences are live on this worker; a start that finds none
free is recorded SEQ_NO_SLOT (never sent).

Correlation IDs come from this worker's range (volley/sequence.py: disjoint across
agents and workers by construction), an ID used by one live sequence at a time.

Every sequence that started is ended: its last step carries END; a step that fails
(error, timeout, a response whose state is wrong) ends the sequence early and volley
sends an END for it at once (a CLEANUP record), so the server frees the slot; at the
load's end live sequences get `drain_s` to finish, then an END each (CUT records).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from agent.transports.grpc_seq import GrpcSequence
from agent.transports.http_seq import HttpSequence
from volley import records as rc
from volley.arrivals import concurrency_profile, global_schedule
from volley.plan import PlanError
from volley.schedule import split_count, worker_slice
from volley.sequence import Draws, IdPool, id_text, worker_live, worker_range
from volley.wire.seqframe import HttpTemplate, http_step, step_body

if TYPE_CHECKING:
    from agent.worker import Worker

#: A user whose sequence failed waits this long (doubling up to 1 s) before the next.
_BACKOFF_MIN_S = 0.01
_BACKOFF_MAX_S = 1.0
#: payload keys are int64
_I63 = (1 << 63) - 1


class Seq:
    """One live sequence."""

    __slots__ = (
        "cleanup",
        "cut",
        "id",
        "in_flight",
        "index",
        "key",
        "pidx",
        "slot",
        "step",
        "steps",
        "sum",
        "timer",
        "uid",
        "wire_id",
    )

    def __init__(self, slot: int, key: int, seq_id: int, wire_id: int | str, steps: int) -> None:
        self.slot = slot
        self.key = key  #: draws and payloads: the start's global index, or a worker counter
        self.id = seq_id
        self.wire_id = wire_id
        self.steps = steps
        self.step = 0
        self.sum = 0
        self.index = -1  #: open loop: the start's global index
        self.uid = -1  #: closed loop: its user
        self.pidx = 0
        self.in_flight = False
        self.cleanup = 0  #: the request in flight is an END volley added (a SEQ_* flag)
        self.cut = False  #: the load ended: END after the step in flight
        self.timer: asyncio.TimerHandle | None = None


class SequenceDriver:
    """Runs a worker's sequences over a `GrpcSequence` transport."""

    def __init__(self, worker: Worker) -> None:
        self.w = worker
        plan = worker.plan
        spec = plan.sequence
        assert spec is not None
        task = worker.task
        self.spec = spec
        self.draws = Draws.of(plan)
        lo, hi = worker_range(plan, task.agent_index, task.workers, task.worker_index)
        self.cap = worker_live(plan, task.agent_index, task.workers, task.worker_index)
        if hi - lo < self.cap:
            raise PlanError(
                f"sequence IDs [{lo}, {hi}) of worker {task.worker_index} cannot hold its "
                f"{self.cap} live sequences"
            )
        if worker.if_cap >= 0:  # the agent's in-flight limit: one step in flight a sequence
            self.cap = min(self.cap, max(worker.if_cap, 1))
        self.ids = IdPool(lo, hi)
        self.closed = plan.load.mode == "closed"
        self.live: dict[int, Seq] = {}
        self.free_slots = list(range(max(self.cap, 0) - 1, -1, -1))
        self.check_input = spec.check.split(":")[0] if spec.check else ""
        self.addend: list[int] = []
        self.end_ns = 0
        self.drain_ns = int(spec.drain_s * 1e9)
        self.counter = 0
        self.ending = False
        self.idle = asyncio.Event()
        self.tp: GrpcSequence | HttpSequence | None = None
        #: HTTP: each payload's request template
        self.http: list[HttpTemplate] = []
        #: closed loop: users wanted, each one's sequence (or None), backoff
        self.level = 0
        self.users: list[Seq | None] = []
        self.backoff: dict[int, float] = {}

    # ---- set-up ------------------------------------------------------------
    def make_transport(self) -> GrpcSequence | HttpSequence:
        w = self.w
        assert w.payloads is not None
        out = self.spec.check.split(":")[1] if self.spec.check else ""
        if w.plan.protocol == "http":
            self.http = [HttpTemplate.of(x.head) for x in w.payloads.wires]
            self.tp = HttpSequence(
                w.plan, w.payloads, self.complete, w.clock, w.start, w.task.access
            )
            return self.tp
        self.tp = GrpcSequence(
            w.plan, w.payloads, self.complete, w.clock, w.start, w.task.access, out
        )
        if self.check_input:
            self.addend = [input_value(x.msg, self.check_input) for x in w.payloads.wires]
        return self.tp

    def now(self) -> int:
        return self.w.clock() - self.w.start

    # ---- sequences -----------------------------------------------------------
    def _begin(self, key: int) -> Seq | None:
        """A new live sequence, or None when no slot or ID is free."""
        if not self.free_slots:
            return None
        seq_id = self.ids.take()
        if seq_id == 0:
            return None
        slot = self.free_slots.pop()
        wire_id: int | str = id_text(self.spec, seq_id) if self.spec.id_type == "string" else seq_id
        s = Seq(slot, key, seq_id, wire_id, self.draws.steps(key))
        self.live[slot] = s
        return s

    def _release(self, s: Seq) -> None:
        del self.live[s.slot]
        self.free_slots.append(s.slot)
        self.ids.give(s.id)
        if not self.live:
            self.idle.set()
        if s.uid >= 0:
            self._user_after(s.uid, failed=bool(s.cleanup & rc.SEQ_CLEANUP))

    def _send(self, s: Seq, intended: int, end_only: int = 0) -> None:
        """Step `s.step` (or, with `end_only`, an END volley adds) is due at `intended`."""
        tp = self.tp
        w = self.w
        assert tp is not None and w.payloads is not None
        s.timer = None
        early = intended - self.now()
        if early > 0:
            # a loop timer fired before the step's time (uvloop's whole-ms timers can, by
            # up to ~1.5 ms): wait the rest; a step is never sent before its intended time
            s.timer = asyncio.get_running_loop().call_later(
                early / 1e9, self._send, s, intended, end_only
            )
            return
        pacer = w.pacer
        if pacer is not None and self.now() < pacer.free_at():
            # the agent's --max-rate: the step waits for its turn (as closed-loop users do)
            wait = (pacer.free_at() - self.now()) / 1e9
            s.timer = asyncio.get_running_loop().call_later(wait, self._send, s, intended, end_only)
            return
        last = s.step == s.steps - 1
        if end_only:
            start, end = False, True
        else:
            s.pidx = w.payloads.pick_one(((s.key << 16) + s.step) & _I63)
            start, end = s.step == 0, last
        s.cleanup = end_only
        s.in_flight = True
        c = w.counters
        if c.first_send_lateness_ns is None:
            c.first_send_lateness_ns = self.now() - intended
        c.sent += 1
        wire = w.wires[s.pidx]
        if self.http:
            req = http_step(self.http[s.pidx], wire.body, s.wire_id, start, end)
            assert isinstance(tp, HttpSequence)
            tp.send_step(s.slot, intended, s.pidx, req)
        else:
            assert isinstance(tp, GrpcSequence)
            tp.send_step(s.slot, intended, s.pidx, step_body(wire.msg, s.wire_id, start, end))
        if pacer is not None:
            pacer.took(self.now())

    def _record(
        self, s: Seq, flags: int, intended: int, sent: int, done: int, status: int, resp: int
    ) -> None:
        w = self.w
        wire = w.wires[s.pidx]
        c = w.counters
        c.completed += 1
        if status != rc.OK:
            if status in rc.NEVER_SENT:
                c.dropped += 1
            else:
                c.errors += 1
        if self.closed and sent >= 0:
            intended = sent  # closed loop: no schedule, intended = sent
        if w.buf.append_seq(
            s.id,
            s.step,
            flags,
            s.index,
            intended,
            sent,
            done,
            status,
            wire.req_bytes if sent >= 0 else 0,
            resp,
            wire.batch_size,
            wire.shape_id,
            wire.model_id,
        ):
            w._flush()

    def complete(
        self, key: int, intended: int, sent: int, done: int, status: int, pidx: int, resp: int
    ) -> None:
        """A step is over (called by the transport)."""
        s = self.live.get(key)
        if s is None:
            return
        s.in_flight = False
        if s.cleanup:
            self._record(s, s.cleanup, intended, sent, done, status, resp)
            self._release(s)
            return
        flags = (rc.SEQ_FIRST if s.step == 0 else 0) | (rc.SEQ_LAST if s.step == s.steps - 1 else 0)
        if status == rc.OK and self.check_input:
            s.sum += self.addend[pidx]
            tp = self.tp
            assert tp is not None
            if tp.value != s.sum:
                status = rc.SEQ_MISMATCH
        if status != rc.OK:
            self._record(s, flags | rc.SEQ_FAILED, intended, sent, done, status, resp)
            self._send(s, self.now(), rc.SEQ_CLEANUP)  # free the server's slot now
            return
        self._record(s, flags, intended, sent, done, status, resp)
        if flags & rc.SEQ_LAST:
            self._release(s)
            return
        if s.cut or self.ending:
            self._send(s, self.now(), rc.SEQ_CUT)
            return
        s.step += 1
        think = self.draws.think_ns(s.key, s.step)
        due = done + think
        if think <= 0:
            self._send(s, due)
        else:
            s.timer = asyncio.get_running_loop().call_later(think / 1e9, self._send, s, due)

    def _cut_all(self) -> None:
        """The load is over: every live sequence gets its END (after its step in flight)."""
        self.ending = True
        for s in list(self.live.values()):
            if s.in_flight or s.step == 0:
                # a step in flight, or a start still held (the agent's --max-rate): its
                # END follows its answer (an END of a sequence never started would be
                # one more sequence ended than started)
                s.cut = True
            else:
                if s.timer is not None:
                    s.timer.cancel()
                self._send(s, self.now(), rc.SEQ_CUT)

    # ---- open loop -----------------------------------------------------------
    async def open_loop(self) -> None:
        w = self.w
        plan = w.plan
        task = w.task
        self.end_ns = int(plan.load.total_s * 1e9)
        for idx, tns in global_schedule(plan).chunks():
            idx, tns = worker_slice(
                idx,
                tns,
                plan.agent_weights,
                task.agent_index,
                [1] * task.workers,
                task.worker_index,
            )
            for i, t in zip(idx.tolist(), tns.tolist(), strict=True):
                if w.stopping or w.stop_event.is_set():
                    w.stopping = True
                    return
                # a loop timer may fire early (uvloop: up to ~1.5 ms): a start is never
                # sent before its intended time (the coordinator refuses one sent > 1 ms
                # before it, which would leave its sequence counted ended, not started)
                while (gap := t - self.now()) > 0:
                    await asyncio.sleep(gap / 1e9)
                s = self._begin(i)
                if s is None:
                    self._refused(i, t)
                    continue
                s.index = i
                self._send(s, t)

    def _refused(self, index: int, intended: int) -> None:
        w = self.w
        assert w.payloads is not None
        pidx = w.payloads.pick_one((index << 16) & _I63)
        wire = w.wires[pidx]
        w.counters.completed += 1
        w.counters.dropped += 1
        if w.buf.append_seq(
            0,
            0,
            rc.SEQ_FIRST,
            index,
            intended,
            -1,
            -1,
            rc.SEQ_NO_SLOT,
            0,
            0,
            0,
            wire.shape_id,
            wire.model_id,
        ):
            w._flush()

    # ---- closed loop ---------------------------------------------------------
    def _user_start(self, uid: int) -> None:
        w = self.w
        now = self.now()
        if w.stopping or self.ending or uid >= self.level or now >= self.end_ns:
            self.users[uid] = None
            return
        task = w.task
        key = ((task.agent_index * 4096 + task.worker_index) << 40) + self.counter
        self.counter += 1
        s = self._begin(key)
        self.users[uid] = s
        if s is None:
            return  # cannot happen (one slot per user); the user retires
        s.uid = uid
        self._send(s, now)

    def _user_after(self, uid: int, failed: bool) -> None:
        self.users[uid] = None
        if failed:
            wait = min(max(self.backoff.get(uid, 0.0) * 2, _BACKOFF_MIN_S), _BACKOFF_MAX_S)
            self.backoff[uid] = wait
            self.users[uid] = None
            asyncio.get_running_loop().call_later(wait, self._user_start, uid)
            return
        self.backoff.pop(uid, None)
        self._user_start(uid)

    async def closed_loop(self) -> None:
        w = self.w
        plan = w.plan
        task = w.task
        prof = concurrency_profile(plan)
        self.end_ns = prof.duration_ns
        if self.now() < 0:
            await asyncio.sleep(-self.now() / 1e9)
        while not w.stopping:
            now = self.now()
            if now >= self.end_ns:
                break
            total = prof.level_at(now / 1e9)
            share = split_count(total, plan.agent_weights)[task.agent_index]
            self.level = min(split_count(share, [1] * task.workers)[task.worker_index], self.cap)
            if len(self.users) < self.level:
                self.users.extend([None] * (self.level - len(self.users)))
            for uid in range(self.level):
                if self.users[uid] is None and uid not in self.backoff:
                    self._user_start(uid)
            await asyncio.sleep(0.05)
            if w.stop_event.is_set():
                w.stopping = True

    # ---- main ----------------------------------------------------------------
    async def run(self) -> None:
        """Starts (open or closed loop), then the drain: live sequences finish until
        `drain_s` after the load's end (or a stop), then get their END."""
        w = self.w
        if self.closed:
            await self.closed_loop()
        else:
            await self.open_loop()
        self.ending = self.closed  # closed loop: no new sequence after the end
        deadline = self.end_ns + self.drain_ns
        while self.live and not w.stopping and self.now() < deadline:
            self.idle.clear()
            wait = max(min((deadline - self.now()) / 1e9, 0.05), 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), wait)
            if w.stop_event.is_set():
                w.stopping = True
        self._cut_all()
        # the ENDs (and steps in flight) are answered or time out
        # (on a stop, the agent gives its workers 5 s: the ENDs are out by then)
        wait_s = min(w.plan.timeout_s + 1.0, 4.0) if w.stopping else w.plan.timeout_s + 1.0
        limit = self.now() + int(wait_s * 1e9)
        while self.live and self.now() < limit:
            await asyncio.sleep(0.01)


def input_value(msg: bytes, name: str) -> int:
    """The first element of input `name` of a serialized ModelInferRequest, as an
    integer (what `sequence.check` adds up); 0 when absent."""
    import numpy as np
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest.FromString(msg)
    for i, spec in enumerate(req.inputs):
        if spec.name != name or i >= len(req.raw_input_contents):
            continue
        dt = {
            "INT32": "<i4",
            "INT64": "<i8",
            "UINT32": "<u4",
            "UINT64": "<u8",
            "INT16": "<i2",
            "INT8": "<i1",
            "UINT8": "<u1",
        }.get(spec.datatype)
        if dt is None:
            return 0
        arr = np.frombuffer(req.raw_input_contents[i], dtype=dt)
        return int(arr[0]) if arr.size else 0
    return 0
