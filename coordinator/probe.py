"""Talking to the target before the load, over the plan's own protocol, TLS and headers.

`GrpcProbe` uses the agents' HTTP/2 client (volley/wire/h2.py), so preflight checks exactly
the wire the load will use (TLS and ALPN, headers, compression). `HttpProbe` speaks
KServe v2 REST over HTTP/1.1. Both answer the same questions: is the server live and
ready, is the model ready, its metadata and (Triton's) config, and one probe infer.
Failures raise `ProbeError` with one line.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import struct
from typing import Any
from urllib.parse import quote

from tritonclient.grpc import service_pb2

from coordinator.stats.counters import Snapshot, StatisticsError, parse, parse_json
from coordinator.stats.documents import ServerInfo
from volley import records as rc
from volley.plan import Plan
from volley.request import check_http_response, check_response
from volley.target import SENSITIVE, client_ssl_context, read_access, target_host_port
from volley.wire import h2
from volley.wire.grpc import USER_AGENT, grpc_frame, grpc_timeout_header, grpc_unframe
from volley.wire.h2 import H2Connection, HeaderInfo
from volley.wire.http1 import dechunk
from volley.wire.payloads import Wire
from volley.wire.stream import (
    parse_sse_event,
    parse_stream_response,
    request_params,
    stream_request,
)


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


class _Sink:
    def __init__(self) -> None:
        self.calls: dict[int, list[Any]] = {}

    def on_headers(self, conn: H2Connection, sid: int, info: HeaderInfo, end: bool) -> None:
        st = self.calls.get(sid)
        if st is None:
            return
        if not end:
            st[1] = info
            return
        del self.calls[sid]
        head: HeaderInfo = st[1] or info
        status = info.grpc_status
        if status < 0:
            status = h2.http_to_grpc_status(head.http_status) if head.http_status != 200 else 2
        msg = info.grpc_message or (f"HTTP {head.http_status}" if head.http_status != 200 else "")
        if not st[0].done():
            st[0].set_result((status, msg, st[2], head.encoding))

    def on_data(self, conn: H2Connection, sid: int, data: bytes, end: bool) -> None:
        st = self.calls.get(sid)
        if st is not None:
            st[2] += data

    def on_reset(self, conn: H2Connection, sid: int, grpc_status: int, message: str) -> None:
        st = self.calls.pop(sid, None)
        if st is not None and not st[0].done():
            st[0].set_result((grpc_status, message, b"", ""))

    def on_refused(self, conn: H2Connection, sid: int, message: str) -> None:
        self.on_reset(conn, sid, 14, message)  # a probe is not retried: UNAVAILABLE

    def on_goaway(self, conn: H2Connection) -> None:
        pass

    def on_connection_lost(self, conn: H2Connection, message: str) -> None:
        for st in self.calls.values():
            if not st[0].done():
                st[0].set_result((14, message, b"", ""))
        self.calls.clear()

    def on_writable(self, conn: H2Connection) -> None:
        pass


class GrpcProbe(Probe):
    def __init__(self, plan: Plan, timeout: float) -> None:
        self.plan = plan
        self.timeout = timeout
        self.host, self.port = target_host_port(plan)
        access = read_access(plan).here  # on the coordinator: env, files and TLS read here
        self.ssl: ssl.SSLContext | None = (
            client_ssl_context(plan.tls, access, ["h2"]) if plan.tls is not None else None
        )
        self.server_name = (plan.tls.server_name if plan.tls else "") or None
        self.headers = access.headers
        self.sink = _Sink()
        self.conn: H2Connection | None = None

    async def open(self) -> None:
        try:
            self.conn = await h2.open_connection(
                self.sink, self.host, self.port, self.ssl, self.server_name, self.timeout
            )
        except ConnectionError as exc:
            hint = " (an HTTP port? use --protocol http)" if "closed by" in str(exc) else ""
            raise ProbeError(
                f"target {self.plan.target}: not reachable over gRPC ({exc}){hint}"
            ) from None

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def _block(self, method: str, compression: str = "none") -> bytes:
        extra = [
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", USER_AGENT),
            ("grpc-timeout", grpc_timeout_header(max(self.timeout, self.plan.timeout_s))),
        ]
        if compression != "none":
            extra += [("grpc-encoding", compression), ("grpc-accept-encoding", compression)]
        scheme = "https" if self.ssl else "http"
        path = f"/inference.GRPCInferenceService/{method}"
        return h2.encode_headers(scheme, self.plan.target, path, [*extra, *self.headers], SENSITIVE)

    async def _call(self, method: str, framed: bytes, compression: str = "none") -> bytes:
        data, encoding = await self._call_data(method, framed, compression)
        msg = grpc_unframe(data, encoding)
        if msg is None:
            raise ProbeError(f"{method}: malformed gRPC response")
        return msg

    async def _call_data(
        self, method: str, framed: bytes, compression: str = "none"
    ) -> tuple[bytes, str]:
        """One call (a request stream of one message): the response body, its encoding."""
        conn = self.conn
        if conn is None or not conn.usable:
            raise ProbeError(f"target {self.plan.target}: connection lost")
        fut: asyncio.Future[tuple[int, str, bytes, str]] = (
            asyncio.get_running_loop().create_future()
        )
        sid = conn.start_stream(self._block(method, compression), framed, True)
        self.sink.calls[sid] = [fut, None, b""]
        try:
            status, message, data, encoding = await asyncio.wait_for(
                fut, max(self.timeout, self.plan.timeout_s)
            )
        except TimeoutError:
            conn.reset_stream(sid)
            raise ProbeError(f"target {self.plan.target}: {method} timed out") from None
        if status != 0:
            text = (message or rc.status_name(status)).splitlines()[0]
            if status in (5, 12):
                raise NotFound(text, rc.status_name(status))
            raise ProbeError(text, rc.status_name(status))
        return data, encoding

    async def _unary(self, method: str, req: Any, resp_type: Any) -> Any:
        body = req.SerializeToString()
        framed = b"\x00" + struct.pack(">I", len(body)) + body
        return resp_type.FromString(await self._call(method, framed))

    async def live(self) -> bool:
        r = await self._unary(
            "ServerLive", service_pb2.ServerLiveRequest(), service_pb2.ServerLiveResponse
        )
        return bool(r.live)

    async def ready(self) -> bool:
        r = await self._unary(
            "ServerReady", service_pb2.ServerReadyRequest(), service_pb2.ServerReadyResponse
        )
        return bool(r.ready)

    async def model_ready(self, name: str, version: str) -> bool:
        r = await self._unary(
            "ModelReady",
            service_pb2.ModelReadyRequest(name=name, version=version),
            service_pb2.ModelReadyResponse,
        )
        return bool(r.ready)

    async def ready_models(self) -> list[str]:
        try:
            r = await self._unary(
                "RepositoryIndex",
                service_pb2.RepositoryIndexRequest(ready=True),
                service_pb2.RepositoryIndexResponse,
            )
        except ProbeError:
            return []
        return sorted({m.name for m in r.models})

    async def server_metadata(self) -> ServerInfo:
        m = await self._unary(
            "ServerMetadata",
            service_pb2.ServerMetadataRequest(),
            service_pb2.ServerMetadataResponse,
        )
        return {"name": m.name, "version": m.version, "extensions": list(m.extensions)}

    async def metadata(
        self, name: str, version: str
    ) -> tuple[str, tuple[str, ...], tuple[Tensor, ...], tuple[str, ...]]:
        m = await self._unary(
            "ModelMetadata",
            service_pb2.ModelMetadataRequest(name=name, version=version),
            service_pb2.ModelMetadataResponse,
        )
        return (
            m.name,
            tuple(m.versions),
            tuple((t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in m.inputs),
            tuple(t.name for t in m.outputs),
        )

    async def config(self, name: str, version: str) -> dict[str, Any]:
        from google.protobuf.json_format import MessageToDict

        try:
            c = await self._unary(
                "ModelConfig",
                service_pb2.ModelConfigRequest(name=name, version=version),
                service_pb2.ModelConfigResponse,
            )
        except NotFound:  # not Triton: KServe v2 has no model config
            return {}
        out: dict[str, Any] = MessageToDict(c.config, preserving_proto_field_name=True)
        return out

    async def infer(self, wire: Wire) -> str:
        try:
            msg = await self._call("ModelInfer", wire.body, self.plan.compression)
        except ProbeError as exc:
            return str(exc)
        if not check_response(msg, wire.expected_outputs):
            return "probe response lacks its outputs"
        return ""

    async def stream_infer(self, wire: Wire) -> str:
        """One request on a ModelStreamInfer stream, half-closed at once: a server with
        the method answers it and ends the stream."""
        try:
            msg = await self._call("ModelStreamInfer", grpc_frame(wire.msg, "none"))
        except ProbeError as exc:
            if exc.code == "UNIMPLEMENTED":
                return f"the server does not implement ModelStreamInfer ({exc})"
            return str(exc)
        try:
            r = service_pb2.ModelStreamInferResponse.FromString(msg)
        except Exception:  # protobuf's DecodeError and friends
            return "ModelStreamInfer answered with a malformed response"
        if r.error_message:
            if _is_plain_infer_response(msg):  # e.g. MLServer's streaming endpoint
                return (
                    "the server's ModelStreamInfer is not Triton's (it answers plain "
                    "ModelInferResponse messages, not ModelStreamInferResponse)"
                )
            return f"ModelStreamInfer answered an error: {r.error_message.splitlines()[0]}"
        if len(r.infer_response.outputs) < wire.expected_outputs:
            return "ModelStreamInfer's response lacks its outputs"
        return ""

    async def decoupled_infer(self, wire: Wire) -> str:
        """A decoupled model: one request on its own ModelStreamInfer call, read to its
        final response (volley/wire/stream.py)."""
        body = stream_request(wire.msg, 1, request_params(self.plan.stream.parameters))
        framed = b"\x00" + struct.pack(">I", len(body)) + body
        try:
            data, _ = await self._call_data("ModelStreamInfer", framed)
        except ProbeError as exc:
            return str(exc)
        pos, final = 0, False
        while len(data) - pos >= 5:
            (ln,) = struct.unpack_from(">I", data, pos + 1)
            r = parse_stream_response(data[pos + 5 : pos + 5 + ln], self.plan.stream.token_output)
            pos += 5 + ln
            if r is None:
                return "malformed stream response"
            if r.error:
                return r.error.splitlines()[0] if r.error.strip() else "error response"
            if r.data and r.outputs < wire.expected_outputs:
                return "probe response lacks its outputs"
            final = final or r.final
        return "" if final else "the stream ended without a final response"

    async def statistics(self, name: str = "", version: str = "") -> Snapshot:
        r = await self._unary(
            "ModelStatistics",
            service_pb2.ModelStatisticsRequest(name=name, version=version),
            service_pb2.ModelStatisticsResponse,
        )
        return parse(r)


def _is_plain_infer_response(msg: bytes) -> bool:
    """A ModelInferResponse with outputs (its field 1, model_name, reads as a
    ModelStreamInferResponse's error_message)."""
    try:
        return bool(service_pb2.ModelInferResponse.FromString(msg).outputs)
    except Exception:  # protobuf's DecodeError
        return False


class HttpProbe(Probe):
    """KServe v2 REST over one HTTP/1.1 keep-alive connection."""

    def __init__(self, plan: Plan, timeout: float) -> None:
        self.plan = plan
        self.timeout = timeout
        self.host, self.port = target_host_port(plan)
        access = read_access(plan).here  # on the coordinator: env, files and TLS read here
        self.ssl: ssl.SSLContext | None = (
            client_ssl_context(plan.tls, access, ["http/1.1"]) if plan.tls is not None else None
        )
        self.server_name = (plan.tls.server_name if plan.tls else "") or None
        self.headers = access.headers
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


def make_probe(plan: Plan, timeout: float) -> Probe:
    if plan.protocol == "json":
        return JsonProbe(plan, timeout)
    return HttpProbe(plan, timeout) if plan.protocol == "http" else GrpcProbe(plan, timeout)
