"""A small HTTP/2 client connection for gRPC: the agent's cheap send path.

grpc.aio spends 150-300 µs of CPU per call at low concurrency (C-core completion
queue, a polling thread, per-call Python objects). A request of a load test is
always one of a few pre-serialized bodies with the same headers, so this client
writes pre-encoded frames straight into a uvloop transport and parses response
frames in `data_received`, calling back into the worker without tasks or futures.

What it implements of RFC 9113 (HTTP/2) and the gRPC wire protocol, client side:
connection preface and SETTINGS (acknowledged both ways), PING replies, send-side
flow control (connection and stream windows, frames cut at the peer's
MAX_FRAME_SIZE, MAX_CONCURRENT_STREAMS respected by queueing), receive-side
windows replenished with WINDOW_UPDATE, HEADERS + CONTINUATION, padding,
RST_STREAM, GOAWAY (streams past the last id fail as UNAVAILABLE), trailers and
trailers-only responses, gRPC message framing with optional gzip/deflate.
HPACK: requests use literals without indexing (so the peer's table size never
matters); responses are decoded by `hpack.Decoder`, with decoded blocks cached
while the dynamic table does not change (gRPC servers index their response
headers, so steady-state responses are a few repeated bytes).

One `H2Connection` is one TCP (or TLS) connection. Streams are owned by a
`StreamSink` (the transport), which gets per-stream callbacks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import struct
from collections.abc import Callable
from typing import Any, Protocol, cast

from hpack import Decoder
from hpack.exceptions import HPACKError

from volley import records as rc

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# settings ids
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 1, 2, 3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 4, 5, 6
# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 7, 8, 9

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_WINDOW = 2**31 - 1
#: Stream ids are 31-bit and never reused: a connection this close to the end retires.
MAX_STREAM_ID = 2**31 - 1 - 2 * 65536
#: The receive window we grant (per stream and, by WINDOW_UPDATE, per connection).
RECV_WINDOW = 1 << 30

_FRAME = struct.Struct(">BHBBI")  # length (24 bits as 1+2 bytes), type, flags, stream id
_U32 = struct.Struct(">I")


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME.pack(n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def frame_header(length: int, ftype: int, flags: int, sid: int) -> bytes:
    return _FRAME.pack(length >> 16, length & 0xFFFF, ftype, flags, sid)


# ---- HPACK encoding of our request headers (literals, never indexed) -----------------
#: RFC 7541 static table entries we refer to by index.
_STATIC_NAME = {":authority": 1, ":path": 4, "content-type": 31, "user-agent": 58}


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_str(text: bytes) -> bytes:
    return _hpack_int(len(text), 7, 0) + text


def encode_headers(
    scheme: str, authority: str, path: str, extra: list[tuple[str, str]], sensitive: set[str]
) -> bytes:
    """One request header block: :method POST, scheme, path, authority, then `extra`.

    Everything is a literal without indexing (never-indexed for `sensitive` names), so the
    block is a constant the caller can reuse for every request."""
    out = bytearray(b"\x83")  # :method POST (static index 3)
    out += b"\x87" if scheme == "https" else b"\x86"
    for name, value in [(":path", path), (":authority", authority), *extra]:
        lname = name.lower()
        first = 0x10 if lname in sensitive else 0x00
        idx = _STATIC_NAME.get(lname)
        if idx is not None:
            out += _hpack_int(idx, 4, first)
        else:
            out += bytes((first,)) + _hpack_str(lname.encode())
        out += _hpack_str(value.encode("latin-1"))
    return bytes(out)


def _hpack_mutates(block: bytes) -> bool:
    """Whether a header block changes the decoder's dynamic table (incremental-indexing
    literals or table size updates). Scans lengths only; never decodes strings."""
    i, n = 0, len(block)

    def read_int(pos: int, prefix: int) -> tuple[int, int]:
        limit = (1 << prefix) - 1
        v = block[pos] & limit
        pos += 1
        if v < limit:
            return v, pos
        shift = 0
        while pos < n:
            b = block[pos]
            pos += 1
            v += (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return v, pos

    while i < n:
        b = block[i]
        if b & 0x80:  # indexed field
            _, i = read_int(i, 7)
            continue
        if b & 0xC0 == 0x40 or b & 0xE0 == 0x20:
            return True
        idx, i = read_int(i, 4)
        if idx == 0:  # literal name
            if i >= n:
                return True
            ln, i = read_int(i, 7)
            i += ln
        if i >= n:
            return True
        lv, i = read_int(i, 7)
        i += lv
    return False


class HeaderInfo:
    """What a response header block says that matters here (decoded once per distinct block)."""

    __slots__ = ("encoding", "grpc_message", "grpc_status", "http_status", "ok_type")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self.http_status = 0
        self.grpc_status = -1
        self.grpc_message = ""
        self.encoding = ""
        self.ok_type = True
        for name, value in fields:
            if name == ":status":
                try:
                    self.http_status = int(value)
                except ValueError:
                    self.http_status = -1
            elif name == "grpc-status":
                try:
                    self.grpc_status = int(value)
                except ValueError:
                    self.grpc_status = rc.UNKNOWN
            elif name == "grpc-message":
                self.grpc_message = _percent_decode(value)
            elif name == "grpc-encoding":
                self.encoding = value
            elif name == "content-type":
                self.ok_type = value.startswith("application/grpc")


def _percent_decode(text: str) -> str:
    if "%" not in text:
        return text
    from urllib.parse import unquote

    return unquote(text)


def http_to_grpc_status(http_status: int) -> int:
    """gRPC's mapping of a non-200 HTTP status without grpc-status."""
    return {
        400: rc.INTERNAL,
        401: rc.UNAUTHENTICATED,
        403: rc.PERMISSION_DENIED,
        404: rc.UNIMPLEMENTED,
        429: rc.UNAVAILABLE,
        502: rc.UNAVAILABLE,
        503: rc.UNAVAILABLE,
        504: rc.UNAVAILABLE,
    }.get(http_status, rc.UNKNOWN)


def rst_to_grpc_status(code: int) -> int:
    if code == REFUSED_STREAM:
        return rc.UNAVAILABLE
    if code == CANCEL:
        return rc.CANCELLED
    if code == 11:  # ENHANCE_YOUR_CALM
        return rc.RESOURCE_EXHAUSTED
    return rc.INTERNAL


class StreamSink(Protocol):
    """The owner of a connection's streams (a transport)."""

    def on_headers(self, conn: H2Connection, sid: int, info: HeaderInfo, end: bool) -> None: ...

    def on_data(self, conn: H2Connection, sid: int, data: bytes, end: bool) -> None: ...

    def on_reset(self, conn: H2Connection, sid: int, grpc_status: int, message: str) -> None: ...

    def on_connection_lost(self, conn: H2Connection, message: str) -> None: ...

    def on_writable(self, conn: H2Connection) -> None: ...


class H2Connection(asyncio.Protocol):
    """One client HTTP/2 connection; streams are opened with `start_stream`."""

    def __init__(self, sink: StreamSink) -> None:
        self.sink = sink
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.close_reason = ""
        self.next_sid = 1
        #: streams opened and not yet closed by either side
        self.open: set[int] = set()
        #: per-stream state owned by the sink (the transport)
        self.streams: dict[int, Any] = {}
        #: peer settings
        self.max_streams = 1 << 31
        self.max_frame = 16384
        self.init_window = 65535
        self.conn_window = 65535
        #: per-stream send windows (only streams that still have data to send or may)
        self.windows: dict[int, int] = {}
        #: data waiting for window: (sid, remaining bytes, end_stream)
        self.blocked: collections.deque[list[Any]] = collections.deque()
        self.goaway_last = -1
        self._buf = b""
        self._hdr_sid = 0
        self._hdr_end = False
        self._hdr_block = b""
        self._decoder = Decoder()
        self._decoder.max_header_list_size = 1 << 20
        self._gen = 0
        self._cache: dict[tuple[int, bytes], HeaderInfo] = {}
        self._recv_unacked = 0

    # ---- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        settings = (
            struct.pack(">HI", S_ENABLE_PUSH, 0)
            + struct.pack(">HI", S_INITIAL_WINDOW_SIZE, RECV_WINDOW)
            + struct.pack(">HI", S_MAX_HEADER_LIST_SIZE, 1 << 20)
        )
        self.transport.write(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, _U32.pack(RECV_WINDOW - 65535))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(f"connection lost: {exc}" if exc else "connection closed by the server")

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        n = len(data)
        pos = 0
        while n - pos >= 9:
            hi, lo, ftype, flags, sid = _FRAME.unpack_from(data, pos)
            length = (hi << 16) | lo
            end = pos + 9 + length
            if end > n:
                break
            sid &= 0x7FFFFFFF
            if ftype == DATA:
                self._on_data(sid, flags, data[pos + 9 : end], length)
            elif ftype in (HEADERS, CONTINUATION):
                self._on_headers(ftype, sid, flags, data[pos + 9 : end])
            else:
                self._on_control(ftype, flags, sid, data[pos + 9 : end])
            if self.closed:
                return
            pos = end
        if pos < n:
            self._buf = data[pos:]

    # ---- frames ----------------------------------------------------------------------
    def _on_data(self, sid: int, flags: int, payload: bytes, length: int) -> None:
        if flags & PADDED:
            if not payload:
                self.fail(PROTOCOL_ERROR, "DATA frame with bad padding")
                return
            pad = payload[0]
            payload = payload[1 : len(payload) - pad]
        self._recv_unacked += length
        if self._recv_unacked > RECV_WINDOW // 2 and self.transport is not None:
            self.transport.write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._recv_unacked)))
            self._recv_unacked = 0
        if flags & END_STREAM:
            self.stream_closed(sid)
            self.sink.on_data(self, sid, payload, True)
        else:
            self.sink.on_data(self, sid, payload, False)

    def _on_headers(self, ftype: int, sid: int, flags: int, payload: bytes) -> None:
        if ftype == HEADERS:
            if self._hdr_sid:
                self.fail(PROTOCOL_ERROR, "HEADERS while a header block is open")
                return
            if flags & PADDED:
                pad = payload[0]
                payload = payload[1 : len(payload) - pad]
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self._hdr_end = bool(flags & END_STREAM)
            if not flags & END_HEADERS:
                self._hdr_sid = sid
                self._hdr_block = payload
                return
            block = payload
        else:
            if sid != self._hdr_sid:
                self.fail(PROTOCOL_ERROR, "unexpected CONTINUATION frame")
                return
            self._hdr_block += payload
            if not flags & END_HEADERS:
                return
            block = self._hdr_block
            self._hdr_sid = 0
            self._hdr_block = b""
        info = self._cache.get((self._gen, block))
        if info is None:
            mutates = _hpack_mutates(block)
            try:
                fields = self._decoder.decode(block, raw=False)
            except (HPACKError, UnicodeDecodeError, IndexError, ValueError) as exc:
                self.fail(COMPRESSION_ERROR, f"bad header block: {exc}")
                return
            info = HeaderInfo(fields)  # type: ignore[arg-type]
            if mutates:
                self._gen += 1
                if len(self._cache) > 4096:
                    self._cache.clear()
            else:
                self._cache[(self._gen, block)] = info
        end = self._hdr_end
        if end:
            self.stream_closed(sid)
        self.sink.on_headers(self, sid, info, end)

    def _on_control(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        t = self.transport
        if ftype == SETTINGS:
            if flags & ACK or t is None:
                return
            delta = 0
            for off in range(0, len(payload) - 5, 6):
                key, value = struct.unpack_from(">HI", payload, off)
                if key == S_MAX_CONCURRENT_STREAMS:
                    self.max_streams = value
                elif key == S_INITIAL_WINDOW_SIZE:
                    if value > MAX_WINDOW:
                        self.fail(FLOW_CONTROL_ERROR, "initial window too large")
                        return
                    delta = value - self.init_window
                    self.init_window = value
                elif key == S_MAX_FRAME_SIZE:
                    self.max_frame = value
            if delta:
                for k in self.windows:
                    self.windows[k] += delta
            t.write(frame(SETTINGS, ACK, 0))
            if not self.ready.done():
                self.ready.set_result(None)
            self._flush_blocked()
        elif ftype == PING:
            if not flags & ACK and t is not None:
                t.write(frame(PING, ACK, 0, payload[:8]))
        elif ftype == WINDOW_UPDATE:
            if len(payload) < 4:
                return
            inc = _U32.unpack_from(payload)[0] & 0x7FFFFFFF
            if sid == 0:
                self.conn_window += inc
            elif sid in self.windows:
                self.windows[sid] += inc
            if self.blocked:
                self._flush_blocked()
        elif ftype == RST_STREAM:
            code = _U32.unpack_from(payload)[0] if len(payload) >= 4 else INTERNAL_ERROR
            self.stream_closed(sid)
            self.sink.on_reset(self, sid, rst_to_grpc_status(code), f"stream reset (code {code})")
        elif ftype == GOAWAY:
            last = (_U32.unpack_from(payload)[0] & 0x7FFFFFFF) if len(payload) >= 8 else 0
            code = _U32.unpack_from(payload, 4)[0] if len(payload) >= 8 else 0
            self.goaway_last = last
            debug = payload[8:].decode("utf-8", "replace")
            self.close_reason = f"server sent GOAWAY (code {code}{': ' + debug if debug else ''})"
            # streams the server will not process fail now; others may still complete
            for s in sorted(s for s in self.open if s > last):
                self.stream_closed(s)
                self.sink.on_reset(self, s, rc.UNAVAILABLE, self.close_reason)
            if not self.open and self.transport is not None:
                self.transport.close()
        # PRIORITY, PUSH_PROMISE (disabled by our SETTINGS) and unknown types are ignored

    # ---- sending ---------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        return (
            not self.closed
            and self.goaway_last < 0
            and self.next_sid < MAX_STREAM_ID
            and self.transport is not None
        )

    @property
    def has_capacity(self) -> bool:
        return len(self.open) < self.max_streams

    def start_stream(self, header_block: bytes, body: bytes, end_stream: bool) -> int:
        """Open a stream: HEADERS (+ DATA with `body`). Returns the stream id.

        The caller checks `usable` and `has_capacity` first."""
        t = self.transport
        assert t is not None
        sid = self.next_sid
        self.next_sid = sid + 2
        self.open.add(sid)
        n = len(body)
        window = self.init_window
        if n == 0:
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
            if n < 16384:
                t.write(hdr + frame_header(n, DATA, flags, sid) + body)
            else:
                t.writelines((hdr, frame_header(n, DATA, flags, sid), body))
            if not end_stream:
                self.windows[sid] = window - n
            return sid
        t.write(hdr)
        self.windows[sid] = window
        self.blocked.append([sid, memoryview(body), end_stream])
        self._flush_blocked()
        return sid

    def send_data(self, sid: int, body: bytes, end_stream: bool = False) -> None:
        """More DATA on an open stream (bidirectional streaming)."""
        t = self.transport
        assert t is not None
        n = len(body)
        w = self.windows.get(sid, 0)
        if n <= self.max_frame and n <= w and n <= self.conn_window and not self.blocked:
            self.conn_window -= n
            self.windows[sid] = w - n
            t.write(frame_header(n, DATA, END_STREAM if end_stream else 0, sid) + body)
            return
        self.blocked.append([sid, memoryview(body), end_stream])
        self._flush_blocked()

    def _flush_blocked(self) -> None:
        t = self.transport
        if t is None or self.closed:
            return
        while self.blocked:
            item = self.blocked[0]
            sid, view, end = item[0], item[1], item[2]
            if sid not in self.windows:  # stream gone (reset or timed out)
                self.blocked.popleft()
                continue
            n = min(len(view), self.max_frame, self.windows[sid], self.conn_window)
            if n <= 0 and len(view) > 0:
                return
            chunk = view[:n]
            last = n == len(view)
            self.conn_window -= n
            self.windows[sid] -= n
            t.writelines(
                (frame_header(n, DATA, END_STREAM if (last and end) else 0, sid), bytes(chunk))
            )
            if last:
                self.blocked.popleft()
            else:
                item[1] = view[n:]
        self.sink.on_writable(self)

    def reset_stream(self, sid: int, code: int = CANCEL) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(frame(RST_STREAM, 0, sid, _U32.pack(code)))
        self.stream_closed(sid)

    def stream_closed(self, sid: int) -> None:
        self.open.discard(sid)
        self.windows.pop(sid, None)
        if self.goaway_last >= 0 and not self.open and self.transport is not None:
            self.transport.close()

    def fail(self, code: int, message: str) -> None:
        if self.transport is not None and not self.closed:
            last = max(self.next_sid - 2, 0)
            self.transport.write(frame(GOAWAY, 0, 0, _U32.pack(last) + _U32.pack(code)))
            self.transport.close()
        self._lost(message)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(frame(GOAWAY, 0, 0, _U32.pack(0) + _U32.pack(NO_ERROR)))
            self.transport.close()
        self._lost("closed")

    def _lost(self, message: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = self.close_reason or message
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(message))
            self.ready.exception()  # retrieved: a caller may never await it
        self.windows.clear()
        self.blocked.clear()
        self.open.clear()
        self.sink.on_connection_lost(self, self.close_reason)


async def open_connection(
    sink: StreamSink,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = 5.0,
) -> H2Connection:
    """Connect, exchange SETTINGS, and return a ready connection (ConnectionError if not)."""
    loop = asyncio.get_running_loop()
    factory: Callable[[], H2Connection] = lambda: H2Connection(sink)  # noqa: E731
    try:
        _, proto = await asyncio.wait_for(
            loop.create_connection(
                factory,
                host,
                port,
                ssl=ssl_context,
                server_hostname=(server_hostname or host) if ssl_context else None,
            ),
            timeout,
        )
        sock = proto.transport.get_extra_info("socket") if proto.transport else None
        if sock is not None:
            import socket

            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None and proto.transport is not None:
            sslobj = proto.transport.get_extra_info("ssl_object")
            if sslobj is not None and sslobj.selected_alpn_protocol() not in (None, "h2"):
                proto.close()
                raise ConnectionError(
                    f"{host}:{port} did not agree to HTTP/2 over TLS "
                    f"(ALPN {sslobj.selected_alpn_protocol()!r})"
                )
        await asyncio.wait_for(asyncio.shield(proto.ready), timeout)
    except TimeoutError:
        raise ConnectionError(f"{host}:{port}: no HTTP/2 answer within {timeout:g}s") from None
    except OSError as exc:
        raise ConnectionError(f"{host}:{port}: {exc.strerror or exc}") from None
    except ssl.SSLError as exc:
        raise ConnectionError(f"{host}:{port}: TLS failed: {exc.reason or exc}") from None
    return proto
