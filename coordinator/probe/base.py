"""What every probe answers and holds (`Probe`: the target, its TLS and headers), and how
it fails (`ProbeError`, `NotFound`)."""

from __future__ import annotations

import ssl
from typing import Any

from coordinator.stats.counters import Snapshot
from coordinator.stats.documents import ServerInfo
from volley.plan import Plan
from volley.target import client_ssl_context, read_access, target_host_port
from volley.wire.payloads import Wire


class ProbeError(Exception):
    """The target did not answer as a KServe v2 server should; the message says why.
    `code`: the gRPC status name or HTTP_<status> of the answer, when there was one."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class NotFound(ProbeError):
    """The server does not know this model / endpoint."""


#: (name, datatype, shape) of a model's tensors, from its metadata
Tensor = tuple[str, str, tuple[int, ...]]


class Probe:
    #: The plan's headers as the coordinator sends them (values read here, never sent on).
    headers: tuple[tuple[str, str], ...] = ()
    #: what the probe's TLS offers by ALPN
    alpn: tuple[str, ...] = ()

    def __init__(self, plan: Plan, timeout: float) -> None:
        """The plan's target, TLS and headers, read here on the coordinator (env, files)."""
        self.plan = plan
        self.timeout = timeout
        self.host, self.port = target_host_port(plan)
        access = read_access(plan).here
        self.ssl: ssl.SSLContext | None = (
            client_ssl_context(plan.tls, access, list(self.alpn)) if plan.tls is not None else None
        )
        self.server_name = (plan.tls.server_name if plan.tls else "") or None
        self.headers = access.headers

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def live(self) -> bool:
        raise NotImplementedError

    async def ready(self) -> bool:
        raise NotImplementedError

    async def model_ready(self, name: str, version: str) -> bool:
        raise NotImplementedError

    async def ready_models(self) -> list[str]:
        return []

    async def server_metadata(self) -> ServerInfo:
        raise NotImplementedError

    async def metadata(
        self, name: str, version: str
    ) -> tuple[str, tuple[str, ...], tuple[Tensor, ...], tuple[str, ...]]:
        raise NotImplementedError

    async def config(self, name: str, version: str) -> dict[str, Any]:
        raise NotImplementedError

    async def infer(self, wire: Wire) -> str:
        """'' when the probe request succeeded and its response checks out, else why not."""
        raise NotImplementedError

    async def stream_infer(self, wire: Wire) -> str:
        """The same over ModelStreamInfer (gRPC only): '' when it answered, else why not."""
        return "ModelStreamInfer is a gRPC method"

    async def decoupled_infer(self, wire: Wire) -> str:
        """A decoupled model's probe: one request read to its end ("" when it went well)."""
        raise NotImplementedError

    async def statistics(self, name: str = "", version: str = "") -> Snapshot:
        """Triton's cumulative statistics of a model's versions (of every model: name "");
        ProbeError where the server has none (not every KServe v2 server does)."""
        raise NotImplementedError
