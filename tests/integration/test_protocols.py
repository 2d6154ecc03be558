"""Whole runs over each protocol and transport, and a mixed two-model plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from coordinator.run import RunOptions, execute
from tests.triton_fixture import TritonEndpoint
from volley.plan import plan_from_dict


def _doc(triton: TritonEndpoint, kind: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "target": triton.http_url if kind == "http" else triton.grpc_url,
        "model": "add",
        "seed": 21,
        "name": f"proto-{kind}",
        "protocol": "http" if kind == "http" else "grpc",
        "transport": kind if kind in ("stream", "grpcio") else "unary",
        "load": {"mode": "open", "arrival": "poisson", "rate": 120, "duration": "2s"},
        "validity": {"min_duration_s": 1, "min_requests": 10},
    }
    doc.update(extra)
    return doc


@pytest.mark.parametrize("kind", ["unary", "stream", "grpcio", "http", "unary-loop-timer"])
async def test_same_plan_over_each_transport(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path, kind: str
) -> None:
    doc = _doc(triton_server, kind.removesuffix("-loop-timer"))
    if kind.endswith("loop-timer"):
        doc["load"]["timer"] = "loop"
    result = await execute(
        plan_from_dict(doc),
        agent_pair,
        RunOptions(out_dir=tmp_path, start_lead_s=1.0),
    )
    s = result.summary
    req = s["requests"]
    assert req["ok"] == req["sent"] == req["scheduled"] == req["schedule_total"] > 150
    assert s["protocol"] == ("http" if kind == "http" else "grpc")
    raw = pq.read_table(result.run_dir / "requests.parquet")
    index = raw.column("index").to_numpy()
    assert np.array_equal(np.sort(index), np.arange(req["schedule_total"]))
    assert (raw.column("resp_bytes").to_numpy() > 0).all()
    assert all(a["cpu_us_per_request"] for a in s["agents"])
    print(
        f"{kind}: latency p50 {s['latency_ms']['p50']} ms p99 {s['latency_ms']['p99']} ms, "
        f"agent CPU {[a['cpu_us_per_request'] for a in s['agents']]} us/request"
    )


async def test_mixed_two_model_plan_reports_per_model(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path
) -> None:
    doc = _doc(triton_server, "unary", models=[{"name": "add", "weight": 3}, "iris"])
    del doc["model"]
    result = await execute(
        plan_from_dict(doc), agent_pair, RunOptions(out_dir=tmp_path, start_lead_s=1.0)
    )
    s = result.summary
    rows = {m["name"]: m for m in s["models"]}
    assert set(rows) == {"add", "iris"}
    total = s["requests"]["ok"]
    assert rows["add"]["requests"]["ok"] + rows["iris"]["requests"]["ok"] == total
    assert 0.6 < rows["add"]["requests"]["ok"] / total < 0.9
    assert all(r["latency_ms"]["p50"] > 0 and r["requests"]["errors"] == 0 for r in rows.values())
    raw = pq.read_table(result.run_dir / "requests.parquet")
    assert set(np.unique(raw.column("model_id").to_numpy()).tolist()) == {0, 1}
    assert "iris" in (result.run_dir / "plan.yaml").read_text()
    # Triton's own statistics, per model, over the run
    server = {m["name"]: m for m in s["server"]["models"]}
    assert set(server) == {"add", "iris"}
    for name in ("add", "iris"):
        assert server[name]["requests"] == rows[name]["requests"]["ok"]
        assert server[name]["compute_infer_ms"] > 0
        assert rows[name]["server"]["requests"] == server[name]["requests"]
    assert s["server"]["queue_ms"] is not None and (result.run_dir / "server.json").exists()
