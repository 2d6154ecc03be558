"""The HTTP/1.1 transport against a scripted server on loopback: `Connection: close`
retires a connection (a fresh one replaces it: a reconnect), a request written on a
reused connection that the server closes before any answer is sent again (retried),
and a close after part of an answer stays an error."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from agent.transports.http import Http
from volley import records as rc
from volley.plan import Plan, plan_from_dict
from volley.target import TargetAccess
from volley.wire.payloads import build_payloads

BODY = json.dumps({"outputs": [{"name": "Y"}]}).encode()


def _answer(close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(BODY)
        + BODY
    )


async def _read_request(r: asyncio.StreamReader) -> bool:
    """One whole request read (headers and Content-Length body); False at EOF."""
    try:
        head = await r.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False
    n = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":")[1])
    await r.readexactly(n)
    return True


Script = Callable[[int, int], bytes | None]


def one_user_plan(port: int) -> Plan:
    """HTTP/1.1 to 127.0.0.1:`port`, one closed-loop user."""
    return plan_from_dict(
        {
            "target": f"127.0.0.1:{port}",
            "model": "add",
            "protocol": "http",
            "load": {"mode": "closed", "concurrency": 1, "duration": "1s"},
            "inputs": [{"name": "A", "datatype": "FP32", "shape": [4]}],
            "outputs": ["Y"],
        }
    )


async def _run(script: Script, n_requests: int) -> tuple[Http, list[tuple[int, ...]], int]:
    """Send `n_requests` one after another; `script(conn_no, req_no)` says what the server
    does with request req_no on connection conn_no: answer bytes, or None (close)."""
    conns = 0

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal conns
        conn_no = conns
        conns += 1
        req_no = 0
        while await _read_request(r):
            out = script(conn_no, req_no)
            req_no += 1
            if out is None:
                break
            w.write(out)
            await w.drain()
            if b"Connection: close" in out or not out.endswith(BODY):
                break
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    plan = one_user_plan(server.sockets[0].getsockname()[1])
    done: list[tuple[int, ...]] = []
    tp = Http(
        plan, build_payloads(plan), lambda *a: done.append(a), time.monotonic_ns, 0, TargetAccess()
    )
    try:
        await tp.open()
        for key in range(n_requests):
            tp.send(key, key, 0)
            for _ in range(200):
                if len(done) > key:
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.01)  # the server's close reaches us before the next send
    finally:
        await tp.close()
        await asyncio.sleep(0.05)  # the server's handlers see our close and end
        server.close()
        await server.wait_closed()
    return tp, done, conns


async def test_connection_close_retires_the_connection_and_counts_a_reconnect() -> None:
    tp, done, conns = await _run(lambda c, r: _answer(close=r == 1), 6)
    assert [(d[0], d[4]) for d in done] == [(k, rc.OK) for k in range(6)]
    assert conns == 3 and tp.reconnects == 2 and tp.retried == 0


async def test_a_reused_connection_closed_before_any_answer_is_retried() -> None:
    # connection 0 answers once, then closes as the second request arrives (as a server
    # closing an idle keep-alive connection does); connection 1 answers everything
    tp, done, conns = await _run(lambda c, r: None if (c, r) == (0, 1) else _answer(), 3)
    assert [(d[0], d[1], d[4]) for d in done] == [(k, k, rc.OK) for k in range(3)]
    assert (conns, tp.retried, tp.reconnects) == (2, 1, 1)


async def test_a_close_after_part_of_an_answer_is_an_error() -> None:
    def script(c: int, r: int) -> bytes | None:
        return _answer()[:20] if (c, r) == (0, 1) else _answer()

    tp, done, _ = await _run(script, 3)
    assert [(d[0], d[4]) for d in done] == [(0, rc.OK), (1, rc.UNAVAILABLE), (2, rc.OK)]
    assert tp.retried == 0


async def test_a_fresh_connection_closed_without_an_answer_is_an_error() -> None:
    tp, done, _ = await _run(lambda c, r: None if c == 0 else _answer(), 2)
    assert [(d[0], d[4]) for d in done] == [(0, rc.UNAVAILABLE), (1, rc.OK)]
    assert tp.retried == 0
