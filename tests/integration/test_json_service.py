"""A plain JSON prediction service (the seed's FastAPI iris sample): whole runs with
bodies from a template filled by the input distributions and from a JSONL file, the
answer checked (2xx and a JSON field), refusals in preflight, and a short sweep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coordinator.preflight import PreflightError, preflight_check
from coordinator.run import RunOptions, execute
from tests.iris_fixture import IrisService, iris_service  # noqa: F401
from volley.cli.app import app
from volley.plan import plan_from_dict

TEMPLATE = '{"features": "$x"}'


def _doc(svc: IrisService, rate: float = 100, **service: Any) -> dict[str, Any]:
    return {
        "target": svc.url,
        "protocol": "json",
        "model": "iris",
        "seed": 11,
        "name": "iris-json",
        "inputs": [{"name": "x", "shape": [4]}],
        "json_service": {
            "path": "/predict",
            "template": TEMPLATE,
            "expect_field": "predictions.0",
            **service,
        },
        "load": {"mode": "open", "rate": rate, "duration": "2s"},
        "validity": {"min_duration_s": 1, "min_requests": 10},
    }


async def test_iris_at_100_rps_from_a_template(
    iris_service: IrisService,  # noqa: F811
    agent_pair: list[str],
    tmp_path: Path,
) -> None:
    result = await execute(
        plan_from_dict(_doc(iris_service)), agent_pair, RunOptions(out_dir=tmp_path)
    )
    s = result.summary
    req = s["requests"]
    print(f"iris json: {req['ok']} ok, p50 {s['latency_ms']['p50']} ms")
    assert s["protocol"] == "json"
    assert req["errors"] == 0 and req["ok"] == req["scheduled"] == req["schedule_total"] == 200
    assert s["throughput_rps"] == pytest.approx(100, rel=0.1)


async def test_bodies_from_a_jsonl_file(
    iris_service: IrisService,  # noqa: F811
    agent_pair: list[str],
    tmp_path: Path,
) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text("\n".join(json.dumps({"features": r}) for r in rows) + "\n\n")
    doc = _doc(iris_service, rate=50)
    doc["inputs"] = []
    doc["json_service"] = {
        "path": "/predict",
        "bodies_file": str(bodies),
        "expect_field": "predictions",
    }
    result = await execute(plan_from_dict(doc), agent_pair, RunOptions(out_dir=tmp_path))
    req = result.summary["requests"]
    assert req["errors"] == 0 and req["ok"] == 100
    assert "bodies_file" in (result.run_dir / "plan.yaml").read_text()


async def test_bad_answers_are_refused_in_preflight(
    iris_service: IrisService,  # noqa: F811
) -> None:
    cases = [
        ({"expect_field": "labels"}, "has no field 'labels'"),
        ({"path": "/nowhere"}, "HTTP 404"),
        ({"template": '{"features": [1, 2]}', "expect_field": ""}, "HTTP 422"),
    ]
    for service, fragment in cases:
        with pytest.raises(PreflightError) as err:
            await preflight_check(plan_from_dict(_doc(iris_service, **service)))
        assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_cli_run_and_sweep(iris_service: IrisService, tmp_path: Path) -> None:  # noqa: F811
    """The seed's sample from the command line: iris at 100 req/s, then a short sweep."""
    common = ["--target", iris_service.url, "--out", str(tmp_path)]
    res = CliRunner().invoke(
        app,
        [
            "run", *common, "--protocol", "json", "--json-path", "/predict",
            "--json-template", TEMPLATE, "--input", "x=random", "--shape", "x=4",
            "--expect-field", "predictions.0", "--rate", "100", "--duration", "2s",
            "--local-agents", "1", "--workers", "1",
        ],
    )  # fmt: skip
    assert "errors" in res.output and res.exit_code in (0, 1), res.output
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["requests"]["errors"] == 0 and summary["requests"]["ok"] == 200
    plan = tmp_path / "iris.yaml"
    doc = _doc(iris_service)
    del doc["load"], doc["validity"]
    plan.write_text(json.dumps(doc))
    res = CliRunner().invoke(
        app,
        [
            "sweep", str(plan), "--out", str(tmp_path / "sweep"), "--start", "50",
            "--growth", "2", "--max-steps", "2", "--step-duration", "2s", "--warmup", "0.5s",
            "--min-requests", "15", "--workers", "1",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "max sustainable 100.0 req/s" in res.output, res.output
