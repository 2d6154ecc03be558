"""Simultaneous connections through a real nginx with `worker_connections 64`:
`volley sweep --mode connections` holds N connections (each at a low rate), steps N up
until nginx stops holding them, bisects, and reports the highest N held cleanly and what
failed first. nginx's own limit (64, less its listening socket and the upstream
connections to Triton) is the answer the sweep must find, within a stated band."""

from __future__ import annotations

import time
from pathlib import Path

from coordinator.sweep.runner import SweepSpec, SweepTarget, real_measure, run_sweep
from coordinator.sweep.search import SweepSettings
from tests.nginx_limit_fixture import LimitedNginx, nginx_limited  # noqa: F401
from tests.triton_fixture import TritonEndpoint
from volley.plan import plan_from_dict

#: The sweep's answer must lie in this band: nginx can hold at most worker_connections
#: less its listening socket; the upstream connections in use (at most the keep-alive
#: ones plus those of requests in flight) and the sweep's resolution (15% of N) take
#: some more.
BAND = 20


async def test_a_connections_sweep_finds_nginx_worker_connections(
    triton_server: TritonEndpoint,
    nginx_limited: LimitedNginx,  # noqa: F811
    agent_pair: list[str],
    tmp_path: Path,
) -> None:
    limit = nginx_limited.worker_connections
    plan = plan_from_dict(
        {
            "target": nginx_limited.grpc_url,
            "model": "add",
            "seed": 3,
            "name": "conns",
            "load": {"rate": 1},
            "validity": {"min_duration_s": 1, "min_requests": 10},
        }
    )
    settings = SweepSettings(
        mode="connections",
        start=32,
        growth=2,
        tolerance=0.15,
        max_steps=7,
        step_duration_s=2,
        warmup_s=0,
        rate_per_connection=2.0,
        # a step a stall of the shared 2-core host makes volley-limited is measured once
        # more (the generator's own checks are not under test here)
        retries=1,
    )
    spec = SweepSpec(
        name="conns",
        plan=plan,
        settings=settings,
        targets=[SweepTarget("nginx", nginx_limited.grpc_url)],
        agents=agent_pair,
    )
    spec.validate()
    sweep_dir = tmp_path / "sweep"

    t0 = time.monotonic()
    doc = await run_sweep(
        spec, sweep_dir, lambda t, s: real_measure(spec, t, s, sweep_dir, agent_pair, None)
    )
    took = time.monotonic() - t0
    (target,) = doc["targets"]
    out = target["outcome"]
    for s in target["steps"]:
        c = s["connections"] or {}
        print(
            f"  step {s['index'] + 1}: N={s['load']:g} {s['kind']} first={s['failed_first']!r} "
            f"held {c.get('held')}/{c.get('wanted')} connect {c.get('connect_ms')} "
            f"errors {c.get('errors')} resets {c.get('resets_received')} "
            f"p99 {s['latency_ms'].get('p99')} ms"
        )
    print(f"  {out['message']}; sweep took {took:.0f} s")
    log = nginx_limited.error_log.read_text()
    assert "worker_connections are not enough" in log  # nginx itself says it was the limit
    assert out["limited_by"] == "server", out
    assert limit - BAND <= out["max_load"] < limit, out
    # nginx out of connections drains idle HTTP/2 connections (GOAWAY) or closes new ones
    assert out["failed_first"] in ("goaway", "reset", "refused", "timeout", "not-held"), out
    passed = [s for s in target["steps"] if s["passed"]]
    for s in passed:  # a clean step held every connection it wanted
        c = s["connections"]
        assert c["held"] == c["wanted"] == s["load"] and c["errors_total"] == 0, s
    assert max(s["load"] for s in passed) == out["max_load"]
