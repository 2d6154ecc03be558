"""gRPC streaming for decoupled models: ModelStreamInfer, many requests multiplexed on
one long-lived stream per connection, each answered by a stream of responses.

A request is over when its response with `triton_final_response` comes (asked for with
`triton_enable_empty_final_response`, volley/wire/stream.py), or an error response for
it, or when the stream ends first (STREAM_CUT for a request that had responses, else
the stream's status). Every response with data is a token step: its arrival time gives
the first/last response clocks and the gaps between responses, noted for the worker's
record (`note_stream`) just before `complete`. A request past the plan's timeout is
recorded DEADLINE_EXCEEDED at once and its later responses are dropped; Triton's stream
has no way to cancel one request without ending every other request on the stream, so
the server may still finish it (the stream is not reset for it).
"""

from __future__ import annotations

from typing import cast

from agent.transports.base import Call
from agent.transports.grpc_stream import GrpcStream, StreamCall, StreamState
from agent.transports.grpc_unary import UnaryConn, grpc_header_block
from volley import records as rc
from volley.plan import Plan
from volley.target import TargetAccess
from volley.wire.grpc import U32, grpc_frame
from volley.wire.stream import parse_stream_response, request_params, stream_request


class DecoupledCall(StreamCall):
    """A streaming request in flight: its responses so far."""

    __slots__ = ("first", "gaps", "last", "nbytes", "responses", "rid", "tokens")

    def __init__(
        self,
        key: int,
        intended: int,
        sent: int,
        pidx: int,
        deadline: int,
        stream: StreamState,
        tries: int,
        rid: int,
    ) -> None:
        super().__init__(key, intended, sent, pidx, deadline, stream, tries)
        self.rid = rid
        self.first = -1
        self.last = -1
        self.responses = 0
        self.tokens = 0
        self.nbytes = 0
        self.gaps: list[int] = []


class GrpcDecoupled(GrpcStream):
    """ModelStreamInfer for decoupled models: N responses per request."""

    def setup(self, plan: Plan, access: TargetAccess) -> None:
        super().setup(plan, access)
        # The stream outlives any request: no grpc-timeout on it (timeouts are per
        # request, found by `sweep`); compression is refused with decoupled models.
        self.hblock = grpc_header_block(plan, self.path, access, deadline=False)
        self.params = request_params(plan.stream.parameters)

    def _send_on(self, conn: UnaryConn, key: int, intended: int, pidx: int, tries: int) -> None:
        """Send on `conn`'s stream (GrpcStream's, with the final-response flag asked for and
        the plan's request parameters); in_flight already counts it."""
        stream = self._stream_for(conn)
        if stream is None:
            self.in_flight -= 1
            self.fail_soon(key, intended, pidx, rc.RESOURCE_EXHAUSTED)
            return
        rid = self.next_id
        self.next_id = rid + 1
        msg = stream_request(self.wires[pidx].msg, rid, self.params)
        sent = self.clock() - self.start
        conn.send_data(stream.sid, grpc_frame(msg, "none"))
        self.pending[rid] = DecoupledCall(
            key, intended, sent, pidx, sent + self.timeout_ns, stream, tries + 1, rid
        )

    def on_data(self, conn: UnaryConn, sid: int, data: bytes, end: bool) -> None:
        stream = self.open_streams.get((conn, sid))
        if stream is None:
            return
        now = self.clock() - self.start  # one arrival time for the responses of this read
        buf = stream.rbuf + data if stream.rbuf else data
        pos, n = 0, len(buf)
        while n - pos >= 5:
            (ln,) = U32.unpack_from(buf, pos + 1)
            if n - pos - 5 < ln:
                break
            self._stream_response(buf[pos + 5 : pos + 5 + ln], buf[pos], now)
            pos += 5 + ln
        stream.rbuf = buf[pos:] if pos < n else b""
        if end:
            self._stream_over(stream, rc.INTERNAL)
        else:
            self._maybe_half_close(stream)

    def _stream_response(self, msg: bytes, flag: int, now: int) -> None:
        r = None if flag else parse_stream_response(msg, self.token_output)
        pending = self.pending
        found = pending.get(r.rid) if r is not None and r.rid else None
        if found is None:
            if r is not None and r.rid:
                return  # a response after its request timed out
            if not pending:
                return
            # no usable id (a malformed answer, or an error some servers send without
            # one): it ends the oldest request, which is all one can say of it
            found = pending[next(iter(pending))]
        st = cast(DecoupledCall, found)
        if r is None:
            self._end(st, rc.BAD_RESPONSE, len(msg), now)
            return
        st.nbytes += len(msg)
        if r.error:
            self._end(st, rc.STREAM_ERROR if st.responses else rc.UNKNOWN, 0, now)
            return
        if r.data:
            if r.outputs < self.wires[st.pidx].expected_outputs:
                self._end(st, rc.BAD_RESPONSE, 0, now)
                return
            if st.responses:
                st.gaps.append(now - st.last)
            else:
                st.first = now
            st.last = now
            st.responses += 1
            st.tokens += r.tokens
        if r.final:
            self._end(st, rc.OK, 0, now)

    def _end(self, st: DecoupledCall, status: int, extra_bytes: int, done: int) -> None:
        self.pending.pop(st.rid, None)
        self._report(st, status, st.nbytes + extra_bytes, done)

    def _report(self, st: DecoupledCall, status: int, nbytes: int, done: int) -> None:
        self.note_stream(st.first, st.last, st.responses, st.tokens, st.gaps)
        self.in_flight -= 1
        self.complete(st.key, st.intended, st.sent, done, status, st.pidx, nbytes)

    def _finish(self, call: Call, status: int, resp_bytes: int) -> None:
        """A request ended by the stream or the sweep (not by a response of its own)."""
        call = cast(DecoupledCall, call)
        if status != rc.DEADLINE_EXCEEDED and call.responses:
            status = rc.STREAM_CUT  # it had begun: the stream ended under it
        self._report(call, status, call.nbytes, self.clock() - self.start)
