"""Through a stock nginx that recycles client connections (keepalive_requests 1000):
GOAWAY for gRPC, `Connection: close` for HTTP/1.1. Streams nginx never processed are
sent again transparently (counted as retried), every recycled connection is replaced
(counted as a reconnect), and nothing of it is an error.

The issue's check is 2,000 req/s for 20 s; here 2,000 req/s for 3 s (6,000 requests,
six connection recycles) keeps the suite fast and still crosses keepalive_requests
several times on every connection. The HTTP/1.1 proxy recycles every 10 requests
(see tests/nginx_fixture.py: at 2,000 req/s HTTP spreads over many connections)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.run import RunOptions, execute
from tests.nginx_fixture import (  # noqa: F401
    HTTP_KEEPALIVE_REQUESTS,
    KEEPALIVE_REQUESTS,
    NginxProxy,
    nginx_proxy,
)
from tests.triton_fixture import TritonEndpoint
from volley.plan import plan_from_dict

RATE = 2000
#: HTTP/1.1 through nginx to Triton costs more CPU per request than gRPC: on a 2-core CI
#: host 2,000 req/s saturates it (p50 ~0.4 s), which tests the host, not recycling.
HTTP_RATE = 600
DURATION_S = 3


def _doc(target: str, protocol: str, transport: str, rate: int) -> dict[str, Any]:
    return {
        "target": target,
        "model": "add",
        "seed": 5,
        "name": f"nginx-{protocol}-{transport}",
        "protocol": protocol,
        "transport": transport,
        "load": {"mode": "open", "rate": rate, "duration": f"{DURATION_S}s"},
        "validity": {"min_duration_s": 1, "min_requests": 10},
    }


@pytest.mark.parametrize(("protocol", "rate"), [("grpc", RATE), ("http", HTTP_RATE)])
async def test_recycled_connections_are_retried_not_errors(
    triton_server: TritonEndpoint,
    nginx_proxy: NginxProxy,  # noqa: F811
    agent_pair: list[str],
    tmp_path: Path,
    protocol: str,
    rate: int,
) -> None:
    target = nginx_proxy.grpc_url if protocol == "grpc" else nginx_proxy.http_url
    doc = _doc(target, protocol, "unary", rate)
    result = await execute(
        plan_from_dict(doc), agent_pair, RunOptions(out_dir=tmp_path, start_lead_s=1.0)
    )
    s = result.summary
    req = s["requests"]
    agents = s["agents"]
    retried = [a.get("retried", -1) for a in agents]
    reconnects = [a.get("reconnects", -1) for a in agents]
    print(
        f"nginx {protocol} at {rate}/s: {req['ok']} ok of {req['scheduled']}, errors "
        f"{req['errors']}, retried {retried}, reconnects {reconnects}, "
        f"p99 {s['latency_ms']['p99']} ms"
    )
    assert req["errors"] == 0, s["error_rate"]
    assert req["ok"] == req["sent"] == req["scheduled"] == req["schedule_total"]
    # every KEEPALIVE_REQUESTS requests nginx recycles a connection, and each one
    # recycled before the end is replaced (counted); the last may close with the run
    every = KEEPALIVE_REQUESTS if protocol == "grpc" else HTTP_KEEPALIVE_REQUESTS
    if protocol == "grpc":  # one connection per agent: it recycles every 1000 requests
        for a in agents:
            assert a["reconnects"] >= a["sent"] // every - 1, a
    else:  # a pool of connections, each recycled every 10 requests
        # how many connections the pool holds depends on how latency varied, so only
        # that recycling happened and was counted (never an error) is certain
        assert req["sent"] // every >= 10 and sum(reconnects) >= 2, reconnects
    assert min(retried) >= 0
