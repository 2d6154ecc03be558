"""KServe v2 REST over HTTP/1.1 keep-alive connections: the `--protocol http` transport.

Each request is one prebuilt `POST /v2/models/NAME/infer` (binary tensor extension:
JSON header, then raw tensor bytes, `Inference-Header-Content-Length`), written on an
idle connection. HTTP/1.1 has one request at a time per connection, so the pool
opens connections on demand (up to the in-flight cap of the worker) and keeps them;
`connections` are opened up front. Responses are parsed in `data_received`
(Content-Length or chunked bodies), and checked: status 200 and a JSON header that
lists the model's outputs. A request past its timeout closes its connection.

Connection recycling: a response with `Connection: close` (nginx after
`keepalive_requests`) retires its connection and the next request opens a fresh one
(counted in `reconnects`). A request written on a reused connection that the server
closes before any byte of an answer was never processed (the server closed the idle
connection as we wrote): it is sent again with its original intended time, at most
`MAX_TRIES` sends, and counted in `retried`. A close after part of an answer is an error.

Idle closes: a server closing a connection that sat idle `IDLE_CLOSE_S` or more (its
keep-alive timeout: uvicorn 5 s, gunicorn 2 s, nginx 75 s) is not an error: the
connection is reopened on demand (held ones at once) and counted in `idle_closed`, not
in `resets_received`; so is the retried request written as that close came. A close
sooner after the connection's last answer stays a reset (nginx out of
`worker_connections` reclaims idle connections at once: what a connections sweep finds).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import socket
import ssl
import zlib
from typing import cast

from agent.transports.base import Call, Transport
from volley import records as rc
from volley.conns import pool_limit
from volley.plan import Plan
from volley.request import check_http_response
from volley.target import TargetAccess
from volley.wire.http1 import dechunk
from volley.wire.json_service import answer_ok

#: Hard bound on connections per worker (each is a socket and a server slot).
MAX_CONNECTIONS = 1024
MAX_HEAD = 64 * 1024
#: Sends of one request at most (the first and transparent retries).
MAX_TRIES = 4
#: `--connections`: a held connection closed sooner than this after it opened is
#: replaced after a back-off, not at once.
CHURN_S = 1.0
#: A server closing a connection idle at least this long closed it at its keep-alive
#: timeout (`idle_closed`); sooner, it is a reset.
IDLE_CLOSE_S = 1.0


class H1Call(Call):
    """One request in flight on an HTTP/1.1 connection, and how often it was sent."""

    __slots__ = ("tries",)

    def __init__(
        self, key: int, intended: int, sent: int, pidx: int, deadline: int, tries: int
    ) -> None:
        self.key = key
        self.intended = intended
        self.sent = sent
        self.pidx = pidx
        self.deadline = deadline
        self.tries = tries


class H1Conn(asyncio.Protocol):
    """One HTTP/1.1 connection; at most one request in flight."""

    def __init__(self, owner: Http) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.st: H1Call | None = None  #: the request in flight
        self.buf = b""
        self.closed = False
        #: responses completed on this connection (a reused one may be closed under us)
        self.served = 0
        #: when it opened (loop time): a held one closed soon after is churn
        self.opened_at = asyncio.get_running_loop().time()
        #: since when it has had no request on it (the transport's clock, run time, ns)
        self.idle_since = owner.clock() - owner.start
        #: bytes of the answer to the request in flight received so far (any)
        self.answered = False
        #: we closed it (timeout, bad answer, Connection: close), not the server
        self.retired = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # response being parsed
        self.status = 0
        self.head_len = -1
        self.clen = -1
        self.chunked = False
        self.ihcl: int | None = None
        self.encoding = ""
        self.keep = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.ready.done():
            self.ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(str(exc) if exc else "closed"))
            self.ready.exception()
        self.owner.conn_lost(
            self, f"connection lost: {exc}" if exc else "closed by the server", clean=exc is None
        )

    def send(self, st: H1Call, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        self.st = st
        self.head_len = -1
        self.answered = False
        if len(body) < 16384:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))

    def data_received(self, data: bytes) -> None:
        self.answered = True
        buf = self.buf + data if self.buf else data
        if self.st is None:  # nothing asked: a server talking out of turn
            self.abort()
            return
        if self.head_len < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self.fail(rc.BAD_RESPONSE)
                    return
                self.buf = buf
                return
            if not self._parse_head(buf[:end]):
                self.fail(rc.BAD_RESPONSE)
                return
            self.head_len = end + 4
        body_start = self.head_len
        if self.chunked:
            body = dechunk(buf, body_start)
            if body is None:
                self.buf = buf
                return
            if not isinstance(body, bytes):
                self.fail(rc.BAD_RESPONSE)
                return
            rest_at = len(buf)  # chunked bodies end the data we got (no pipelining)
            payload = body
        elif self.clen >= 0:
            rest_at = body_start + self.clen
            if len(buf) < rest_at:
                self.buf = buf
                return
            payload = buf[body_start:rest_at]
        else:  # body until the server closes
            self.buf = buf
            return
        self.buf = b""
        del rest_at
        self._complete(payload)

    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            return False
        try:
            self.status = int(parts[1])
        except ValueError:
            return False
        self.clen, self.chunked, self.ihcl, self.encoding = -1, False, None, ""
        self.keep = parts[0] != b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            v = value.strip()
            if key == b"content-length":
                try:
                    self.clen = int(v)
                except ValueError:
                    return False
            elif key == b"transfer-encoding":
                self.chunked = b"chunked" in v.lower()
            elif key == b"inference-header-content-length":
                with contextlib.suppress(ValueError):
                    self.ihcl = int(v)
            elif key == b"content-encoding":
                self.encoding = v.decode("latin-1").lower()
            elif key == b"connection":
                self.keep = v.lower() != b"close"
        return True

    def _complete(self, body: bytes) -> None:
        st = self.st
        assert st is not None
        self.st = None
        self.served += 1
        status = self.status
        spec = self.owner.json_service
        if spec is not None:  # a plain JSON service: its own notion of a good answer
            if answer_ok(status, body, spec):
                code = rc.OK
            elif 200 <= status < 300 or not 0 < status < 1000:
                code = rc.BAD_RESPONSE
            else:
                code = rc.HTTP_ERROR_BASE + status
            self.owner.finish(self, st, code, len(body))
            return
        if status != 200:
            code = rc.HTTP_ERROR_BASE + status if 0 < status < 1000 else rc.BAD_RESPONSE
            self.owner.finish(self, st, code, len(body))
            return
        data: bytes | None = body
        if self.encoding in ("gzip", "deflate"):
            try:
                data = gzip.decompress(body) if self.encoding == "gzip" else zlib.decompress(body)
            except (OSError, zlib.error, EOFError):
                data = None
        ok = data is not None and check_http_response(
            data, self.ihcl, self.owner.wires[st.pidx].expected_outputs
        )
        self.owner.finish(self, st, rc.OK if ok else rc.BAD_RESPONSE, len(body))

    def fail(self, status: int) -> None:
        st, self.st = self.st, None
        self.abort()
        if st is not None:
            self.owner.finish(self, st, status, 0)

    def abort(self) -> None:
        self.closed = True
        self.retired = True
        if self.transport is not None:
            self.transport.abort()


class Http(Transport):
    """A pool of HTTP/1.1 connections to the target; one request per connection at a time."""

    #: the connection protocol (generate_stream's reads events: agent/transports/http_stream.py)
    conn_type: type[H1Conn] = H1Conn

    def setup(self, plan: Plan, access: TargetAccess) -> None:
        super().setup(plan, access)
        self.heads = [w.head for w in self.wires]
        #: protocol json: the plain JSON service's answer check (None: KServe v2)
        self.json_service = plan.json_service if plan.protocol == "json" else None
        self.idle: list[H1Conn] = []
        self.busy: dict[H1Conn, None] = {}  #: in send order (for timeouts)
        self.opening = 0
        self.total = 0
        #: the pool's cap: the plan's share when fixed, else set by `cap_pool` (the
        #: worker's in-flight share; volley/conns.py `pool_limit`)
        self.limit = pool_limit(plan.connections, self.fixed, 0, MAX_CONNECTIONS)
        #: (key, intended, pidx, sends so far)
        self.waiting: collections.deque[tuple[int, int, int, int]] = collections.deque()
        self._fails = 0
        #: connections the server closed after serving, not yet replaced
        self._owed = 0
        #: back-off before a held connection that served nothing is opened again
        self._regrow_s = 0.05

    def alpn(self) -> list[str] | None:
        return ["http/1.1"]

    def cap_pool(self, worker_cap: int) -> None:
        self.limit = pool_limit(self.n_conns, self.fixed, worker_cap, MAX_CONNECTIONS)

    def open_count(self) -> int:
        return self.total

    async def connect_slot(self, slot: int) -> None:
        conn = await self._open()
        self._idle(conn)

    async def _open(self, reserved: bool = False) -> H1Conn:
        """A new connection; `reserved`: already counted in `opening` (`_spawn_grow`)."""
        loop = self.loop
        if not reserved:
            self.opening += 1
        t0 = self.clock()
        try:
            conn = await self._connect_h1(loop)
        except ConnectionError as exc:
            self.connect_done(t0, exc)
            raise
        self.connect_done(t0, None)
        return conn

    async def _connect_h1(self, loop: asyncio.AbstractEventLoop) -> H1Conn:
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: self.conn_type(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=(self.server_name or self.host) if self.ssl else None,
                ),
                5.0,
            )
        except TimeoutError:
            raise ConnectionError(f"{self.plan.target}: connect timed out") from None
        except OSError as exc:
            raise ConnectionError(f"{self.plan.target}: {exc.strerror or exc}") from None
        except ssl.SSLError as exc:
            raise ConnectionError(f"{self.plan.target}: TLS failed: {exc.reason or exc}") from None
        finally:
            self.opening -= 1
        self.total += 1
        if self._owed:
            self._owed -= 1
            self.reconnects += 1
        return conn

    def _spawn_grow(self) -> None:
        """One more connection, counted in `opening` at once: a burst of sends in one
        wake-up sees it and does not open a connection per request past the cap."""
        self.opening += 1
        self.loop.create_task(self._grow())

    async def _grow(self) -> None:
        try:
            conn = await self._open(reserved=True)
        except ConnectionError as exc:
            self.last_error = str(exc)
            self.connect_errors += 1
            self._fails += 1
            # nothing can carry the waiting requests: they fail (no busy-loop retrying)
            if not self.busy and not self.idle and not self.opening:
                self._fail_waiting(rc.UNAVAILABLE)
            return
        if self.closing:
            conn.abort()
            return
        self._fails = 0
        self._idle(conn)

    def _idle(self, conn: H1Conn) -> None:
        if conn.closed:
            return
        if self.waiting and not self.closing:
            key, intended, pidx, tries = self.waiting.popleft()
            self._start(conn, key, intended, pidx, tries)
        else:
            self.idle.append(conn)

    def _start(self, conn: H1Conn, key: int, intended: int, pidx: int, tries: int = 0) -> None:
        sent = self.clock() - self.start
        self.busy[conn] = None
        st = H1Call(key, intended, sent, pidx, sent + self.timeout_ns, tries + 1)
        conn.send(st, self.heads[pidx], self.wires[pidx].body)

    def send(self, key: int, intended: int, pidx: int) -> None:
        self.in_flight += 1
        idle = self.idle
        while idle:
            # held connections take turns (the least recently used); else the warmest
            conn = idle.pop(0) if self.fixed else idle.pop()
            if not conn.closed:
                self._start(conn, key, intended, pidx)
                return
        self._wait(key, intended, pidx, 0)

    def _resend(self, st: H1Call) -> None:
        """Send a request again (still counted in flight): an idle connection, or wait."""
        self.retried += 1
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                self._start(conn, st.key, st.intended, st.pidx, st.tries)
                return
        self._wait(st.key, st.intended, st.pidx, st.tries)

    def _wait(self, key: int, intended: int, pidx: int, tries: int) -> None:
        """No idle connection: wait for one, opening a new one if the pool may grow."""
        self.waiting.append((key, intended, pidx, tries))
        if self.total + self.opening >= self.limit:
            self.figures.waited += 1  # the pool is full: it waits for a free connection
        elif len(self.waiting) > self.opening:
            if self._fails and self.loop.time() < self._next_try[0]:
                return
            self._spawn_grow()

    def finish(self, conn: H1Conn, st: Call, status: int, resp_bytes: int) -> None:
        self.busy.pop(conn, None)
        conn.idle_since = self.clock() - self.start
        if conn.closed or not conn.keep:
            if not conn.closed:
                if not conn.keep:
                    self._owed += 1  # the server asked: a fresh connection replaces it
                    self.figures.goaways_received += 1
                conn.abort()
        else:
            # back in the pool before the completion is told, so that a send made from
            # the completion (the worker's ride-along) finds it, not a full pool
            self._idle(conn)
        self._finish(st, status, resp_bytes)

    def conn_lost(self, conn: H1Conn, message: str, clean: bool = True) -> None:
        """The connection is gone: `clean` when the server closed it (FIN), not reset."""
        self.total = max(0, self.total - 1)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if not conn.retired and conn.served:
            self._owed += 1  # a kept-alive connection the server closed
        st, conn.st = conn.st, None
        unanswered = st is not None and conn.served and not conn.answered
        if not conn.retired and not self.closing:
            # idle until now (or until the request written as the close came: that write
            # may meet the closed socket and read as a reset); a reset of a connection
            # with nothing on it is a reset however long it sat idle
            until = (self.clock() - self.start) if st is None else st.sent
            closed_idle = (st is None and clean) or unanswered
            if closed_idle and until - conn.idle_since >= IDLE_CLOSE_S * 1e9:
                self.figures.idle_closed += 1  # its keep-alive timeout: not an error
            else:
                self.figures.resets_received += 1  # the server reset or closed it
        if st is not None:
            if unanswered and st.tries < MAX_TRIES and not self.closing:
                # written as the server closed its idle connection: never processed
                self.busy.pop(conn, None)
                self._resend(st)  # (opens a connection for it if one is needed)
                return
            self.last_error = message
            self.finish(conn, st, rc.UNAVAILABLE, 0)
        if (
            len(self.waiting) > self.opening
            and not self.closing
            and self.total + self.opening < self.limit
        ):
            self._spawn_grow()
        elif self.fixed and not self.closing and self.total + self.opening < self.n_conns:
            self._hold_again(self.loop.time() - conn.opened_at >= CHURN_S)

    def _hold_again(self, lasted: bool) -> None:
        """`--connections`: a held connection that ended is opened again, at once when
        it had lasted CHURN_S, else after a back-off doubling to 1 s (a server that
        closes the connections it accepts, or a proxy out of connections reclaiming
        idle ones, is not hammered)."""
        delay = 0.0 if lasted else self._regrow_s
        self._regrow_s = 0.05 if lasted else min(self._regrow_s * 2, 1.0)
        self.opening += 1  # counted now, so that the pool does not grow past its share
        self.loop.call_later(delay, self._regrow)

    def _regrow(self) -> None:
        if self.closing:
            self.opening -= 1
        else:
            self.loop.create_task(self._grow())  # (reserved in `_hold_again`)

    def _fail_waiting(self, status: int) -> None:
        waiting, self.waiting = self.waiting, collections.deque()
        for key, intended, pidx, _ in waiting:
            self.in_flight -= 1
            self.fail_soon(key, intended, pidx, status)

    def sweep(self) -> None:
        now = self.clock() - self.start
        expired = []
        for conn in self.busy:
            st = conn.st
            if st is None:
                continue
            if st.deadline > now:
                break
            expired.append(conn)
        for conn in expired:
            conn.fail(rc.DEADLINE_EXCEEDED)

    def abort_all(self, status: int) -> None:
        for conn in list(self.busy):
            conn.fail(status)
        waiting, self.waiting = self.waiting, collections.deque()
        for key, intended, pidx, _ in waiting:
            self.in_flight -= 1
            self.complete(key, intended, -1, -1, rc.NOT_SENT, pidx, 0)

    async def close(self) -> None:
        self.closing = True
        for conn in [*self.idle, *self.busy]:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()
