"""HTTP/2 frames, the codec half of the client (`volley.wire.h2` is the connection).

RFC 9113 constants (frame types, flags, settings, error codes) and limits we hold the
peer to; frame encoding; HPACK encoding of our request headers (literals, never
indexed) and a length-only scan for blocks that change the decoder's table; what a
response header block says (`HeaderInfo`); gRPC's status mappings of HTTP statuses and
RST_STREAM codes. Pure functions and constants: no I/O, no state.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from volley import records as rc

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
FRAME_NAMES = (
    "DATA",
    "HEADERS",
    "PRIORITY",
    "RST_STREAM",
    "SETTINGS",
    "PUSH_PROMISE",
    "PING",
    "GOAWAY",
    "WINDOW_UPDATE",
    "CONTINUATION",
)
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
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 11
ERROR_NAMES = {
    NO_ERROR: "NO_ERROR",
    PROTOCOL_ERROR: "PROTOCOL_ERROR",
    INTERNAL_ERROR: "INTERNAL_ERROR",
    FLOW_CONTROL_ERROR: "FLOW_CONTROL_ERROR",
    STREAM_CLOSED: "STREAM_CLOSED",
    FRAME_SIZE_ERROR: "FRAME_SIZE_ERROR",
    REFUSED_STREAM: "REFUSED_STREAM",
    CANCEL: "CANCEL",
    COMPRESSION_ERROR: "COMPRESSION_ERROR",
    ENHANCE_YOUR_CALM: "ENHANCE_YOUR_CALM",
}

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_WINDOW = 2**31 - 1
#: Stream ids are 31-bit and never reused: a connection this close to the end retires.
MAX_STREAM_ID = 2**31 - 1 - 2 * 65536
#: The receive window we grant (per stream and, by WINDOW_UPDATE, per connection).
RECV_WINDOW = 1 << 30
#: The largest frame payload we accept: the default SETTINGS_MAX_FRAME_SIZE (we send none).
MAX_RECV_FRAME = 16384
#: The largest header block (HEADERS + CONTINUATION, compressed) we accept.
MAX_HEADER_BLOCK = 1 << 20
#: How many streams we reset are remembered (frames still in flight on them are ignored).
RESET_MEMORY = 1024

_FRAME = struct.Struct(">BHBBI")  # length (24 bits as 1+2 bytes), type, flags, stream id
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")


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

    def __init__(self, fields: Iterable[tuple[bytes, bytes]]) -> None:
        self.http_status = 0
        self.grpc_status = -1
        self.grpc_message = ""
        self.encoding = ""
        self.ok_type = True
        for name, value in fields:
            if name == b":status":
                try:
                    self.http_status = int(value)
                except ValueError:
                    self.http_status = -1
            elif name == b"grpc-status":
                try:
                    self.grpc_status = int(value)
                except ValueError:
                    self.grpc_status = rc.UNKNOWN
            elif name == b"grpc-message":
                self.grpc_message = _percent_decode(value)
            elif name == b"grpc-encoding":
                self.encoding = value.decode("latin-1")
            elif name == b"content-type":
                self.ok_type = value.startswith(b"application/grpc")


def _percent_decode(value: bytes) -> str:
    """grpc-message: percent-encoded UTF-8."""
    if b"%" not in value:
        return value.decode("utf-8", "replace")
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(value).decode("utf-8", "replace")


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
    if code == ENHANCE_YOUR_CALM:
        return rc.RESOURCE_EXHAUSTED
    return rc.INTERNAL


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
