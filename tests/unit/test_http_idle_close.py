"""A server closing an idle HTTP/1.1 keep-alive connection (uvicorn after 5 s) is not a
reset: counted in `idle_closed` and reopened on demand, and a connections sweep does not
fail a step for it. A close sooner after the last answer (nginx reclaiming connections)
stays a reset. The transport's clock is a fake one the test moves."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

from agent.transports.http import Http
from coordinator.sweep.conns import connection_reasons
from tests.unit.test_http_recycle import _read_request, one_user_plan
from volley import records as rc
from volley.conns import ConnFigures, describe, from_proto, run_connections, to_proto
from volley.target import TargetAccess
from volley.wire.payloads import build_payloads

BODY = json.dumps({"outputs": [{"name": "Y"}]}).encode()
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY


class FakeClock:
    def __init__(self) -> None:
        self.ns = 1_000_000_000

    def __call__(self) -> int:
        return self.ns


async def _until(cond: object, what: str) -> None:
    for _ in range(400):  # bounded: 2 s at most
        if callable(cond) and cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def _idle_then_closed(
    idle_s: float, close_on_second: bool, reset: bool = False
) -> tuple[Http, list[tuple[int, ...]], int]:
    """Request 0 is answered on connection 0; the connection then sits idle `idle_s`
    (fake clock) and the server closes it: at once (`close_on_second` False), or as
    request 1 arrives on it (the close racing the write); with `reset`, by a TCP reset
    (SO_LINGER 0) instead of a close. Request 1 then goes out."""
    conns = 0
    close_now = asyncio.Event()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal conns
        me = conns
        conns += 1
        try:
            while await _read_request(r):
                if me == 0 and close_on_second and served[0]:
                    break  # request 1 arrived: closed unanswered
                w.write(ANSWER)
                await w.drain()
                served[0] += me == 0
                if me == 0 and not close_on_second:
                    await close_now.wait()
                    break
        finally:
            if reset:
                sock = w.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.close()

    served = [0]
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    plan = one_user_plan(server.sockets[0].getsockname()[1])
    clock = FakeClock()
    done: list[tuple[int, ...]] = []
    tp = Http(plan, build_payloads(plan), lambda *a: done.append(a), clock, 0, TargetAccess())
    try:
        await tp.open()
        tp.send(0, 0, 0)
        await _until(lambda: len(done) == 1, "the first answer")
        clock.ns += int(idle_s * 1e9)
        if not close_on_second:
            close_now.set()
            await _until(lambda: tp.total == 0, "the server's close")
        tp.send(1, 1, 0)
        await _until(lambda: len(done) == 2, "the second answer")
        tp.note_held()
    finally:
        await tp.close()
        await asyncio.sleep(0.02)
        server.close()
        await server.wait_closed()
    return tp, done, conns


async def test_an_idle_connection_closed_at_the_keep_alive_timeout_is_not_a_reset() -> None:
    tp, done, conns = await _idle_then_closed(5.0, close_on_second=False)
    assert [(d[0], d[4]) for d in done] == [(0, rc.OK), (1, rc.OK)]
    f = tp.figures
    assert (f.idle_closed, f.resets_received, f.errors_total) == (1, 0, 0)
    assert conns == 2 and tp.reconnects == 1 and tp.retried == 0  # reopened on demand
    assert connection_reasons(f.block(), 1) == []  # a sweep step does not fail for it
    assert "1 idle closed by the server" in describe(f.block())


async def test_an_idle_connection_the_server_resets_stays_a_reset() -> None:
    """However long it sat idle, a reset with nothing on the connection is not its
    keep-alive timeout (a proxy dropping held connections under pressure)."""
    tp, done, _ = await _idle_then_closed(5.0, close_on_second=False, reset=True)
    assert [(d[0], d[4]) for d in done] == [(0, rc.OK), (1, rc.OK)]
    assert (tp.figures.idle_closed, tp.figures.resets_received) == (0, 1)


async def test_a_close_soon_after_the_last_answer_stays_a_reset() -> None:
    tp, done, _ = await _idle_then_closed(0.2, close_on_second=False)
    assert [(d[0], d[4]) for d in done] == [(0, rc.OK), (1, rc.OK)]
    f = tp.figures
    assert (f.idle_closed, f.resets_received) == (0, 1)
    assert connection_reasons(f.block(), 1) == ["1 held connections reset or closed by the server"]


async def test_a_request_written_as_the_keep_alive_close_came_is_retried_not_a_reset() -> None:
    tp, done, conns = await _idle_then_closed(5.0, close_on_second=True)
    assert [(d[0], d[1], d[4]) for d in done] == [(0, 0, rc.OK), (1, 1, rc.OK)]
    f = tp.figures
    assert (f.idle_closed, f.resets_received, tp.retried) == (1, 0, 1)
    assert conns == 2


async def test_the_same_race_on_a_busy_connection_stays_a_reset() -> None:
    tp, done, _ = await _idle_then_closed(0.0, close_on_second=True)
    assert [(d[0], d[4]) for d in done] == [(0, rc.OK), (1, rc.OK)]
    assert (tp.figures.idle_closed, tp.figures.resets_received, tp.retried) == (0, 1, 1)


def test_idle_closed_merges_and_crosses_the_control_plane() -> None:
    a, b = ConnFigures(wanted=1, idle_closed=2), ConnFigures(wanted=1, idle_closed=3)
    block = run_connections([from_proto(to_proto(f)) for f in (a, b)])
    assert block is not None and block["idle_closed"] == 5 and block["resets_received"] == 0


async def test_a_send_from_inside_a_completion_finds_the_connection_that_just_freed() -> None:
    """The worker's ride-along sends the next arrival from inside a completion: the
    connection that answered is back in the pool by then, so one connection carries
    them all and nothing is counted as waiting for a connection."""
    conns = 0

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        try:
            while await _read_request(r):
                w.write(ANSWER)
                await w.drain()
        finally:
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    plan = one_user_plan(server.sockets[0].getsockname()[1])
    done: list[tuple[int, ...]] = []

    def on_done(*a: int) -> None:
        done.append(a)
        if len(done) < 5:
            tp.send(len(done), len(done), 0)  # the next one, from inside the completion

    tp = Http(plan, build_payloads(plan), on_done, FakeClock(), 0, TargetAccess())
    try:
        await tp.open()
        tp.send(0, 0, 0)
        await _until(lambda: len(done) == 5, "five answers")
    finally:
        await tp.close()
        server.close()
        await server.wait_closed()
    assert [d[4] for d in done] == [rc.OK] * 5
    assert conns == 1 and tp.figures.waited == 0
