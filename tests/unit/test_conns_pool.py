"""Held connections against servers on loopback: the HTTP/1.1 pool stays at its cap
(its `--connections` share, else the in-flight share) and the requests beyond it wait,
counted; held connections take turns; a refused and an accepted-then-closed connection
are counted apart from request errors, by kind, for HTTP/1.1 and HTTP/2."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

from agent.conns import worker_plan
from agent.transports.grpc_unary import GrpcUnary
from agent.transports.http import Http
from volley import records as rc
from volley.conns import ConnErrorKind
from volley.plan import Plan, plan_from_dict
from volley.target import TargetAccess
from volley.wire.payloads import build_payloads

BODY = json.dumps({"outputs": [{"name": "Y"}]}).encode()
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY


def _plan(port: int, protocol: str, **extra: Any) -> Plan:
    return plan_from_dict(
        {
            "target": f"127.0.0.1:{port}",
            "model": "add",
            "protocol": protocol,
            "load": {"rate": 10, "duration": "1s"},
            "inputs": [{"name": "A", "datatype": "FP32", "shape": [4]}],
            "outputs": ["Y"],
            **extra,
        }
    )


async def _slow_server(delay_s: float) -> tuple[asyncio.Server, list[int], set[int]]:
    """An HTTP/1.1 server answering each request after `delay_s`; counts connections
    (total, and those open at once) and which connection served each request."""
    opened: list[int] = [0, 0]  # total, peak open
    live: set[int] = set()
    served: set[int] = set()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        me = opened[0]
        opened[0] += 1
        live.add(me)
        opened[1] = max(opened[1], len(live))
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                n = next(
                    int(x.split(b":")[1])
                    for x in head.split(b"\r\n")
                    if x.lower().startswith(b"content-length:")
                )
                await r.readexactly(n)
                await asyncio.sleep(delay_s)
                served.add(me)
                w.write(ANSWER)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            live.discard(me)
            w.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), opened, served


async def _burst(
    n: int, cap: int = 0, **plan: Any
) -> tuple[Http, list[tuple[int, ...]], list[int], set[int]]:
    """`n` requests sent at once through an HTTP pool (its cap: `cap_pool(cap)` when
    given) to a server answering each after 50 ms; (transport, completions, opened, served)."""
    server, opened, served = await _slow_server(0.05)
    port = server.sockets[0].getsockname()[1]
    p = worker_plan(_plan(port, "http", **plan), 0, 1, 0)
    done: list[tuple[int, ...]] = []
    tp = Http(p, build_payloads(p), lambda *a: done.append(a), time.monotonic_ns, 0, TargetAccess())
    if cap:
        tp.cap_pool(cap)
    try:
        await tp.open()
        for key in range(n):
            tp.send(key, 0, 0)
        for _ in range(400):  # bounded: 4 s at most
            if len(done) == n:
                break
            await asyncio.sleep(0.01)
        tp.note_held()
        await tp.close()
    finally:
        server.close()
        await server.wait_closed()
    return tp, done, opened, served


async def test_held_http_connections_cap_the_pool_and_requests_wait_counted() -> None:
    tp, done, opened, served = await _burst(20, connections_total=4)
    assert [d[4] for d in done] == [rc.OK] * 20
    f = tp.figures
    assert opened == [4, 4] and (f.wanted, f.opened, f.held) == (4, 4, 4)
    assert f.waited == 16 and f.errors_total == 0  # 4 went at once, 16 waited for one
    assert served == {0, 1, 2, 3}  # every held connection carried requests


async def test_without_connections_the_pool_stops_at_the_workers_in_flight_share() -> None:
    tp, done, opened, _ = await _burst(20, cap=6)
    assert [d[4] for d in done] == [rc.OK] * 20
    assert opened[0] == 6 and tp.figures.waited == 14


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_refused_connections_are_counted_by_kind_for_both_protocols() -> None:
    port = _closed_port()
    for protocol, cls in (("http", Http), ("grpc", GrpcUnary)):
        plan = worker_plan(_plan(port, protocol, connections_total=3), 0, 1, 0)
        tp = cls(plan, build_payloads(plan), lambda *a: None, time.monotonic_ns, 0, TargetAccess())
        await tp.open()
        await tp.close()
        f = tp.figures
        assert f.errors == {ConnErrorKind.REFUSED: 3} and f.opened == 0, protocol
        assert tp.connect_errors == 3


async def test_an_http2_connection_accepted_then_closed_is_a_reset() -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()  # a proxy out of connections: accepted by the kernel, closed at once

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    plan = worker_plan(_plan(port, "grpc", connections_total=2), 0, 1, 0)
    tp = GrpcUnary(
        plan, build_payloads(plan), lambda *a: None, time.monotonic_ns, 0, TargetAccess()
    )
    try:
        await tp.open()
        await tp.close()
    finally:
        server.close()
        await server.wait_closed()
    assert tp.figures.errors == {ConnErrorKind.RESET: 2} and tp.figures.held == 0
