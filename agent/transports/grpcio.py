"""`--transport grpcio`: ModelInfer through grpcio's asyncio stack and tritonclient's
generated service description (the standard gRPC client, as tritonclient uses it).

It costs more generator CPU per request than the default `unary` transport (volley's
own HTTP/2 client, volley/wire/h2.py), but it is the reference gRPC implementation: use it to
cross-check figures, or when a proxy in front of the server needs what only grpcio
does. Requests are the same pre-serialized ModelInferRequest bytes (identity
serializers), so payloads, records and results are identical.

Held connections (`--connections`): grpc.aio channels connect lazily, so each channel
is made to connect in the prepare (`get_state(try_to_connect=True)`, then waited for
READY, at most CONNECT_TIMEOUT_S): its connect time and failures (kind `timeout`, or
`other`: grpcio says TRANSIENT_FAILURE, never why) are counted like the other
transports', and `held` is the channels READY at the end. Reconnects grpcio makes by
itself inside a channel are not seen (nor counted).
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


#: A held channel not READY this long after it was asked to connect has failed.
CONNECT_TIMEOUT_S = 5.0

_READY = grpc.ChannelConnectivity.READY
_FAILED = grpc.ChannelConnectivity.TRANSIENT_FAILURE


async def wait_ready(channel: grpc.aio.Channel, timeout_s: float) -> None:
    """Connect `channel` now and wait for READY (TimeoutError; OSError on a failure)."""

    async def ready() -> None:
        state = channel.get_state(try_to_connect=True)
        while state != _READY:
            if state == _FAILED:
                raise OSError("grpcio: the channel failed to connect (TRANSIENT_FAILURE)")
            await channel.wait_for_state_change(state)
            state = channel.get_state(try_to_connect=True)

    await asyncio.wait_for(ready(), timeout_s)


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
        if self.fixed:  # held: connected now, timed and counted (module docstring)
            t0 = self.clock()
            try:
                await wait_ready(channel, CONNECT_TIMEOUT_S)
            except (TimeoutError, OSError) as exc:
                self.connect_done(t0, exc)
                await channel.close()
                raise ConnectionError(f"{self.plan.target}: {exc or 'no answer in time'}") from exc
            self.connect_done(t0, None)
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

    def open_count(self) -> int:
        """Held channels READY now (without `--connections`: none is counted)."""
        if not self.fixed:
            return 0
        return sum(1 for c in self.channels if c is not None and c.get_state() == _READY)

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
