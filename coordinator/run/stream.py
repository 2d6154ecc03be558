"""One agent's Run stream: the handshake, its events, its state, its keepalive.

`AgentStream.consume()` reads the agent's events, vets each one (coordinator/validate.py:
an event with bad numbers is ignored, invalid records are dropped and counted in the
agent's `AgentInfo`), and hands the valid records to a `RecordSink` (the run loop);
liveness, stop and deadline are the loop's business.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from coordinator.agents import AgentClient, AgentError, AgentState
from coordinator.clock import ClockEstimate
from coordinator.run.options import RunOptions
from coordinator.summary import AgentInfo
from coordinator.validate import AgentCheck, Fault, clean_text
from volley.conns import status_figures
from volley.liveness import announced_beat_s
from volley.records import RecordBlock
from volley.target import CoordinatorAccess
from volley.v1 import control_pb2 as pb

log = logging.getLogger("volley.coordinator")

#: Monotonic nanoseconds (time.monotonic_ns, or a fake one in tests).
Clock = Callable[[], int]

#: Errors of a Run call that mean "the agent refuses this run", not "it was lost".
REFUSALS = (
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
)


#: Keepalive pings in flight at once to one agent (a stalled agent does not pile them up).
MAX_PINGS_IN_FLIGHT = 4
#: The round trips of this many recent keepalives are kept (the start lead uses them:
#: about the last 3 s of the preparation).
RECENT_RTTS = 6
#: An agent's id and host name (its Hello) are cut to this many characters.
MAX_NAME_TEXT = 200
#: A preparation longer than this (an hour) is taken for garbage, not a figure.
MAX_PREPARE_NS = 3600 * 1_000_000_000
#: A host CPU sample covering more than this (a status gap, or a clock gone wrong) is
#: not weighed by its span.
MAX_HOST_SPAN_S = 10.0


@dataclass(frozen=True)
class Silence:
    """A time an agent was declared missing, then heard from again (coordinator ns)."""

    heard_ns: int  #: last event before the silence
    missing_ns: int  #: declared missing
    back_ns: int  #: first event after it


def run_access(access: CoordinatorAccess | None) -> dict[str, Any]:
    """RunRequest fields carrying what the coordinator read (in memory only)."""
    if access is None:
        return {}
    here = access.here
    return {
        "headers": [pb.HeaderValue(name=n, value=v) for n, v in access.agent_values],
        "target_tls": pb.TargetTls(ca=here.ca, cert=here.cert, key=here.key),
    }


class RunClient(Protocol):
    """What a stream needs of its agent (coordinator.agents.AgentClient)."""

    address: str

    def run(self, request: pb.RunRequest) -> AsyncIterator[pb.RunEvent]: ...

    async def keepalive(self, run_id: str, timeout_s: float = 1.0) -> bool: ...

    async def ping(self, run_id: str, timeout_s: float = 1.0) -> bool: ...

    async def stop(self, run_id: str, reason: str, timeout_s: float = 2.0) -> bool: ...

    async def start(
        self, run_id: str, at_agent_ns: int, timeout_s: float = 2.0
    ) -> pb.StartReply: ...

    async def discard(
        self, run_id: str, slot: int | None = None, timeout_s: float = 5.0
    ) -> bool: ...

    async def close(self) -> None: ...


class RecordSink(Protocol):
    """Where a stream's records and CPU figures go."""

    def ingest(self, index: int, block: RecordBlock) -> None: ...

    def agent_cpu(self, window: int, index: int, percent: float) -> None: ...


class AgentStream:
    """One agent in a run: its client, what is known of it (`info`), its Run task."""

    def __init__(
        self, index: int, client: RunClient, info: AgentInfo, clock: Clock = time.monotonic_ns
    ) -> None:
        self.index = index
        self.client = client
        self.info = info
        self.clock = clock
        self.task: asyncio.Task[None] | None = None
        self.start_at_agent_ns = 0
        self.started = False
        #: Why the agent refused the run (before starting it), if it did.
        self.refused = ""
        #: Its reply's round trip in the ready round (`start.ready_round`; 0: none).
        self.round_rtt_ns = 0
        #: Its idle heartbeat, as announced in Started (0: not announced).
        self.idle_beat_s = 0.0
        #: When (coordinator monotonic ns) it was found missing or its stream broke.
        self.lost_ns = 0
        #: Times it was declared missing and came back (its stream stayed open).
        self.silences: list[Silence] = []
        #: Vets its events (built by `consume` from the request it was sent).
        self.check: AgentCheck | None = None
        #: Header values and target TLS files, read by the coordinator (execute()).
        self.access: CoordinatorAccess | None = None
        #: Two-phase start: the agent reported Prepared (every worker ready).
        self.prepared = False
        #: Why the agent says its run ended (its Finished's final status message).
        self.end_message = ""
        #: Round trips of its recent keepalive pings, ns (while preparing: the load on
        #: the control plane right before the start).
        self.rtts: list[int] = []

    @property
    def state(self) -> AgentState:
        return AgentState(self.info.state)

    @state.setter
    def state(self, state: AgentState) -> None:
        self.info.state = state

    @property
    def name(self) -> str:
        return self.info.id or self.info.address

    @property
    def active(self) -> bool:
        """Its Run task is still going."""
        return self.task is not None and not self.task.done()

    def mark_lost(self, why: str, now_ns: int) -> None:
        """The stream broke or went silent: keep what it sent, go on without it."""
        if self.state in (AgentState.RUNNING, AgentState.READY):
            self.state = AgentState.MISSING
            self.info.error = why
            self.lost_ns = now_ns
            log.warning("agent %s missing: %s", self.info.address, why)

    def heard(self, now_ns: int) -> None:
        """An event arrived. A missing agent whose stream is still open is taken back:
        running again, the silence recorded (summary: agents[].silences)."""
        if self.state is AgentState.MISSING and self.lost_ns:
            gap = Silence(self.info.last_seen_ns, self.lost_ns, now_ns)
            self.silences.append(gap)
            self.state = AgentState.RUNNING
            self.info.error = ""
            self.lost_ns = 0
            log.warning(
                "agent %s back after %.1fs of silence",
                self.info.address,
                (gap.back_ns - gap.heard_ns) / 1e9,
            )
        self.info.last_seen_ns = now_ns

    def worst_rtt_ns(self) -> int:
        """The larger of its best handshake round trip and its recent keepalives'."""
        best = self.info.clock.rtt_ns if self.info.clock else 0
        return max([best, *self.rtts])

    def lead_rtt_ns(self, after_round: bool) -> int:
        """The round trip a start lead allows for: after a ready round, the larger of its
        best handshake round trip and its reply in the round (when it answered), else
        `worst_rtt_ns`."""
        if after_round and self.round_rtt_ns > 0:
            best = self.info.clock.rtt_ns if self.info.clock else 0
            return max(best, self.round_rtt_ns)
        return self.worst_rtt_ns()

    def request(
        self, run_id: str, plan_json: str, keepalive_s: float, prepare_first: bool = False
    ) -> pb.RunRequest:
        return pb.RunRequest(
            prepare_first=prepare_first,
            run_id=run_id,
            plan_json=plan_json,
            agent_index=self.index,
            start_at_agent_ns=self.start_at_agent_ns,
            clock_offset_ns=self.info.clock.offset_ns if self.info.clock else 0,
            workers=self.info.workers,
            keepalive_ms=int(keepalive_s * 1000),
            **run_access(self.access),
        )

    async def consume(self, req: pb.RunRequest, sink: RecordSink) -> None:
        """Read the Run stream to its end; the state says how it ended."""
        self.check = AgentCheck.for_run(
            req.plan_json, req.agent_index, req.workers, self.info.cores, self.info.faults
        )
        self.state = AgentState.RUNNING
        self.info.last_seen_ns = self.clock()
        try:
            async for ev in self.client.run(req):
                self.heard(self.clock())
                if await self._event(ev, req.run_id, sink):
                    return
            if self.state is AgentState.RUNNING:
                self.mark_lost("its stream ended without a finish", self.clock())
        except grpc.aio.AioRpcError as exc:
            if not self.started and exc.code() in REFUSALS:
                self.refused = (exc.details() or exc.code().name).removeprefix("agent refuses: ")
                self.state = AgentState.FAILED
                self.info.error = self.refused
            elif self.state is AgentState.RUNNING:
                why = f"connection lost: {exc.code().name}: {exc.details() or 'no details'}"
                self.mark_lost(why, self.clock())
        except asyncio.CancelledError:
            if self.state is AgentState.RUNNING:
                self.mark_lost("cancelled", self.clock())
            raise

    def _status(self, st: pb.AgentStatus, sink: RecordSink) -> None:
        """Apply one status (a status event's, or one that rode on a timing batch)."""
        check = self.check
        assert check is not None
        if not check.status(st):
            return
        info = self.info
        info.cpu_seconds = st.cpu_seconds
        info.retried = max(info.retried, st.retried)
        info.reconnects = max(info.reconnects, st.reconnects)
        info.connect_errors = max(info.connect_errors, st.connect_errors)
        info.conns = status_figures(st, info.conns)
        info.cpu_percent = st.cpu_percent
        info.in_flight = st.in_flight  # at least 0 (check.status)
        info.cpu_percent_peak = max(info.cpu_percent_peak, st.cpu_percent)
        w = check.cpu_window(st.agent_ns, self.start_at_agent_ns)
        if w is not None:
            sink.agent_cpu(w, self.index, st.cpu_percent)
            if st.HasField("host_cpu_percent"):  # the host, while the run ran
                info.host_cpu_samples.append(st.host_cpu_percent)
                last = info.last_status_agent_ns
                gap = (st.agent_ns - last) / 1e9 if last else 0.0
                info.host_cpu_spans.append(gap if 0 < gap <= MAX_HOST_SPAN_S else 0.0)
        info.last_status_agent_ns = st.agent_ns

    async def _event(self, ev: pb.RunEvent, run_id: str, sink: RecordSink) -> bool:
        """Apply one event (vetted first); True when it ends the stream."""
        info = self.info
        check = self.check
        assert check is not None
        kind = ev.WhichOneof("event")
        if kind == "timings":
            try:
                block = RecordBlock.from_proto(ev.timings)
                if not check.batch_shapes_ok(block):
                    raise ValueError("oversized input shape table")
            except ValueError as exc:
                check.fault(Fault.MALFORMED_BATCH)
                self.state = AgentState.FAILED
                info.error = f"sent a malformed timing batch ({exc})"
                await self.client.stop(run_id, "malformed timing batch", timeout_s=1.0)
                return True
            block = check.records(block)
            info.invalid_records = check.invalid
            if len(block):
                sink.ingest(self.index, block)
            if ev.timings.HasField("agent_status"):  # a heartbeat that rode on the batch
                self._status(ev.timings.agent_status, sink)
        elif kind == "started":
            check.started(ev.started)
            self.started = True
            self.idle_beat_s = announced_beat_s(ev.started.idle_heartbeat_s)
        elif kind == "prepared":
            p = ev.prepared
            if 0 <= p.prepare_ns < MAX_PREPARE_NS:
                info.prepare_s = round(p.prepare_ns / 1e9, 4)
            info.worker_prepare_s = [
                round(n / 1e9, 4)
                for n in p.worker_prepare_ns[: max(check.workers, 1)]
                if 0 <= n < MAX_PREPARE_NS
            ]
            self.prepared = True
        elif kind == "status":
            self._status(ev.status, sink)
        elif kind == "finished":
            f = ev.finished
            if f.HasField("final_status") and check.status(f.final_status):
                info.cpu_seconds = f.final_status.cpu_seconds or info.cpu_seconds
                info.retried = max(info.retried, f.final_status.retried)
                info.reconnects = max(info.reconnects, f.final_status.reconnects)
                info.connect_errors = max(info.connect_errors, f.final_status.connect_errors)
                info.conns = status_figures(f.final_status, info.conns)
                self.end_message = clean_text(f.final_status.message)
            self.state = AgentState.DONE if f.ok else AgentState.FAILED
            info.error = clean_text(f.error)
            return True
        return False

    async def keepalive(self, run_id: str, period_s: float) -> None:
        """Tell the agent the coordinator is still here (it stops the run otherwise): one
        ping every period, not waiting for the previous answer, so that an agent that was
        paused finds fresh pings as soon as it resumes (at most MAX_PINGS_IN_FLIGHT)."""
        pings: set[asyncio.Task[None]] = set()

        async def ping() -> None:
            t0 = self.clock()
            if await self.client.keepalive(run_id, timeout_s=max(period_s * 2, 1.0)):
                self.rtts = [*self.rtts[1 - RECENT_RTTS :], self.clock() - t0]

        try:
            while self.active:
                if len(pings) < MAX_PINGS_IN_FLIGHT:
                    t = asyncio.create_task(ping())
                    pings.add(t)
                    t.add_done_callback(pings.discard)
                await asyncio.sleep(period_s)
        finally:
            for t in pings:
                t.cancel()
            await asyncio.gather(*pings, return_exceptions=True)


def hello_info(
    index: int, address: str, reply: pb.HelloReply, workers: int, clock: ClockEstimate
) -> AgentInfo:
    """What an agent's Hello says of it; its id and host are its own free text, cleaned
    (printable, one line, bounded) before they reach a terminal or a file."""
    return AgentInfo(
        index=index,
        address=address,
        id=clean_text(reply.agent_id, MAX_NAME_TEXT),
        host=clean_text(reply.host, MAX_NAME_TEXT),
        workers=min(workers or reply.workers, reply.workers),
        cores=reply.cores,
        clock=clock,
    )


async def handshake(addresses: list[str], opts: RunOptions) -> list[AgentStream]:
    """Hello and clock probes with every agent; AgentError (all closed) if one fails."""
    clients = [AgentClient(a, opts.connect_timeout_s, opts.security) for a in addresses]

    async def one(i: int, c: AgentClient) -> AgentStream:
        reply = await c.hello()
        clock = await c.probe_clock(opts.clock_samples)
        return AgentStream(i, c, hello_info(i, c.address, reply, opts.workers, clock))

    results = await asyncio.gather(
        *(one(i, c) for i, c in enumerate(clients)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for c in clients:
            await c.close()
        first = errors[0]
        raise first if isinstance(first, AgentError) else AgentError(str(first))
    return [r for r in results if isinstance(r, AgentStream)]
