"""`--transport grpcio`: ModelInfer through grpcio's asyncio stack and tritonclient's
generated service description (the standard gRPC client, as tritonclient uses it).

It costs more generator CPU per request than the default `unary` transport (volley's
own HTTP/2 client, volley/wire/h2.py), but it is the reference gRPC implementation: use it to
cross-check figures, or when a proxy in front of the server needs what only grpcio
does. Requests are the same pre-serialized ModelInferRequest bytes (identity
serializers), so payloads, records and results are identical.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
from tritonclient.grpc import service_pb2

from agent.transports.base import Transport
from volley import records as rc
from volley.plan import Plan
from volley.request import check_response
from volley.target import TargetAccess

#: "/inference.GRPCInferenceService/ModelInfer", from tritonclient's service descriptor.
_SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
MODEL_INFER_METHOD = f"/{_SERVICE.full_name}/{_SERVICE.methods_by_name['ModelInfer'].name}"

_COMPRESSION = {
    "none": grpc.Compression.NoCompression,
    "gzip": grpc.Compression.Gzip,
    "deflate": grpc.Compression.Deflate,
}


#: A grpc.aio unary-unary multicallable with identity serializers: bytes in, bytes out.
UnaryCallable = Callable[..., Awaitable[bytes]]


class GrpcioUnary(Transport):
    """One grpc.aio unary call per request, round-robin over `connections` channels."""

    def setup(self, plan: Plan, access: TargetAccess) -> None:
        super().setup(plan, access)
        self.channels: list[grpc.aio.Channel | None] = [None] * self.n_conns
        self.calls: list[UnaryCallable | None] = [None] * self.n_conns
        self.tasks: set[asyncio.Task[None]] = set()
        self.metadata = access.headers
        self.compression = _COMPRESSION.get(plan.compression, grpc.Compression.NoCompression)
        self.rr = 0

    async def connect_slot(self, slot: int) -> None:
        options: list[tuple[str, int | str]] = [
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            ("grpc.enable_retries", 0),
            ("grpc.use_local_subchannel_pool", 1),  # one connection per channel
            # a dead target is retried with bounded backoff (no connection storm)
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        tls = self.plan.tls
        if tls is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=self.access.ca or None,
                private_key=self.access.key or None,
                certificate_chain=self.access.cert or None,
            )
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            channel = grpc.aio.secure_channel(self.plan.target, creds, options=options)
        else:
            channel = grpc.aio.insecure_channel(self.plan.target, options=options)
        self.channels[slot] = channel
        self.calls[slot] = channel.unary_unary(MODEL_INFER_METHOD)

    def send(self, key: int, intended: int, pidx: int) -> None:
        slot = self.rr
        self.rr = (slot + 1) % self.n_conns
        call = self.calls[slot]
        if call is None:
            self._want_connect(slot)
            self.fail_soon(key, intended, pidx, rc.UNAVAILABLE)
            return
        self.in_flight += 1
        task = self.loop.create_task(self._call(call, key, intended, pidx))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _call(self, call: UnaryCallable, key: int, intended: int, pidx: int) -> None:
        w = self.wires[pidx]
        sent = self.clock() - self.start
        status, nbytes = rc.OK, 0
        try:
            resp: bytes = await call(
                w.msg,
                timeout=self.plan.timeout_s,
                metadata=self.metadata or None,
                compression=self.compression,
            )
            nbytes = len(resp)
            if not check_response(resp, w.expected_outputs):
                status = rc.BAD_RESPONSE
        except grpc.aio.AioRpcError as exc:
            code = exc.code().value
            status = int(code[0]) if isinstance(code, tuple) else rc.UNKNOWN
        except asyncio.CancelledError:
            status = rc.CANCELLED
        self.in_flight -= 1
        self.complete(key, intended, sent, self.clock() - self.start, status, pidx, nbytes)

    def sweep(self) -> None:
        """grpcio enforces each call's deadline itself."""

    def abort_all(self, status: int) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def close(self) -> None:
        self.closing = True
        self.abort_all(rc.CANCELLED)
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        for ch in self.channels:
            if ch is not None:
                await ch.close()
