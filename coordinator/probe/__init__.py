"""Talking to the target before the load, over the plan's own protocol, TLS and headers.

`GrpcProbe` uses the agents' HTTP/2 client (volley/wire/h2.py), so preflight checks exactly
the wire the load will use (TLS and ALPN, headers, compression). `HttpProbe` speaks
KServe v2 REST over HTTP/1.1. Both answer the same questions: is the server live and
ready, is the model ready, its metadata and (Triton's) config, and one probe infer.
Failures raise `ProbeError` with one line.

Modules: `base` (Probe, ProbeError), `grpc_probe`, `http_probe` (HttpProbe, JsonProbe).
"""

from __future__ import annotations

from coordinator.probe.base import NotFound, Probe, ProbeError, Tensor
from coordinator.probe.grpc_probe import GrpcProbe
from coordinator.probe.http_probe import HttpProbe, JsonProbe
from volley.plan import Plan

__all__ = [
    "GrpcProbe",
    "HttpProbe",
    "JsonProbe",
    "NotFound",
    "Probe",
    "ProbeError",
    "Tensor",
    "make_probe",
]


def make_probe(plan: Plan, timeout: float) -> Probe:
    if plan.protocol == "json":
        return JsonProbe(plan, timeout)
    return HttpProbe(plan, timeout) if plan.protocol == "http" else GrpcProbe(plan, timeout)
