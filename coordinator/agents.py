"""The coordinator's side of the control plane: talk to one agent.

`AgentClient` wraps the generated stub with typed methods; errors come out as
`AgentError` with a one-line message naming the agent. `AgentState` is an agent's
state in a run, as summary.json's `agents[].state` writes it.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import time
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import grpc

from coordinator.clock import ClockEstimate, estimate_offset
from coordinator.keepalive import KeepaliveLine, PingCall
from volley.plan import PlanError, parse_address
from volley.security import ClientSecurity
from volley.v1 import control_pb2 as pb
from volley.v1 import control_pb2_grpc as pb_grpc
from volley.version import PROTOCOL_VERSION, __version__

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 512 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


#: A plan (JSON) larger than this goes by UploadPlan, in chunks of PLAN_CHUNK_BYTES:
#: agents receive messages of at most 4 MiB (agent/server.py MAX_RECEIVE_BYTES).
INLINE_PLAN_CHARS = 1024 * 1024
PLAN_CHUNK_BYTES = 1024 * 1024


class AgentState(enum.StrEnum):
    """One agent's state in a run (the value is what summary.json writes)."""

    READY = "ready"  #: Hello and clock probes done, no Run yet
    RUNNING = "running"  #: its Run stream is open
    DONE = "done"  #: it finished its slice
    FAILED = "failed"  #: it refused the run, failed, or sent a malformed batch
    MISSING = "missing"  #: it went silent or its stream broke (its spool has the rest)
    STOPPED = "stopped"  #: (volley collect) its spool ends with a stop

    @property
    def partial(self) -> bool:
        """The coordinator may lack some of this agent's records."""
        return self in (AgentState.MISSING, AgentState.FAILED)


class AgentError(Exception):
    """An agent cannot be used; the message says which and why."""


def resolve_agents(specs: list[str]) -> list[str]:
    """Expand agent addresses. `dns:///name:port` resolves to every address of name
    (a Kubernetes headless Service); plain HOST:PORT is kept as given."""
    out: list[str] = []
    for spec in specs:
        if spec.startswith("dns:"):
            parsed = urlparse(spec)
            target = parsed.path.lstrip("/") or parsed.netloc
            host, port = parse_address(target, f"agent {spec}")
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise PlanError(f"agent {spec}: cannot resolve {host}: {exc.strerror}") from None
            addrs = sorted({str(i[4][0]) for i in infos})
            out += [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addrs]
        else:
            parse_address(spec, f"agent {spec}")
            out.append(spec)
    if len(set(out)) != len(out):
        raise PlanError("the same agent address is given twice")
    return out


def _describe(exc: grpc.aio.AioRpcError) -> str:
    details = " ".join((exc.details() or "").split())
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        low = details.lower()
        if any(k in low for k in ("ssl", "tls", "handshake", "certificate")):
            return f"TLS handshake failed (check --tls-ca / --tls-cert / --tls-key): {details}"
        return f"unreachable ({details or 'no answer'})"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"authentication refused ({details}); check --token-file or env VOLLEY_TOKEN"
    return f"{code.name}: {details}"


def describe_error(address: str, exc: grpc.aio.AioRpcError) -> str:
    return f"agent {address}: {_describe(exc)}"


class AgentClient:
    def __init__(
        self,
        address: str,
        connect_timeout_s: float = 5.0,
        security: ClientSecurity | None = None,
    ) -> None:
        self.address = address
        self.connect_timeout_s = connect_timeout_s
        self.security = security or ClientSecurity()
        self.md = self.security.metadata
        self.channel = self.security.channel(address, CHANNEL_OPTIONS)
        self.stub = pb_grpc.AgentControlStub(self.channel)
        #: the current run's keepalive call (opened by its first keepalive)
        self._line: KeepaliveLine | None = None

    async def close(self) -> None:
        if self._line is not None:
            await self._line.close()
        await self.channel.close()

    async def hello(self) -> pb.HelloReply:
        try:
            reply: pb.HelloReply = await self.stub.Hello(
                pb.HelloRequest(protocol_version=PROTOCOL_VERSION, coordinator_version=__version__),
                timeout=self.connect_timeout_s,
                wait_for_ready=True,
                metadata=self.md,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                hint = (
                    " or the TLS handshake failed: check --tls-ca / --tls-cert / --tls-key"
                    if self.security.tls
                    else ""
                )
                raise AgentError(
                    f"agent {self.address}: unreachable (no answer within "
                    f"{self.connect_timeout_s:g}s{hint})"
                ) from None
            raise AgentError(f"agent {self.address}: {_describe(exc)}") from None
        if reply.busy:
            raise AgentError(f"agent {self.address}: busy with another run")
        return reply

    async def probe_clock(self, samples: int = 16) -> ClockEstimate:
        got: list[tuple[int, int, int]] = []
        for _ in range(samples):
            t0 = time.monotonic_ns()
            try:
                reply: pb.PingReply = await self.stub.Ping(
                    pb.PingRequest(coordinator_send_ns=t0), timeout=2.0, metadata=self.md
                )
            except grpc.aio.AioRpcError as exc:
                raise AgentError(
                    f"agent {self.address}: clock probe failed: {_describe(exc)}"
                ) from None
            t1 = time.monotonic_ns()
            got.append((t0, reply.agent_ns, t1))
            await asyncio.sleep(0.002)
        return estimate_offset(got)

    async def run(self, request: pb.RunRequest) -> AsyncIterator[pb.RunEvent]:
        """The Run stream; a plan too large for one message goes first by UploadPlan."""
        if len(request.plan_json) > INLINE_PLAN_CHARS:
            await self.upload_plan(request.run_id, request.plan_json)
            inline = pb.RunRequest()
            inline.CopyFrom(request)
            inline.plan_json = ""
            inline.plan_uploaded = True
            request = inline
        call = self.stub.Run(request, metadata=self.md)
        try:
            async for event in call:
                yield event
        finally:
            call.cancel()  # a no-op once the stream has ended

    async def upload_plan(self, run_id: str, plan_json: str) -> int:
        """Send a plan in chunks of PLAN_CHUNK_BYTES (the agent takes 4 MiB messages);
        grpc.aio.AioRpcError with the agent's own status when it refuses."""
        data = plan_json.encode()
        call = self.stub.UploadPlan(metadata=self.md)
        try:
            for at in range(0, len(data), PLAN_CHUNK_BYTES):
                await call.write(pb.PlanChunk(run_id=run_id, data=data[at : at + PLAN_CHUNK_BYTES]))
            await call.done_writing()
        except asyncio.InvalidStateError:
            pass  # the agent ended the call before the last chunk: its status says why
        reply: pb.UploadReply = await call
        return int(reply.size)

    def _keepalive_call(self, pings: AsyncIterator[pb.PingRequest]) -> PingCall:
        call: PingCall = self.stub.Keepalives(pings, metadata=self.md)
        return call

    async def keepalive(self, run_id: str, timeout_s: float = 1.0) -> bool:
        """One keepalive ping for a run; False when it got no answer. On the run's
        keepalive call (`KeepaliveLine`) while it works, else by a unary Ping."""
        line = self._line
        if line is None or line.run_id != run_id:
            old, line = line, KeepaliveLine(run_id, self._keepalive_call)
            self._line = line
            if old is not None:
                await old.close()
        answered = await line.ping(timeout_s)
        if answered is not None:
            return answered
        return await self.ping(run_id, timeout_s)

    async def ping(self, run_id: str, timeout_s: float = 1.0) -> bool:
        """One unary Ping for a run (a call of its own, as costly as a Start: what the
        ready round times); False when it got no answer."""
        try:
            await self.stub.Ping(
                pb.PingRequest(coordinator_send_ns=time.monotonic_ns(), run_id=run_id),
                timeout=timeout_s,
                metadata=self.md,
            )
        except grpc.aio.AioRpcError:
            return False
        return True

    async def start(self, run_id: str, at_agent_ns: int, timeout_s: float = 2.0) -> pb.StartReply:
        """The start instant of a prepared run (two-phase start); AgentError when the
        agent cannot be told."""
        try:
            reply: pb.StartReply = await self.stub.Start(
                pb.StartRequest(run_id=run_id, start_at_agent_ns=at_agent_ns),
                timeout=timeout_s,
                metadata=self.md,
            )
        except grpc.aio.AioRpcError as exc:
            raise AgentError(f"agent {self.address}: start failed: {_describe(exc)}") from None
        return reply

    async def stop(self, run_id: str, reason: str, timeout_s: float = 2.0) -> bool:
        try:
            reply: pb.StopReply = await self.stub.Stop(
                pb.StopRequest(run_id=run_id, reason=reason), timeout=timeout_s, metadata=self.md
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.stopped)

    def collect(
        self, run_id: str, slot: int | None = None, timeout_s: float | None = None
    ) -> AsyncIterator[pb.RunEvent]:
        """Replay the agent's spool of a run (one slot, or every slot it holds)."""
        call: AsyncIterator[pb.RunEvent] = self.stub.Collect(
            pb.CollectRequest(run_id=run_id, slot=slot), timeout=timeout_s, metadata=self.md
        )
        return call

    async def discard(self, run_id: str, slot: int | None = None, timeout_s: float = 5.0) -> bool:
        """Tell the agent to delete its spool of a run (the run is stored)."""
        try:
            call = self.stub.Collect(
                pb.CollectRequest(run_id=run_id, discard=True, slot=slot),
                timeout=timeout_s,
                metadata=self.md,
            )
            async for _ in call:
                pass
        except grpc.aio.AioRpcError:
            return False
        return True
