"""Held HTTP/2 connections that go silent: our keep-alive PING unanswered past its
deadline closes the connection (frame by frame through a fake transport, on a clock the
test sets), counted as a `timeout` connection error and replaced after a back-off; and
the same against a real silent peer on loopback (it completes the preface and SETTINGS,
then reads and answers nothing). Also: the grpcio transport's held channels, connected
in the prepare against such a peer, are timed and counted."""

from __future__ import annotations

import asyncio
import socket
import time

from agent.conns import PING_INTERVAL_S, PING_TIMEOUT_S, ping_idle, worker_plan
from agent.transports.grpc_unary import GrpcUnary
from tests.unit.test_h2_frames import FakeTransport, Frame, Peer
from volley import records as rc
from volley.conns import ConnErrorKind
from volley.plan import Plan, plan_from_dict
from volley.target import TargetAccess
from volley.wire import h2
from volley.wire.h2 import ConnState
from volley.wire.payloads import build_payloads


def _pings(t: FakeTransport) -> list[Frame]:
    return [f for f in t.take() if f.type == h2.PING]


async def test_an_answered_ping_keeps_the_connection_and_an_unanswered_one_closes_it() -> None:
    p, q = Peer(), Peer()
    conns: list[h2.H2Connection | None] = [p.conn, q.conn]
    last = [0.0, 0.0]
    ping_idle(conns, PING_INTERVAL_S, last)
    for peer in (p, q):
        assert _pings(peer.t) == [Frame(h2.PING, 0, 0, h2.KEEPALIVE_PING)]
    # p answers (a PING ACK with other data is not ours: it does not count)
    p.feed(h2.frame(h2.PING, h2.ACK, 0, b"other\0\0\0"))
    assert p.conn.ping_sent == PING_INTERVAL_S
    p.feed(h2.frame(h2.PING, h2.ACK, 0, h2.KEEPALIVE_PING))
    assert p.conn.ping_sent == -1.0
    # just before the deadline: nothing closes, no second PING goes while one is out
    ping_idle(conns, PING_INTERVAL_S + PING_TIMEOUT_S - 0.01, last)
    assert p.conn.usable and q.conn.usable and _pings(q.t) == []
    # at the deadline: q, which never answered, is aborted (not closed: a peer that
    # reads nothing would hold a close forever); p is pinged again
    ping_idle(conns, 2 * PING_INTERVAL_S, last)
    assert q.conn.state is ConnState.CLOSED and q.conn.silent and q.t.aborted
    lost = q.sink.take()
    assert len(lost) == 1 and lost[0][0] == "lost" and "no PING ACK" in str(lost[0][1])
    assert p.conn.usable and not p.conn.silent and not p.t.aborted
    assert _pings(p.t) == [Frame(h2.PING, 0, 0, h2.KEEPALIVE_PING)]


async def test_a_busy_connection_is_not_pinged_but_an_outstanding_ping_still_counts() -> None:
    busy, p = Peer(), Peer()
    busy.start(end=False)
    last = [0.0, 0.0]
    ping_idle([busy.conn, p.conn], PING_INTERVAL_S, last)  # only the idle one is pinged
    assert _pings(busy.t) == [] and len(_pings(p.t)) == 1
    last = [0.0]
    sid = p.start()  # then a request: the PING's deadline holds all the same
    ping_idle([p.conn], PING_INTERVAL_S + PING_TIMEOUT_S, last)
    assert p.conn.state is ConnState.CLOSED and p.conn.silent
    events = p.sink.take()
    assert events[-1][0] == "lost" and sid not in p.conn.open


def _plan(port: int) -> Plan:
    return worker_plan(
        plan_from_dict(
            {
                "target": f"127.0.0.1:{port}",
                "model": "add",
                "protocol": "grpc",
                "connections_total": 2,
                "load": {"rate": 10, "duration": "1s"},
                "inputs": [{"name": "A", "datatype": "FP32", "shape": [4]}],
                "outputs": ["Y"],
            }
        ),
        0,
        1,
        0,
    )


class SilentPeer:
    """A loopback server that completes the HTTP/2 preface and SETTINGS exchange, then
    reads and answers nothing (a frozen server, a proxy dropping the flow)."""

    def __init__(self) -> None:
        self.accepted: list[asyncio.StreamWriter] = []
        self.quiet = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        self.quiet.set()
        for w in self.accepted:
            w.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.accepted.append(w)
        await r.readexactly(len(h2.PREFACE))
        w.write(h2.frame(h2.SETTINGS, 0, 0, b"") + h2.frame(h2.SETTINGS, h2.ACK, 0, b""))
        await w.drain()
        await self.quiet.wait()  # silent from here on, until the test ends


async def test_a_real_silent_peer_is_found_counted_as_timeout_and_replaced() -> None:
    """A server that completes the handshake, then stops answering (a frozen process,
    a proxy dropping the flow): both held connections are closed as silent, counted as
    `timeout` connection errors (not resets), and opened again after the back-off."""
    peer = SilentPeer()
    async with peer as port:
        plan = _plan(port)
        done: list[tuple[int, ...]] = []
        tp = GrpcUnary(
            plan,
            build_payloads(plan),
            lambda *a: done.append(a),
            time.monotonic_ns,
            0,
            TargetAccess(),
        )
        await tp.open()
        assert tp.open_count() == 2 and tp.figures.opened == 2
        first = list(tp.conns)
        # the worker's sweeps, on a shifted clock: the PINGs go, then their deadline passes
        tp._pinged = [asyncio.get_running_loop().time() - PING_INTERVAL_S] * 2
        tp.keepalive()
        assert all(c is not None and c.ping_sent >= 0 for c in first)
        tp.send(0, 0, 0)  # a request on a connection whose PING is out: lost with it
        for c in first:
            assert c is not None
            c.ping_sent -= PING_TIMEOUT_S  # as if sent PING_TIMEOUT_S ago
        tp.keepalive()
        assert all(c is not None and c.silent for c in first)
        f = tp.figures
        assert f.errors == {ConnErrorKind.TIMEOUT: 2} and f.resets_received == 0
        assert tp.connect_errors == 2
        # replaced once the back-off is over (the sweeps ask again), bounded: 2 s at most
        for _ in range(200):
            tp.keepalive()
            if tp.open_count() == 2:
                break
            await asyncio.sleep(0.01)
        assert tp.open_count() == 2 and f.opened == 4 and len(peer.accepted) == 4
        assert [d[4] for d in done] == [rc.UNAVAILABLE]
        await tp.close()


async def test_grpcio_held_channels_are_connected_timed_and_counted() -> None:
    """`--transport grpcio` with held connections: its lazy channels are made to connect
    in the prepare, so opened/held/connect time are measured (against a peer that
    completes the HTTP/2 handshake), and a refused target is a connection error."""
    from agent.transports.grpcio import GrpcioUnary

    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    dead = free.getsockname()[1]
    free.close()  # nothing listens there now
    async with SilentPeer() as port:
        for target, held in ((port, 2), (dead, 0)):
            plan = _plan(target)
            tp = GrpcioUnary(
                plan, build_payloads(plan), lambda *a: None, time.monotonic_ns, 0, TargetAccess()
            )
            await tp.open()
            tp.note_held()
            f = tp.figures
            await tp.close()
            assert (f.wanted, f.held, f.opened) == (2, held, held), target
            if held:
                assert f.connect_ns.count == 2 and f.errors == {}
            else:
                assert f.errors == {ConnErrorKind.OTHER: 2} and tp.connect_errors == 2
