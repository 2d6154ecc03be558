"""A run's keepalives to one agent over one long-lived call (AgentControl.Keepalives).

A unary Ping per keepalive costs a new HTTP/2 stream each time (headers, trailers, the
agent's interceptors, a call object on both sides); on one bidirectional call a
keepalive is one small message each way. Semantics are the unary Ping's: each ping
waits for its own answer (matched by `coordinator_send_ns`) for at most its timeout,
and the agent touches the run's session for each ping it reads. An agent without the
call (UNIMPLEMENTED), or a call that broke, makes `ping` answer None: the caller then
pings by the unary call for the rest of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import grpc

from volley.v1 import control_pb2 as pb

#: Pings queued for the call and not yet taken by gRPC at most (past it, the agent is
#: not reading: a ping is then unanswered at once).
MAX_QUEUED = 16


class PingCall(Protocol):
    """The part of a bidirectional grpc.aio call (fed by a request iterator) a line uses."""

    def __aiter__(self) -> AsyncIterator[pb.PingReply]: ...

    def cancel(self) -> bool: ...


class KeepaliveLine:
    """One run's keepalive call to one agent, opened on the first ping."""

    def __init__(
        self,
        run_id: str,
        open_call: Callable[[AsyncIterator[pb.PingRequest]], PingCall],
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.run_id = run_id
        self._open = open_call
        self._clock = clock
        self._call: PingCall | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[bool | None]] = {}
        self._last_ns = 0
        self._out: asyncio.Queue[pb.PingRequest | None] = asyncio.Queue()
        #: the call failed (or the agent has none): pings go unary from now on
        self.broken = False

    async def ping(self, timeout_s: float) -> bool | None:
        """One keepalive: True answered, False no answer within `timeout_s`, None the
        line is broken (ping by the unary call instead)."""
        # the answer comes from the reader (`_read`), matched by its send time
        if self.broken:
            return None
        if self._call is None:
            self._call = self._open(self._requests())
            self._reader = asyncio.get_running_loop().create_task(self._read(self._call))
        send_ns = self._last_ns = max(self._clock(), self._last_ns + 1)  # a unique key
        answer: asyncio.Future[bool | None] = asyncio.get_running_loop().create_future()
        self._waiting[send_ns] = answer
        try:
            if self._out.qsize() >= MAX_QUEUED:  # the call is not taking them
                return False
            self._out.put_nowait(pb.PingRequest(coordinator_send_ns=send_ns, run_id=self.run_id))
            async with asyncio.timeout(timeout_s):
                return await answer
        except TimeoutError:
            return False
        finally:
            self._waiting.pop(send_ns, None)

    async def _requests(self) -> AsyncIterator[pb.PingRequest]:
        """What the call sends: the queued pings, until `close`."""
        while (ping := await self._out.get()) is not None:
            yield ping

    async def _read(self, call: PingCall) -> None:
        try:
            async for reply in call:
                answer = self._waiting.pop(reply.coordinator_send_ns, None)
                if answer is not None and not answer.done():
                    answer.set_result(True)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            self.broken = True  # the call ended: whatever waits goes unary
            for answer in self._waiting.values():
                if not answer.done():
                    answer.set_result(None)

    async def close(self) -> None:
        self.broken = True
        self._out.put_nowait(None)
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
