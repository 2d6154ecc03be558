"""gRPC unary: one ModelInfer call (HTTP/2 stream) per request, over `connections`
HTTP/2 connections of our own client (volley/wire/h2.py)."""

from __future__ import annotations

import collections

from agent.transports.base import Call, Clock, Complete, Transport
from volley import records as rc
from volley.plan import Plan
from volley.request import check_response
from volley.target import SENSITIVE, TargetAccess
from volley.wire import h2
from volley.wire.grpc import (
    MODEL_INFER,
    USER_AGENT,
    grpc_timeout_header,
    grpc_unframe,
)
from volley.wire.h2 import Connection, HeaderInfo
from volley.wire.payloads import Payloads


class UnaryCall(Call):
    """One ModelInfer call in flight: its response headers and body so far."""

    __slots__ = ("body", "head")

    def __init__(self, key: int, intended: int, sent: int, pidx: int, deadline: int) -> None:
        # fields set here, not by Call.__init__: one call frame less per request
        self.key = key
        self.intended = intended
        self.sent = sent
        self.pidx = pidx
        self.deadline = deadline
        self.head: HeaderInfo | None = None
        self.body = b""


#: A connection of this transport: its streams' state is a `UnaryCall`.
UnaryConn = Connection[UnaryCall]


# ---- gRPC unary ------------------------------------------------------------------------
class GrpcUnary(Transport):
    """ModelInfer calls, one HTTP/2 stream each, round-robin over the connections."""

    path = MODEL_INFER

    def __init__(
        self,
        plan: Plan,
        payloads: Payloads,
        complete: Complete,
        clock: Clock,
        start_ns: int,
        access: TargetAccess,
    ) -> None:
        super().__init__(plan, payloads, complete, clock, start_ns, access)
        self.conns: list[UnaryConn | None] = [None] * self.n_conns
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
        extra += access.headers
        scheme = "https" if plan.tls is not None else "http"
        self.hblock = h2.encode_headers(scheme, plan.target, self.path, extra, SENSITIVE)

    def alpn(self) -> list[str] | None:
        return ["h2"]

    async def connect_slot(self, slot: int) -> None:
        old = self.conns[slot]
        if old is not None and old.usable:
            return
        conn = await h2.open_connection(self, self.host, self.port, self.ssl, self.server_name)
        conn.slot = slot
        if self.closing:
            conn.close()
            return
        self.conns[slot] = conn
        if self.waiting:
            self.on_writable(conn)

    def cork(self) -> None:
        for c in self.conns:
            if c is not None:
                c.cork()

    def uncork(self) -> None:
        for c in self.conns:
            if c is not None:
                c.uncork()

    def _pick(self) -> UnaryConn | None:
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

    def _start(self, conn: UnaryConn, key: int, intended: int, pidx: int) -> None:
        sent = self.clock() - self.start
        sid = conn.start_stream(self.hblock, self.wires[pidx].body, True)
        conn.streams[sid] = UnaryCall(key, intended, sent, pidx, sent + self.timeout_ns)

    # ---- StreamSink --------------------------------------------------------------------
    def on_headers(self, conn: UnaryConn, sid: int, info: HeaderInfo, end: bool) -> None:
        st = conn.streams.get(sid)
        if st is None:
            return
        if not end:
            st.head = info
            return
        del conn.streams[sid]
        head = st.head or info
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
        msg = grpc_unframe(st.body, head.encoding)
        w = self.wires[st.pidx]
        if msg is None or not check_response(msg, w.expected_outputs):
            self._finish(st, rc.BAD_RESPONSE, len(st.body))
        else:
            self._finish(st, rc.OK, len(msg))
        if self.waiting:
            self.on_writable(conn)

    def on_data(self, conn: UnaryConn, sid: int, data: bytes, end: bool) -> None:
        st = conn.streams.get(sid)
        if st is None:
            return
        st.body = st.body + data if st.body else data
        if end:  # a gRPC response always ends with trailers
            del conn.streams[sid]
            self._finish(st, rc.INTERNAL, len(st.body))

    def on_reset(self, conn: UnaryConn, sid: int, grpc_status: int, message: str) -> None:
        st = conn.streams.pop(sid, None)
        if st is not None:
            self._finish(st, grpc_status, 0)
            if self.waiting:
                self.on_writable(conn)

    def on_connection_lost(self, conn: UnaryConn, message: str) -> None:
        slot = conn.slot
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

    def on_writable(self, conn: UnaryConn) -> None:
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
                if st.deadline > now:
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
