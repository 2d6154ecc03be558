"""Where the monitor reads the server: the plan's protocol, TLS and headers.

`ProbeSource` uses coordinator/probe.py's clients (gRPC over volley's HTTP/2 client, or
KServe v2 REST), so statistics travel the way the load does. One call at a time (the
HTTP client has one keep-alive connection), each bounded by `timeout_s`; a call that
times out closes the connection and the next one reopens it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol, TypeVar

from coordinator.probe import Probe, ProbeError, make_probe
from coordinator.stats.counters import Snapshot
from coordinator.stats.documents import ModelConfigDoc, ServerInfo
from volley.plan import Plan, PlanError

T = TypeVar("T")

_ConfigKey = Literal[
    "name",
    "platform",
    "backend",
    "max_batch_size",
    "instance_group",
    "dynamic_batching",
    "sequence_batching",
    "ensemble_scheduling",
]
#: The model config keys server.json keeps.
CONFIG_KEYS: tuple[_ConfigKey, ...] = (
    "name",
    "platform",
    "backend",
    "max_batch_size",
    "instance_group",
    "dynamic_batching",
    "sequence_batching",
    "ensemble_scheduling",
)


class SourceError(Exception):
    """The server did not answer; the message says why, in one line."""


class Source(Protocol):
    """What the monitor reads (ProbeSource; tests give their own)."""

    async def server_info(self) -> ServerInfo: ...

    async def model_config(self, name: str) -> ModelConfigDoc: ...

    async def model_ready(self, name: str, version: str) -> bool: ...

    async def statistics(self) -> Snapshot:
        """Every model version's counters; SourceError when there are none."""
        ...

    async def close(self) -> None: ...


class ProbeSource:
    def __init__(self, plan: Plan, timeout_s: float = 2.0) -> None:
        self.plan = plan
        self.timeout_s = timeout_s
        self._probe: Probe | None = None
        self._lock = asyncio.Lock()

    async def _call(self, what: str, fn: Callable[[Probe], Awaitable[T]]) -> T:
        async with self._lock:
            try:
                return await asyncio.wait_for(self._run(fn), self.timeout_s)
            except TimeoutError:
                await self._drop()
                raise SourceError(
                    f"{what}: DEADLINE_EXCEEDED (no answer within {self.timeout_s:g}s)"
                ) from None
            except ProbeError as exc:
                if not exc.code:  # no answer: the connection may be unusable
                    await self._drop()
                raise SourceError(f"{exc.code}: {exc}" if exc.code else str(exc)) from None
            except (PlanError, OSError) as exc:
                await self._drop()
                raise SourceError(f"{what}: {exc}") from None

    async def _run(self, fn: Callable[[Probe], Awaitable[T]]) -> T:
        if self._probe is None:
            probe = make_probe(self.plan, self.timeout_s)
            await probe.open()
            self._probe = probe
        return await fn(self._probe)

    async def _drop(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            await probe.close()

    async def server_info(self) -> ServerInfo:
        return await self._call("server metadata", lambda p: p.server_metadata())

    async def model_config(self, name: str) -> ModelConfigDoc:
        full = await self._call("model config", lambda p: p.config(name, ""))
        out: ModelConfigDoc = {}
        for k in CONFIG_KEYS:
            if k in full:
                out[k] = full[k]
        return out

    async def model_ready(self, name: str, version: str) -> bool:
        return await self._call("model ready", lambda p: p.model_ready(name, version))

    async def statistics(self) -> Snapshot:
        return await self._call("statistics", lambda p: p.statistics())

    async def close(self) -> None:
        async with self._lock:
            await self._drop()
