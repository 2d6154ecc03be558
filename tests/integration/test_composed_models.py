"""Composed models: an ensemble's steps (found from its config) and a BLS model's callees
(named with composing_models) get their own server figures in summary, report, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.report.compare import comparison
from coordinator.report.data import load_run
from coordinator.run import RunOptions, execute
from tests.triton_fixture import TritonEndpoint
from volley.plan import plan_from_dict


def _doc(triton: TritonEndpoint, model: str, **extra: Any) -> dict[str, Any]:
    return {
        "target": triton.grpc_url,
        "model": model,
        "seed": 16,
        "name": model,
        "load": {"mode": "open", "rate": 60, "duration": "2s"},
        "validity": {"min_duration_s": 1, "min_requests": 10},
        **extra,
    }


async def test_ensemble_and_bls_composing_models(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path
) -> None:
    runs = []
    for doc, role in (
        (_doc(triton_server, "pipeline"), "ensemble step"),
        (_doc(triton_server, "bls", composing_models=["scale", "add"]), "given"),
    ):
        result = await execute(
            plan_from_dict(doc), agent_pair, RunOptions(out_dir=tmp_path, start_lead_s=1.0)
        )
        s = result.summary
        ok = s["requests"]["ok"]
        assert ok > 80 and s["requests"]["errors"] == 0
        rows = {r["name"]: r for r in s["server"].get("composing", [])}
        assert list(rows) == ["scale", "add"], s["server"]
        for r in rows.values():
            assert r["role"] == role
            # each request of the top model ran each step once (nobody else calls them)
            assert r["success"] == ok and r["execution_count"] == ok
            assert r["compute_infer_ms"] is not None and r["compute_infer_ms"] > 0
            assert r["queue_ms"] is not None
        # the plan records what composes the model
        plan_text = (result.run_dir / "plan.yaml").read_text()
        assert "composing_models" in plan_text and "scale" in plan_text
        html = (result.run_dir / "report.html").read_text()
        assert "Composing models" in html and "scale (" + role in html and "add (" + role in html
        runs.append(load_run(result.run_dir))
    figures = {c["figure"]: c["values"] for c in comparison(runs)}
    assert all(v is not None and v > 0 for v in figures["scale: compute infer"])
    assert all(v is not None and v > 0 for v in figures["add: compute infer"])
