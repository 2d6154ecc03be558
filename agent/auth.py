"""Token authentication of every control-plane call (a grpc.aio server interceptor).

A call without the shared token, or with a wrong one, is refused with
UNAUTHENTICATED before it reaches the servicer, and logged (rate-limited, so a
scanner cannot flood the log).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from volley.security import token_ok

log = logging.getLogger("volley.agent.auth")

#: At most one refusal log line per this many seconds (the rest are counted).
LOG_EVERY_S = 1.0


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._token = token
        self.refused = 0
        self._logged_at = 0.0
        self._unlogged = 0

    def _log(self, method: str, peer: str, why: str) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._logged_at < LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" (+{self._unlogged} more refused since the last report)" if self._unlogged else ""
        log.warning("refused unauthenticated call %s from %s: %s%s", method, peer, why, more)
        self._logged_at = now
        self._unlogged = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        ok, why = token_ok(handler_call_details.invocation_metadata, self._token)
        if ok:
            return handler
        method = handler_call_details.method
        message = why

        async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self._log(method, context.peer(), why)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def deny_stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            self._log(method, context.peer(), why)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            yield  # pragma: no cover - abort raises

        # The request stays raw bytes: nothing of an unauthenticated call is parsed.
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(deny_stream)
        return grpc.unary_unary_rpc_method_handler(deny)
