"""The agent's transports, one per file, all built from the plan by `make_transport`.

- `grpc_unary.GrpcUnary` (default): ModelInfer over our own HTTP/2 client.
- `grpc_stream.GrpcStream`: ModelStreamInfer, many requests per stream.
- `grpc_decoupled.GrpcDecoupled`: ModelStreamInfer for decoupled models, a stream of
  responses per request (chosen when preflight finds the model decoupled).
- `http_stream.HttpGenerate`: the generate extension's generate_stream (server-sent
  events) for decoupled models over HTTP.
- `http.Http`: KServe v2 REST (binary tensor extension) over HTTP/1.1 keep-alive.
- `grpcio.GrpcioUnary`: the reference path, grpc.aio with tritonclient's stubs.
"""

from __future__ import annotations

from agent.transports.base import Clock, Complete, Transport
from agent.transports.grpc_decoupled import GrpcDecoupled
from agent.transports.grpc_stream import GrpcStream
from agent.transports.grpc_unary import GrpcUnary
from agent.transports.grpcio import GrpcioUnary
from agent.transports.http import Http
from agent.transports.http_stream import HttpGenerate
from volley.plan import Plan, PlanError
from volley.target import TargetAccess
from volley.wire.payloads import Payloads

__all__ = ["Clock", "Complete", "Transport", "make_transport", "transport_class"]


def transport_class(plan: Plan) -> type[Transport]:
    """Which transport carries the plan's requests."""
    if plan.protocol in ("http", "json"):
        return HttpGenerate if plan.stream.decoupled else Http
    if plan.stream.decoupled:
        return GrpcDecoupled
    if plan.transport == "stream":
        return GrpcStream
    if plan.transport == "grpcio":
        return GrpcioUnary
    if plan.protocol != "grpc":
        raise PlanError(f"protocol {plan.protocol!r} is not supported")
    return GrpcUnary


def make_transport(
    plan: Plan,
    payloads: Payloads,
    complete: Complete,
    clock: Clock,
    start_ns: int,
    access: TargetAccess,
) -> Transport:
    """The plan's transport; `access` holds its header values and TLS material, in
    memory (an agent never reads a file or environment variable a plan names)."""
    return transport_class(plan)(plan, payloads, complete, clock, start_ns, access)
