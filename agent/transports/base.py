"""Transports: how one worker's requests reach the target, built from the plan.

- `GrpcUnary`: one ModelInfer call (HTTP/2 stream) per request, on `connections`
  HTTP/2 connections (volley/wire/h2.py).
- `GrpcStream`: Triton's bidirectional ModelStreamInfer, one long-lived stream per
  connection carrying many requests; responses are matched by the request `id`.
- `Http`: KServe v2 REST with the binary tensor extension over HTTP/1.1 keep-alive
  connections (agent/transports/http.py), one request at a time per connection.

The worker calls `send(key, intended, pidx)` at each arrival; when the request is over
(response checked, error, reset or timed out) the transport calls
`complete(key, intended, sent, done, status, pidx, resp_bytes)` from the event loop.
No task, future or timer is made per request: state is one small `__slots__` record
per request in flight (`Call`, or a transport's subclass of it), and timeouts are
found by a periodic `sweep()` over in-flight requests in send order (all have the
same timeout, so the oldest are checked first).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from volley.conns import ConnFigures
from volley.plan import Plan
from volley.target import TargetAccess, client_ssl_context, target_host_port
from volley.wire.payloads import Payloads

log = logging.getLogger("volley.agent.transport")

#: complete(key, intended, sent, done, status, pidx, resp_bytes)
Complete = Callable[[int, int, int, int, int, int, int], None]
Clock = Callable[[], int]
#: note_stream(first, last, responses, tokens, gaps): a streaming request's figures,
#: called just before its `complete` (the worker's RecordBuffer.note_stream)
NoteStream = Callable[[int, int, int, int, list[int]], None]


def _no_note(first: int, last: int, responses: int, tokens: int, gaps: list[int]) -> None:
    pass


class Call:
    """One request in flight: what `complete` reports, and when it times out (ns).

    Measured on CPython 3.11: a record costs 0.14-0.19 µs more per request than the
    positional list it replaced (creation; reads and updates cost the same), within the
    noise of the in-process unary path (~7.5-10 µs per request without the socket)."""

    __slots__ = ("deadline", "intended", "key", "pidx", "sent")

    def __init__(self, key: int, intended: int, sent: int, pidx: int, deadline: int) -> None:
        self.key = key
        self.intended = intended
        self.sent = sent
        self.pidx = pidx
        self.deadline = deadline


# ---- base ------------------------------------------------------------------------------
class Transport:
    """Common plumbing: connections slots, reconnects with back-off, completions."""

    def __init__(
        self,
        plan: Plan,
        payloads: Payloads,
        complete: Complete,
        clock: Clock,
        start_ns: int,
        access: TargetAccess,
    ) -> None:
        self.plan = plan
        #: header values and TLS material, in memory (agent/service.py: never read here)
        self.access = access
        self.wires = payloads.wires
        self.complete = complete
        self.clock = clock
        self.start = start_ns
        self.timeout_ns = int(plan.timeout_s * 1e9)
        self.host, self.port = target_host_port(plan)
        self.ssl: ssl.SSLContext | None = None
        if plan.tls is not None:
            self.ssl = client_ssl_context(plan.tls, access, self.alpn())
        self.server_name = (plan.tls.server_name if plan.tls else "") or None
        self.n_conns = plan.connections
        #: where a streaming transport notes a request's figures (set by the worker)
        self.note_stream: NoteStream = _no_note
        #: the output whose elements a streaming transport counts as tokens
        self.token_output = plan.stream.token_output
        self.in_flight = 0
        self.closing = False
        self.loop = asyncio.get_running_loop()
        self._connecting: set[int] = set()
        self._next_try = [0.0] * self.n_conns
        self._backoff = [0.05] * self.n_conns
        #: short reason of the last connection failure (for the worker's report)
        self.last_error = ""
        self.errors_logged = 0
        #: requests sent again because the server never processed them (GOAWAY past
        #: them, REFUSED_STREAM, a reused HTTP/1.1 connection closed before any answer)
        self.retried = 0
        #: connections opened to replace one the server closed or drained
        self.reconnects = 0
        #: connection attempts that failed (refused, reset, TLS, timed out): counted apart
        #: from request errors
        self.connect_errors = 0
        #: `--connections N`: the worker's share is opened before the start and held
        self.fixed = plan.connections_total > 0
        #: what happened to the connections (volley/conns.py), by kind
        self.figures = ConnFigures(wanted=self.n_conns)
        self.setup(plan, access)

    def setup(self, plan: Plan, access: TargetAccess) -> None:
        """A transport's own state, made once the common state above is (each subclass
        calls its parent's first): one constructor signature for every transport."""

    def alpn(self) -> list[str] | None:
        return None

    def now(self) -> int:
        return self.clock() - self.start

    def open_count(self) -> int:
        """Connections open now (overridden)."""
        return 0

    def note_held(self) -> None:
        """The load is over: how many connections are still held."""
        self.figures.held = self.open_count()

    def conn_figures(self) -> ConnFigures:
        if not self.closing:
            self.figures.held = self.open_count()
        return self.figures

    def cap_pool(self, worker_cap: int) -> None:
        """The worker's share of the in-flight cap (0: none): a pool sized on demand
        grows no further (agent/transports/http.py)."""

    def connect_done(self, t0: int, exc: BaseException | None) -> None:
        """A connection attempt begun at clock `t0` succeeded (exc None) or failed."""
        if exc is None:
            self.figures.connected(self.clock() - t0)
        else:
            self.figures.failed(exc)

    def fail_soon(self, key: int, intended: int, pidx: int, status: int) -> None:
        """A request that could not be sent: completed on the next loop turn (so a closed
        loop never recurses), sent = done = now."""
        t = self.clock() - self.start
        self.in_flight += 1
        self.loop.call_soon(self._fail_cb, key, intended, t, status, pidx)

    def _fail_cb(self, key: int, intended: int, t: int, status: int, pidx: int) -> None:
        self.in_flight -= 1
        self.complete(key, intended, t, self.clock() - self.start, status, pidx, 0)

    def _finish(self, call: Call, status: int, resp_bytes: int) -> None:
        """`call` is over: report it."""
        self.in_flight -= 1
        self.complete(
            call.key,
            call.intended,
            call.sent,
            self.clock() - self.start,
            status,
            call.pidx,
            resp_bytes,
        )

    def _want_connect(self, slot: int) -> None:
        if self.closing or slot in self._connecting:
            return
        if self.loop.time() < self._next_try[slot]:
            return
        self._connecting.add(slot)
        self.loop.create_task(self._connect(slot))

    async def _connect(self, slot: int) -> None:
        try:
            await self.connect_slot(slot)
            self._backoff[slot] = 0.05
        except (ConnectionError, OSError) as exc:
            self.last_error = str(exc)
            self.connect_errors += 1
            if self.errors_logged < 5:
                self.errors_logged += 1
                log.warning("connection to %s failed: %s", self.plan.target, exc)
            self.note_backoff(slot)
            self._connecting.discard(slot)
            self.connect_failed()
        finally:
            self._connecting.discard(slot)

    def note_backoff(self, slot: int) -> None:
        """`slot`'s next connection waits its back-off, which doubles (to 1 s)."""
        self._next_try[slot] = self.loop.time() + self._backoff[slot]
        self._backoff[slot] = min(self._backoff[slot] * 2, 1.0)

    def connecting(self) -> bool:
        """A connection is being opened (requests may wait for it)."""
        return bool(self._connecting)

    def connect_failed(self) -> None:
        """A connection attempt failed (overridden: requests waiting for one may fail)."""

    async def open(self) -> None:
        """Open every connection (failures are retried as requests come)."""
        await asyncio.gather(*(self._connect(i) for i in range(self.n_conns)))

    def cork(self) -> None:
        """Several requests are about to be sent at once (one wake-up): a transport that
        can, holds their bytes until `uncork` and writes them together."""

    def uncork(self) -> None:
        """Write what `cork` held."""

    # overridden
    async def connect_slot(self, slot: int) -> None:
        raise NotImplementedError

    def send(self, key: int, intended: int, pidx: int) -> None:
        raise NotImplementedError

    def sweep(self) -> None:
        raise NotImplementedError

    def abort_all(self, status: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError
