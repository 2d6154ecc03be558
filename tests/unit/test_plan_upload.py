"""UploadPlan: a plan larger than one message, in chunks, for the next Run; refusals
come with their own status and one line (in-process agent, loopback)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from agent.config import AgentConfig
from agent.server import MAX_RECEIVE_BYTES, AgentServer
from coordinator.agents import AgentClient
from volley.v1 import control_pb2 as pb


@pytest.fixture
async def agent() -> AsyncIterator[tuple[AgentServer, AgentClient]]:
    server = AgentServer(AgentConfig(listen="127.0.0.1:0", workers=1, agent_id="up"))
    await server.start()
    client = AgentClient(f"127.0.0.1:{server.port}")
    try:
        yield server, client
    finally:
        await client.close()
        await server.stop(0.2)


async def _code(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:  # type: ignore[attr-defined]
                pass
        else:
            await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_upload_then_run(agent: tuple[AgentServer, AgentClient]) -> None:
    server, client = agent
    text = '{"target": "x"}' + " " * (3 * MAX_RECEIVE_BYTES // 2)
    assert await client.upload_plan("r1", text) == len(text)
    assert server.service.uploaded is not None and server.service.uploaded.plan_json == text
    # the Run takes it (this one is an invalid plan: the agent parsed what was uploaded)
    code, details = await _code(client.run(pb.RunRequest(run_id="r1", plan_uploaded=True)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("invalid plan")
    assert server.service.uploaded is None
    code, details = await _code(client.run(pb.RunRequest(run_id="r1", plan_uploaded=True)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no uploaded plan for run r1" in details


async def test_upload_refusals_are_clean(agent: tuple[AgentServer, AgentClient]) -> None:
    server, client = agent
    big = "x" * (2 * 1024 * 1024)
    for run_id, why in (("../etc", "invalid run id"), ("", "invalid run id")):
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await client.upload_plan(run_id, big)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert why in (ei.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await client.upload_plan("r2", "")
    assert "empty plan upload" in (ei.value.details() or "")
    # bytes that are not a PlanChunk
    raw = client.channel.stream_unary("/volley.v1.AgentControl/UploadPlan")

    async def garbage() -> AsyncIterator[bytes]:
        yield b"\xff\xff\xff"

    code, details = await _code(raw(garbage()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "malformed" in details
    assert server.service.uploaded is None
