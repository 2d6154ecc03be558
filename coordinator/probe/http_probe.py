"""`HttpProbe` (KServe v2 REST over HTTP/1.1) and `JsonProbe` (a plain JSON service: no
models, no statistics, one POST of a body).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any
from urllib.parse import quote

from coordinator.probe.base import Probe, ProbeError, Tensor
from coordinator.stats.counters import Snapshot, StatisticsError, parse_json
from coordinator.stats.documents import ServerInfo
from volley.plan import Plan
from volley.request import check_http_response
from volley.wire.grpc import USER_AGENT
from volley.wire.http1 import dechunk
from volley.wire.payloads import Wire
from volley.wire.stream import (
    parse_sse_event,
)


class HttpProbe(Probe):
    """KServe v2 REST over one HTTP/1.1 keep-alive connection."""

    alpn = ("http/1.1",)

    def __init__(self, plan: Plan, timeout: float) -> None:
        super().__init__(plan, timeout)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=(self.server_name or self.host) if self.ssl else None,
                ),
                self.timeout,
            )
        except TimeoutError:
            raise ProbeError(f"target {self.plan.target}: no HTTP server answers") from None
        except ssl.SSLError as exc:
            raise ProbeError(
                f"target {self.plan.target}: TLS failed: {exc.reason or exc}"
            ) from None
        except OSError as exc:
            raise ProbeError(
                f"target {self.plan.target}: not reachable over HTTP ({exc.strerror or exc})"
            ) from None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def request(
        self, method: str, path: str, body: bytes = b"", head: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None or self.writer.is_closing():
            await self.open()
        assert self.reader is not None and self.writer is not None
        if not head:
            lines = [
                f"{method} {path} HTTP/1.1",
                f"Host: {self.plan.target}",
                f"User-Agent: {USER_AGENT}",
            ]
            lines += [f"{k}: {v}" for k, v in self.headers]
            if body:
                lines.append("Content-Type: application/json")
            lines.append(f"Content-Length: {len(body)}")
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.writer.write(head + body)
            return await asyncio.wait_for(self._response(), max(self.timeout, self.plan.timeout_s))
        except TimeoutError:
            self.writer.close()
            raise ProbeError(f"target {self.plan.target}: {method} {path} timed out") from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.writer.close()
            raise ProbeError(
                f"target {self.plan.target}: no HTTP/1.1 answer to {method} {path or 'infer'} "
                "(a gRPC port? use --protocol grpc)"
            ) from None
        except OSError as exc:
            self.writer.close()
            raise ProbeError(f"target {self.plan.target}: {method} {path}: {exc}") from None

    async def _response(self) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ProbeError(f"target {self.plan.target}: not an HTTP server")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            buf = b""
            while True:
                buf += await self.reader.readuntil(b"\r\n")
                body = dechunk(buf, 0)
                if isinstance(body, bytes):
                    return status, headers, body
                if body is False:
                    raise ProbeError("bad chunked response")
        n = int(headers.get("content-length", "0") or 0)
        body = await self.reader.readexactly(n) if n else b""
        return status, headers, body

    def _model_path(self, name: str, version: str) -> str:
        path = f"/v2/models/{quote(name, safe='')}"
        return path + (f"/versions/{quote(version, safe='')}" if version else "")

    @staticmethod
    def _why(status: int, body: bytes) -> str:
        try:
            err = json.loads(body).get("error", "")
        except (ValueError, RecursionError, AttributeError):
            err = ""
        return f"HTTP {status}" + (f": {str(err).splitlines()[0]}" if err else "")

    async def live(self) -> bool:
        status, _, body = await self.request("GET", "/v2/health/live")
        if status in (401, 403):
            raise ProbeError(self._why(status, body))
        return status == 200

    async def ready(self) -> bool:
        status, _, _ = await self.request("GET", "/v2/health/ready")
        return status == 200

    async def model_ready(self, name: str, version: str) -> bool:
        status, _, _ = await self.request("GET", self._model_path(name, version) + "/ready")
        return status == 200

    async def ready_models(self) -> list[str]:
        status, _, body = await self.request("POST", "/v2/repository/index", b'{"ready":true}')
        if status != 200:
            return []
        try:
            return sorted({m["name"] for m in json.loads(body)})
        except (ValueError, RecursionError, KeyError, TypeError):
            return []

    async def server_metadata(self) -> ServerInfo:
        status, _, body = await self.request("GET", "/v2")
        if status != 200:
            raise ProbeError(f"server metadata: {self._why(status, body)}", f"HTTP_{status}")
        try:
            m = json.loads(body)
            return {
                "name": str(m["name"]),
                "version": str(m["version"]),
                "extensions": [str(e) for e in m.get("extensions", [])],
            }
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError) as exc:
            raise ProbeError(f"server metadata: malformed ({exc})") from None

    async def metadata(
        self, name: str, version: str
    ) -> tuple[str, tuple[str, ...], tuple[Tensor, ...], tuple[str, ...]]:
        status, _, body = await self.request("GET", self._model_path(name, version))
        if status != 200:
            raise ProbeError(f"model {name!r} metadata: {self._why(status, body)}")
        try:
            m = json.loads(body)
            inputs = tuple(
                (t["name"], t["datatype"], tuple(int(d) for d in t["shape"])) for t in m["inputs"]
            )
            outputs = tuple(t["name"] for t in m.get("outputs", []))
            return m.get("name", name), tuple(m.get("versions", [])), inputs, outputs
        except (ValueError, RecursionError, KeyError, TypeError) as exc:
            raise ProbeError(f"model {name!r} metadata: malformed ({exc})") from None

    async def config(self, name: str, version: str) -> dict[str, Any]:
        status, _, body = await self.request("GET", self._model_path(name, version) + "/config")
        if status != 200:
            return {}
        try:
            cfg = json.loads(body)
        except (ValueError, RecursionError):
            return {}
        return cfg if isinstance(cfg, dict) else {}

    async def infer(self, wire: Wire) -> str:
        status, headers, body = await self.request("POST", "", wire.body, head=wire.head)
        if status != 200:
            return self._why(status, body)
        enc = headers.get("content-encoding", "")
        if enc in ("gzip", "deflate"):
            import gzip
            import zlib

            body = gzip.decompress(body) if enc == "gzip" else zlib.decompress(body)
        ihcl = headers.get("inference-header-content-length")
        if not check_http_response(body, int(ihcl) if ihcl else None, wire.expected_outputs):
            return "probe response lacks its outputs"
        return ""

    async def decoupled_infer(self, wire: Wire) -> str:
        """A decoupled model: one generate_stream request, its events read to the end."""
        status, _, body = await self.request("POST", "", wire.body, head=wire.head)
        if status != 200:
            return self._why(status, body)
        for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
            if not event.strip():
                continue
            r = parse_sse_event(event, self.plan.stream.token_output)
            if r is None:
                return "malformed generate_stream event"
            if r.error:
                return r.error.splitlines()[0] if r.error.strip() else "error event"
        return ""

    async def statistics(self, name: str = "", version: str = "") -> Snapshot:
        path = (self._model_path(name, version) if name else "/v2/models") + "/stats"
        status, _, body = await self.request("GET", path)
        if status != 200:
            raise ProbeError(f"statistics: {self._why(status, body)}", f"HTTP_{status}")
        try:
            return parse_json(json.loads(body))
        except (ValueError, RecursionError):
            raise ProbeError("statistics: the answer is not JSON") from None
        except StatisticsError as exc:
            raise ProbeError(str(exc)) from None


class JsonProbe(HttpProbe):
    """A plain JSON prediction service (protocol json): no KServe v2 endpoints, only the
    service's own POST. It is live and ready when it answers; it has no models,
    metadata or statistics (the monitor says so in one line)."""

    NO_STATS = "a plain JSON service has no model statistics"

    async def live(self) -> bool:
        return True

    async def ready(self) -> bool:
        return True

    async def model_ready(self, name: str, version: str) -> bool:
        return True

    async def server_metadata(self) -> ServerInfo:
        raise ProbeError(self.NO_STATS, "NONE")

    async def config(self, name: str, version: str) -> dict[str, Any]:
        return {}

    async def infer(self, wire: Wire) -> str:
        from volley.wire.json_service import answer_ok

        spec = self.plan.json_service
        status, _, body = await self.request("POST", "", wire.body, head=wire.head)
        if spec is None or answer_ok(status, body, spec):
            return ""
        if spec.expect_field and (200 <= status < 300 or status == spec.expect_status):
            return f"the answer has no field {spec.expect_field!r}"
        return self._why(status, body)

    async def statistics(self, name: str = "", version: str = "") -> Snapshot:
        raise ProbeError(self.NO_STATS, "NONE")
