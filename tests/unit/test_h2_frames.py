"""volley.wire.h2 frame by frame: raw server bytes into `data_received`, exact frames
and sink callbacks out. A fake asyncio transport records what the client writes."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Iterable
from typing import NamedTuple

import pytest
from hpack import Encoder
from tritonclient.grpc import service_pb2

from agent.transports.grpc_stream import GrpcStream
from agent.transports.grpc_unary import GrpcUnary, UnaryConn
from volley import records as rc
from volley.plan import plan_from_dict
from volley.target import TargetAccess
from volley.wire import h2
from volley.wire.grpc import grpc_frame
from volley.wire.h2 import ConnState, HeaderInfo
from volley.wire.payloads import build_payloads

BLOCK = h2.encode_headers("http", "t:1", "/p", [("te", "trailers")], set())
END = h2.END_HEADERS | h2.END_STREAM


class Frame(NamedTuple):
    type: int
    flags: int
    sid: int
    payload: bytes


def parse(buf: bytes) -> list[Frame]:
    if buf.startswith(h2.PREFACE):
        buf = buf[len(h2.PREFACE) :]
    out, pos = [], 0
    while pos < len(buf):
        hi, lo, ftype, flags, sid = struct.unpack_from(">BHBBI", buf, pos)
        n = (hi << 16) | lo
        out.append(Frame(ftype, flags, sid, bytes(buf[pos + 9 : pos + 9 + n])))
        pos += 9 + n
    assert pos == len(buf), "a partial frame was written"
    return out


def settings(*pairs: tuple[int, int]) -> bytes:
    return b"".join(struct.pack(">HI", k, v) for k, v in pairs)


def u32(*values: int) -> bytes:
    return b"".join(struct.pack(">I", v) for v in values)


class FakeTransport:
    """The parts of asyncio.Transport the connection calls."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, items: Iterable[bytes]) -> None:
        for data in items:
            self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def take(self) -> list[Frame]:
        frames = parse(bytes(self.out))
        self.out.clear()
        return frames


Event = tuple[object, ...]


class Sink:
    """Records every callback, in order; `on_writable` is only counted."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.writable = 0

    def on_headers(self, conn: h2.H2Connection, sid: int, info: HeaderInfo, end: bool) -> None:
        self.events.append(("headers", sid, info.http_status, info.grpc_status, end))

    def on_data(self, conn: h2.H2Connection, sid: int, data: bytes, end: bool) -> None:
        self.events.append(("data", sid, data, end))

    def on_reset(self, conn: h2.H2Connection, sid: int, grpc_status: int, message: str) -> None:
        self.events.append(("reset", sid, grpc_status, message))

    def on_refused(self, conn: h2.H2Connection, sid: int, message: str) -> None:
        self.events.append(("refused", sid, message))

    def on_goaway(self, conn: h2.H2Connection) -> None:
        self.events.append(("goaway",))

    def on_connection_lost(self, conn: h2.H2Connection, message: str) -> None:
        self.events.append(("lost", message))

    def on_writable(self, conn: h2.H2Connection) -> None:
        self.writable += 1

    def take(self) -> list[Event]:
        events, self.events = self.events, []
        return events


class Peer:
    """A client connection and the server side of it, in one object."""

    def __init__(self, server_settings: bytes = b"") -> None:
        self.t = FakeTransport()
        self.sink = Sink()
        self.conn = h2.H2Connection(self.sink)
        self.enc = Encoder()
        self.conn.connection_made(self.t)  # type: ignore[arg-type]
        self.t.out.clear()
        self.feed(h2.frame(h2.SETTINGS, 0, 0, server_settings))
        assert self.t.take() == [Frame(h2.SETTINGS, h2.ACK, 0, b"")]
        assert self.conn.state is ConnState.OPEN

    def feed(self, *frames: bytes) -> None:
        self.conn.data_received(b"".join(frames))

    def block(self, fields: list[tuple[str, str]]) -> bytes:
        return bytes(self.enc.encode(fields))

    def response(self, sid: int, body: bytes, status: str = "0") -> bytes:
        return (
            h2.frame(h2.HEADERS, h2.END_HEADERS, sid, self.block(RESPONSE))
            + h2.frame(h2.DATA, 0, sid, body)
            + h2.frame(h2.HEADERS, END, sid, self.block([("grpc-status", status)]))
        )

    def start(self, body: bytes = b"x", end: bool = True) -> int:
        sid = self.conn.start_stream(BLOCK, body, end)
        self.t.take()
        return sid

    def assert_connection_error(self, code: int, *fragments: str) -> None:
        """GOAWAY(last 0, code) written, the transport closed, the sink told once."""
        frames = self.t.take()
        assert [f.type for f in frames] == [h2.GOAWAY], frames
        last, got = struct.unpack_from(">II", frames[0].payload)
        assert (last, h2.ERROR_NAMES[got]) == (0, h2.ERROR_NAMES[code])
        assert self.t.closed
        assert self.conn.state is ConnState.CLOSED
        lost = [e for e in self.sink.take() if e[0] == "lost"]
        assert len(lost) == 1, lost
        message = str(lost[0][1])
        assert "\n" not in message and h2.ERROR_NAMES[code] in message
        for fragment in fragments:
            assert fragment in message, message
        # nothing more happens on a closed connection
        self.feed(h2.frame(h2.PING, 0, 0, b"12345678"))
        assert self.t.take() == [] and self.sink.take() == []


RESPONSE = [(":status", "200"), ("content-type", "application/grpc")]


# ---- connection start -------------------------------------------------------------------
async def test_preface_settings_and_acks() -> None:
    t, sink = FakeTransport(), Sink()
    conn = h2.H2Connection(sink)
    assert conn.state is ConnState.CONNECTING and not conn.usable
    conn.connection_made(t)  # type: ignore[arg-type]
    assert bytes(t.out).startswith(h2.PREFACE)
    assert t.take() == [
        Frame(
            h2.SETTINGS,
            0,
            0,
            settings((h2.S_ENABLE_PUSH, 0), (h2.S_INITIAL_WINDOW_SIZE, 1 << 30), (6, 1 << 20)),
        ),
        Frame(h2.WINDOW_UPDATE, 0, 0, u32((1 << 30) - 65535)),
    ]
    # the server's SETTINGS, in two pieces
    raw = h2.frame(h2.SETTINGS, 0, 0, settings((h2.S_MAX_CONCURRENT_STREAMS, 100)))
    conn.data_received(raw[:5])
    assert t.take() == [] and conn.state is ConnState.CONNECTING and not conn.ready.done()
    conn.data_received(raw[5:])
    assert t.take() == [Frame(h2.SETTINGS, h2.ACK, 0, b"")]
    assert conn.state is ConnState.OPEN and conn.usable and conn.ready.done()
    assert conn.max_streams == 100
    conn.data_received(h2.frame(h2.SETTINGS, h2.ACK, 0))  # our SETTINGS acknowledged
    assert t.take() == [] and sink.take() == []


async def test_first_frame_must_be_settings() -> None:
    t, sink = FakeTransport(), Sink()
    conn = h2.H2Connection(sink)
    conn.connection_made(t)  # type: ignore[arg-type]
    t.take()
    conn.data_received(h2.frame(h2.PING, 0, 0, b"12345678"))
    frames = t.take()
    assert [f.type for f in frames] == [h2.GOAWAY]
    assert frames[0].payload[:8] == u32(0, h2.PROTOCOL_ERROR)
    assert t.closed and conn.state is ConnState.CLOSED
    assert isinstance(conn.ready.exception(), ConnectionError)
    assert [e[0] for e in sink.take()] == ["lost"]


async def test_an_http1_answer_waits_for_the_close_and_says_so() -> None:
    t, sink = FakeTransport(), Sink()
    conn = h2.H2Connection(sink)
    conn.connection_made(t)  # type: ignore[arg-type]
    t.take()
    conn.data_received(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    conn.data_received(b"more")
    assert t.take() == [] and conn.state is ConnState.CONNECTING
    conn.connection_lost(None)
    ((kind, message),) = sink.take()
    assert kind == "lost" and "closed by the server" in str(message)
    assert "HTTP/1.1 400 Bad Request" in str(message)
    assert conn.state is ConnState.CLOSED


# ---- settings -----------------------------------------------------------------------------
async def test_initial_window_size_applies_to_open_streams() -> None:
    p = Peer()
    sid = p.start(b"", end=False)  # a bidirectional stream
    assert p.conn.windows[sid] == 65535
    # two INITIAL_WINDOW_SIZE entries in one frame: the last wins, the delta is applied once
    p.feed(
        h2.frame(
            h2.SETTINGS,
            0,
            0,
            settings((h2.S_INITIAL_WINDOW_SIZE, 1000), (h2.S_INITIAL_WINDOW_SIZE, 70000)),
        )
    )
    assert p.t.take() == [Frame(h2.SETTINGS, h2.ACK, 0, b"")]
    assert p.conn.windows[sid] == 70000 and p.conn.init_window == 70000
    p.feed(h2.frame(h2.SETTINGS, 0, 0, settings((h2.S_INITIAL_WINDOW_SIZE, 0))))
    assert p.conn.windows[sid] == 0
    p.t.take()
    p.conn.send_data(sid, b"abc")
    assert p.t.take() == []  # no window: queued
    p.feed(h2.frame(h2.SETTINGS, 0, 0, settings((h2.S_INITIAL_WINDOW_SIZE, 2))))
    assert p.t.take() == [
        Frame(h2.SETTINGS, h2.ACK, 0, b""),
        Frame(h2.DATA, 0, sid, b"ab"),
    ]


@pytest.mark.parametrize("max_frame", [16384, 20000])
async def test_data_is_cut_at_max_frame_size(max_frame: int) -> None:
    p = Peer(settings((h2.S_MAX_FRAME_SIZE, max_frame), (h2.S_INITIAL_WINDOW_SIZE, 1 << 20)))
    p.feed(h2.frame(h2.WINDOW_UPDATE, 0, 0, u32(1 << 20)))
    body = bytes(range(256)) * 200  # 51200 bytes
    sid = p.conn.start_stream(BLOCK, body, True)
    frames = p.t.take()
    assert frames[0] == Frame(h2.HEADERS, h2.END_HEADERS, sid, BLOCK)
    sizes = [len(f.payload) for f in frames[1:]]
    assert all(f.type == h2.DATA and f.sid == sid for f in frames[1:])
    assert max(sizes) == max_frame and sum(sizes) == len(body)
    assert [f.flags for f in frames[1:]] == [0] * (len(sizes) - 1) + [h2.END_STREAM]
    assert b"".join(f.payload for f in frames[1:]) == body


async def test_a_small_body_goes_out_with_its_headers() -> None:
    p = Peer()
    sid = p.conn.start_stream(BLOCK, b"hello", True)
    assert p.t.take() == [
        Frame(h2.HEADERS, h2.END_HEADERS, sid, BLOCK),
        Frame(h2.DATA, h2.END_STREAM, sid, b"hello"),
    ]
    assert p.conn.conn_window == 65535 - 5 and sid not in p.conn.windows
    sid2 = p.conn.start_stream(BLOCK, b"", True)
    assert sid2 == sid + 2
    assert p.t.take() == [Frame(h2.HEADERS, END, sid2, BLOCK)]


# ---- responses ----------------------------------------------------------------------------
async def test_a_whole_response() -> None:
    p = Peer()
    sid = p.start()
    p.feed(p.response(sid, b"\x00\x00\x00\x00\x02hi"))
    assert p.sink.take() == [
        ("headers", sid, 200, -1, False),
        ("data", sid, b"\x00\x00\x00\x00\x02hi", False),
        ("headers", sid, 0, 0, True),
    ]
    assert sid not in p.conn.open and p.t.take() == []


async def test_headers_and_continuation() -> None:
    p = Peer()
    sid = p.start()
    block = p.block(RESPONSE)
    p.feed(
        h2.frame(h2.HEADERS, 0, sid, block[:2]),
        h2.frame(h2.CONTINUATION, 0, sid, block[2:4]),
    )
    assert p.sink.take() == []
    p.feed(h2.frame(h2.CONTINUATION, h2.END_HEADERS, sid, block[4:]))
    assert p.sink.take() == [("headers", sid, 200, -1, False)]
    trailers = p.block([("grpc-status", "0")])
    # END_STREAM rides on HEADERS; the block ends in a CONTINUATION
    p.feed(
        h2.frame(h2.HEADERS, h2.END_STREAM, sid, trailers[:1]),
        h2.frame(h2.CONTINUATION, h2.END_HEADERS, sid, trailers[1:]),
    )
    assert p.sink.take() == [("headers", sid, 0, 0, True)]
    assert sid not in p.conn.open


async def test_a_frame_inside_a_header_block_is_a_connection_error() -> None:
    p = Peer()
    sid = p.start()
    block = p.block(RESPONSE)
    p.feed(h2.frame(h2.HEADERS, 0, sid, block[:2]), h2.frame(h2.DATA, 0, sid, b"x"))
    p.assert_connection_error(h2.PROTOCOL_ERROR, "CONTINUATION")


async def test_padding_on_data_and_headers() -> None:
    p = Peer()
    sid = p.start()
    block = p.block(RESPONSE)
    # HEADERS with padding and priority: pad length, 5 priority bytes, block, padding
    padded = bytes((4,)) + b"\x00\x00\x00\x00\x10" + block + b"\x00" * 4
    p.feed(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.PADDED | h2.PRIORITY_FLAG, sid, padded))
    p.feed(h2.frame(h2.DATA, h2.PADDED, sid, bytes((3,)) + b"body" + b"\x00" * 3))
    p.feed(h2.frame(h2.DATA, h2.PADDED, sid, bytes((0,)) + b"!"))
    p.feed(h2.frame(h2.DATA, h2.PADDED | h2.END_STREAM, sid, bytes((2,)) + b"\x00\x00"))
    assert p.sink.take() == [
        ("headers", sid, 200, -1, False),
        ("data", sid, b"body", False),
        ("data", sid, b"!", False),
        ("data", sid, b"", True),
    ]
    # flow control counts whole frames, padding and pad length included
    assert p.conn._recv_unacked == 8 + 2 + 3
    assert p.t.take() == []


async def test_trailers_only_response() -> None:
    p = Peer()
    sid = p.start()
    fields = [(":status", "200"), ("grpc-status", "5"), ("grpc-message", "no%20such%20model")]
    seen: list[HeaderInfo] = []
    p.sink.on_headers = lambda conn, s, info, end: seen.append(info)  # type: ignore[method-assign]
    p.feed(h2.frame(h2.HEADERS, END, sid, p.block(fields)))
    assert [(i.http_status, i.grpc_status, i.grpc_message) for i in seen] == [
        (200, 5, "no such model")
    ]
    assert sid not in p.conn.open and p.t.take() == []


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (h2.CANCEL, rc.CANCELLED),
        (h2.ENHANCE_YOUR_CALM, rc.RESOURCE_EXHAUSTED),
        (h2.INTERNAL_ERROR, rc.INTERNAL),
        (h2.NO_ERROR, rc.INTERNAL),
    ],
)
async def test_rst_stream_maps_to_a_grpc_status(code: int, status: int) -> None:
    p = Peer()
    sid = p.start()
    other = p.start()
    p.feed(h2.frame(h2.RST_STREAM, 0, sid, u32(code)))
    assert p.sink.take() == [
        ("reset", sid, status, f"stream reset by the server ({h2.ERROR_NAMES[code]})")
    ]
    assert sid not in p.conn.open and other in p.conn.open
    assert p.t.take() == []
    p.feed(h2.frame(h2.RST_STREAM, 0, sid, u32(code)))  # again: the stream is closed
    assert p.sink.take() == [] and p.t.take() == []
    assert p.conn.state is ConnState.OPEN


async def test_goaway_drains_then_closes() -> None:
    p = Peer()
    s1, s3, s5 = p.start(), p.start(), p.start()
    assert (s1, s3, s5) == (1, 3, 5)
    p.feed(h2.frame(h2.GOAWAY, 0, 0, u32(3, h2.NO_ERROR) + b"bye\nnow"))
    # announced first (the owner opens a fresh connection), then the stream it never
    # processed is handed back as refused, not failed
    assert p.sink.take() == [("goaway",), ("refused", 5, "server sent GOAWAY (NO_ERROR: bye now)")]
    assert p.conn.state is ConnState.DRAINING
    assert not p.conn.usable and not p.conn.has_capacity
    assert set(p.conn.open) == {1, 3} and not p.t.closed
    # a second GOAWAY cannot raise the last stream id
    p.feed(h2.frame(h2.GOAWAY, 0, 0, u32(7, h2.NO_ERROR)))
    assert p.conn.goaway_last == 3 and p.sink.take() == []
    p.feed(p.response(3, b"a"))
    assert [e[:2] for e in p.sink.take()] == [("headers", 3), ("data", 3), ("headers", 3)]
    assert not p.t.closed
    p.feed(p.response(1, b"b"))
    assert [e[:2] for e in p.sink.take()] == [("headers", 1), ("data", 1), ("headers", 1)]
    assert p.t.closed and p.conn.state is ConnState.DRAINING  # closing: waits for the loop
    p.conn.connection_lost(None)
    assert p.conn.state is ConnState.CLOSED
    assert p.sink.take() == [("lost", "server sent GOAWAY (NO_ERROR)")]
    assert p.t.take() == []


async def test_goaway_with_no_open_stream_closes_at_once() -> None:
    p = Peer()
    p.feed(h2.frame(h2.GOAWAY, 0, 0, u32(0, h2.ENHANCE_YOUR_CALM)))
    assert p.t.closed and p.conn.state is ConnState.DRAINING and p.t.take() == []
    # nothing is written on a closing transport, errors included
    p.feed(h2.frame(h2.PING, 0, 0, b"12345678"), h2.frame(h2.DATA, 0, 0, b"x"))
    assert p.t.take() == [] and p.conn.state is ConnState.CLOSED


async def test_ping_is_answered() -> None:
    p = Peer()
    p.feed(h2.frame(h2.PING, 0, 0, b"8 bytes!"))
    assert p.t.take() == [Frame(h2.PING, h2.ACK, 0, b"8 bytes!")]
    p.feed(h2.frame(h2.PING, h2.ACK, 0, b"8 bytes!"))
    assert p.t.take() == []


async def test_unknown_frame_types_are_ignored() -> None:
    p = Peer()
    p.feed(h2.frame(0x42, 0xFF, 0, b"whatever"), h2.frame(0x42, 0, 1, b""))
    assert p.t.take() == [] and p.sink.take() == [] and p.conn.state is ConnState.OPEN


# ---- flow control -------------------------------------------------------------------------
async def test_a_body_larger_than_the_window_waits_for_window_update() -> None:
    p = Peer()
    body = (bytes(range(256)) * 400)[:100_000]
    sid = p.conn.start_stream(BLOCK, body, True)
    frames = p.t.take()
    assert frames[0].type == h2.HEADERS and frames[0].flags == h2.END_HEADERS
    assert [len(f.payload) for f in frames[1:]] == [16384, 16384, 16384, 16383]
    assert all(f.flags == 0 for f in frames[1:])
    sent = b"".join(f.payload for f in frames[1:])
    assert p.conn.conn_window == 0 and p.conn.windows[sid] == 0
    # the connection window alone is not enough
    p.feed(h2.frame(h2.WINDOW_UPDATE, 0, 0, u32(50_000)))
    assert p.t.take() == []
    # a new stream queues behind the blocked one
    sid2 = p.conn.start_stream(BLOCK, b"later", True)
    assert p.t.take() == [Frame(h2.HEADERS, h2.END_HEADERS, sid2, BLOCK)]
    writable = p.sink.writable
    p.feed(h2.frame(h2.WINDOW_UPDATE, 0, sid, u32(30_000)))
    frames = p.t.take()
    assert [(f.type, f.sid, len(f.payload), f.flags) for f in frames] == [
        (h2.DATA, sid, 16384, 0),
        (h2.DATA, sid, 30_000 - 16384, 0),
    ]
    sent += b"".join(f.payload for f in frames)
    assert p.conn.windows[sid] == 0 and p.conn.conn_window == 20_000
    assert p.sink.writable == writable  # still blocked
    p.feed(h2.frame(h2.WINDOW_UPDATE, 0, sid, u32(10_000)))
    frames = p.t.take()
    assert [(f.type, f.sid, len(f.payload), f.flags) for f in frames] == [
        (h2.DATA, sid, 100_000 - 65535 - 30_000, h2.END_STREAM),
        (h2.DATA, sid2, 5, h2.END_STREAM),
    ]
    assert sent + frames[0].payload == body and frames[1].payload == b"later"
    assert not p.conn.blocked and p.sink.writable == writable + 1


async def test_receive_windows_are_given_back(monkeypatch: pytest.MonkeyPatch) -> None:
    p = Peer()
    monkeypatch.setattr(h2, "RECV_WINDOW", 40_000)  # threshold: half, 20 000 bytes
    sid = p.start(b"", end=False)
    chunk = bytes(15_000)
    p.feed(h2.frame(h2.DATA, 0, sid, chunk))
    assert p.t.take() == []
    p.feed(h2.frame(h2.DATA, 0, sid, chunk))
    assert p.t.take() == [
        Frame(h2.WINDOW_UPDATE, 0, 0, u32(30_000)),
        Frame(h2.WINDOW_UPDATE, 0, sid, u32(30_000)),
    ]
    # a stream that ends is not given window back; the connection still is
    p.feed(h2.frame(h2.DATA, 0, sid, chunk), h2.frame(h2.DATA, h2.END_STREAM, sid, chunk))
    assert p.t.take() == [Frame(h2.WINDOW_UPDATE, 0, 0, u32(30_000))]
    assert [e[0] for e in p.sink.take()] == ["data"] * 4


async def test_max_concurrent_streams_queues_requests_in_the_transport() -> None:
    plan = plan_from_dict(
        {
            "target": "127.0.0.1:8001",
            "model": "add",
            "load": {"rate": 10, "duration": "1s"},
            "inputs": [{"name": "A", "datatype": "FP32", "shape": [4]}],
            "outputs": ["Y"],
        }
    )
    payloads = build_payloads(plan)
    done: list[tuple[int, ...]] = []
    tp = GrpcUnary(plan, payloads, lambda *a: done.append(a), time.monotonic_ns, 0, TargetAccess())
    t = FakeTransport()
    conn: UnaryConn = h2.Connection(tp)
    conn.connection_made(t)  # type: ignore[arg-type]
    conn.data_received(h2.frame(h2.SETTINGS, 0, 0, settings((h2.S_MAX_CONCURRENT_STREAMS, 2))))
    conn.slot = 0
    tp.conns[0] = conn
    t.take()
    for key in range(3):
        tp.send(key, 0, 0)
    assert [(f.type, f.sid) for f in t.take() if f.type == h2.HEADERS] == [
        (h2.HEADERS, 1),
        (h2.HEADERS, 3),
    ]
    assert not conn.has_capacity and len(tp.waiting) == 1 and tp.in_flight == 3
    enc = Encoder()
    msg = service_pb2.ModelInferResponse(
        outputs=[service_pb2.ModelInferResponse.InferOutputTensor(name="Y")]
    ).SerializeToString()
    conn.data_received(
        h2.frame(h2.HEADERS, h2.END_HEADERS, 3, enc.encode(RESPONSE))
        + h2.frame(h2.DATA, 0, 3, grpc_frame(msg, "none"))
        + h2.frame(h2.HEADERS, END, 3, enc.encode([("grpc-status", "0")]))
    )
    assert [(d[0], d[4], d[6]) for d in done] == [(1, rc.OK, len(msg))]
    assert [(f.type, f.sid) for f in t.take()] == [(h2.HEADERS, 5), (h2.DATA, 5)]
    assert not tp.waiting and tp.in_flight == 2
    # the server resets one, the connection drops: every call completes once
    conn.data_received(h2.frame(h2.RST_STREAM, 0, 1, u32(h2.INTERNAL_ERROR)))
    conn.connection_lost(None)
    assert [(d[0], d[4]) for d in done] == [(1, rc.OK), (0, rc.INTERNAL), (2, rc.UNAVAILABLE)]
    assert tp.in_flight == 0 and tp.conns[0] is None
    assert tp.last_error == "connection closed by the server"


# ---- malformed frames: connection errors ------------------------------------------------
def _hdrs(flags: int, payload: bytes, sid: int = 1) -> bytes:
    return h2.frame(h2.HEADERS, flags, sid, payload)


CONNECTION_ERRORS: list[tuple[str, bytes, int]] = [
    ("PADDED HEADERS, empty", _hdrs(h2.END_HEADERS | h2.PADDED, b""), h2.FRAME_SIZE_ERROR),
    ("PADDED HEADERS, pad too long", _hdrs(h2.PADDED, b"\x05abc"), h2.PROTOCOL_ERROR),
    ("HEADERS, short priority", _hdrs(h2.PRIORITY_FLAG, b"\x00\x00"), h2.FRAME_SIZE_ERROR),
    (
        "PADDED+PRIORITY HEADERS, pad into priority",
        _hdrs(h2.PADDED | h2.PRIORITY_FLAG, b"\x03" + bytes(7)),
        h2.PROTOCOL_ERROR,
    ),
    ("PADDED DATA, empty", h2.frame(h2.DATA, h2.PADDED, 1, b""), h2.FRAME_SIZE_ERROR),
    ("PADDED DATA, pad = length", h2.frame(h2.DATA, h2.PADDED, 1, b"\x03ab"), h2.PROTOCOL_ERROR),
    ("HEADERS on stream 0", _hdrs(h2.END_HEADERS, b"\x88", 0), h2.PROTOCOL_ERROR),
    (
        "HEADERS on stream 0, block open",
        _hdrs(0, b"\x88", 0) + h2.frame(h2.DATA, 0, 1, b"x"),
        h2.PROTOCOL_ERROR,
    ),
    ("DATA on stream 0", h2.frame(h2.DATA, 0, 0, b"x"), h2.PROTOCOL_ERROR),
    ("RST_STREAM on stream 0", h2.frame(h2.RST_STREAM, 0, 0, u32(8)), h2.PROTOCOL_ERROR),
    ("PRIORITY on stream 0", h2.frame(h2.PRIORITY, 0, 0, bytes(5)), h2.PROTOCOL_ERROR),
    ("CONTINUATION without HEADERS", h2.frame(h2.CONTINUATION, 4, 1, b"\x88"), h2.PROTOCOL_ERROR),
    (
        "CONTINUATION on another stream",
        _hdrs(0, b"\x88") + h2.frame(h2.CONTINUATION, 4, 3, b""),
        h2.PROTOCOL_ERROR,
    ),
    ("DATA on a stream never opened", h2.frame(h2.DATA, 0, 9, b"x"), h2.PROTOCOL_ERROR),
    ("DATA on an even stream", h2.frame(h2.DATA, 0, 2, b"x"), h2.PROTOCOL_ERROR),
    ("HEADERS on a stream never opened", _hdrs(h2.END_HEADERS, b"\x88", 9), h2.PROTOCOL_ERROR),
    ("RST_STREAM on a stream never opened", h2.frame(3, 0, 9, u32(8)), h2.PROTOCOL_ERROR),
    ("WINDOW_UPDATE on a stream never opened", h2.frame(8, 0, 9, u32(1)), h2.PROTOCOL_ERROR),
    ("hpack: index past the tables", _hdrs(h2.END_HEADERS, b"\xff\x80\x01"), h2.COMPRESSION_ERROR),
    ("hpack: truncated literal", _hdrs(h2.END_HEADERS, b"\x00\x05ab"), h2.COMPRESSION_ERROR),
    ("SETTINGS of 5 bytes", h2.frame(h2.SETTINGS, 0, 0, bytes(5)), h2.FRAME_SIZE_ERROR),
    ("SETTINGS ACK with payload", h2.frame(h2.SETTINGS, h2.ACK, 0, bytes(6)), h2.FRAME_SIZE_ERROR),
    ("SETTINGS on a stream", h2.frame(h2.SETTINGS, 0, 1, b""), h2.PROTOCOL_ERROR),
    (
        "SETTINGS window over 2^31-1",
        h2.frame(h2.SETTINGS, 0, 0, settings((h2.S_INITIAL_WINDOW_SIZE, 2**31))),
        h2.FLOW_CONTROL_ERROR,
    ),
    (
        "SETTINGS frame size too small",
        h2.frame(h2.SETTINGS, 0, 0, settings((h2.S_MAX_FRAME_SIZE, 100))),
        h2.PROTOCOL_ERROR,
    ),
    (
        "SETTINGS ENABLE_PUSH 2",
        h2.frame(h2.SETTINGS, 0, 0, settings((h2.S_ENABLE_PUSH, 2))),
        h2.PROTOCOL_ERROR,
    ),
    ("WINDOW_UPDATE of 0", h2.frame(h2.WINDOW_UPDATE, 0, 0, u32(0)), h2.PROTOCOL_ERROR),
    (
        "WINDOW_UPDATE overflow",
        h2.frame(h2.WINDOW_UPDATE, 0, 0, u32(2**31 - 1)),
        h2.FLOW_CONTROL_ERROR,
    ),
    ("WINDOW_UPDATE of 3 bytes", h2.frame(h2.WINDOW_UPDATE, 0, 1, bytes(3)), h2.FRAME_SIZE_ERROR),
    ("RST_STREAM of 3 bytes", h2.frame(h2.RST_STREAM, 0, 1, bytes(3)), h2.FRAME_SIZE_ERROR),
    ("PING on a stream", h2.frame(h2.PING, 0, 1, bytes(8)), h2.PROTOCOL_ERROR),
    ("PING of 7 bytes", h2.frame(h2.PING, 0, 0, bytes(7)), h2.FRAME_SIZE_ERROR),
    ("GOAWAY on a stream", h2.frame(h2.GOAWAY, 0, 1, bytes(8)), h2.PROTOCOL_ERROR),
    ("GOAWAY of 4 bytes", h2.frame(h2.GOAWAY, 0, 0, bytes(4)), h2.FRAME_SIZE_ERROR),
    ("PUSH_PROMISE", h2.frame(h2.PUSH_PROMISE, 4, 1, u32(2) + b"\x88"), h2.PROTOCOL_ERROR),
    ("oversize frame, header only", h2.frame_header(16385, h2.DATA, 0, 1), h2.FRAME_SIZE_ERROR),
    (
        "header block over 1 MiB",
        _hdrs(0, b"")
        + h2.frame(h2.CONTINUATION, 0, 1, bytes(16384)) * 64
        + h2.frame(h2.CONTINUATION, 0, 1, b"\x00"),
        h2.ENHANCE_YOUR_CALM,
    ),
]


@pytest.mark.parametrize(
    ("raw", "code"), [c[1:] for c in CONNECTION_ERRORS], ids=[c[0] for c in CONNECTION_ERRORS]
)
async def test_malformed_frames_are_connection_errors(raw: bytes, code: int) -> None:
    p = Peer()
    sid = p.start()
    assert sid == 1
    p.feed(raw)  # never raises
    p.assert_connection_error(code)


async def test_data_past_the_connection_window(monkeypatch: pytest.MonkeyPatch) -> None:
    p = Peer()
    monkeypatch.setattr(h2, "RECV_WINDOW", 10_000)
    sid = p.start()
    p.feed(h2.frame(h2.DATA, 0, sid, bytes(10_001)))
    p.assert_connection_error(h2.FLOW_CONTROL_ERROR, "connection window")


async def test_a_sink_that_raises_ends_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    p = Peer()
    sid = p.start()

    def boom(*args: object) -> None:
        raise KeyError("oops")

    p.sink.on_data = boom  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, "volley.wire.h2"):
        p.feed(h2.frame(h2.DATA, 0, sid, b"x"))
    p.assert_connection_error(h2.INTERNAL_ERROR, "KeyError")
    assert "failed reading a frame" in caplog.text


# ---- malformed frames: stream errors ----------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (h2.frame(h2.WINDOW_UPDATE, 0, 1, u32(0)), h2.PROTOCOL_ERROR),
        (h2.frame(h2.WINDOW_UPDATE, 0, 1, u32(2**31 - 1)), h2.FLOW_CONTROL_ERROR),
        (h2.frame(h2.PRIORITY, 0, 1, bytes(4)), h2.FRAME_SIZE_ERROR),
    ],
    ids=["WINDOW_UPDATE of 0", "WINDOW_UPDATE overflow", "PRIORITY of 4 bytes"],
)
async def test_malformed_stream_frames_are_stream_errors(raw: bytes, code: int) -> None:
    p = Peer()
    sid = p.start(b"", end=False)
    other = p.start()
    p.feed(raw)
    assert p.t.take() == [Frame(h2.RST_STREAM, 0, sid, u32(code))]
    ((kind, s, status, message),) = p.sink.take()
    assert (kind, s, status) == ("reset", sid, rc.INTERNAL)
    assert str(message).startswith("HTTP/2 stream error: ")
    assert sid not in p.conn.open and other in p.conn.open
    assert p.conn.state is ConnState.OPEN and not p.t.closed


async def test_stream_past_its_receive_window() -> None:
    p = Peer()
    sid = p.start(b"", end=False)
    p.conn.open[sid] = h2.RECV_WINDOW - 10  # as if that much came unacknowledged
    p.feed(h2.frame(h2.DATA, 0, sid, bytes(11)))
    assert p.t.take() == [Frame(h2.RST_STREAM, 0, sid, u32(h2.FLOW_CONTROL_ERROR))]
    assert [e[:3] for e in p.sink.take()] == [("reset", sid, rc.INTERNAL)]


async def test_frames_on_closed_streams() -> None:
    p = Peer()
    sid = p.start()
    p.feed(p.response(sid, b"done"))
    p.sink.take()
    # the server closed it (END_STREAM), then sends more: RST_STREAM(STREAM_CLOSED), once
    p.feed(h2.frame(h2.DATA, 0, sid, b"late"), h2.frame(h2.DATA, 0, sid, b"later"))
    assert p.t.take() == [Frame(h2.RST_STREAM, 0, sid, u32(h2.STREAM_CLOSED))]
    # a stream we reset: what the server had already sent is ignored, headers decoded
    sid2 = p.start()
    p.conn.reset_stream(sid2)
    assert p.t.take() == [Frame(h2.RST_STREAM, 0, sid2, u32(h2.CANCEL))]
    p.feed(p.response(sid2, b"too late"))
    assert p.t.take() == [] and p.sink.take() == []
    # the HPACK table stayed in step: a later response decodes
    sid3 = p.start()
    p.feed(p.response(sid3, b"ok"))
    assert [e[:2] for e in p.sink.take()] == [("headers", sid3), ("data", sid3), ("headers", sid3)]
    assert p.conn.state is ConnState.OPEN


# ---- opening over a socket ------------------------------------------------------------------
async def test_open_connection_failures_close_the_socket() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(w)

    async def http1(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(64)  # all the client sends: closing leaves nothing unread
        w.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
        await w.drain()
        w.close()

    async def http2(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(h2.frame(h2.SETTINGS, 0, 0))
        accepted.append(w)

    for handler in (silent, http1, http2):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sink = Sink()
        try:
            if handler is http2:
                conn = await h2.open_connection(sink, "127.0.0.1", port, timeout=2.0)
                assert conn.state is ConnState.OPEN and conn.usable
                conn.close()
                assert conn.state is ConnState.CLOSED
                assert sink.take() == [("lost", "closed")]
                continue
            with pytest.raises(ConnectionError) as err:
                await h2.open_connection(sink, "127.0.0.1", port, timeout=0.3)
            if handler is silent:
                assert "no HTTP/2 answer within 0.3s" in str(err.value)
                assert sink.take() == [("lost", "closed")]  # closed, not left open
            else:
                assert "closed by the server" in str(err.value)
                assert "HTTP/1.1 400" in str(err.value)
        finally:
            for w in accepted:
                w.close()
            accepted.clear()
            server.close()
            await server.wait_closed()


# ---- GOAWAY and REFUSED_STREAM: transparent retry, fresh connections -----------------------
async def test_rst_refused_stream_is_handed_back_not_failed() -> None:
    p = Peer()
    sid, other = p.start(), p.start()
    p.feed(h2.frame(h2.RST_STREAM, 0, sid, u32(h2.REFUSED_STREAM)))
    assert p.sink.take() == [("refused", sid, "stream refused by the server")]
    assert sid not in p.conn.open and other in p.conn.open and p.conn.state is ConnState.OPEN


class Server:
    """The server side of each connection a transport opens (fake transports, no sockets)."""

    def __init__(self, max_streams: int = 100) -> None:
        self.max_streams = max_streams
        self.conns: list[tuple[UnaryConn, FakeTransport]] = []
        self.enc: list[Encoder] = []

    async def open(self, sink: GrpcUnary, *args: object, **kw: object) -> UnaryConn:
        t = FakeTransport()
        conn: UnaryConn = h2.Connection(sink)
        conn.connection_made(t)  # type: ignore[arg-type]
        conn.data_received(
            h2.frame(h2.SETTINGS, 0, 0, settings((h2.S_MAX_CONCURRENT_STREAMS, self.max_streams)))
        )
        t.take()
        self.conns.append((conn, t))
        self.enc.append(Encoder())
        return conn

    def sent(self, i: int) -> list[tuple[int, int]]:
        """(frame type, stream id) of what the client wrote on connection i."""
        return [(f.type, f.sid) for f in self.conns[i][1].take()]

    def feed(self, i: int, *frames: bytes) -> None:
        self.conns[i][0].data_received(b"".join(frames))

    def ok(self, i: int, sid: int, msg: bytes) -> bytes:
        enc = self.enc[i]
        return (
            h2.frame(h2.HEADERS, h2.END_HEADERS, sid, enc.encode(RESPONSE))
            + h2.frame(h2.DATA, 0, sid, grpc_frame(msg, "none"))
            + h2.frame(h2.HEADERS, END, sid, enc.encode([("grpc-status", "0")]))
        )


def _add_plan(transport: str = "unary") -> dict[str, object]:
    return {
        "target": "127.0.0.1:8001",
        "model": "add",
        "transport": transport,
        "load": {"rate": 10, "duration": "1s"},
        "inputs": [{"name": "A", "datatype": "FP32", "shape": [4]}],
        "outputs": ["Y"],
    }


INFER_OK = service_pb2.ModelInferResponse(
    outputs=[service_pb2.ModelInferResponse.InferOutputTensor(name="Y")]
).SerializeToString()


async def _unary(
    monkeypatch: pytest.MonkeyPatch, server: Server
) -> tuple[GrpcUnary, list[tuple[int, ...]]]:
    from agent.transports import grpc_unary

    monkeypatch.setattr(grpc_unary.h2, "open_connection", server.open)
    plan = plan_from_dict(_add_plan())
    done: list[tuple[int, ...]] = []
    tp = GrpcUnary(
        plan, build_payloads(plan), lambda *a: done.append(a), time.monotonic_ns, 0, TargetAccess()
    )
    await tp.open()
    server.sent(0)
    return tp, done


async def test_goaway_resends_unprocessed_calls_on_a_fresh_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = Server()
    tp, done = await _unary(monkeypatch, server)
    for key in range(3):
        tp.send(key, 1000 + key, 0)
    assert [s for s in server.sent(0) if s[0] == h2.HEADERS] == [(1, 1), (1, 3), (1, 5)]
    # the server will process stream 1 only: 3 and 5 are handed back, a fresh connection
    # is being opened at once, and they wait for it with a request arriving meanwhile
    server.feed(0, h2.frame(h2.GOAWAY, 0, 0, u32(1, h2.NO_ERROR) + b"max requests"))
    assert tp.connecting() and len(tp.waiting) == 2 and tp.in_flight == 3
    tp.send(3, 1003, 0)
    assert len(tp.waiting) == 3 and done == []
    await asyncio.sleep(0)  # the connect task runs
    await asyncio.sleep(0)
    assert len(server.conns) == 2 and not tp.waiting
    assert [s for s in server.sent(1) if s[0] == h2.HEADERS] == [(1, 1), (1, 3), (1, 5)]
    assert (tp.retried, tp.reconnects) == (2, 1)
    # stream 1 finishes on the draining connection, which then closes
    server.feed(0, server.ok(0, 1, INFER_OK))
    assert server.conns[0][1].closed
    server.conns[0][0].connection_lost(None)
    for sid in (1, 3, 5):
        server.feed(1, server.ok(1, sid, INFER_OK))
    # every call once, OK, each with its own original intended time
    assert sorted((d[0], d[1], d[4]) for d in done) == [(k, 1000 + k, rc.OK) for k in range(4)]
    assert tp.in_flight == 0 and tp.draining == []


async def test_processed_then_reset_calls_stay_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server()
    tp, done = await _unary(monkeypatch, server)
    for key in range(2):
        tp.send(key, key, 0)
    server.sent(0)
    server.feed(0, h2.frame(h2.GOAWAY, 0, 0, u32(3, h2.NO_ERROR)))  # both were taken
    assert tp.retried == 0 and not tp.waiting
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(server.conns) == 2 and tp.draining == [server.conns[0][0]]
    server.feed(0, h2.frame(h2.RST_STREAM, 0, 1, u32(h2.INTERNAL_ERROR)))
    server.conns[0][0].connection_lost(ConnectionResetError("reset by peer"))
    assert sorted((d[0], d[4]) for d in done) == [(0, rc.INTERNAL), (1, rc.UNAVAILABLE)]
    assert tp.retried == 0 and tp.in_flight == 0 and tp.draining == []


async def test_a_server_that_always_refuses_fails_after_max_tries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agent.transports.grpc_unary import MAX_TRIES

    server = Server()
    tp, done = await _unary(monkeypatch, server)
    tp.send(7, 5, 0)
    for attempt in range(MAX_TRIES):
        sids = [s for t, s in server.sent(0) if t == h2.HEADERS]
        assert len(sids) == 1, attempt
        assert done == []
        server.feed(0, h2.frame(h2.RST_STREAM, 0, sids[0], u32(h2.REFUSED_STREAM)))
    assert [(d[0], d[1], d[4]) for d in done] == [(7, 5, rc.UNAVAILABLE)]
    assert tp.retried == MAX_TRIES - 1 and tp.in_flight == 0 and server.sent(0) == []


def _stream_response(rid: int) -> bytes:
    r = service_pb2.ModelStreamInferResponse(
        infer_response=service_pb2.ModelInferResponse(
            id=str(rid), outputs=[service_pb2.ModelInferResponse.InferOutputTensor(name="Y")]
        )
    )
    return grpc_frame(r.SerializeToString(), "none")


async def _stream(
    monkeypatch: pytest.MonkeyPatch, server: Server
) -> tuple[GrpcStream, list[tuple[int, ...]]]:
    from agent.transports import grpc_unary

    monkeypatch.setattr(grpc_unary.h2, "open_connection", server.open)
    plan = plan_from_dict(_add_plan("stream"))
    done: list[tuple[int, ...]] = []
    tp = GrpcStream(
        plan, build_payloads(plan), lambda *a: done.append(a), time.monotonic_ns, 0, TargetAccess()
    )
    await tp.open()
    server.sent(0)
    return tp, done


async def test_stream_ids_of_a_draining_and_a_fresh_connection_never_collide(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = Server()
    tp, done = await _stream(monkeypatch, server)
    tp.send(0, 0, 0)
    tp.send(1, 1, 0)  # request ids 1 and 2 on connection 0, stream 1
    assert server.sent(0) == [(h2.HEADERS, 1), (h2.DATA, 1), (h2.DATA, 1)]
    server.feed(0, h2.frame(h2.GOAWAY, 0, 0, u32(1, h2.NO_ERROR)))  # stream 1 is taken
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    tp.send(2, 2, 0)  # request id 3: on the fresh connection, whose stream is also 1
    assert server.sent(1) == [(h2.HEADERS, 1), (h2.DATA, 1)]
    # the old stream answers request 1; the new one answers request 3
    enc0, enc1 = server.enc
    server.feed(
        0,
        h2.frame(h2.HEADERS, h2.END_HEADERS, 1, enc0.encode(RESPONSE)),
        h2.frame(h2.DATA, 0, 1, _stream_response(1)),
    )
    server.feed(
        1,
        h2.frame(h2.HEADERS, h2.END_HEADERS, 1, enc1.encode(RESPONSE)),
        h2.frame(h2.DATA, 0, 1, _stream_response(3)),
    )
    assert sorted((d[0], d[4]) for d in done) == [(0, rc.OK), (2, rc.OK)]
    # the last answer on the draining stream: our side of it ends, then the server's
    server.feed(0, h2.frame(h2.DATA, 0, 1, _stream_response(2)))
    assert server.sent(0) == [(h2.DATA, 1)]  # the empty END_STREAM
    server.feed(0, h2.frame(h2.HEADERS, END, 1, enc0.encode([("grpc-status", "0")])))
    server.conns[0][0].connection_lost(None)
    assert sorted((d[0], d[4]) for d in done) == [(0, rc.OK), (1, rc.OK), (2, rc.OK)]
    assert (tp.retried, tp.reconnects, tp.in_flight) == (0, 1, 0)
    tp.send(3, 3, 0)  # the fresh connection's stream carries on
    assert server.sent(1) == [(h2.DATA, 1)]


async def test_a_refused_stream_sends_its_requests_again(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server()
    tp, done = await _stream(monkeypatch, server)
    tp.send(0, 10, 0)
    tp.send(1, 11, 0)
    server.sent(0)
    server.feed(0, h2.frame(h2.GOAWAY, 0, 0, u32(0, h2.NO_ERROR)))  # stream 1 never taken
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert server.sent(1) == [(h2.HEADERS, 1), (h2.DATA, 1), (h2.DATA, 1)]
    enc1 = server.enc[1]
    server.feed(
        1,
        h2.frame(h2.HEADERS, h2.END_HEADERS, 1, enc1.encode(RESPONSE)),
        h2.frame(h2.DATA, 0, 1, _stream_response(3) + _stream_response(4)),
    )
    assert sorted((d[0], d[1], d[4]) for d in done) == [(0, 10, rc.OK), (1, 11, rc.OK)]
    assert (tp.retried, tp.reconnects, tp.in_flight) == (2, 1, 0)


async def test_only_unary_calls_carry_the_request_timeout() -> None:
    """A ModelStreamInfer stream outlives its requests: with `grpc-timeout` on it, Triton
    ended the stream (and the requests then in flight, as DEADLINE_EXCEEDED) every
    `timeout` seconds. Unary calls carry it; the stream's own header block does not."""
    from hpack import Decoder

    plan = plan_from_dict(
        {
            "target": "127.0.0.1:8001",
            "model": "add",
            "load": {"rate": 10, "duration": "1s"},
            "inputs": [{"name": "A", "datatype": "FP32", "shape": [4]}],
            "timeout_s": 3,
        }
    )
    payloads = build_payloads(plan)
    names: dict[str, dict[str, str]] = {}
    for cls in (GrpcUnary, GrpcStream):
        tp = cls(plan, payloads, lambda *a: None, time.monotonic_ns, 0, TargetAccess())
        names[cls.__name__] = dict(Decoder().decode(tp.hblock))
    assert names["GrpcUnary"]["grpc-timeout"] == "3000m"
    assert "grpc-timeout" not in names["GrpcStream"]
    assert names["GrpcStream"][":path"].endswith("/ModelStreamInfer")
