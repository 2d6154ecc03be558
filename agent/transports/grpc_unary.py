"""gRPC unary: one ModelInfer call (HTTP/2 stream) per request, over `connections`
HTTP/2 connections of our own client (volley/wire/h2.py).

Connection recycling as gRPC does it: a GOAWAY moves its connection to `draining`
(its open calls finish there) and a fresh connection is opened for the slot at once;
requests arriving meanwhile wait for it. A call the server never processed (its id
above GOAWAY's last stream id, or REFUSED_STREAM) is sent again with its original
intended time and counted in `retried` (at most `MAX_TRIES` sends); a call reset
after the server took it stays an error."""

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

#: Sends of one request at most (the first and transparent retries).
MAX_TRIES = 4


class UnaryCall(Call):
    """One ModelInfer call in flight: its response headers and body so far."""

    __slots__ = ("body", "head", "tries")

    def __init__(
        self, key: int, intended: int, sent: int, pidx: int, deadline: int, tries: int = 1
    ) -> None:
        # fields set here, not by Call.__init__: one call frame less per request
        self.key = key
        self.intended = intended
        self.sent = sent
        self.pidx = pidx
        self.deadline = deadline
        self.head: HeaderInfo | None = None
        self.body = b""
        self.tries = tries


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
        #: connections that received GOAWAY and were replaced, until their calls end
        self.draining: list[UnaryConn] = []
        #: slots that have had a connection (a new one there is a reconnect)
        self.had_conn = [False] * self.n_conns
        #: requests waiting for stream capacity (peer's MAX_CONCURRENT_STREAMS) or for a
        #: connection being opened: (key, intended, pidx, sends so far)
        self.waiting: collections.deque[tuple[int, int, int, int]] = collections.deque()
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
        if old is not None and old.state is h2.ConnState.DRAINING and old.open:
            self.draining.append(old)
        if self.had_conn[slot]:
            self.reconnects += 1
        self.had_conn[slot] = True
        self.conns[slot] = conn
        if self.waiting:
            self.on_writable(conn)

    def connect_failed(self) -> None:
        """Requests that waited for a connection fail when none is left to carry them."""
        if self.waiting and not self.connecting() and not self._any_usable():
            self._fail_waiting()

    def _any_usable(self) -> bool:
        return any(c is not None and c.usable for c in self.conns)

    def _fail_waiting(self) -> None:
        waiting, self.waiting = self.waiting, collections.deque()
        for key, intended, pidx, _ in waiting:
            self.in_flight -= 1
            self.fail_soon(key, intended, pidx, rc.UNAVAILABLE)
    def cork(self) -> None:
        for c in self.conns:
            if c is not None:
                c.cork()

    def uncork(self) -> None:
        # draining ones too: a connection corked in this wake-up is written out even if
        # it was moved to `draining` since
        for c in [*self.conns, *self.draining]:
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
            if self.connecting():  # a connection is on its way (GOAWAY, first connect)
                self.in_flight += 1
                self.waiting.append((key, intended, pidx, 0))
                return
            self.fail_soon(key, intended, pidx, rc.UNAVAILABLE)
            return
        if not conn.has_capacity or self.waiting:
            self.in_flight += 1
            self.waiting.append((key, intended, pidx, 0))
            return
        self.in_flight += 1
        self._start(conn, key, intended, pidx, 0)

    def _start(self, conn: UnaryConn, key: int, intended: int, pidx: int, tries: int) -> None:
        sent = self.clock() - self.start
        sid = conn.start_stream(self.hblock, self.wires[pidx].body, True)
        conn.streams[sid] = UnaryCall(key, intended, sent, pidx, sent + self.timeout_ns, tries + 1)

    def _resend(self, st: UnaryCall, message: str) -> None:
        """A call the server never processed: sent again (still in flight, same intended
        time), or UNAVAILABLE after MAX_TRIES sends or with no connection to carry it."""
        if st.tries >= MAX_TRIES or self.closing:
            self.last_error = message
            self._finish(st, rc.UNAVAILABLE, 0)
            return
        self.retried += 1
        conn = self._pick()
        if conn is not None and conn.has_capacity and not self.waiting:
            self._start(conn, st.key, st.intended, st.pidx, st.tries)
        elif conn is not None or self.connecting():
            self.waiting.append((st.key, st.intended, st.pidx, st.tries))
        else:
            self.last_error = message
            self._finish(st, rc.UNAVAILABLE, 0)

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

    def on_refused(self, conn: UnaryConn, sid: int, message: str) -> None:
        st = conn.streams.pop(sid, None)
        if st is not None:
            self._resend(st, message)

    def on_goaway(self, conn: UnaryConn) -> None:
        """New requests go to a fresh connection, opened now."""
        slot = conn.slot
        if 0 <= slot < self.n_conns and self.conns[slot] is conn:
            self._next_try[slot] = 0.0  # a drained connection is no failure: no back-off
            self._want_connect(slot)

    def on_connection_lost(self, conn: UnaryConn, message: str) -> None:
        slot = conn.slot
        if 0 <= slot < self.n_conns and self.conns[slot] is conn:
            self.conns[slot] = None
        if conn in self.draining:
            self.draining.remove(conn)
        if message != "closed":
            self.last_error = message
        streams = list(conn.streams.values())
        conn.streams.clear()
        for st in streams:  # taken by the server, then lost: errors
            self._finish(st, rc.UNAVAILABLE, 0)
        if self.waiting and not self.closing and not self._any_usable():
            if conn.goaways and 0 <= slot < self.n_conns:
                self._want_connect(slot)
            if not self.connecting():
                self._fail_waiting()

    def on_writable(self, conn: UnaryConn) -> None:
        if conn.slot < 0:  # still in its handshake: connect_slot hands it the waiting
            return
        while self.waiting and conn.usable and conn.has_capacity:
            key, intended, pidx, tries = self.waiting.popleft()
            self._start(conn, key, intended, pidx, tries)

    # ---- timeouts and shutdown ---------------------------------------------------------
    def sweep(self) -> None:
        now = self.clock() - self.start
        while self.waiting and self.waiting[0][1] + self.timeout_ns <= now:
            key, intended, pidx, _ = self.waiting.popleft()
            self.in_flight -= 1
            self.fail_soon(key, intended, pidx, rc.DEADLINE_EXCEEDED)
        for conn in [*self.conns, *self.draining]:
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
        for conn in [*self.conns, *self.draining]:
            if conn is None:
                continue
            streams = list(conn.streams.items())
            conn.streams.clear()
            for sid, st in streams:
                conn.reset_stream(sid, h2.CANCEL)
                self._finish(st, status, 0)
        waiting, self.waiting = self.waiting, collections.deque()
        for key, intended, pidx, _ in waiting:
            self.in_flight -= 1
            self.complete(key, intended, -1, -1, rc.NOT_SENT, pidx, 0)

    async def close(self) -> None:
        self.closing = True
        for d in self.draining:
            d.close()
        self.draining.clear()
        for i, c in enumerate(self.conns):
            if c is not None:
                c.close()
                self.conns[i] = None
