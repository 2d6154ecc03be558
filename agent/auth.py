"""Guards in front of every control-plane call (grpc.aio server interceptors).

- Token authentication: a call without the shared token, or with a wrong one, is
  refused with UNAUTHENTICATED before it reaches the servicer, and logged
  (rate-limited, so a scanner cannot flood the log). The refusal is given from the
  call's metadata alone: its handler reads no message (it is a request-streaming
  handler that never iterates, whatever the method's shape), so an unauthenticated
  message is never buffered whole; gRPC's own flow control bounds what it holds.
- Malformed requests (bytes that are not the method's message) are refused with
  INVALID_ARGUMENT instead of an exception inside gRPC.
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
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny_stream)
        return grpc.stream_unary_rpc_method_handler(deny)


class _Malformed:
    """Stands for a request whose bytes are not the method's message."""


MALFORMED = _Malformed()


class MalformedRequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Answer a request that does not decode with INVALID_ARGUMENT (gRPC's own
    handling logs a traceback and answers UNKNOWN)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        method = handler_call_details.method

        def safe_decode(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception:
                return MALFORMED

        async def refuse(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            log.warning("malformed %s request from %s", method, context.peer())
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {method} request")

        async def checked(
            requests: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            """A request stream, refused at its first malformed message."""
            async for request in requests:
                if request is MALFORMED:
                    await refuse(context)
                yield request

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                if request is MALFORMED:
                    await refuse(context)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=safe_decode,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                if request is MALFORMED:
                    await refuse(context)
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=safe_decode,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            inner_upload = handler.stream_unary

            async def upload(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                return await inner_upload(checked(requests, context), context)

            return grpc.stream_unary_rpc_method_handler(
                upload,
                request_deserializer=safe_decode,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            inner_both = handler.stream_stream

            async def both(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                async for item in inner_both(checked(requests, context), context):
                    yield item

            return grpc.stream_stream_rpc_method_handler(
                both,
                request_deserializer=safe_decode,
                response_serializer=handler.response_serializer,
            )
        return handler
