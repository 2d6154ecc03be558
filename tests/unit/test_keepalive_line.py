"""A run's keepalives on one call (AgentControl.Keepalives): answered and counted as the
coordinator's sign of life like unary Pings, falling back to Ping for an agent without
the call, and a ping left unanswered is a False, not a hang (in-process agents,
loopback)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc

from agent.config import AgentConfig
from agent.server import AgentServer
from agent.session import RunSession, SessionSpec
from coordinator.agents import AgentClient
from volley.plan import plan_from_dict
from volley.v1 import control_pb2 as pb
from volley.v1 import control_pb2_grpc as pb_grpc


def _session(run_id: str) -> RunSession:
    plan = plan_from_dict(
        {
            "target": "127.0.0.1:8001",
            "model": "add",
            "load": {"mode": "open", "rate": 10, "duration": "60s"},
        }
    )
    return RunSession(SessionSpec(run_id, plan, plan.to_json(), 0, 1, 1, 0, keepalive_s=1.0))


async def test_keepalives_ride_one_call_and_touch_the_run() -> None:
    server = AgentServer(AgentConfig(listen="127.0.0.1:0", workers=1, agent_id="ka"))
    await server.start()
    client = AgentClient(f"127.0.0.1:{server.port}")
    try:
        session = _session("r1")
        server.service.session = session
        session.last_contact = 0.0
        before = time.monotonic()
        assert await client.keepalive("r1", timeout_s=2.0)
        assert session.last_contact >= before  # the agent counted it
        line = client._line
        assert line is not None and not line.broken and line._call is not None
        # more pings, some at once, on the same call
        assert all(await asyncio.gather(*(client.keepalive("r1", 2.0) for _ in range(3))))
        assert client._line is line and not line.broken
        # another run's pings: a new call; a ping for no run here is answered, not counted
        session.last_contact = 0.0
        assert await client.keepalive("r2", timeout_s=2.0)
        assert client._line is not line and line.broken and session.last_contact == 0.0
    finally:
        server.service.session = None  # never started: nothing for the server to wait for
        await client.close()
        await server.stop(0.2)


class _OldAgent(pb_grpc.AgentControlServicer):
    """An agent from before Keepalives: Ping only (the base class answers UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.pings = 0

    async def Ping(self, request: pb.PingRequest, context: object) -> pb.PingReply:
        self.pings += 1
        return pb.PingReply(coordinator_send_ns=request.coordinator_send_ns, agent_ns=1)


class _Mute(pb_grpc.AgentControlServicer):
    """Reads keepalives and never answers (an agent stalled on this call)."""

    async def Keepalives(
        self, request_iterator: AsyncIterator[pb.PingRequest], context: object
    ) -> AsyncIterator[pb.PingReply]:
        async for _ in request_iterator:
            pass
        if False:  # pragma: no cover - a generator that yields nothing
            yield pb.PingReply()


async def _serve(servicer: pb_grpc.AgentControlServicer) -> tuple[grpc.aio.Server, AgentClient]:
    server = grpc.aio.server()
    pb_grpc.add_AgentControlServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, AgentClient(f"127.0.0.1:{port}")


async def test_an_agent_without_the_call_is_pinged_by_ping() -> None:
    old = _OldAgent()
    server, client = await _serve(old)
    try:
        assert await client.keepalive("r1", timeout_s=2.0)
        assert await client.keepalive("r1", timeout_s=2.0)
        assert old.pings == 2 and client._line is not None and client._line.broken
    finally:
        await client.close()
        await server.stop(0.2)


async def test_an_unanswered_keepalive_is_false_within_its_timeout() -> None:
    server, client = await _serve(_Mute())
    try:
        t0 = time.monotonic()
        assert not await client.keepalive("r1", timeout_s=0.3)
        assert time.monotonic() - t0 < 2.0
        assert client._line is not None and not client._line.broken  # the call still stands
    finally:
        await client.close()
        await server.stop(0.2)


async def test_a_malformed_keepalive_is_invalid_argument_not_a_traceback() -> None:
    server = AgentServer(AgentConfig(listen="127.0.0.1:0", workers=1, agent_id="ka"))
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        call = channel.stream_stream("/volley.v1.AgentControl/Keepalives")(iter([b"\xff\xff\xff"]))
        code = grpc.StatusCode.OK
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close()
        await server.stop(0.2)
