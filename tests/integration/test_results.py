"""Results people read, from real runs: server.json beside client latency, report.html in
headless Chromium, SLO exit codes, compare of two Triton configs, a non-Triton server."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.grpc import service_pb2_grpc as triton_grpc
from typer.testing import CliRunner

from coordinator.report import write_compare
from coordinator.report.compare import comparison
from coordinator.run import RunOptions, RunResult, execute
from coordinator.run.autostop import AutoDuration
from coordinator.triton import TritonServer
from tests.browser import PageResult, find_chromium, render_page
from tests.triton_fixture import TritonEndpoint, in_ci
from volley.cli import app
from volley.plan import plan_from_dict

#: Short runs on a shared 2-core machine: the generator checks are not under test here.
RELAXED = {
    "min_duration_s": 1,
    "min_requests": 10,
    "max_late_fraction": 1.0,
    "max_lateness_p99_ms": 1e6,
}

#: Charts every single-run report draws for a run against Triton.
RUN_CHARTS = (
    "latency-over-time",
    "throughput-over-time",
    "latency-histogram",
    "percentile-curve",
    "agent-lateness",
    "agent-cpu",
    "server-breakdown",
    "server-over-time",
    "server-utilisation",
    "server-pending",
)


def _sleep_plan(target: str, rate: float, delay_ms: float, **load: Any) -> dict[str, Any]:
    return {
        "target": target,
        "model": "sleep",
        "seed": 5,
        "name": load.pop("name", "results"),
        "load": {"mode": "open", "arrival": "poisson", "rate": rate, "duration": "3s", **load},
        "inputs": [{"name": "DELAY_MS", "source": "constant", "value": delay_ms}],
        "validity": RELAXED,
    }


def _need_chromium() -> None:
    if find_chromium() is None:
        msg = "chromium is not installed (make test installs it: apt-get install chromium)"
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


async def _render(page: Path, shot: Path) -> PageResult:
    result = await render_page(page, shot)
    keep = os.environ.get("VOLLEY_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    return result


def _charts_ok(result: PageResult, expected: tuple[str, ...]) -> None:
    assert result.errors == [], result.errors
    assert all(u.startswith("file://") for u in result.requests), result.requests
    drawn = {c["id"]: c for c in result.charts}
    for cid in expected:
        c = drawn.get(cid)
        assert c is not None, f"chart {cid} missing; drawn: {sorted(drawn)}"
        assert c["w"] > 300 and c["h"] > 100, c
        assert not c["empty"] and c["marks"] >= 4, c


async def test_run_server_breakdown_report_in_chromium(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path
) -> None:
    plan = plan_from_dict(_sleep_plan(triton_server.grpc_url, 60, 2.0, warmup="1s"))
    opts = RunOptions(out_dir=tmp_path, start_lead_s=1.0, server_metrics=triton_server.metrics_url)
    result = await execute(plan, agent_pair, opts)
    s, d = result.summary, result.run_dir
    for f in ("server.json", "histograms.json", "report.html", "timeseries.parquet"):
        assert (d / f).is_file(), f
    # server figures beside client latency (means per request from statistics deltas)
    server = s["server"]
    assert server["available"] and server["source"].startswith("triton")
    assert server["queue_ms"] is not None and server["compute_infer_ms"] >= 2.0
    assert server["compute_input_ms"] is not None and server["compute_output_ms"] is not None
    # the measured period's edges are sampled, not exact: within a few requests
    ok = s["requests"]["ok"]
    assert ok > 100 and abs(server["success"] - ok) <= 0.05 * ok + 3 and server["fail"] == 0
    assert server["instances"] == 1 and server["avg_batch_size"] == 1.0
    assert server["batch_stats"][0]["batch_size"] == 1
    assert server["utilization"]["cpu_utilization_percent"] is not None
    # the server's request time is inside the client's service time
    assert server["request_ms"] <= s["service_time_ms"]["mean"]
    doc = json.loads((d / "server.json").read_text())
    assert doc["statistics"]["period"] == "measured"
    # before/after samples bracket the whole run: every response is in the delta
    assert doc["statistics"]["run"]["sleep"]["success"] >= ok + s["warmup_requests"]["ok"]
    wins = doc["statistics"]["windows"]
    assert len(wins) >= 3 and all("sleep" in w["models"] for w in wins[:3])
    assert len(doc["metrics"]["samples"]) >= 3
    assert all("cpu_utilization" in m for m in doc["metrics"]["samples"])
    # per window and per agent time series
    ts = pq.read_table(d / "timeseries.parquet").to_pylist()
    cols = set(ts[0])
    for c in (
        "sent",
        "ok",
        "errors",
        "offered_rps",
        "achieved_rps",
        "latency_p50_ms",
        "latency_p99_ms",
        "lateness_p99_ms",
        "agent_cpu_percent",
        "warmup",
    ):
        assert c in cols, c
    assert {r["agent"] for r in ts} >= {"t0", "t1", "all"}
    # the report, in a real browser: no console errors, no external request, charts drawn
    _need_chromium()
    page = await _render(d / "report.html", tmp_path / "report.png")
    _charts_ok(page, RUN_CHARTS)
    assert page.title.startswith("volley")
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000


async def test_chromium_check_catches_errors(tmp_path: Path) -> None:
    """The browser check itself: a broken page (script error, console error, an external
    request) is reported, so a clean result means something."""
    _need_chromium()
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><title>bad</title></head><body>"
        '<img src="http://127.0.0.1:9/x.png">'
        "<script>console.error('boom'); undefinedFunction();</script></body></html>"
    )
    page = await render_page(bad)
    text = " | ".join(page.errors)
    assert "boom" in text and "undefinedFunction" in text, text
    assert any(u.startswith("http://127.0.0.1:9/") for u in page.requests), page.requests


def test_cli_slo_exit_codes_and_report_outputs(
    triton_server: TritonEndpoint, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.yaml"
    doc = _sleep_plan(triton_server.grpc_url, 40, 1.0, duration="2s", name="slo")
    plan.write_text(yaml.safe_dump(doc))
    runner = CliRunner()
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
        "--server-metrics",
        triton_server.metrics_url.removesuffix("/metrics"),
    ]
    ok = runner.invoke(
        app,
        [
            *common,
            # 80 requests: enough to bound p90 (35 needed at 95%), not p99 (368), and an
            # error rate under 1% cannot be shown yet (0 of 80: up to 4.5%)
            "--slo",
            "p90<10s",
            "--slo",
            "errors<10%",
            "--slo",
            "throughput>=0.5*offered",
            "--metrics-port",
            "0",
        ],
    )
    assert ok.exit_code == 0, ok.output
    run_ok = Path(ok.output.strip().splitlines()[-1])
    bad = runner.invoke(app, [*common, "--slo", "p99<1us", "--slo", "errors<10%"])
    assert bad.exit_code == 1, bad.output
    run_bad = Path(bad.output.strip().splitlines()[-1])
    v_ok = json.loads((run_ok / "summary.json").read_text())["verdict"]
    v_bad = json.loads((run_bad / "summary.json").read_text())["verdict"]
    assert v_ok["valid"] and v_ok["slo_passed"] and len(v_ok["slo"]) == 3
    assert v_bad["valid"] and not v_bad["slo_passed"]
    assert [r["passed"] for r in v_bad["slo"]] == [False, True]
    assert v_bad["slo"][0]["metric"] == "latency_ms.p99" and v_bad["slo"][0]["threshold"] == 0.001
    html = (run_bad / "report.html").read_text()
    assert "SLO FAILED" in html and "p99&lt;1us" in html
    # volley report re-renders the HTML and writes perf_analyzer's CSV
    (run_bad / "report.html").unlink()
    rep = runner.invoke(app, ["report", str(run_bad), "--csv", str(tmp_path / "pa.csv")])
    assert rep.exit_code == 0, rep.output
    assert (run_bad / "report.html").is_file() and "re-rendered:" in rep.output
    header, row = (tmp_path / "pa.csv").read_text().splitlines()
    assert header.startswith("Request Rate,Inferences/Second,Client Send,")
    assert row.split(",")[0] == "40" and row.split(",")[4] != ""  # Server Queue filled
    # bad input: one line, exit 2
    for args in (
        ["report", str(tmp_path)],
        ["compare", str(run_ok)],
        ["compare", str(run_ok), str(tmp_path)],
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert res.output.strip().count("\n") == 0 and "Traceback" not in res.output


async def test_compare_one_vs_two_instances(
    triton_server: TritonEndpoint,
    triton_sleep_x2: TritonServer,
    agent_pair: list[str],
    tmp_path: Path,
) -> None:
    """The sleep model (10 ms, one request at a time per instance) at 70/s: one instance
    queues (70% busy), two barely do; compare shows it, and marks the p90 difference as
    beyond noise, while the p99 of a repeat of the one-instance run is within it.

    The two-instance run must bound its p90 below the one-instance run's lower end. On
    a busy host slow spells come in bursts: the design effect of a p99 was 1-4 on a
    quiet host and 6.6 in a full suite run here (p99 then needs 2,430 requests at 95%,
    35 s at 70/s, and the CI host once could not bound it in 30 s), so the figure judged
    is the p90 (29 independent values needed at 95%: bounded at any design effect seen).
    The two-instance run is `--duration auto` (at most 30 s) on the SLO `p90 < the
    one-instance p90's lower end`, measured minutes before: it stops once its own p90
    interval (at the looks' stricter 98.75%, twice in a row, on at least 8 s with a
    stable throughput) lies below that, which then holds at the summary's 95% too (the
    stop instant ends what the deciding look judged). Decided the other way (its p90
    not below) fails the check below."""
    runs: list[RunResult] = []
    two = triton_sleep_x2  # the session's 2-instance server (shared with the sweep test)
    for name, ep, secs in (
        ("one", triton_server, 9),
        ("two", two, 30),
        ("one-again", triton_server, 9),
    ):
        doc = _sleep_plan(ep.grpc_url, 70, 10.0, name=name, duration=f"{secs}s", warmup="1s")
        auto = None
        if name == "two":
            low = runs[0].summary["confidence"]["latency_ms"]["p90"]["low"]
            doc["slos"] = [f"p90<{low:.3f}ms"]
            auto = AutoDuration()
        plan = plan_from_dict(doc)
        opts = RunOptions(
            out_dir=tmp_path, start_lead_s=1.0, server_metrics=ep.metrics_url, auto=auto
        )
        runs.append(await execute(plan, agent_pair[:1], opts))
    stop = runs[1].summary["auto_stop"]
    print(f"two-instance run: stopped at {stop['stopped_at_s']} s ({stop['reason']})")
    print(f"  its last look: {stop['checks']}")
    one, two_, _again = (r.summary["server"] for r in runs)
    assert (one["instances"], two_["instances"]) == (1, 2)
    assert two_["queue_ms"] < one["queue_ms"]
    path, data = write_compare([r.run_dir for r in runs], tmp_path / "compare.html")
    html = path.read_text()
    assert "1×KIND_CPU" in html and "2×KIND_CPU" in html
    rows = {c["figure"]: c for c in comparison(data)}
    for k in ("p50", "p90", "p95", "p99"):
        c = rows[f"latency {k}"]
        print(f"  {k}: {c['values']} ms, intervals {c['intervals']}, {c['significant_vs_first']}")
    p90, p99 = rows["latency p90"], rows["latency p99"]
    # two instances vs one: beyond noise (the two-instance p90 bounded, below the
    # one-instance lower end)
    two_p90 = p90["intervals"][1]
    assert two_p90 is not None and two_p90[1] is not None, p90
    assert p90["significant_vs_first"][0] is True, p90
    # the same config again: within noise at p99. (Not at p90: two 9 s runs of a queue
    # 70% busy on a shared host differ more than their p90 intervals say: 131 against
    # 57 ms was seen, [94, -] against [49, 75]; the 1 s windows' design effect does not
    # see a whole run's slow spell.)
    assert p99["significant_vs_first"][1] is False, p99
    assert p99["values"][1] < p99["values"][0]
    assert "beyond noise" in html
    _need_chromium()
    page = await _render(path, tmp_path / "compare.png")
    _charts_ok(
        page,
        (
            "compare-percentiles",
            "compare-latency-bars",
            "compare-p99-over-time",
            "compare-throughput",
            "compare-server-breakdown",
            "compare-server-cpu",
        ),
    )


# ---------------------------------------------------------------- a server that is not Triton
class _PlainKServe(triton_grpc.GRPCInferenceServiceServicer):
    """KServe v2 core only (no statistics extension): one model 'echo' FP32[4] -> [4]."""

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelReadyResponse(ready=request.name == "echo")

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        t = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name="echo",
            versions=["1"],
            platform="custom",
            inputs=[t(name="IN", datatype="FP32", shape=[4])],
            outputs=[t(name="OUT", datatype="FP32", shape=[4])],
        )

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelConfigResponse(
            config=model_config_pb2.ModelConfig(name="echo", max_batch_size=0)
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        out = service_pb2.ModelInferResponse(model_name="echo", id=request.id)
        out.outputs.add(name="OUT", datatype="FP32", shape=[4])
        out.raw_output_contents.append(np.zeros(4, np.float32).tobytes())
        return out


async def test_run_against_server_without_statistics(agent_pair: list[str], tmp_path: Path) -> None:
    server = grpc.aio.server()
    triton_grpc.add_GRPCInferenceServiceServicer_to_server(_PlainKServe(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        plan = plan_from_dict(
            {
                "target": f"127.0.0.1:{port}",
                "model": "echo",
                "seed": 1,
                "load": {"mode": "open", "rate": 40, "duration": "2s"},
                "validity": RELAXED,
            }
        )
        result = await execute(plan, agent_pair[:1], RunOptions(out_dir=tmp_path, start_lead_s=1))
    finally:
        await server.stop(0)
    s = result.summary
    assert s["requests"]["ok"] == 80 and s["verdict"]["valid"]
    assert s["server"]["available"] is False and s["server"]["queue_ms"] is None
    assert any("UNIMPLEMENTED" in n for n in s["server"]["notes"])
    doc = json.loads((result.run_dir / "server.json").read_text())
    assert doc["statistics"]["available"] is False
    html = (result.run_dir / "report.html").read_text()
    assert "server-side breakdown unavailable" in html
