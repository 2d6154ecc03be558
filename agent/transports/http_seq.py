"""HTTP/1.1 (KServe v2 REST) for sequence steps: each request's head and body are its own
(volley/wire/seqframe.py `http_step`); the rest is `Http`'s."""

from __future__ import annotations

from typing import Any

from agent.transports.base import Call
from agent.transports.http import H1Conn, Http


class HttpSequence(Http):
    """`send_step(key, intended, pidx, (head, body))`: one step of the sequence `key`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bodies: dict[int, tuple[bytes, bytes]] = {}
        #: never read over HTTP (sequence.check is gRPC's)
        self.value: int | None = None

    def send_step(self, key: int, intended: int, pidx: int, request: tuple[bytes, bytes]) -> None:
        self.bodies[key] = request
        self.send(key, intended, pidx)

    def _start(self, conn: H1Conn, key: int, intended: int, pidx: int) -> None:
        sent = self.clock() - self.start
        self.busy[conn] = None
        st = Call(key, intended, sent, pidx, sent + self.timeout_ns)
        head, body = self.bodies.pop(key)
        conn.send(st, head, body)

    def fail_soon(self, key: int, intended: int, pidx: int, status: int) -> None:
        self.bodies.pop(key, None)
        super().fail_soon(key, intended, pidx, status)

    def abort_all(self, status: int) -> None:
        super().abort_all(status)
        self.bodies.clear()
