"""gRPC unary for sequence steps: each request's body is its own (the payload framed with
the step's correlation ID and flags, volley/wire/seqframe.py), and, when the plan checks
a sequence's state, the response's output is handed to the driver.

Everything else (connections, streams, timeouts, resets) is `GrpcUnary`'s.
"""

from __future__ import annotations

import numpy as np

from agent.transports.base import Clock, Complete
from agent.transports.grpc_unary import GrpcUnary, UnaryCall, UnaryConn
from volley.plan import Plan
from volley.target import TargetAccess
from volley.wire.grpc import grpc_unframe
from volley.wire.payloads import Payloads


class GrpcSequence(GrpcUnary):
    """`send_step(key, intended, pidx, body)`: one step; `key` names its sequence (one
    step of a sequence is in flight at a time, so the key is unique among calls)."""

    def __init__(
        self,
        plan: Plan,
        payloads: Payloads,
        complete: Complete,
        clock: Clock,
        start_ns: int,
        access: TargetAccess,
        check_output: str = "",
    ) -> None:
        super().__init__(plan, payloads, complete, clock, start_ns, access)
        self.bodies: dict[int, bytes] = {}
        #: the output whose value the driver checks ("": none)
        self.check_output = check_output
        #: the checked output's value of the response just completed (None: not read)
        self.value: int | None = None

    def send_step(self, key: int, intended: int, pidx: int, body: bytes) -> None:
        self.bodies[key] = body
        self.send(key, intended, pidx)

    def _start(self, conn: UnaryConn, key: int, intended: int, pidx: int, tries: int) -> None:
        sent = self.clock() - self.start
        # kept until the call finishes: a transparent retry (GOAWAY, REFUSED_STREAM)
        # sends the same step body again
        body = self.bodies[key]
        sid = conn.start_stream(self.hblock, body, True)
        conn.streams[sid] = UnaryCall(key, intended, sent, pidx, sent + self.timeout_ns, tries + 1)

    def _finish(self, call: UnaryCall, status: int, resp_bytes: int) -> None:  # type: ignore[override]
        self.value = None
        self.bodies.pop(call.key, None)
        if status == 0 and self.check_output:
            head = call.head
            msg = grpc_unframe(call.body, head.encoding if head is not None else "")
            if msg is not None:
                self.value = output_value(msg, self.check_output)
        super()._finish(call, status, resp_bytes)

    def fail_soon(self, key: int, intended: int, pidx: int, status: int) -> None:
        self.bodies.pop(key, None)
        super().fail_soon(key, intended, pidx, status)

    def abort_all(self, status: int) -> None:
        super().abort_all(status)
        self.bodies.clear()


def output_value(msg: bytes, name: str) -> int | None:
    """The first element of output `name` of a serialized ModelInferResponse, as an
    integer (None when absent)."""
    from tritonclient.grpc import service_pb2

    resp = service_pb2.ModelInferResponse.FromString(msg)
    for i, out in enumerate(resp.outputs):
        if out.name != name:
            continue
        dt = {
            "INT32": "<i4",
            "INT64": "<i8",
            "UINT32": "<u4",
            "UINT64": "<u8",
            "FP32": "<f4",
            "FP64": "<f8",
        }.get(out.datatype)
        if dt is None:
            return None
        if i < len(resp.raw_output_contents):
            arr = np.frombuffer(resp.raw_output_contents[i], dtype=dt)
            return int(arr[0]) if arr.size else None
        c = out.contents
        vals = list(c.int_contents or c.int64_contents or c.uint_contents or c.uint64_contents)
        return int(vals[0]) if vals else None
    return None
