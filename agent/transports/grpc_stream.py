"""gRPC bidirectional stream: Triton's ModelStreamInfer, one long-lived stream per
connection carrying many requests; responses are matched by the request `id`.

Stream state is keyed by (connection, stream id), never by slot alone: after a GOAWAY
the old connection drains (its stream half-closed, its requests answered there) while
the slot's fresh connection opens a stream that may carry the same id. A stream the
server never processed (refused, or above GOAWAY's last stream id) has its requests
sent again (counted in `retried`); one that ends after the server took it fails them."""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from agent.transports.base import Call
from agent.transports.grpc_unary import MAX_TRIES, GrpcUnary, UnaryConn, grpc_header_block
from volley import records as rc
from volley.plan import Plan
from volley.target import TargetAccess
from volley.wire import h2
from volley.wire.grpc import MODEL_STREAM_INFER, U32, grpc_frame
from volley.wire.h2 import HeaderInfo


class StreamState:
    """One open ModelStreamInfer call: bytes of a response message not yet complete."""

    __slots__ = ("conn", "ended", "rbuf", "sid")

    def __init__(self, conn: UnaryConn, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.rbuf = b""
        #: our side is closed (END_STREAM sent)
        self.ended = False


class StreamCall(Call):
    """One request in flight on a connection's ModelStreamInfer stream."""

    __slots__ = ("stream", "tries")

    def __init__(
        self,
        key: int,
        intended: int,
        sent: int,
        pidx: int,
        deadline: int,
        stream: StreamState,
        tries: int,
    ) -> None:
        # fields set here, not by Call.__init__: one call frame less per request
        self.key = key
        self.intended = intended
        self.sent = sent
        self.pidx = pidx
        self.deadline = deadline
        self.stream = stream
        self.tries = tries


# ---- gRPC bidirectional stream ---------------------------------------------------------
class GrpcStream(GrpcUnary):
    """ModelStreamInfer: one long-lived stream per connection, many requests on it."""

    path = MODEL_STREAM_INFER

    def setup(self, plan: Plan, access: TargetAccess) -> None:
        super().setup(plan, access)
        #: connection slot -> its current stream (None: none open)
        self.current: list[StreamState | None] = [None] * self.n_conns
        #: (connection, stream id) -> open stream, current or draining
        self.open_streams: dict[tuple[UnaryConn, int], StreamState] = {}
        #: request id -> state, in send order (ids are unique per worker)
        self.pending: dict[int, StreamCall] = {}
        self.next_id = 1
        self._in_writable = False
        # No grpc-timeout on the stream: it outlives every request on it (a server keeping
        # the per-request timeout for the whole stream ends it, and the requests then in
        # flight, every `timeout` seconds); each request's own timeout is ours to keep.
        self.hblock = grpc_header_block(plan, self.path, access, deadline=False)

    def send(self, key: int, intended: int, pidx: int) -> None:
        self._send(key, intended, pidx, 0)

    def _send(self, key: int, intended: int, pidx: int, tries: int) -> None:
        conn = self._pick()
        if conn is None:
            if self.connecting():  # a fresh connection is on its way (GOAWAY)
                self.in_flight += 1
                self.waiting.append((key, intended, pidx, tries))
                return
            self.fail_soon(key, intended, pidx, rc.UNAVAILABLE)
            return
        self.in_flight += 1
        self._send_on(conn, key, intended, pidx, tries)

    def _send_on(self, conn: UnaryConn, key: int, intended: int, pidx: int, tries: int) -> None:
        """Send on `conn`'s stream (opened first if needed); in_flight already counts it."""
        stream = self._stream_for(conn)
        if stream is None:
            self.in_flight -= 1
            self.fail_soon(key, intended, pidx, rc.RESOURCE_EXHAUSTED)
            return
        rid = self.next_id
        self.next_id = rid + 1
        idb = b"%d" % rid
        msg = self.wires[pidx].msg + b"\x1a" + bytes((len(idb),)) + idb  # field 3: id
        sent = self.clock() - self.start
        conn.send_data(stream.sid, grpc_frame(msg, "none"))
        self.pending[rid] = StreamCall(
            key, intended, sent, pidx, sent + self.timeout_ns, stream, tries + 1
        )

    def _stream_for(self, conn: UnaryConn) -> StreamState | None:
        """`conn`'s current ModelStreamInfer stream, opened now if it has none (None: the
        connection has no room for another stream)."""
        slot = conn.slot
        stream = self.current[slot]
        if stream is None or stream.conn is not conn or stream.sid not in conn.open:
            if not conn.has_capacity:
                return None
            sid = conn.start_stream(self.hblock, b"", False)
            stream = StreamState(conn, sid)
            self.current[slot] = stream
            self.open_streams[(conn, sid)] = stream
        return stream

    def on_data(self, conn: UnaryConn, sid: int, data: bytes, end: bool) -> None:
        stream = self.open_streams.get((conn, sid))
        if stream is None:
            return
        buf = stream.rbuf + data if stream.rbuf else data
        pos, n = 0, len(buf)
        while n - pos >= 5:
            (ln,) = U32.unpack_from(buf, pos + 1)
            if n - pos - 5 < ln:
                break
            self._response(buf[pos + 5 : pos + 5 + ln], buf[pos])
            pos += 5 + ln
        stream.rbuf = buf[pos:] if pos < n else b""
        if end:
            self._stream_over(stream, rc.INTERNAL)
        else:
            self._maybe_half_close(stream)

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
            self._finish(st, rc.BAD_RESPONSE, len(msg))
        elif r.error_message:
            self._finish(st, rc.UNKNOWN, len(msg))
        elif len(r.infer_response.outputs) < self.wires[st.pidx].expected_outputs:
            self._finish(st, rc.BAD_RESPONSE, len(msg))
        else:
            self._finish(st, rc.OK, len(msg))

    def _calls_on(self, stream: StreamState) -> list[StreamCall]:
        over = [rid for rid, st in self.pending.items() if st.stream is stream]
        return [self.pending.pop(rid) for rid in over]

    def _forget(self, stream: StreamState) -> None:
        self.open_streams.pop((stream.conn, stream.sid), None)
        slot = stream.conn.slot
        if 0 <= slot < self.n_conns and self.current[slot] is stream:
            self.current[slot] = None

    def _stream_over(self, stream: StreamState, status: int) -> None:
        """The stream ended after the server took it: its requests fail with `status`."""
        self._forget(stream)
        for st in self._calls_on(stream):
            self._finish(st, status, 0)

    def _maybe_half_close(self, stream: StreamState) -> None:
        """A draining connection's stream with nothing left to answer ends our side."""
        conn = stream.conn
        if conn.usable or stream.ended or stream.sid not in conn.open:
            return
        if any(st.stream is stream for st in self.pending.values()):
            return
        stream.ended = True
        conn.send_data(stream.sid, b"", True)

    def on_headers(self, conn: UnaryConn, sid: int, info: HeaderInfo, end: bool) -> None:
        stream = self.open_streams.get((conn, sid))
        if stream is None or not end:
            return
        status = info.grpc_status
        if status <= 0:
            status = rc.UNAVAILABLE if status == 0 else h2.http_to_grpc_status(info.http_status)
        self._stream_over(stream, status)

    def on_reset(self, conn: UnaryConn, sid: int, grpc_status: int, message: str) -> None:
        stream = self.open_streams.get((conn, sid))
        if stream is not None:
            self._stream_over(stream, grpc_status)

    def on_refused(self, conn: UnaryConn, sid: int, message: str) -> None:
        """The server never processed this stream: its requests are sent again."""
        stream = self.open_streams.get((conn, sid))
        if stream is None:
            return
        self._forget(stream)
        for st in self._calls_on(stream):
            if st.tries >= MAX_TRIES or self.closing:
                self.last_error = message
                self._finish(st, rc.UNAVAILABLE, 0)
                continue
            self.retried += 1
            self.in_flight -= 1
            self._send(st.key, st.intended, st.pidx, st.tries)

    def on_goaway(self, conn: UnaryConn) -> None:
        super().on_goaway(conn)
        for stream in [s for s in self.open_streams.values() if s.conn is conn]:
            self._maybe_half_close(stream)

    def _lost_calls(self, conn: UnaryConn) -> None:
        for stream in [s for s in self.open_streams.values() if s.conn is conn]:
            self._stream_over(stream, rc.UNAVAILABLE)

    def on_writable(self, conn: UnaryConn) -> None:
        if self._in_writable or conn.slot < 0:  # from send_data below; in its handshake
            return
        self._in_writable = True
        try:
            while self.waiting and conn.usable:
                key, intended, pidx, tries = self.waiting.popleft()
                self._send_on(conn, key, intended, pidx, tries)
        finally:
            self._in_writable = False

    def sweep(self) -> None:
        self.keepalive()
        now = self.clock() - self.start
        self._expire_waiting(now)
        expired = []
        for rid, st in self.pending.items():
            if st.deadline > now:
                break
            expired.append(rid)
        for rid in expired:
            self._finish(self.pending.pop(rid), rc.DEADLINE_EXCEEDED, 0)

    def abort_all(self, status: int) -> None:
        pending, self.pending = self.pending, {}
        for st in pending.values():
            self._finish(st, status, 0)
        for stream in list(self.open_streams.values()):
            if stream.sid in stream.conn.open:
                stream.conn.reset_stream(stream.sid, h2.CANCEL)
        self.open_streams.clear()
        self.current = [None] * self.n_conns
        super().abort_all(status)
