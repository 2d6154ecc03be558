"""Transports: how one worker's requests reach the target, built from the plan.

- `GrpcUnary`: one ModelInfer call (HTTP/2 stream) per request, on `connections`
  HTTP/2 connections (agent/h2.py).
- `GrpcStream`: Triton's bidirectional ModelStreamInfer, one long-lived stream per
  connection carrying many requests; responses are matched by the request `id`.
- `Http`: KServe v2 REST with the binary tensor extension over HTTP/1.1 keep-alive
  connections (agent/http1.py), one request at a time per connection.

The worker calls `send(key, intended, pidx)` at each arrival; when the request is over
(response checked, error, reset or timed out) the transport calls
`complete(key, intended, sent, done, status, pidx, resp_bytes)` from the event loop.
No task, future or timer is made per request: state is one small list per request in
flight, and timeouts are found by a periodic `sweep()` over in-flight requests in
send order (all have the same timeout, so the oldest are checked first).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gzip
import logging
import ssl
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from agent import h2
from agent.h2 import H2Connection, HeaderInfo
from volley import records as rc
from volley.mix import ModelMix
from volley.plan import Plan, PlanError, plan_models
from volley.request import RequestPool, build_plan_pool, check_response, http_infer_body
from volley.target import SENSITIVE, client_ssl_context, resolve_headers, target_host_port
from volley.version import __version__

log = logging.getLogger("volley.agent.transport")

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
USER_AGENT = f"volley/{__version__}"

#: complete(key, intended, sent, done, status, pidx, resp_bytes)
Complete = Callable[[int, int, int, int, int, int, int], None]
Clock = Callable[[], int]


@dataclass(frozen=True)
class Wire:
    """One distinct request, ready for the wire, and what the records say about it."""

    msg: bytes  #: serialized ModelInferRequest
    body: bytes  #: what goes on the wire: gRPC-framed message or HTTP request body
    req_bytes: int
    shape_id: int
    batch_size: int
    model_id: int
    expected_outputs: int
    #: HTTP: the request head (request line and headers) for this body
    head: bytes = b""


@dataclass
class Payloads:
    """Every distinct request of a worker, grouped by model."""

    wires: list[Wire]
    shapes: list[str]
    #: model id -> (first index in wires, count)
    ranges: list[tuple[int, int]]
    mix: ModelMix
    #: model id -> its pool: picks a payload, weighted, from the seed and the index
    pools: list[RequestPool]

    def pick(self, index: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Payload index for each arrival index of the global schedule: the model from the
        mix, then the payload from that model's pool (both depend only on the seed and
        the index, so a request carries the same payload however the schedule is split)."""
        if len(self.ranges) == 1:
            first: np.ndarray[Any, Any] = self.ranges[0][0] + self.pools[0].pick_many(index)
            return first
        model = self.mix.pick(index)
        out = np.empty(len(index), np.int64)
        for m, (start, _count) in enumerate(self.ranges):
            mask = model == m
            if mask.any():
                out[mask] = start + self.pools[m].pick_many(index[mask])
        return out

    def pick_one(self, index: int) -> int:
        return int(self.pick(np.asarray([index], np.int64))[0])


def grpc_frame(msg: bytes, compression: str) -> bytes:
    if compression == "gzip":
        data = gzip.compress(msg, compresslevel=6, mtime=0)
        return b"\x01" + struct.pack(">I", len(data)) + data
    if compression == "deflate":
        data = zlib.compress(msg, 6)
        return b"\x01" + struct.pack(">I", len(data)) + data
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def build_payloads(plan: Plan, seed: int = 0) -> Payloads:
    """Build and serialize every model's request pool once, framed for the plan's protocol.

    Pools come from the plan alone (the plan's seed; `seed` is ignored and kept for
    callers), so every worker of every agent builds the same ones."""
    del seed
    wires: list[Wire] = []
    shapes: list[str] = []
    ranges: list[tuple[int, int]] = []
    pools: list[RequestPool] = []
    models = plan_models(plan)
    for model_id, m in enumerate(models):
        one = dataclasses.replace(
            plan,
            model=m.name,
            model_version=m.version,
            inputs=m.inputs,
            outputs=m.outputs,
            max_batch_size=m.max_batch_size,
            models=(),
        )
        pool = build_plan_pool(one)
        pools.append(pool)
        offset = len(shapes)
        shapes.extend(pool.shapes)
        first = len(wires)
        for p in pool.payloads:
            if plan.protocol == "http":
                body, json_len = http_infer_body(p.body)
                wire_body = _http_encode(body, plan.compression)
                head = _http_head(plan, m.name, m.version, json_len)
                head += b"Content-Length: %d\r\n\r\n" % len(wire_body)
                wires.append(
                    Wire(
                        p.body,
                        wire_body,
                        len(body),
                        offset + p.shape_id,
                        p.batch_size,
                        model_id,
                        len(m.outputs),
                        head,
                    )
                )
            else:
                framed = grpc_frame(p.body, plan.compression)
                wires.append(
                    Wire(
                        p.body,
                        framed,
                        p.req_bytes,
                        offset + p.shape_id,
                        p.batch_size,
                        model_id,
                        len(m.outputs),
                    )
                )
        ranges.append((first, len(wires) - first))
    mix = ModelMix([m.weight for m in models], plan.seed)
    return Payloads(wires, shapes, ranges, mix, pools)


def _http_encode(body: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(body, compresslevel=6, mtime=0)
    if compression == "deflate":
        return zlib.compress(body, 6)
    return body


def _http_head(plan: Plan, model: str, version: str, json_len: int) -> bytes:
    """Request line and headers without Content-Length (added per body)."""
    from urllib.parse import quote

    path = f"/v2/models/{quote(model, safe='')}"
    if version:
        path += f"/versions/{quote(version, safe='')}"
    path += "/infer"
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {plan.target}",
        f"User-Agent: {USER_AGENT}",
        "Content-Type: application/octet-stream",
        f"Inference-Header-Content-Length: {json_len}",
    ]
    if plan.compression != "none":
        lines.append(f"Content-Encoding: {plan.compression}")
        lines.append(f"Accept-Encoding: {plan.compression}")
    for name, value in resolve_headers(plan):
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def grpc_timeout_header(timeout_s: float) -> str:
    """grpc-timeout value: at most 8 digits and a unit."""
    ms = max(1, int(timeout_s * 1000))
    if ms < 10**8:
        return f"{ms}m"
    return f"{min(int(timeout_s), 10**8 - 1)}S"


# ---- base ------------------------------------------------------------------------------
class Transport:
    """Common plumbing: connections slots, reconnects with back-off, completions."""

    def __init__(
        self,
        plan: Plan,
        payloads: Payloads,
        complete: Complete,
        clock: Clock,
        start_ns: int,
    ) -> None:
        self.plan = plan
        self.wires = payloads.wires
        self.complete = complete
        self.clock = clock
        self.start = start_ns
        self.timeout_ns = int(plan.timeout_s * 1e9)
        self.host, self.port = target_host_port(plan)
        self.ssl: ssl.SSLContext | None = None
        if plan.tls is not None:
            self.ssl = client_ssl_context(plan.tls, self.alpn())
        self.server_name = (plan.tls.server_name if plan.tls else "") or None
        self.n_conns = plan.connections
        self.in_flight = 0
        self.closing = False
        self.loop = asyncio.get_running_loop()
        self._connecting: set[int] = set()
        self._next_try = [0.0] * self.n_conns
        self._backoff = [0.05] * self.n_conns
        #: short reason of the last connection failure (for the worker's report)
        self.last_error = ""
        self.errors_logged = 0

    def alpn(self) -> list[str] | None:
        return None

    def now(self) -> int:
        return self.clock() - self.start

    def fail_soon(self, key: int, intended: int, pidx: int, status: int) -> None:
        """A request that could not be sent: completed on the next loop turn (so a closed
        loop never recurses), sent = done = now."""
        t = self.clock() - self.start
        self.in_flight += 1
        self.loop.call_soon(self._fail_cb, key, intended, t, status, pidx)

    def _fail_cb(self, key: int, intended: int, t: int, status: int, pidx: int) -> None:
        self.in_flight -= 1
        self.complete(key, intended, t, self.clock() - self.start, status, pidx, 0)

    def _want_connect(self, slot: int) -> None:
        if self.closing or slot in self._connecting:
            return
        if self.loop.time() < self._next_try[slot]:
            return
        self._connecting.add(slot)
        self.loop.create_task(self._connect(slot))

    async def _connect(self, slot: int) -> None:
        try:
            await self.connect_slot(slot)
            self._backoff[slot] = 0.05
        except (ConnectionError, OSError) as exc:
            self.last_error = str(exc)
            if self.errors_logged < 5:
                self.errors_logged += 1
                log.warning("connection to %s failed: %s", self.plan.target, exc)
            self._next_try[slot] = self.loop.time() + self._backoff[slot]
            self._backoff[slot] = min(self._backoff[slot] * 2, 1.0)
        finally:
            self._connecting.discard(slot)

    async def open(self) -> None:
        """Open every connection (failures are retried as requests come)."""
        await asyncio.gather(*(self._connect(i) for i in range(self.n_conns)))

    # overridden
    async def connect_slot(self, slot: int) -> None:
        raise NotImplementedError

    def send(self, key: int, intended: int, pidx: int) -> None:
        raise NotImplementedError

    def sweep(self) -> None:
        raise NotImplementedError

    def abort_all(self, status: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


# ---- gRPC unary ------------------------------------------------------------------------
class GrpcUnary(Transport):
    """ModelInfer calls, one HTTP/2 stream each, round-robin over the connections."""

    path = MODEL_INFER

    def __init__(
        self, plan: Plan, payloads: Payloads, complete: Complete, clock: Clock, start_ns: int
    ) -> None:
        super().__init__(plan, payloads, complete, clock, start_ns)
        self.conns: list[H2Connection | None] = [None] * self.n_conns
        self.rr = 0
        #: requests waiting for stream capacity (peer's MAX_CONCURRENT_STREAMS)
        self.waiting: collections.deque[tuple[int, int, int]] = collections.deque()
        extra = [
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", USER_AGENT),
            ("grpc-timeout", grpc_timeout_header(plan.timeout_s)),
        ]
        if plan.compression != "none":
            extra.append(("grpc-encoding", plan.compression))
            extra.append(("grpc-accept-encoding", f"{plan.compression},identity"))
        extra += resolve_headers(plan)
        scheme = "https" if plan.tls is not None else "http"
        self.hblock = h2.encode_headers(scheme, plan.target, self.path, extra, SENSITIVE)

    def alpn(self) -> list[str] | None:
        return ["h2"]

    async def connect_slot(self, slot: int) -> None:
        old = self.conns[slot]
        if old is not None and old.usable:
            return
        conn = await h2.open_connection(self, self.host, self.port, self.ssl, self.server_name)
        conn.slot = slot  # type: ignore[attr-defined]
        if self.closing:
            conn.close()
            return
        self.conns[slot] = conn
        if self.waiting:
            self.on_writable(conn)

    def _pick(self) -> H2Connection | None:
        n = self.n_conns
        for _ in range(n):
            i = self.rr
            self.rr = i + 1 if i + 1 < n else 0
            c = self.conns[i]
            if c is not None and c.usable:
                return c
            self._want_connect(i)
        return None

    def send(self, key: int, intended: int, pidx: int) -> None:
        conn = self._pick()
        if conn is None:
            self.fail_soon(key, intended, pidx, rc.UNAVAILABLE)
            return
        if not conn.has_capacity or self.waiting:
            self.in_flight += 1
            self.waiting.append((key, intended, pidx))
            return
        self.in_flight += 1
        self._start(conn, key, intended, pidx)

    def _start(self, conn: H2Connection, key: int, intended: int, pidx: int) -> None:
        sent = self.clock() - self.start
        sid = conn.start_stream(self.hblock, self.wires[pidx].body, True)
        conn.streams[sid] = [key, intended, sent, pidx, None, b"", sent + self.timeout_ns]

    def _finish(self, st: list[Any], status: int, resp_bytes: int) -> None:
        self.in_flight -= 1
        self.complete(st[0], st[1], st[2], self.clock() - self.start, status, st[3], resp_bytes)

    # ---- StreamSink --------------------------------------------------------------------
    def on_headers(self, conn: H2Connection, sid: int, info: HeaderInfo, end: bool) -> None:
        st = conn.streams.get(sid)
        if st is None:
            return
        if not end:
            st[4] = info
            return
        del conn.streams[sid]
        head: HeaderInfo = st[4] or info
        status = info.grpc_status
        if status < 0:
            status = (
                h2.http_to_grpc_status(head.http_status) if head.http_status != 200 else rc.UNKNOWN
            )
        if status != 0:
            self._finish(st, status, 0)
            if self.waiting:
                self.on_writable(conn)
            return
        msg = h2.grpc_unframe(st[5], head.encoding)
        w = self.wires[st[3]]
        if msg is None or not check_response(msg, w.expected_outputs):
            self._finish(st, rc.BAD_RESPONSE, len(st[5]))
        else:
            self._finish(st, rc.OK, len(msg))
        if self.waiting:
            self.on_writable(conn)

    def on_data(self, conn: H2Connection, sid: int, data: bytes, end: bool) -> None:
        st = conn.streams.get(sid)
        if st is None:
            return
        st[5] = st[5] + data if st[5] else data
        if end:  # a gRPC response always ends with trailers
            del conn.streams[sid]
            self._finish(st, rc.INTERNAL, len(st[5]))

    def on_reset(self, conn: H2Connection, sid: int, grpc_status: int, message: str) -> None:
        st = conn.streams.pop(sid, None)
        if st is not None:
            self._finish(st, grpc_status, 0)
            if self.waiting:
                self.on_writable(conn)

    def on_connection_lost(self, conn: H2Connection, message: str) -> None:
        slot: int = getattr(conn, "slot", -1)
        if 0 <= slot < self.n_conns and self.conns[slot] is conn:
            self.conns[slot] = None
        if message != "closed":
            self.last_error = message
        streams = list(conn.streams.values())
        conn.streams.clear()
        for st in streams:
            self._finish(st, rc.UNAVAILABLE, 0)
        if (
            self.waiting
            and not self.closing
            and not any(c is not None and c.usable for c in self.conns)
        ):
            waiting, self.waiting = self.waiting, collections.deque()
            for key, intended, pidx in waiting:
                self.in_flight -= 1
                self.fail_soon(key, intended, pidx, rc.UNAVAILABLE)

    def on_writable(self, conn: H2Connection) -> None:
        while self.waiting and conn.usable and conn.has_capacity:
            key, intended, pidx = self.waiting.popleft()
            self._start(conn, key, intended, pidx)

    # ---- timeouts and shutdown ---------------------------------------------------------
    def sweep(self) -> None:
        now = self.clock() - self.start
        for conn in self.conns:
            if conn is None or not conn.streams:
                continue
            expired = []
            for sid, st in conn.streams.items():
                if st[6] > now:
                    break
                expired.append(sid)
            for sid in expired:
                st = conn.streams.pop(sid)
                conn.reset_stream(sid, h2.CANCEL)
                self._finish(st, rc.DEADLINE_EXCEEDED, 0)
            if expired and self.waiting:
                self.on_writable(conn)

    def abort_all(self, status: int) -> None:
        for conn in self.conns:
            if conn is None:
                continue
            streams = list(conn.streams.items())
            conn.streams.clear()
            for sid, st in streams:
                conn.reset_stream(sid, h2.CANCEL)
                self._finish(st, status, 0)
        waiting, self.waiting = self.waiting, collections.deque()
        for key, intended, pidx in waiting:
            self.in_flight -= 1
            self.complete(key, intended, -1, -1, rc.NOT_SENT, pidx, 0)

    async def close(self) -> None:
        self.closing = True
        for i, c in enumerate(self.conns):
            if c is not None:
                c.close()
                self.conns[i] = None


# ---- gRPC bidirectional stream ---------------------------------------------------------
class GrpcStream(GrpcUnary):
    """ModelStreamInfer: one long-lived stream per connection, many requests on it."""

    path = MODEL_STREAM_INFER

    def __init__(
        self, plan: Plan, payloads: Payloads, complete: Complete, clock: Clock, start_ns: int
    ) -> None:
        super().__init__(plan, payloads, complete, clock, start_ns)
        #: connection slot -> stream id of its open ModelStreamInfer call (0: none)
        self.sids = [0] * self.n_conns
        #: per slot: bytes of a response message not yet complete
        self.rbuf = [b""] * self.n_conns
        #: request id -> state, in send order (ids are unique per worker)
        self.pending: dict[int, list[Any]] = {}
        self.next_id = 1

    def send(self, key: int, intended: int, pidx: int) -> None:
        conn = self._pick()
        if conn is None:
            self.fail_soon(key, intended, pidx, rc.UNAVAILABLE)
            return
        slot: int = conn.slot  # type: ignore[attr-defined]
        sid = self.sids[slot]
        if sid == 0 or sid not in conn.open:
            if not conn.has_capacity:
                self.fail_soon(key, intended, pidx, rc.RESOURCE_EXHAUSTED)
                return
            sid = conn.start_stream(self.hblock, b"", False)
            self.sids[slot] = sid
            self.rbuf[slot] = b""
        rid = self.next_id
        self.next_id = rid + 1
        idb = b"%d" % rid
        msg = self.wires[pidx].msg + b"\x1a" + bytes((len(idb),)) + idb  # field 3: id
        self.in_flight += 1
        sent = self.clock() - self.start
        conn.send_data(sid, b"\x00" + struct.pack(">I", len(msg)) + msg)
        self.pending[rid] = [key, intended, sent, pidx, slot, sent + self.timeout_ns]

    def _finish_p(self, st: list[Any], status: int, resp_bytes: int) -> None:
        self.in_flight -= 1
        self.complete(st[0], st[1], st[2], self.clock() - self.start, status, st[3], resp_bytes)

    def on_data(self, conn: H2Connection, sid: int, data: bytes, end: bool) -> None:
        slot: int = conn.slot  # type: ignore[attr-defined]
        if sid != self.sids[slot]:
            return
        buf = self.rbuf[slot] + data if self.rbuf[slot] else data
        pos, n = 0, len(buf)
        while n - pos >= 5:
            (ln,) = struct.unpack_from(">I", buf, pos + 1)
            if n - pos - 5 < ln:
                break
            self._response(buf[pos + 5 : pos + 5 + ln], buf[pos])
            pos += 5 + ln
        self.rbuf[slot] = buf[pos:] if pos < n else b""
        if end:
            self._stream_over(slot, rc.INTERNAL)

    def _response(self, msg: bytes, flag: int) -> None:
        try:
            if flag:
                raise ValueError("compressed stream responses are not asked for")
            r = service_pb2.ModelStreamInferResponse.FromString(msg)
            rid_text = r.infer_response.id
            rid = int(rid_text) if rid_text else 0
        except Exception:
            r, rid = None, 0
        st = self.pending.pop(rid, None)
        if st is None:
            if rid:  # a response after its request timed out
                return
            if not self.pending:
                return
            # no id (some servers omit it on errors): the oldest request gets it
            first = next(iter(self.pending))
            st = self.pending.pop(first)
        if r is None:
            self._finish_p(st, rc.BAD_RESPONSE, len(msg))
        elif r.error_message:
            self._finish_p(st, rc.UNKNOWN, len(msg))
        elif len(r.infer_response.outputs) < self.wires[st[3]].expected_outputs:
            self._finish_p(st, rc.BAD_RESPONSE, len(msg))
        else:
            self._finish_p(st, rc.OK, len(msg))

    def _stream_over(self, slot: int, status: int) -> None:
        self.sids[slot] = 0
        self.rbuf[slot] = b""
        over = [rid for rid, st in self.pending.items() if st[4] == slot]
        for rid in over:
            self._finish_p(self.pending.pop(rid), status, 0)

    def on_headers(self, conn: H2Connection, sid: int, info: HeaderInfo, end: bool) -> None:
        slot: int = conn.slot  # type: ignore[attr-defined]
        if sid != self.sids[slot] or not end:
            return
        status = info.grpc_status
        if status <= 0:
            status = rc.UNAVAILABLE if status == 0 else h2.http_to_grpc_status(info.http_status)
        self._stream_over(slot, status)

    def on_reset(self, conn: H2Connection, sid: int, grpc_status: int, message: str) -> None:
        slot: int = conn.slot  # type: ignore[attr-defined]
        if sid == self.sids[slot]:
            self._stream_over(slot, grpc_status)

    def on_connection_lost(self, conn: H2Connection, message: str) -> None:
        slot: int = getattr(conn, "slot", -1)
        if 0 <= slot < self.n_conns and self.conns[slot] is conn:
            self.conns[slot] = None
            if message != "closed":
                self.last_error = message
            self._stream_over(slot, rc.UNAVAILABLE)

    def on_writable(self, conn: H2Connection) -> None:
        pass

    def sweep(self) -> None:
        now = self.clock() - self.start
        expired = []
        for rid, st in self.pending.items():
            if st[5] > now:
                break
            expired.append(rid)
        for rid in expired:
            self._finish_p(self.pending.pop(rid), rc.DEADLINE_EXCEEDED, 0)

    def abort_all(self, status: int) -> None:
        pending, self.pending = self.pending, {}
        for st in pending.values():
            self._finish_p(st, status, 0)
        for slot, conn in enumerate(self.conns):
            sid = self.sids[slot]
            if conn is not None and sid and sid in conn.open:
                conn.reset_stream(sid, h2.CANCEL)
            self.sids[slot] = 0


def make_transport(
    plan: Plan, payloads: Payloads, complete: Complete, clock: Clock, start_ns: int
) -> Transport:
    if plan.protocol == "http":
        from agent.http1 import Http

        http: Transport = Http(plan, payloads, complete, clock, start_ns)
        return http
    if plan.transport == "stream":
        return GrpcStream(plan, payloads, complete, clock, start_ns)
    if plan.transport == "grpcio":
        from agent.grpcio_transport import GrpcioUnary

        return GrpcioUnary(plan, payloads, complete, clock, start_ns)
    if plan.protocol != "grpc":
        raise PlanError(f"protocol {plan.protocol!r} is not supported")
    return GrpcUnary(plan, payloads, complete, clock, start_ns)
