"""gRPC servicer: a thin adapter between volley.v1 protobuf and the agent's functions."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent import spool
from agent.config import AgentConfig
from agent.conns import check_fds
from agent.limits import check_plan, send_time_note
from agent.session import RunSession, SessionSpec
from volley.plan import Plan, PlanError, check_resolved
from volley.shown import clipped
from volley.target import access_for_run
from volley.v1 import control_pb2 as pb
from volley.v1 import control_pb2_grpc as pb_grpc
from volley.version import PROTOCOL_VERSION, __version__

log = logging.getLogger("volley.agent")

#: A start instant further ahead than this is refused (no session waits for days).
MAX_START_LEAD_NS = 600 * 1_000_000_000
#: The largest plan (JSON) an agent parses (one larger than a message comes by UploadPlan).
MAX_PLAN_CHARS = 128 * 1024 * 1024
#: An uploaded plan waits this long for its Run.
UPLOAD_TTL_S = 60.0

#: The longest refusal text sent back: gRPC status messages travel in trailers (about
#: 8 kB at most), so a refusal quoting what the client sent must stay short to arrive.
MAX_REFUSAL_CHARS = 1000
#: Spooled events replayed per read from disk (Collect).
COLLECT_CHUNK = 64


@dataclass(frozen=True)
class UploadedPlan:
    run_id: str
    plan_json: str
    at: float  #: monotonic seconds


class AgentService(pb_grpc.AgentControlServicer):
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.session: RunSession | None = None
        self.spool_root = Path(cfg.spool_dir)
        self.header_secrets = dict(cfg.header_secrets)
        #: The plan of the next Run, when it came by UploadPlan (one at a time).
        self.uploaded: UploadedPlan | None = None
        self._uploading = False

    def _session_done(self, session: RunSession) -> None:
        if self.session is session:
            self.session = None
        log.info(
            "run %s ended (%s%s)",
            session.spec.run_id,
            session.state,
            f": {session.stop_reason}" if session.stop_reason else "",
        )

    async def Hello(
        self,
        request: pb.HelloRequest,
        context: grpc.aio.ServicerContext[pb.HelloRequest, pb.HelloReply],
    ) -> pb.HelloReply:
        if request.protocol_version != PROTOCOL_VERSION:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol mismatch: agent speaks volley protocol v{PROTOCOL_VERSION} "
                f"(volley {__version__}), coordinator v{request.protocol_version} "
                f"(volley {request.coordinator_version}); run the same volley version on both",
            )
        lim = self.cfg.limits
        return pb.HelloReply(
            protocol_version=PROTOCOL_VERSION,
            agent_version=__version__,
            agent_id=self.cfg.agent_id,
            host=socket.gethostname(),
            cores=os.cpu_count() or 1,
            workers=self.cfg.workers,
            pid=os.getpid(),
            limits=pb.AgentLimits(
                max_rate=lim.max_rate,
                max_in_flight=lim.max_in_flight,
                max_duration_s=lim.max_duration_s,
                allowed_targets=list(lim.allowed_targets),
            ),
            busy=self.session is not None,
        )

    async def Ping(
        self,
        request: pb.PingRequest,
        context: grpc.aio.ServicerContext[pb.PingRequest, pb.PingReply],
    ) -> pb.PingReply:
        return self._pong(request)

    def _pong(self, request: pb.PingRequest) -> pb.PingReply:
        """A ping's answer; one for a run is also the coordinator's keepalive for it."""
        session = self.session
        if request.run_id and session is not None and session.spec.run_id == request.run_id:
            session.touch()
        return pb.PingReply(
            coordinator_send_ns=request.coordinator_send_ns, agent_ns=time.monotonic_ns()
        )

    async def Keepalives(
        self,
        request_iterator: AsyncIterator[pb.PingRequest],
        context: grpc.aio.ServicerContext[pb.PingRequest, pb.PingReply],
    ) -> AsyncIterator[pb.PingReply]:
        """A run's keepalives on one call: each ping answered as by Ping."""
        async for request in request_iterator:
            yield self._pong(request)

    async def Run(
        self, request: pb.RunRequest, context: grpc.aio.ServicerContext[pb.RunRequest, pb.RunEvent]
    ) -> AsyncIterator[pb.RunEvent]:
        if self.session is not None:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "agent is busy with another run"
            )
        if not spool.valid_run_id(request.run_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "invalid run id (1-64 letters, digits, '_' or '-')",
            )
        if len(request.plan_json) > MAX_PLAN_CHARS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"plan larger than {MAX_PLAN_CHARS} characters"
            )
        if (
            not request.prepare_first
            and request.start_at_agent_ns - time.monotonic_ns() > MAX_START_LEAD_NS
        ):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"start instant more than {MAX_START_LEAD_NS // 10**9}s ahead",
            )
        plan_json = request.plan_json
        if request.plan_uploaded:
            up, self.uploaded = self.uploaded, None
            if up is None or up.run_id != request.run_id or _expired(up):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"no uploaded plan for run {request.run_id} (UploadPlan first)",
                )
                raise AssertionError  # unreachable: abort raises
            plan_json = up.plan_json
        try:
            plan = Plan.from_json(plan_json)
            check_resolved(plan)
        except (PlanError, RecursionError) as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                clipped(f"invalid plan: {exc}", MAX_REFUSAL_CHARS),
            )
            raise  # unreachable: abort raises
        tls = request.target_tls
        try:
            # Never reads anything: header values and TLS material come with the request
            # (read by the coordinator) or from the operator's --header-secret.
            access = access_for_run(
                plan,
                [(h.name, h.value) for h in request.headers],
                tls.ca,
                tls.cert,
                tls.key,
                self.header_secrets,
            )
        except PlanError as exc:
            log.warning("refused run %s from %s: %s", request.run_id, context.peer(), exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"agent refuses: {exc}")
            raise  # unreachable: abort raises
        refusal = check_plan(plan, request.agent_index, self.cfg.limits)
        if refusal:
            refusal = clipped(refusal, MAX_REFUSAL_CHARS)
            log.warning("refused run %s from %s: %s", request.run_id, context.peer(), refusal)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"agent refuses: {refusal}")
        if self.session is not None:  # another Run won the race while this one was checked
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "agent is busy with another run"
            )
        workers = min(request.workers or self.cfg.workers, self.cfg.workers)
        refusal = check_fds(plan, request.agent_index, workers)  # connections vs descriptors
        if refusal:
            log.warning("refused run %s from %s: %s", request.run_id, context.peer(), refusal)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"agent refuses: {refusal}")
        keepalive_s = request.keepalive_ms / 1000.0
        spool.prune(self.spool_root, active=request.run_id)
        writer = spool.SpoolWriter(
            self.spool_root,
            request.run_id,
            request.agent_index,
            {
                "run_id": request.run_id,
                "agent_id": self.cfg.agent_id,
                "agent_index": request.agent_index,
                "plan_name": plan.name,
            },
            max_bytes=self.cfg.spool_max_bytes,
        )
        session = RunSession(
            SessionSpec(
                run_id=request.run_id,
                plan=plan,
                plan_json=plan_json,
                agent_index=request.agent_index,
                start_at_ns=0 if request.prepare_first else request.start_at_agent_ns,
                workers=workers,
                expected_outputs=len(plan.outputs),
                heartbeat_s=self.cfg.heartbeat_s,
                agent_id=self.cfg.agent_id,
                keepalive_s=keepalive_s,
                grace_s=max(self.cfg.coordinator_grace_s, 4 * keepalive_s),
                max_duration_s=self.cfg.limits.max_duration_s,
                limits=self.cfg.limits,
                access=access,
            ),
            writer,
        )
        self.session = session
        log.info(
            "run %s from %s: slice %d, %d workers",
            request.run_id,
            context.peer(),
            request.agent_index,
            workers,
        )
        note = send_time_note(plan, self.cfg.limits)
        if note:
            log.info("run %s: %s", request.run_id, note)
        session.start(self._session_done)
        try:
            async for event in session.stream():
                yield event
        finally:
            if not session.finished:
                session.detach("the Run stream closed")
        if not (session.finished or session.reported_end):
            await context.abort(
                grpc.StatusCode.ABORTED,
                f"{session.detach_reason}; the agent keeps the run's records in its spool "
                "(volley collect)",
            )

    async def UploadPlan(
        self,
        request_iterator: AsyncIterator[pb.PlanChunk],
        context: grpc.aio.ServicerContext[pb.PlanChunk, pb.UploadReply],
    ) -> pb.UploadReply:
        """A plan in chunks, for the next Run (the token was checked before any chunk).

        A refusal is given once the upload is over: the chunks of a refused upload are
        read and dropped (up to twice the largest plan), since a gRPC client still
        writing when the call ends sees INTERNAL, not the reason."""
        why = ""
        if self.session is not None:
            why = "agent is busy with another run"
        elif self._uploading:
            why = "another plan upload is in progress"
        mine = not why
        if mine:
            self._uploading = True
        try:
            run_id: str | None = None
            parts: list[bytes] = []
            size = 0
            async for chunk in request_iterator:
                size += len(chunk.data)
                if size > 2 * MAX_PLAN_CHARS:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"plan larger than {MAX_PLAN_CHARS} characters",
                    )
                if why:
                    continue
                if run_id is None:
                    run_id = chunk.run_id
                    if not spool.valid_run_id(run_id):
                        why = "invalid run id (1-64 letters, digits, '_' or '-')"
                elif chunk.run_id != run_id:
                    why = "plan chunks for different runs"
                if size > MAX_PLAN_CHARS:
                    why = f"plan larger than {MAX_PLAN_CHARS} characters"
                if why:
                    parts = []
                else:
                    parts.append(chunk.data)
            text = ""
            if not why:
                try:
                    text = b"".join(parts).decode("utf-8")
                except UnicodeDecodeError:
                    why = "the plan is not UTF-8"
            del parts
            if run_id is None and not why:
                why = "an empty plan upload"
            if why or run_id is None:
                busy = grpc.StatusCode.RESOURCE_EXHAUSTED
                await context.abort(busy if not mine else grpc.StatusCode.INVALID_ARGUMENT, why)
                raise AssertionError  # unreachable: abort raises
            self.uploaded = UploadedPlan(run_id, text, time.monotonic())
        finally:
            if mine:
                self._uploading = False
        return pb.UploadReply(size=size)

    async def Stop(
        self,
        request: pb.StopRequest,
        context: grpc.aio.ServicerContext[pb.StopRequest, pb.StopReply],
    ) -> pb.StopReply:
        if self.session is None or self.session.spec.run_id != request.run_id:
            return pb.StopReply(stopped=False)
        self.session.stop(request.reason or "stopped by coordinator")
        return pb.StopReply(stopped=True)

    async def Start(
        self,
        request: pb.StartRequest,
        context: grpc.aio.ServicerContext[pb.StartRequest, pb.StartReply],
    ) -> pb.StartReply:
        """The start instant of a prepared run (two-phase start)."""
        now = time.monotonic_ns()
        session = self.session
        if session is None or session.spec.run_id != request.run_id:
            return pb.StartReply(accepted=False, agent_ns=now, error="no such run here")
        if request.start_at_agent_ns - now > MAX_START_LEAD_NS:
            return pb.StartReply(
                accepted=False,
                agent_ns=now,
                error=f"start instant more than {MAX_START_LEAD_NS // 10**9}s ahead",
            )
        if not session.set_start(request.start_at_agent_ns):
            return pb.StartReply(accepted=False, agent_ns=now, error="the run has its start")
        if request.start_at_agent_ns < now:
            log.warning(
                "run %s: the start instant came %.1f ms after it passed",
                request.run_id,
                (now - request.start_at_agent_ns) / 1e6,
            )
        return pb.StartReply(accepted=True, agent_ns=now)

    async def Collect(
        self,
        request: pb.CollectRequest,
        context: grpc.aio.ServicerContext[pb.CollectRequest, pb.RunEvent],
    ) -> AsyncIterator[pb.RunEvent]:
        run_id = request.run_id
        if not spool.valid_run_id(run_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid run id")
        if self.session is not None and self.session.spec.run_id == run_id:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"run {run_id} is still in progress on this agent; collect it once it ends",
            )
        slot = request.slot if request.HasField("slot") else None
        if slot is not None and slot > spool.MAX_SLOT:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid slot")
        if request.discard:
            if spool.discard(self.spool_root, run_id, slot):
                log.info("run %s: spool discarded (the coordinator has the run)", run_id)
            return
        wanted = [slot] if slot is not None else spool.slots(self.spool_root, run_id)
        wanted = [k for k in wanted if spool.exists(self.spool_root, run_id, k)]
        if not wanted:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no spool for run {run_id} here")
        log.info("run %s: replaying spool slot(s) %s to %s", run_id, wanted, context.peer())
        loop = asyncio.get_running_loop()
        events = itertools.chain.from_iterable(
            spool.read_events(self.spool_root, run_id, k) for k in wanted
        )

        def chunk() -> list[pb.RunEvent]:
            out: list[pb.RunEvent] = []
            for ev in events:
                out.append(ev)
                if len(out) >= COLLECT_CHUNK:
                    break
            return out

        while True:
            try:
                got = await loop.run_in_executor(None, chunk)
            except OSError as exc:
                await context.abort(
                    grpc.StatusCode.INTERNAL, f"spool of run {run_id}: {exc.strerror or exc}"
                )
            if not got:
                return
            for ev in got:
                yield ev


def _expired(up: UploadedPlan) -> bool:
    return time.monotonic() - up.at > UPLOAD_TTL_S
