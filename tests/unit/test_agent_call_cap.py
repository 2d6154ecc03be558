"""An agent holds at most MAX_CONCURRENT_RPCS (64) calls at once, from anyone: with 64
held open (plan uploads that never end), the next call is refused RESOURCE_EXHAUSTED
before its token is even looked at, with a token or without; once they end, calls are
served again. (Each connection holds at most 16 streams, so 64 calls need 4.)"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from agent.config import AgentConfig
from agent.server import MAX_CONCURRENT_RPCS, MAX_STREAMS_PER_CONNECTION
from tests.agent_thread import agent_in_thread
from volley.security import token_metadata
from volley.v1 import control_pb2 as pb
from volley.v1 import control_pb2_grpc as pb_grpc
from volley.version import PROTOCOL_VERSION, __version__

TOKEN = "a-token-for-the-call-cap-test"


async def _hello(stub: pb_grpc.AgentControlStub, md: Any) -> grpc.StatusCode:
    try:
        hello = pb.HelloRequest(protocol_version=PROTOCOL_VERSION, coordinator_version=__version__)
        await stub.Hello(hello, metadata=md, timeout=5.0)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _settled(stub: pb_grpc.AgentControlStub, md: Any, want: grpc.StatusCode) -> bool:
    """Hello until it answers `want` (the held calls reach the server a little later
    than their writes return); bounded: 5 s at most."""
    for _ in range(100):
        if await _hello(stub, md) == want:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_an_agent_holds_at_most_64_calls_and_refuses_the_next() -> None:
    md = token_metadata(TOKEN)
    cfg = AgentConfig(listen="127.0.0.1:0", workers=1, token=TOKEN)
    with agent_in_thread(cfg) as server:
        target = f"127.0.0.1:{server.port}"
        per = MAX_STREAMS_PER_CONNECTION - 1  # one stream of each left for the probes
        n_conns = -(-MAX_CONCURRENT_RPCS // per)
        # a connection of its own each (no shared subchannel)
        opts = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(target, options=opts) for _ in range(n_conns)]
        probe_ch = grpc.aio.insecure_channel(target, options=opts)
        probe = pb_grpc.AgentControlStub(probe_ch)
        held: list[Any] = []
        try:
            for i in range(MAX_CONCURRENT_RPCS - 1):
                call = pb_grpc.AgentControlStub(channels[i // per]).UploadPlan(metadata=md)
                await call.write(pb.PlanChunk(run_id="cap", data=b"{"))
                held.append(call)
            # 63 held: one call left, and it is served
            assert await _settled(probe, md, grpc.StatusCode.OK)
            call = pb_grpc.AgentControlStub(channels[-1]).UploadPlan(metadata=md)
            await call.write(pb.PlanChunk(run_id="cap", data=b"{"))
            held.append(call)
            # 64 held: the next one is refused, whoever makes it
            assert await _settled(probe, md, grpc.StatusCode.RESOURCE_EXHAUSTED)
            assert await _hello(probe, ()) == grpc.StatusCode.RESOURCE_EXHAUSTED
            for call in held:
                call.cancel()
            held.clear()
            assert await _settled(probe, md, grpc.StatusCode.OK)
            assert await _hello(probe, ()) == grpc.StatusCode.UNAUTHENTICATED
        finally:
            for call in held:
                call.cancel()
            for ch in [*channels, probe_ch]:
                await ch.close()
