"""Shared fixtures: the real local Triton (session-wide) and local agents."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agent.config import AgentConfig
from agent.server import AgentServer
from tests.triton_fixture import TritonEndpoint, triton_server, triton_sleep_x2  # noqa: F401


@pytest.fixture
async def agent_pair() -> AsyncIterator[list[str]]:
    """Two in-process agent servers (their workers are real processes) on free ports."""
    servers = [
        AgentServer(AgentConfig(listen="127.0.0.1:0", workers=1, agent_id=f"t{i}"))
        for i in range(2)
    ]
    for s in servers:
        await s.start()
    try:
        yield [f"127.0.0.1:{s.port}" for s in servers]
    finally:
        for s in servers:
            await s.stop(0.5)


__all__ = ["TritonEndpoint", "agent_pair"]
