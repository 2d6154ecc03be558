"""gRPC servicer: a thin adapter between volley.v1 protobuf and the agent's functions."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import AsyncIterator

import grpc

from agent.config import AgentConfig
from agent.limits import check_plan
from agent.session import RunSession, SessionSpec
from volley.plan import Plan, PlanError
from volley.v1 import control_pb2 as pb
from volley.v1 import control_pb2_grpc as pb_grpc
from volley.version import PROTOCOL_VERSION, __version__

log = logging.getLogger("volley.agent")


class AgentService(pb_grpc.AgentControlServicer):
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.session: RunSession | None = None

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
        return pb.PingReply(
            coordinator_send_ns=request.coordinator_send_ns, agent_ns=time.monotonic_ns()
        )

    async def Run(
        self, request: pb.RunRequest, context: grpc.aio.ServicerContext[pb.RunRequest, pb.RunEvent]
    ) -> AsyncIterator[pb.RunEvent]:
        if self.session is not None:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "agent is busy with another run"
            )
        try:
            plan = Plan.from_json(request.plan_json)
        except PlanError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid plan: {exc}")
            raise  # unreachable: abort raises
        refusal = check_plan(plan, request.agent_index, self.cfg.limits)
        if refusal:
            log.warning("refused run %s: %s", request.run_id, refusal)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"agent refuses: {refusal}")
        workers = min(request.workers or self.cfg.workers, self.cfg.workers)
        session = RunSession(
            SessionSpec(
                run_id=request.run_id,
                plan=plan,
                plan_json=request.plan_json,
                agent_index=request.agent_index,
                start_at_ns=request.start_at_agent_ns,
                workers=workers,
                expected_outputs=len(plan.outputs),
                heartbeat_s=self.cfg.heartbeat_s,
            )
        )
        self.session = session
        log.info("run %s: slice %d, %d workers", request.run_id, request.agent_index, workers)
        try:
            async for event in session.events():
                yield event
        finally:
            session.stop("run stream closed")
            self.session = None
            log.info("run %s ended (%s)", request.run_id, session.state)

    async def Stop(
        self,
        request: pb.StopRequest,
        context: grpc.aio.ServicerContext[pb.StopRequest, pb.StopReply],
    ) -> pb.StopReply:
        if self.session is None or self.session.spec.run_id != request.run_id:
            return pb.StopReply(stopped=False)
        self.session.stop(request.reason or "stopped by coordinator")
        return pb.StopReply(stopped=True)
