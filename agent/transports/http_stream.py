"""HTTP streaming for decoupled models: Triton's generate extension over HTTP/1.1.

Each request is one prebuilt `POST /v2/models/NAME/generate_stream` (a JSON object of
inputs, volley/wire/payloads.py), on an idle keep-alive connection as `Http` does. The
answer is a chunked `text/event-stream`: every event with outputs is a response (a token
step: its arrival gives the first/last response clocks and the gaps), an event with an
`error` ends the request (STREAM_ERROR after responses, else UNKNOWN), and the body's
last chunk ends it OK. A non-200 answer is read whole and recorded as HTTP_<status>.
A request past its timeout closes its connection (which cancels it in Triton).
"""

from __future__ import annotations

from agent.transports.base import Call
from agent.transports.http import H1Call, H1Conn, Http
from volley import records as rc
from volley.wire.stream import SseReader, parse_sse_event

#: what a request that had begun is recorded as when its connection ends under it
_CUT = frozenset((rc.UNAVAILABLE, rc.CANCELLED, rc.INTERNAL))


class GenerateCall(H1Call):
    """A generate_stream request in flight: its responses so far."""

    __slots__ = ("first", "gaps", "last", "nbytes", "responses", "tokens")

    def __init__(
        self, key: int, intended: int, sent: int, pidx: int, deadline: int, tries: int
    ) -> None:
        super().__init__(key, intended, sent, pidx, deadline, tries)
        self.first = -1
        self.last = -1
        self.responses = 0
        self.tokens = 0
        self.nbytes = 0
        self.gaps: list[int] = []


class SseConn(H1Conn):
    """One connection reading a generate_stream answer event by event."""

    owner: HttpGenerate

    def __init__(self, owner: HttpGenerate) -> None:
        super().__init__(owner)
        self.sse: SseReader | None = None

    def data_received(self, data: bytes) -> None:
        self.answered = True  # the server took it: never resent (transparent retry)
        if self.sse is None:
            if self.head_len >= 0 or self.st is None:
                super().data_received(data)  # a non-200 answer, read whole
                return
            buf = self.buf + data if self.buf else data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                if len(buf) > 64 * 1024:
                    self.fail(rc.BAD_RESPONSE)
                return
            if not self._parse_head(buf[:end]):
                self.fail(rc.BAD_RESPONSE)
                return
            if self.status != 200 or not self.chunked:
                self.buf = b""
                self.head_len = 0
                super().data_received(buf[end + 4 :])
                return
            self.buf = b""
            self.sse = SseReader()
            data = buf[end + 4 :]
        self._events(data)

    def _events(self, data: bytes) -> None:
        st = self.st
        sse = self.sse
        assert sse is not None
        if not isinstance(st, GenerateCall):
            self.abort()
            return
        now = self.owner.now()
        st.nbytes += len(data)
        owner = self.owner
        for event in sse.feed(data):
            r = parse_sse_event(event, owner.token_output)
            if r is None:
                self._end(rc.BAD_RESPONSE)
                return
            if r.error:
                self._end(rc.STREAM_ERROR if st.responses else rc.UNKNOWN)
                return
            if r.data:
                if st.responses:
                    st.gaps.append(now - st.last)
                else:
                    st.first = now
                st.last = now
                st.responses += 1
                st.tokens += r.tokens
        if sse.bad:
            self._end(rc.BAD_RESPONSE)
        elif sse.done:
            self._end(rc.OK)

    def _end(self, status: int) -> None:
        st = self.st
        assert isinstance(st, GenerateCall)
        done_clean = self.sse is not None and self.sse.done
        self.st = None
        self.sse = None
        self.head_len = -1
        if done_clean:
            self.served += 1  # a kept-alive connection that answered in full
        else:
            self.abort()  # the rest of the answer would be read as the next one's
        self.owner.finish(self, st, status, st.nbytes)

    def fail(self, status: int) -> None:
        self.sse = None
        super().fail(status)


class HttpGenerate(Http):
    """generate_stream over a pool of HTTP/1.1 connections, N responses per request."""

    conn_type = SseConn

    def _start(self, conn: H1Conn, key: int, intended: int, pidx: int, tries: int = 0) -> None:
        sent = self.clock() - self.start
        self.busy[conn] = None
        st = GenerateCall(key, intended, sent, pidx, sent + self.timeout_ns, tries + 1)
        conn.send(st, self.heads[pidx], self.wires[pidx].body)

    def _finish(self, call: Call, status: int, resp_bytes: int) -> None:
        if isinstance(call, GenerateCall):
            if status in _CUT and call.responses:
                status = rc.STREAM_CUT  # it had begun: the connection ended under it
            self.note_stream(call.first, call.last, call.responses, call.tokens, call.gaps)
        super()._finish(call, status, resp_bytes)
