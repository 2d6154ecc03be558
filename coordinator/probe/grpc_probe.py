"""`GrpcProbe`: KServe v2 gRPC over the agents' HTTP/2 client (volley/wire/h2.py), so
preflight checks exactly the wire the load will use (TLS and ALPN, headers, compression).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from tritonclient.grpc import service_pb2

from coordinator.probe.base import NotFound, Probe, ProbeError, Tensor
from coordinator.stats.counters import Snapshot, parse
from coordinator.stats.documents import ServerInfo
from volley import records as rc
from volley.plan import Plan
from volley.request import check_response
from volley.target import SENSITIVE
from volley.wire import h2
from volley.wire.grpc import USER_AGENT, grpc_frame, grpc_timeout_header, grpc_unframe
from volley.wire.h2 import H2Connection, HeaderInfo
from volley.wire.payloads import Wire
from volley.wire.stream import (
    parse_stream_response,
    request_params,
    stream_request,
)


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
    alpn = ("h2",)

    def __init__(self, plan: Plan, timeout: float) -> None:
        super().__init__(plan, timeout)
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
