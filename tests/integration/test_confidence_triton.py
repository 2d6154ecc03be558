"""Results you can defend, on the real CPU Triton's `sleep` model: a short run cannot
bound its p99 (inconclusive, exit 3); `--duration auto` runs until the SLO is decided,
stops every agent at one instant and reports a measured run that plan.yaml repeats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.triton_fixture import TritonEndpoint
from volley.cli import app

pytestmark = pytest.mark.triton

RELAXED = {
    "min_duration_s": 1,
    "min_requests": 10,
    "max_late_fraction": 1.0,
    "max_lateness_p99_ms": 1e6,
}


def test_short_run_is_inconclusive_and_auto_extends_until_decided(
    triton_server: TritonEndpoint, tmp_path: Path
) -> None:
    """One user, 5 ms per request: ~170 requests in 1 s cannot bound a p99 (368 needed at
    95%); auto runs until they do. Closed loop on purpose: on this shared 2-core host an
    open loop's stalls delay every arrival queued behind them, so its tail comes in
    bursts and the p99's effective sample is a tenth of its requests (design effect 12
    measured at 100/s): 40 s could not bound it, and volley rightly said inconclusive. A
    closed-loop user waits, so one stall delays one request."""
    plan = tmp_path / "plan.yaml"
    doc = {
        "target": triton_server.grpc_url,
        "model": "sleep",
        "seed": 9,
        "name": "auto",
        "load": {"mode": "closed", "concurrency": 1, "duration": "1s"},
        "inputs": [{"name": "DELAY_MS", "source": "constant", "value": 5.0}],
        "validity": RELAXED,
    }
    plan.write_text(yaml.safe_dump(doc))
    common = [
        "run",
        str(plan),
        "--local-agents",
        "1",
        "--workers",
        "1",
        "--start-lead",
        "1",
        "--out",
        str(tmp_path / "runs"),
        "--quiet",
        "--server-stats",
        "--server-metrics",
        "off",
        # a generous threshold: what decides it is how many requests bound the p99
        "--slo",
        "p99<400ms",
    ]
    runner = CliRunner()
    short = runner.invoke(app, common)
    assert short.exit_code == 3, short.output
    s = json.loads((Path(short.output.strip().splitlines()[-1]) / "summary.json").read_text())
    (slo,) = s["verdict"]["slo"]
    assert slo["outcome"] == "inconclusive" and s["verdict"]["slo_outcome"] == "inconclusive"
    assert slo["interval"]["high"] is None and "368" in slo["reason"]
    assert s["requests"]["ok"] < 368 and not s["confidence"]["requests_needed"]["p99"]["enough"]

    auto = runner.invoke(app, [*common, "--duration", "auto", "--max-duration", "60s"])
    assert auto.exit_code == 0, auto.output
    run_dir = Path(auto.output.strip().splitlines()[-1])
    a = json.loads((run_dir / "summary.json").read_text())
    stop = a["auto_stop"]
    assert stop["reason"] == "decided" and stop["stopped_at_s"] < 58, stop
    assert a["duration_s"] == stop["stopped_at_s"] and float(a["duration_s"]).is_integer()
    (slo,) = a["verdict"]["slo"]
    assert slo["outcome"] == "pass" and slo["interval"]["high"] < 400
    assert a["requests"]["ok"] >= 368 and a["verdict"]["valid"], a["verdict"]
    # plan.yaml is the measured run: its duration ends at the stop instant
    assert (
        yaml.safe_load((run_dir / "plan.yaml").read_text())["load"]["duration_s"]
        == (stop["stopped_at_s"])
    )
    print(
        f"short: {s['requests']['ok']} ok; auto: stopped at {stop['stopped_at_s']} s, "
        f"{a['requests']['ok']} ok, p99 {a['latency_ms']['p99']} ms in {slo['interval']}"
    )
