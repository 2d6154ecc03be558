"""MLServer, a second KServe v2 implementation: whole runs over gRPC and over HTTP with
JSON bodies (chosen from its server metadata, which lists no binary tensor extension),
and a clear refusal in preflight for the stream transport (MLServer's ModelStreamInfer is
not Triton's: it answers ModelInferResponse messages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coordinator.preflight import PreflightError, preflight_check
from coordinator.run import RunOptions, execute
from tests.mlserver_fixture import MLServerEndpoint, mlserver  # noqa: F401
from volley.plan import plan_from_dict


def _doc(ml: MLServerEndpoint, protocol: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "target": ml.http_url if protocol == "http" else ml.grpc_url,
        "model": "add",
        "seed": 3,
        "name": f"mlserver-{protocol}",
        "protocol": protocol,
        "load": {"mode": "open", "rate": 100, "duration": "2s"},
        "validity": {"min_duration_s": 1, "min_requests": 10},
    }
    doc.update(extra)
    return doc


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_runs_against_mlserver_with_no_errors(
    mlserver: MLServerEndpoint,  # noqa: F811
    agent_pair: list[str],
    tmp_path: Path,
    protocol: str,
) -> None:
    result = await execute(
        plan_from_dict(_doc(mlserver, protocol)),
        agent_pair,
        RunOptions(out_dir=tmp_path, start_lead_s=1.0),
    )
    s = result.summary
    req = s["requests"]
    print(f"mlserver {protocol}: {req['ok']} ok, p99 {s['latency_ms']['p99']} ms")
    assert req["errors"] == 0 and req["ok"] == req["scheduled"] == req["schedule_total"] >= 190
    plan_text = (result.run_dir / "plan.yaml").read_text()
    if protocol == "http":  # auto: MLServer lists no binary_tensor_data extension
        assert "http_body: json" in plan_text


async def test_stream_transport_is_refused_in_preflight(
    mlserver: MLServerEndpoint,  # noqa: F811
) -> None:
    with pytest.raises(PreflightError) as err:
        await preflight_check(plan_from_dict(_doc(mlserver, "grpc", transport="stream")))
    text = str(err.value)
    assert "\n" not in text
    assert "transport 'stream' needs ModelStreamInfer" in text and "--transport unary" in text
    # MLServer has a ModelStreamInfer of its own, which answers plain ModelInferResponse
    assert "is not Triton's" in text, text


async def test_binary_bodies_are_refused_in_preflight(
    mlserver: MLServerEndpoint,  # noqa: F811
) -> None:
    with pytest.raises(PreflightError, match="rejected the probe request") as err:
        await preflight_check(plan_from_dict(_doc(mlserver, "http", http_body="binary")))
    assert "binary_tensor_data extension: use --http-body json" in str(err.value)
