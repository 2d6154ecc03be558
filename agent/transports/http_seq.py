"""HTTP/1.1 (KServe v2 REST) for sequence steps: each request's head and body are its own
(volley/wire/seqframe.py `http_step`); the rest is `Http`'s."""

from __future__ import annotations

from agent.transports.base import Call
from agent.transports.http import H1Call, H1Conn, Http
from volley.plan import Plan
from volley.target import TargetAccess


class HttpSequence(Http):
    """`send_step(key, intended, pidx, (head, body))`: one step of the sequence `key`."""

    def setup(self, plan: Plan, access: TargetAccess) -> None:
        super().setup(plan, access)
        self.bodies: dict[int, tuple[bytes, bytes]] = {}
        #: never read over HTTP (sequence.check is gRPC's)
        self.value: int | None = None

    def send_step(self, key: int, intended: int, pidx: int, request: tuple[bytes, bytes]) -> None:
        self.bodies[key] = request
        self.send(key, intended, pidx)

    def _start(self, conn: H1Conn, key: int, intended: int, pidx: int, tries: int = 0) -> None:
        sent = self.clock() - self.start
        self.busy[conn] = None
        st = H1Call(key, intended, sent, pidx, sent + self.timeout_ns, tries + 1)
        # kept until the call finishes: a transparent retry sends the same step again
        head, body = self.bodies[key]
        conn.send(st, head, body)

    def _finish(self, call: Call, status: int, resp_bytes: int) -> None:
        self.bodies.pop(call.key, None)
        super()._finish(call, status, resp_bytes)

    def fail_soon(self, key: int, intended: int, pidx: int, status: int) -> None:
        self.bodies.pop(key, None)
        super().fail_soon(key, intended, pidx, status)

    def abort_all(self, status: int) -> None:
        super().abort_all(status)
        self.bodies.clear()
