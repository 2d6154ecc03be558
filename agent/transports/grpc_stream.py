"""gRPC bidirectional stream: Triton's ModelStreamInfer, one long-lived stream per
connection carrying many requests; responses are matched by the request `id`."""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from agent.transports.base import Call, Clock, Complete
from agent.transports.grpc_unary import GrpcUnary, UnaryConn
from volley import records as rc
from volley.plan import Plan
from volley.target import TargetAccess
from volley.wire import h2
from volley.wire.grpc import MODEL_STREAM_INFER, U32, grpc_frame
from volley.wire.h2 import HeaderInfo
from volley.wire.payloads import Payloads


class StreamCall(Call):
    """One request in flight on a connection's ModelStreamInfer stream."""

    __slots__ = ("slot",)

    def __init__(
        self, key: int, intended: int, sent: int, pidx: int, deadline: int, slot: int
    ) -> None:
        # fields set here, not by Call.__init__: one call frame less per request
        self.key = key
        self.intended = intended
        self.sent = sent
        self.pidx = pidx
        self.deadline = deadline
        self.slot = slot


# ---- gRPC bidirectional stream ---------------------------------------------------------
class GrpcStream(GrpcUnary):
    """ModelStreamInfer: one long-lived stream per connection, many requests on it."""

    path = MODEL_STREAM_INFER

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
        #: connection slot -> stream id of its open ModelStreamInfer call (0: none)
        self.sids = [0] * self.n_conns
        #: per slot: bytes of a response message not yet complete
        self.rbuf = [b""] * self.n_conns
        #: request id -> state, in send order (ids are unique per worker)
        self.pending: dict[int, StreamCall] = {}
        self.next_id = 1

    def send(self, key: int, intended: int, pidx: int) -> None:
        conn = self._pick()
        if conn is None:
            self.fail_soon(key, intended, pidx, rc.UNAVAILABLE)
            return
        slot = conn.slot
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
        conn.send_data(sid, grpc_frame(msg, "none"))
        self.pending[rid] = StreamCall(key, intended, sent, pidx, sent + self.timeout_ns, slot)

    def on_data(self, conn: UnaryConn, sid: int, data: bytes, end: bool) -> None:
        slot = conn.slot
        if sid != self.sids[slot]:
            return
        buf = self.rbuf[slot] + data if self.rbuf[slot] else data
        pos, n = 0, len(buf)
        while n - pos >= 5:
            (ln,) = U32.unpack_from(buf, pos + 1)
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
            self._finish(st, rc.BAD_RESPONSE, len(msg))
        elif r.error_message:
            self._finish(st, rc.UNKNOWN, len(msg))
        elif len(r.infer_response.outputs) < self.wires[st.pidx].expected_outputs:
            self._finish(st, rc.BAD_RESPONSE, len(msg))
        else:
            self._finish(st, rc.OK, len(msg))

    def _stream_over(self, slot: int, status: int) -> None:
        self.sids[slot] = 0
        self.rbuf[slot] = b""
        over = [rid for rid, st in self.pending.items() if st.slot == slot]
        for rid in over:
            self._finish(self.pending.pop(rid), status, 0)

    def on_headers(self, conn: UnaryConn, sid: int, info: HeaderInfo, end: bool) -> None:
        slot = conn.slot
        if sid != self.sids[slot] or not end:
            return
        status = info.grpc_status
        if status <= 0:
            status = rc.UNAVAILABLE if status == 0 else h2.http_to_grpc_status(info.http_status)
        self._stream_over(slot, status)

    def on_reset(self, conn: UnaryConn, sid: int, grpc_status: int, message: str) -> None:
        slot = conn.slot
        if sid == self.sids[slot]:
            self._stream_over(slot, grpc_status)

    def on_connection_lost(self, conn: UnaryConn, message: str) -> None:
        slot = conn.slot
        if 0 <= slot < self.n_conns and self.conns[slot] is conn:
            self.conns[slot] = None
            if message != "closed":
                self.last_error = message
            self._stream_over(slot, rc.UNAVAILABLE)

    def on_writable(self, conn: UnaryConn) -> None:
        pass

    def sweep(self) -> None:
        now = self.clock() - self.start
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
        for slot, conn in enumerate(self.conns):
            sid = self.sids[slot]
            if conn is not None and sid and sid in conn.open:
                conn.reset_stream(sid, h2.CANCEL)
            self.sids[slot] = 0
