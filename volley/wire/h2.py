"""A small HTTP/2 client connection for gRPC: the agent's cheap send path.

grpc.aio spends 150-300 µs of CPU per call at low concurrency (C-core completion
queue, a polling thread, per-call Python objects). A request of a load test is
always one of a few pre-serialized bodies with the same headers, so this client
writes pre-encoded frames straight into a uvloop transport and parses response
frames in `data_received`, calling back into the worker without tasks or futures.

What it implements of RFC 9113 (HTTP/2) and the gRPC wire protocol, client side:
connection preface and SETTINGS (acknowledged both ways), PING replies, send-side
flow control (connection and stream windows, frames cut at the peer's
MAX_FRAME_SIZE, MAX_CONCURRENT_STREAMS exposed as `has_capacity` for the owner to
queue on), receive-side windows (connection and stream) replenished with
WINDOW_UPDATE, HEADERS + CONTINUATION, padding, RST_STREAM, GOAWAY, trailers and
trailers-only responses. Streams the server says it never processed (ids above a
GOAWAY's last stream id, RST_STREAM with REFUSED_STREAM) go to the sink's `on_refused`,
so the owner can send them again elsewhere, as gRPC's transparent retry does; a GOAWAY
is announced by `on_goaway` first, so the owner opens a fresh connection at once.
HPACK: requests use literals without indexing (so the peer's table size never
matters); responses are decoded by `hpack.Decoder`, with decoded blocks cached
while the dynamic table does not change (gRPC servers index their response
headers, so steady-state responses are a few repeated bytes).

A frame the RFC forbids is a connection error (GOAWAY, every open stream fails
through the sink, state CLOSED) or a stream error (RST_STREAM, that stream fails);
nothing raises out of `data_received`.

One `Connection` is one TCP (or TLS) connection, in one `ConnState`. Streams are
owned by a `StreamSink` (the transport), which gets per-stream callbacks and keeps
its per-stream state of type `S` in `Connection.streams`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import ssl
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar, cast

from hpack import Decoder
from hpack.exceptions import HPACKError

from volley.wire.h2frames import (
    _FRAME,
    _SETTING,
    _U32,
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    ERROR_NAMES,
    FLOW_CONTROL_ERROR,
    FRAME_NAMES,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INTERNAL_ERROR,
    MAX_HEADER_BLOCK,
    MAX_RECV_FRAME,
    MAX_STREAM_ID,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    RECV_WINDOW,
    REFUSED_STREAM,
    RESET_MEMORY,
    RST_STREAM,
    S_ENABLE_PUSH,
    S_HEADER_TABLE_SIZE,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    S_MAX_HEADER_LIST_SIZE,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    HeaderInfo,
    _hpack_mutates,
    _one_line,
    encode_headers,
    frame,
    frame_header,
    http_to_grpc_status,
    rst_to_grpc_status,
)

__all__ = [
    "ACK",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONTINUATION",
    "DATA",
    "END_HEADERS",
    "END_STREAM",
    "ENHANCE_YOUR_CALM",
    "ERROR_NAMES",
    "FLOW_CONTROL_ERROR",
    "FRAME_NAMES",
    "FRAME_SIZE_ERROR",
    "GOAWAY",
    "HEADERS",
    "INTERNAL_ERROR",
    "KEEPALIVE_PING",
    "MAX_HEADER_BLOCK",
    "MAX_RECV_FRAME",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "NO_ERROR",
    "PADDED",
    "PING",
    "PREFACE",
    "PRIORITY",
    "PRIORITY_FLAG",
    "PROTOCOL_ERROR",
    "PUSH_PROMISE",
    "RECV_WINDOW",
    "REFUSED_STREAM",
    "RESET_MEMORY",
    "RST_STREAM",
    "SETTINGS",
    "STREAM_CLOSED",
    "S_ENABLE_PUSH",
    "S_HEADER_TABLE_SIZE",
    "S_INITIAL_WINDOW_SIZE",
    "S_MAX_CONCURRENT_STREAMS",
    "S_MAX_FRAME_SIZE",
    "S_MAX_HEADER_LIST_SIZE",
    "WINDOW_UPDATE",
    "ConnState",
    "Connection",
    "H2Connection",
    "HeaderInfo",
    "StreamSink",
    "encode_headers",
    "frame",
    "frame_header",
    "http_to_grpc_status",
    "open_connection",
    "rst_to_grpc_status",
]

log = logging.getLogger("volley.wire.h2")

#: The opaque data of our keep-alive PING (`Connection.ping`); its ACK carries it back.
KEEPALIVE_PING = b"volley\0\0"


S = TypeVar("S")


class StreamSink(Protocol[S]):
    """The owner of a connection's streams (a transport); `S` is its per-stream state."""

    def on_headers(self, conn: Connection[S], sid: int, info: HeaderInfo, end: bool) -> None: ...

    def on_data(self, conn: Connection[S], sid: int, data: bytes, end: bool) -> None: ...

    def on_reset(self, conn: Connection[S], sid: int, grpc_status: int, message: str) -> None: ...

    def on_refused(self, conn: Connection[S], sid: int, message: str) -> None:
        """Stream `sid` is closed and was never processed (GOAWAY past it, REFUSED_STREAM):
        it may be sent again."""

    def on_goaway(self, conn: Connection[S]) -> None:
        """The server sent GOAWAY: this connection takes no new streams (DRAINING)."""

    def on_connection_lost(self, conn: Connection[S], message: str) -> None: ...

    def on_writable(self, conn: Connection[S]) -> None: ...


class ConnState(enum.Enum):
    """Where a connection is. Only OPEN takes new streams."""

    #: preface sent, the server's SETTINGS not yet received
    CONNECTING = "connecting"
    OPEN = "open"
    #: GOAWAY received or stream ids spent: no new streams, open ones finish, then close
    DRAINING = "draining"
    #: closed by either side or failed; the sink has been told
    CLOSED = "closed"


# Module globals: `ConnState.OPEN` costs an enum class lookup (~150 ns) on the hot path.
_CONNECTING = ConnState.CONNECTING
_OPEN = ConnState.OPEN
_DRAINING = ConnState.DRAINING
_CLOSED = ConnState.CLOSED


class _Queued:
    """Request body bytes waiting for send window."""

    __slots__ = ("end", "sid", "view")

    def __init__(self, sid: int, view: memoryview, end: bool) -> None:
        self.sid = sid
        self.view = view
        self.end = end


class Connection(asyncio.Protocol, Generic[S]):
    """One client HTTP/2 connection; streams are opened with `start_stream`."""

    def __init__(self, sink: StreamSink[S]) -> None:
        self.sink = sink
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.state = _CONNECTING
        self.close_reason = ""
        #: the owner's index for this connection (-1: none)
        self.slot = -1
        self.next_sid = 1
        #: streams opened and not yet closed by either side -> bytes received on the
        #: stream and not yet given back by WINDOW_UPDATE
        self.open: dict[int, int] = {}
        #: per-stream state owned by the sink (the transport)
        self.streams: dict[int, S] = {}
        #: peer settings
        self.max_streams = 1 << 31
        self.max_frame = 16384
        self.init_window = 65535
        self.conn_window = 65535
        #: per-stream send windows (only streams that still have data to send or may)
        self.windows: dict[int, int] = {}
        #: data waiting for window, in order
        self.blocked: collections.deque[_Queued] = collections.deque()
        #: last stream id the server said it will process (GOAWAY; -1: none received)
        self.goaway_last = -1
        #: GOAWAY frames that moved this connection from OPEN to DRAINING (0 or 1)
        self.goaways = 0
        self._buf = b""
        self._hdr_sid = 0
        self._hdr_end = False
        self._hdr_block = b""
        self._decoder = Decoder()
        self._decoder.max_header_list_size = 1 << 20
        self._gen = 0
        self._cache: dict[tuple[int, bytes], HeaderInfo] = {}
        #: bytes received on the connection and not yet given back by WINDOW_UPDATE
        self._recv_unacked = 0
        #: streams we reset, newest last (frames the server had already sent are ignored)
        self._reset: dict[int, None] = {}
        #: the first line of an HTTP/1 answer to our preface
        self._http1 = ""
        #: corked (`cork`): new streams' frames wait here and go in one write (`uncork`)
        self._corked: list[bytes] | None = None
        #: when our keep-alive PING still unanswered was sent (the caller's clock, `ping`;
        #: -1.0: none outstanding)
        self.ping_sent = -1.0
        #: closed by us because the peer left a PING unanswered past its deadline
        self.silent = False

    # ---- state -----------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """New streams may start here."""
        return self.state is _OPEN

    @property
    def has_capacity(self) -> bool:
        """Usable, and below the server's MAX_CONCURRENT_STREAMS."""
        return self.state is _OPEN and len(self.open) < self.max_streams

    # ---- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        settings = (
            _SETTING.pack(S_ENABLE_PUSH, 0)
            + _SETTING.pack(S_INITIAL_WINDOW_SIZE, RECV_WINDOW)
            + _SETTING.pack(S_MAX_HEADER_LIST_SIZE, 1 << 20)
        )
        self.transport.write(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, _U32.pack(RECV_WINDOW - 65535))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._lost(f"connection lost: {exc}")
        elif self._http1:
            self._lost(
                f"connection closed by the server, which answered in HTTP/1 "
                f"({self._http1!r}), not HTTP/2"
            )
        else:
            self._lost("connection closed by the server")

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is not _OPEN:
            if state is _CLOSED:
                return
            if state is _CONNECTING and not self._first_frame_ok(self._buf + data):
                return
        if self._buf:
            data = self._buf + data
            self._buf = b""
        n = len(data)
        pos = 0
        try:
            while n - pos >= 9:
                hi, lo, ftype, flags, sid = _FRAME.unpack_from(data, pos)
                length = (hi << 16) | lo
                if length > MAX_RECV_FRAME:
                    name = FRAME_NAMES[ftype] if ftype < 10 else f"type {ftype}"
                    self.fail(FRAME_SIZE_ERROR, f"{name} frame of {length} bytes (limit 16384)")
                    return
                end = pos + 9 + length
                if end > n:
                    break
                sid &= 0x7FFFFFFF
                if self._hdr_sid and ftype != CONTINUATION:
                    self.fail(PROTOCOL_ERROR, "a frame other than CONTINUATION in a header block")
                    return
                if ftype == DATA:
                    self._on_data(sid, flags, data[pos + 9 : end], length)
                elif ftype == HEADERS:
                    self._on_headers(sid, flags, data[pos + 9 : end])
                elif ftype == CONTINUATION:
                    self._on_continuation(sid, flags, data[pos + 9 : end])
                else:
                    self._on_control(ftype, flags, sid, data[pos + 9 : end])
                if self.state is _CLOSED:
                    return
                pos = end
        except Exception as exc:  # a bug here or in the sink: end the connection, say why
            log.error("HTTP/2 connection failed reading a frame", exc_info=True)
            self.fail(INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}")
            return
        if pos < n:
            self._buf = data[pos:]

    def _first_frame_ok(self, data: bytes) -> bool:
        """Before the server's SETTINGS: its first frame must be SETTINGS (RFC 9113 §3.4).

        An HTTP/1 server answering the preface is left to close the connection, which
        then says so (a likely mistake: a gRPC target given its HTTP port)."""
        if self._http1:
            return False
        if len(data) < 9:
            return True
        if data.startswith(b"HTTP/"):
            self._http1 = _one_line(data.split(b"\r\n", 1)[0].decode("latin-1"), 80)
            return False
        _, _, ftype, flags, sid = _FRAME.unpack_from(data)
        if ftype != SETTINGS or flags & ACK or sid:
            self.fail(PROTOCOL_ERROR, f"not HTTP/2: the server's first bytes were {data[:9]!r}")
            return False
        return True

    # ---- errors ----------------------------------------------------------------------
    def fail(self, code: int, message: str) -> None:
        """Connection error: GOAWAY with `code`, close, every open stream fails."""
        if self.state is _CLOSED:
            return
        message = f"HTTP/2 {ERROR_NAMES.get(code, code)}: {_one_line(message)}"
        # last stream id: the last one the server opened, and it opens none
        debug = message.encode("ascii", "replace")[:256]
        self._control(frame(GOAWAY, 0, 0, _U32.pack(0) + _U32.pack(code) + debug))
        if self.transport is not None:
            self.transport.close()
        self._lost(message)

    def _stream_error(self, sid: int, code: int, message: str) -> None:
        """RST_STREAM with `code` on an open stream, which fails."""
        self.reset_stream(sid, code)
        self.sink.on_reset(
            self, sid, rst_to_grpc_status(code), f"HTTP/2 stream error: {_one_line(message)}"
        )

    def _not_open(self, sid: int, name: str) -> None:
        """A stream frame for a stream that is not open."""
        if sid >= self.next_sid or not sid & 1:  # idle: the server opens no streams
            self.fail(PROTOCOL_ERROR, f"{name} frame on stream {sid}, which was never opened")
        elif sid not in self._reset:  # closed by the server: it should know
            self._remember_reset(sid)
            self._control(frame(RST_STREAM, 0, sid, _U32.pack(STREAM_CLOSED)))

    # ---- frames ----------------------------------------------------------------------
    def _on_data(self, sid: int, flags: int, payload: bytes, length: int) -> None:
        if flags & PADDED:
            if not payload:
                self.fail(FRAME_SIZE_ERROR, "PADDED DATA frame without a pad length")
                return
            pad = payload[0]
            if pad >= len(payload):
                self.fail(PROTOCOL_ERROR, f"DATA padding of {pad} in a {length}-byte frame")
                return
            payload = payload[1 : len(payload) - pad]
        # flow control counts whole frames, padding included, open stream or not
        unacked = self._recv_unacked + length
        if unacked > RECV_WINDOW // 2:
            if unacked > RECV_WINDOW:
                self.fail(FLOW_CONTROL_ERROR, "the server sent past the connection window")
                return
            self._control(frame(WINDOW_UPDATE, 0, 0, _U32.pack(unacked)))
            unacked = 0
        self._recv_unacked = unacked
        got = self.open.get(sid)
        if got is None:
            self._not_open(sid, "DATA")
            return
        if flags & END_STREAM:
            self.stream_closed(sid)
            self.sink.on_data(self, sid, payload, True)
            return
        got += length
        if got > RECV_WINDOW // 2:  # a long-lived stream: give its window back
            if got > RECV_WINDOW:
                self._stream_error(sid, FLOW_CONTROL_ERROR, "the server sent past the window")
                return
            self._control(frame(WINDOW_UPDATE, 0, sid, _U32.pack(got)))
            got = 0
        self.open[sid] = got
        self.sink.on_data(self, sid, payload, False)

    def _on_headers(self, sid: int, flags: int, payload: bytes) -> None:
        if flags & (PADDED | PRIORITY_FLAG):
            n = len(payload)
            skip = (1 if flags & PADDED else 0) + (5 if flags & PRIORITY_FLAG else 0)
            if n < skip:
                self.fail(FRAME_SIZE_ERROR, f"HEADERS frame of {n} bytes, {skip} needed")
                return
            pad = payload[0] if flags & PADDED else 0
            if pad > n - skip:
                self.fail(PROTOCOL_ERROR, f"HEADERS padding of {pad} in a {n}-byte frame")
                return
            payload = payload[skip : n - pad]
        if not flags & END_HEADERS:
            if sid == 0:  # (0 would read as "no header block open")
                self.fail(PROTOCOL_ERROR, "HEADERS frame on stream 0")
                return
            self._hdr_sid = sid
            self._hdr_end = bool(flags & END_STREAM)
            self._hdr_block = payload
            return
        info = self._cache.get((self._gen, payload))
        if info is None:
            info = self._decode(payload)
            if info is None:
                return
        # decoded even when the stream is gone: the HPACK table must follow the server's
        if sid not in self.open:
            self._not_open(sid, "HEADERS")
        elif flags & END_STREAM:
            self.stream_closed(sid)
            self.sink.on_headers(self, sid, info, True)
        else:
            self.sink.on_headers(self, sid, info, False)

    def _on_continuation(self, sid: int, flags: int, payload: bytes) -> None:
        if not self._hdr_sid or sid != self._hdr_sid:
            self.fail(PROTOCOL_ERROR, f"CONTINUATION frame on stream {sid} with no header block")
            return
        block = self._hdr_block + payload
        if len(block) > MAX_HEADER_BLOCK:
            self.fail(ENHANCE_YOUR_CALM, "header block over 1 MiB")
            return
        if not flags & END_HEADERS:
            self._hdr_block = block
            return
        self._hdr_sid = 0
        self._hdr_block = b""
        self._on_headers(sid, END_HEADERS | (END_STREAM if self._hdr_end else 0), block)

    def _decode(self, block: bytes) -> HeaderInfo | None:
        """A header block decoded (and cached while the table stays), or None: failed."""
        try:
            mutates = _hpack_mutates(block)
            info = HeaderInfo(self._decoder.decode(block, raw=True))
        except (HPACKError, IndexError, ValueError) as exc:
            self.fail(COMPRESSION_ERROR, f"bad header block: {exc}")
            return None
        if mutates:
            self._gen += 1
            if len(self._cache) > 4096:
                self._cache.clear()
        else:
            self._cache[(self._gen, block)] = info
        return info

    def _on_control(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == SETTINGS:
            self._on_settings(flags, sid, payload)
        elif ftype == WINDOW_UPDATE:
            self._on_window_update(sid, payload)
        elif ftype == PING:
            if sid:
                self.fail(PROTOCOL_ERROR, f"PING frame on stream {sid}")
            elif len(payload) != 8:
                self.fail(FRAME_SIZE_ERROR, f"PING frame of {len(payload)} bytes")
            elif not flags & ACK:
                self._control(frame(PING, ACK, 0, payload))
            elif payload == KEEPALIVE_PING:
                self.ping_sent = -1.0  # answered: the peer is alive
        elif ftype == RST_STREAM:
            if sid == 0:
                self.fail(PROTOCOL_ERROR, "RST_STREAM frame on stream 0")
            elif len(payload) != 4:
                self.fail(FRAME_SIZE_ERROR, f"RST_STREAM frame of {len(payload)} bytes")
            elif sid >= self.next_sid or not sid & 1:
                self.fail(PROTOCOL_ERROR, f"RST_STREAM on stream {sid}, which was never opened")
            elif sid in self.open:
                code = _U32.unpack(payload)[0]
                name = ERROR_NAMES.get(code, str(code))
                self.stream_closed(sid)
                if code == REFUSED_STREAM:  # RFC 9113 §8.7: not processed, safe to retry
                    self.sink.on_refused(self, sid, "stream refused by the server")
                    return
                self.sink.on_reset(
                    self, sid, rst_to_grpc_status(code), f"stream reset by the server ({name})"
                )
        elif ftype == GOAWAY:
            self._on_goaway(sid, payload)
        elif ftype == PRIORITY:
            if sid == 0:
                self.fail(PROTOCOL_ERROR, "PRIORITY frame on stream 0")
            elif len(payload) != 5 and sid in self.open:
                self._stream_error(sid, FRAME_SIZE_ERROR, f"PRIORITY of {len(payload)} bytes")
        elif ftype == PUSH_PROMISE:
            self.fail(PROTOCOL_ERROR, "PUSH_PROMISE although push is disabled")
        # unknown frame types are ignored (RFC 9113 §4.1)

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            self.fail(PROTOCOL_ERROR, f"SETTINGS frame on stream {sid}")
            return
        if flags & ACK:
            if payload:
                self.fail(FRAME_SIZE_ERROR, f"SETTINGS ACK with {len(payload)} bytes")
            return
        if len(payload) % 6:
            self.fail(FRAME_SIZE_ERROR, f"SETTINGS frame of {len(payload)} bytes")
            return
        old_window = self.init_window
        for off in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, off)
            if key == S_MAX_CONCURRENT_STREAMS:
                self.max_streams = value
            elif key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self.fail(FLOW_CONTROL_ERROR, f"initial window {value} too large")
                    return
                self.init_window = value
            elif key == S_MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    self.fail(PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value} out of range")
                    return
                self.max_frame = value
            elif key == S_ENABLE_PUSH and value > 1:
                self.fail(PROTOCOL_ERROR, f"ENABLE_PUSH {value}")
                return
        delta = self.init_window - old_window
        if delta:
            windows = self.windows
            for k, w in windows.items():
                if w + delta > MAX_WINDOW:
                    self.fail(FLOW_CONTROL_ERROR, f"stream {k} window over 2^31-1")
                    return
                windows[k] = w + delta
        self._control(frame(SETTINGS, ACK, 0))
        if self.state is _CONNECTING:
            self.state = _OPEN
            if not self.ready.done():
                self.ready.set_result(None)
        self._flush_blocked()

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            self.fail(FRAME_SIZE_ERROR, f"WINDOW_UPDATE frame of {len(payload)} bytes")
            return
        inc = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if inc == 0:
                self.fail(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
                return
            if self.conn_window + inc > MAX_WINDOW:
                self.fail(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
                return
            self.conn_window += inc
        elif sid >= self.next_sid or not sid & 1:
            self.fail(PROTOCOL_ERROR, f"WINDOW_UPDATE on stream {sid}, which was never opened")
            return
        elif sid in self.open:
            if inc == 0:
                self._stream_error(sid, PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
                return
            w = self.windows.get(sid)
            if w is not None:
                if w + inc > MAX_WINDOW:
                    self._stream_error(sid, FLOW_CONTROL_ERROR, "stream window over 2^31-1")
                    return
                self.windows[sid] = w + inc
        if self.blocked:
            self._flush_blocked()

    def _on_goaway(self, sid: int, payload: bytes) -> None:
        if sid:
            self.fail(PROTOCOL_ERROR, f"GOAWAY frame on stream {sid}")
            return
        if len(payload) < 8:
            self.fail(FRAME_SIZE_ERROR, f"GOAWAY frame of {len(payload)} bytes")
            return
        last = _U32.unpack_from(payload)[0] & 0x7FFFFFFF
        code = _U32.unpack_from(payload, 4)[0]
        if 0 <= self.goaway_last < last:  # a later GOAWAY may only lower it
            last = self.goaway_last
        self.goaway_last = last
        debug = _one_line(payload[8:].decode("utf-8", "replace"))
        name = ERROR_NAMES.get(code, str(code))
        self.close_reason = f"server sent GOAWAY ({name}{': ' + debug if debug else ''})"
        was_open = self.state is _OPEN
        if was_open:
            self.state = _DRAINING
            self.goaways += 1
            self.sink.on_goaway(self)
        # streams the server will not process are handed back; others may still complete
        for s in sorted(s for s in self.open if s > last):
            self.stream_closed(s)
            self.sink.on_refused(self, s, self.close_reason)
        if not self.open and self.transport is not None:
            self.transport.close()

    # ---- sending ---------------------------------------------------------------------
    def cork(self) -> None:
        """Hold the frames of streams started from now on; `uncork` writes them at once
        (one system call for the requests of one wake-up)."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        held, self._corked = self._corked, None
        t = self.transport
        if held and t is not None and not t.is_closing():
            t.writelines(held)

    def _cork_out(self) -> None:
        """Write what the cork holds now (still corked): any other frame goes after the
        streams started before it, in order."""
        held = self._corked
        t = self.transport
        if held and t is not None:
            self._corked = []
            if not t.is_closing():
                t.writelines(held)

    def start_stream(self, header_block: bytes, body: bytes, end_stream: bool) -> int:
        """Open a stream: HEADERS (+ DATA with `body`). Returns the stream id.

        The caller checks `usable` and `has_capacity` first."""
        t = self.transport
        assert t is not None
        sid = self.next_sid
        self.next_sid = sid + 2
        if sid + 2 >= MAX_STREAM_ID:  # ids spent: this connection retires
            self.state = _DRAINING
        self.open[sid] = 0
        n = len(body)
        window = self.init_window
        if n == 0:
            if self._corked:
                self._cork_out()
            t.write(
                frame_header(
                    len(header_block), HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid
                )
                + header_block
            )
            if not end_stream:
                self.windows[sid] = window
            return sid
        hdr = frame_header(len(header_block), HEADERS, END_HEADERS, sid) + header_block
        if n <= self.max_frame and n <= window and n <= self.conn_window and not self.blocked:
            self.conn_window -= n
            flags = END_STREAM if end_stream else 0
            corked = self._corked
            if corked is not None:
                corked += (hdr, frame_header(n, DATA, flags, sid), body)
            elif n < 16384:
                t.write(hdr + frame_header(n, DATA, flags, sid) + body)
            else:
                t.writelines((hdr, frame_header(n, DATA, flags, sid), body))
            if not end_stream:
                self.windows[sid] = window - n
            return sid
        if self._corked:
            self._cork_out()
        t.write(hdr)
        self.windows[sid] = window
        self.blocked.append(_Queued(sid, memoryview(body), end_stream))
        self._flush_blocked()
        return sid

    def send_data(self, sid: int, body: bytes, end_stream: bool = False) -> None:
        """More DATA on an open stream (bidirectional streaming)."""
        if self._corked:
            self._cork_out()
        t = self.transport
        assert t is not None
        n = len(body)
        w = self.windows.get(sid, 0)
        if n <= self.max_frame and n <= w and n <= self.conn_window and not self.blocked:
            self.conn_window -= n
            self.windows[sid] = w - n
            t.write(frame_header(n, DATA, END_STREAM if end_stream else 0, sid) + body)
            return
        self.blocked.append(_Queued(sid, memoryview(body), end_stream))
        self._flush_blocked()

    def _flush_blocked(self) -> None:
        if self._corked:
            self._cork_out()
        t = self.transport
        if t is None or self.state is _CLOSED:
            return
        while self.blocked:
            item = self.blocked[0]
            sid, view = item.sid, item.view
            if sid not in self.windows:  # stream gone (reset or timed out)
                self.blocked.popleft()
                continue
            n = min(len(view), self.max_frame, self.windows[sid], self.conn_window)
            if n <= 0 and len(view) > 0:
                return
            last = n == len(view)
            self.conn_window -= n
            self.windows[sid] -= n
            t.writelines(
                (
                    frame_header(n, DATA, END_STREAM if (last and item.end) else 0, sid),
                    bytes(view[:n]),
                )
            )
            if last:
                self.blocked.popleft()
            else:
                item.view = view[n:]
        self.sink.on_writable(self)

    def reset_stream(self, sid: int, code: int = CANCEL) -> None:
        if self.state is not _CLOSED:
            self._control(frame(RST_STREAM, 0, sid, _U32.pack(code)))
            self._remember_reset(sid)
        self.stream_closed(sid)

    def _control(self, data: bytes) -> None:
        """Write a control frame, unless the transport is gone or closing."""
        if self._corked:
            self._cork_out()
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def _remember_reset(self, sid: int) -> None:
        reset = self._reset
        reset[sid] = None
        if len(reset) > RESET_MEMORY:
            del reset[next(iter(reset))]

    # ---- keep-alive --------------------------------------------------------------------
    def ping(self, now: float) -> None:
        """A keep-alive PING, unless one is still unanswered; `now` (any clock the caller
        keeps) is when it went, for `ping_overdue`."""
        t = self.transport
        if self.state is _CLOSED or self.ping_sent >= 0 or t is None or t.is_closing():
            return
        self.ping_sent = now
        self._control(frame(PING, 0, 0, KEEPALIVE_PING))

    def ping_overdue(self, now: float, limit: float) -> bool:
        """Our PING has gone unanswered for `limit` or longer (same clock as `ping`)."""
        return self.ping_sent >= 0 and now - self.ping_sent >= limit and self.state is not _CLOSED

    def close_silent(self, message: str) -> None:
        """The peer stopped answering (a proxy or NAT dropped the connection without a
        reset, a frozen server): aborted at once (a close would wait to flush to a peer
        that reads nothing), `silent` set, open streams fail, the sink is told."""
        if self.state is _CLOSED:
            return
        self.silent = True
        if self.transport is not None:
            self.transport.abort()
        self._lost(message)

    def stream_closed(self, sid: int) -> None:
        self.open.pop(sid, None)
        self.windows.pop(sid, None)
        if self.state is _DRAINING and not self.open and self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        if self.state is not _CLOSED and self.transport is not None:
            self._control(frame(GOAWAY, 0, 0, _U32.pack(0) + _U32.pack(NO_ERROR)))
            self.transport.close()
        self._lost("closed")

    def _lost(self, message: str) -> None:
        if self.state is _CLOSED:
            return
        self.state = _CLOSED
        self.close_reason = self.close_reason or message
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(message))
            self.ready.exception()  # retrieved: a caller may never await it
        self.windows.clear()
        self.blocked.clear()
        self.open.clear()
        self.sink.on_connection_lost(self, self.close_reason)


#: A connection whose sink keeps no per-stream state on it.
H2Connection = Connection[object]


async def open_connection(
    sink: StreamSink[S],
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = 5.0,
) -> Connection[S]:
    """Connect, exchange SETTINGS, and return an OPEN connection (ConnectionError if not).

    A connection that fails after TCP is up is closed (the sink hears of it)."""
    loop = asyncio.get_running_loop()
    factory: Callable[[], Connection[S]] = lambda: Connection(sink)  # noqa: E731
    try:
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                factory,
                host,
                port,
                ssl=ssl_context,
                server_hostname=(server_hostname or host) if ssl_context else None,
            ),
            timeout,
        )
        try:
            await _handshake(conn, host, port, ssl_context is not None, timeout)
        except BaseException:
            conn.close()
            raise
    except TimeoutError:
        raise ConnectionError(f"{host}:{port}: no HTTP/2 answer within {timeout:g}s") from None
    except OSError as exc:
        raise ConnectionError(f"{host}:{port}: {exc.strerror or exc}") from None
    except ssl.SSLError as exc:
        raise ConnectionError(f"{host}:{port}: TLS failed: {exc.reason or exc}") from None
    return conn


async def _handshake(conn: Connection[S], host: str, port: int, tls: bool, timeout: float) -> None:
    """TCP_NODELAY, ALPN checked, the server's SETTINGS received."""
    t = conn.transport
    sock = t.get_extra_info("socket") if t is not None else None
    if sock is not None:
        import socket

        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls and t is not None:
        sslobj = t.get_extra_info("ssl_object")
        if sslobj is not None and sslobj.selected_alpn_protocol() not in (None, "h2"):
            raise ConnectionError(
                f"{host}:{port} did not agree to HTTP/2 over TLS "
                f"(ALPN {sslobj.selected_alpn_protocol()!r})"
            )
    await asyncio.wait_for(asyncio.shield(conn.ready), timeout)
