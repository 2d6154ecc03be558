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

from agent.conns import lost_silent, ping_idle
from agent.transports.base import Call, Transport
from volley import records as rc
from volley.plan import Plan
from volley.request import response_outputs
from volley.target import SENSITIVE, TargetAccess
from volley.wire import h2
from volley.wire.grpc import (
    MODEL_INFER,
    USER_AGENT,
    grpc_timeout_header,
    grpc_unframe,
)
from volley.wire.h2 import Connection, HeaderInfo

#: Sends of one request at most (the first and transparent retries).
MAX_TRIES = 4
#: `--connections`: a held connection drained sooner than this after it opened is
#: replaced after a back-off, not at once.
CHURN_S = 1.0
#: Response bodies whose output count is remembered (`OutputCounts`): at most this many,
#: each at most `SEEN_MAX_BYTES` long.
SEEN_MAX = 256
SEEN_MAX_BYTES = 4096


class OutputCounts:
    """Every response is checked (`response_outputs`), but a body byte-identical to one
    seen before has the same verdict, so its count is looked up instead of parsed again:
    a server answering the pool's few payloads sends the same few bodies over and over.
    Bounded: at most SEEN_MAX bodies of at most SEEN_MAX_BYTES (cleared when full)."""

    __slots__ = ("parsed", "seen")

    def __init__(self) -> None:
        self.seen: dict[bytes, int] = {}
        #: bodies parsed (not found in `seen`)
        self.parsed = 0

    def outputs(self, msg: bytes) -> int:
        n = self.seen.get(msg)
        if n is None:
            n = response_outputs(msg)
            self.parsed += 1
            if len(msg) <= SEEN_MAX_BYTES:
                if len(self.seen) >= SEEN_MAX:
                    self.seen.clear()
                self.seen[msg] = n
        return n


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


def grpc_header_block(plan: Plan, path: str, access: TargetAccess, deadline: bool = True) -> bytes:
    """The one HTTP/2 header block of a gRPC transport's streams, encoded once: content
    type, trailers, user agent, `grpc-timeout` (unless `deadline` is False: a stream that
    outlives any request), compression, then the plan's own headers."""
    extra = [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", USER_AGENT),
    ]
    if deadline:
        extra.append(("grpc-timeout", grpc_timeout_header(plan.timeout_s)))
    if plan.compression != "none":
        extra.append(("grpc-encoding", plan.compression))
        extra.append(("grpc-accept-encoding", f"{plan.compression},identity"))
    extra += access.headers
    scheme = "https" if plan.tls is not None else "http"
    return h2.encode_headers(scheme, plan.target, path, extra, SENSITIVE)


# ---- gRPC unary ------------------------------------------------------------------------
class GrpcUnary(Transport):
    """ModelInfer calls, one HTTP/2 stream each, round-robin over the connections."""

    path = MODEL_INFER

    def setup(self, plan: Plan, access: TargetAccess) -> None:
        super().setup(plan, access)
        self.conns: list[UnaryConn | None] = [None] * self.n_conns
        self.rr = 0
        #: connections that received GOAWAY and were replaced, until their calls end
        self.draining: list[UnaryConn] = []
        #: slots that have had a connection (a new one there is a reconnect)
        self.had_conn = [False] * self.n_conns
        #: requests waiting for stream capacity (peer's MAX_CONCURRENT_STREAMS) or for a
        #: connection being opened: (key, intended, pidx, sends so far)
        self.waiting: collections.deque[tuple[int, int, int, int]] = collections.deque()
        self.hblock = grpc_header_block(plan, self.path, access)
        self.counts = OutputCounts()
        #: when each slot's idle connection was last pinged (held connections only)
        self._pinged = [0.0] * self.n_conns
        #: when each slot's connection opened (loop time)
        self._opened_at = [0.0] * self.n_conns
        #: back-off of each slot whose connections are drained as soon as they open
        self._churn = [0.0] * self.n_conns

    def alpn(self) -> list[str] | None:
        return ["h2"]

    async def connect_slot(self, slot: int) -> None:
        old = self.conns[slot]
        if old is not None and old.usable:
            return
        t0 = self.clock()
        try:
            conn = await h2.open_connection(self, self.host, self.port, self.ssl, self.server_name)
        except (ConnectionError, OSError) as exc:
            self.connect_done(t0, exc)
            raise
        self.connect_done(t0, None)
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
        self._opened_at[slot] = self.loop.time()
        if self.waiting:
            self.on_writable(conn)

    def connect_failed(self) -> None:
        """Requests that waited for a connection fail when none is left to carry them."""
        if self.waiting and not self.connecting() and not self._any_usable():
            self._fail_waiting()

    def open_count(self) -> int:
        return sum(1 for c in self.conns if c is not None and c.usable)

    def keepalive(self) -> None:
        """Held connections (`--connections`): PING the idle ones (agent/conns.py), close
        the silent ones, and open again a slot left empty once its back-off is over."""
        if self.fixed:
            ping_idle(self.conns, self.loop.time(), self._pinged)
            for i, c in enumerate(self.conns):
                if c is None:
                    self._want_connect(i)

    def tally_lost(self, conn: UnaryConn, message: str) -> None:
        """A connection ended: one the server reset or closed without a GOAWAY counts in
        `resets_received`; one gone silent (PING unanswered) is a `timeout` connection
        error, replaced after the slot's back-off; a held one (`--connections`) is opened
        again (at once, but for that back-off)."""
        if self.closing or conn.slot < 0 or message == "closed":
            return
        slot = conn.slot
        if conn.silent:
            lost_silent(self, slot)
        elif not conn.goaways:
            self.figures.resets_received += 1
        if self.fixed and slot < self.n_conns and self.conns[slot] is None:
            self._want_connect(slot)

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
        if msg is None or self.counts.outputs(msg) < w.expected_outputs:
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
        self.figures.goaways_received += 1
        if 0 <= slot < self.n_conns and self.conns[slot] is conn:
            now = self.loop.time()
            if self.fixed and now - self._opened_at[slot] < CHURN_S:
                # a held connection drained right after it opened (a proxy out of
                # connections reclaims idle ones): back off (doubling to 1 s), no churn
                wait = self._churn[slot] = min(max(self._churn[slot] * 2, 0.05), 1.0)
                self._next_try[slot] = now + wait
                return
            self._churn[slot] = 0.0
            self._next_try[slot] = 0.0  # a drained connection is no failure: no back-off
            self._want_connect(slot)

    def on_connection_lost(self, conn: UnaryConn, message: str) -> None:
        slot = conn.slot
        if 0 <= slot < self.n_conns and self.conns[slot] is conn:
            self.conns[slot] = None
        self.tally_lost(conn, message)
        if conn in self.draining:
            self.draining.remove(conn)
        if message != "closed":
            self.last_error = message
        self._lost_calls(conn)
        if self.waiting and not self.closing and not self._any_usable():
            if conn.goaways and 0 <= slot < self.n_conns:
                self._want_connect(slot)
            if not self.connecting():
                self._fail_waiting()

    def _lost_calls(self, conn: UnaryConn) -> None:
        """`conn` is gone: its calls were taken by the server, then lost (errors)."""
        streams = list(conn.streams.values())
        conn.streams.clear()
        for st in streams:
            self._finish(st, rc.UNAVAILABLE, 0)

    def on_writable(self, conn: UnaryConn) -> None:
        if conn.slot < 0:  # still in its handshake: connect_slot hands it the waiting
            return
        while self.waiting and conn.usable and conn.has_capacity:
            key, intended, pidx, tries = self.waiting.popleft()
            self._start(conn, key, intended, pidx, tries)

    # ---- timeouts and shutdown ---------------------------------------------------------
    def _expire_waiting(self, now: int) -> None:
        """Requests that waited for a connection or capacity past their timeout."""
        while self.waiting and self.waiting[0][1] + self.timeout_ns <= now:
            key, intended, pidx, _ = self.waiting.popleft()
            self.in_flight -= 1
            self.fail_soon(key, intended, pidx, rc.DEADLINE_EXCEEDED)

    def sweep(self) -> None:
        self.keepalive()
        now = self.clock() - self.start
        self._expire_waiting(now)
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
