"""Server-side figures: Triton statistics deltas, Prometheus parsing, degrading gracefully."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2
from tritonclient.grpc import service_pb2_grpc as triton_grpc

from coordinator.stats.monitor import (
    ServerMonitor,
    breakdown,
    parse_metrics,
    resolve_metrics_url,
    snapshot_delta,
    snapshot_from_proto,
    summarize_metrics,
    summary_block,
)


def _stats(
    success: int, queue_ns: int, infer_ns: int, batch: int = 1
) -> service_pb2.ModelStatistics:
    ms = service_pb2.ModelStatistics(name="m", version="1")
    ms.inference_count = success * batch
    ms.execution_count = success
    st = ms.inference_stats
    st.success.count, st.success.ns = success, queue_ns + infer_ns + success * 300_000
    st.queue.count, st.queue.ns = success, queue_ns
    st.compute_input.count, st.compute_input.ns = success, success * 100_000
    st.compute_infer.count, st.compute_infer.ns = success, infer_ns
    st.compute_output.count, st.compute_output.ns = success, success * 200_000
    bs = ms.batch_stats.add(batch_size=batch)
    bs.compute_infer.count, bs.compute_infer.ns = success, infer_ns
    return ms


def _resp(*models: service_pb2.ModelStatistics) -> service_pb2.ModelStatisticsResponse:
    r = service_pb2.ModelStatisticsResponse()
    r.model_stats.extend(models)
    return r


def test_delta_gives_per_request_means() -> None:
    before = snapshot_from_proto(_resp(_stats(100, 100 * 1_000_000, 100 * 5_000_000)))
    after = snapshot_from_proto(
        _resp(_stats(300, 100 * 1_000_000 + 200 * 3_000_000, 300 * 5_000_000))
    )
    b = breakdown(snapshot_delta(after, before)["m"])
    assert b["success"] == 200 and b["fail"] == 0
    assert b["queue_ms"] == 3.0  # only the 200 new requests, 3 ms each
    assert b["compute_infer_ms"] == 5.0
    assert b["compute_input_ms"] == 0.1 and b["compute_output_ms"] == 0.2
    assert b["request_ms"] == 8.3 and b["overhead_ms"] == 0.0
    assert b["avg_batch_size"] == 1.0
    assert b["batch_stats"] == [
        {
            "batch_size": 1,
            "executions": 200,
            "compute_input_ms": None,
            "compute_infer_ms": 5.0,
            "compute_output_ms": None,
        }
    ]


def test_versions_are_summed_and_idle_models_empty() -> None:
    v1, v2 = _stats(10, 10_000_000, 10_000_000), _stats(30, 30_000_000, 30_000_000)
    v2.version = "2"
    snap = snapshot_from_proto(_resp(v1, v2))
    assert snap["m"].durations["success"][0] == 40
    b = breakdown(snapshot_delta(snap, snap)["m"])
    assert b["success"] == 0 and b["queue_ms"] is None and b["avg_batch_size"] is None


METRICS = """# HELP nv_cpu_utilization CPU utilization rate [0.0 - 1.0]
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.25
nv_cpu_memory_used_bytes 1000
nv_cpu_memory_total_bytes 4000
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-a"} 0.5
nv_gpu_utilization{gpu_uuid="GPU-b"} 0.7
nv_gpu_memory_used_bytes{gpu_uuid="GPU-a"} 2e9
nv_gpu_memory_used_bytes{gpu_uuid="GPU-b"} 1e9
nv_gpu_power_usage{gpu_uuid="GPU-a"} 100.5
nv_gpu_power_usage{gpu_uuid="GPU-b"} 50
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="m",version="1"} 3
nv_inference_pending_request_count{model="m",version="2"} 1
nv_inference_pending_request_count{model="other",version="1"} 9
"""


def test_prometheus_sample_and_summary() -> None:
    s = parse_metrics(METRICS)
    assert s["cpu_utilization"] == 0.25
    assert s["gpus"]["GPU-a"] == {"utilization": 0.5, "memory_used_bytes": 2e9, "power_w": 100.5}
    assert s["pending"] == {"m": 4, "other": 9}
    summ = summarize_metrics([s, {**s, "cpu_utilization": 0.75}], "m")
    assert summ["cpu_utilization_percent"] == {"mean": 50.0, "max": 75.0}
    assert summ["gpu_utilization_percent"] == {"mean": 60.0, "max": 60.0}
    assert summ["gpu_memory_used_bytes"]["max"] == 3e9
    assert summ["gpu_power_w"]["mean"] == 150.5
    assert summ["pending_requests"]["max"] == 4.0
    assert summ["gpus"] == ["GPU-a", "GPU-b"]
    cpu_only = summarize_metrics([parse_metrics("nv_cpu_utilization 0.5\n")], "m")
    assert cpu_only["gpu_utilization_percent"] is None


def test_metrics_url_resolution(tmp_path: Path) -> None:
    assert resolve_metrics_url("h:9", "10.0.0.1:8002")[0] == "http://10.0.0.1:8002/metrics"
    assert resolve_metrics_url("h:9", "https://x:1/m")[0] == "https://x:1/m"
    assert resolve_metrics_url("h:9", "off") == (None, "metrics scraping turned off")
    empty = tmp_path / "none"
    assert resolve_metrics_url("tr:8001", None, empty)[0] == "http://tr:8002/metrics"
    url, why = resolve_metrics_url("tr:9001", None, empty)
    assert url is None and "--server-metrics" in why
    (tmp_path / "state.json").write_text(
        json.dumps({"host": "127.0.0.1", "grpc_port": 9001, "metrics_port": 9555})
    )
    assert resolve_metrics_url("127.0.0.1:9001", None, tmp_path)[0] == (
        "http://127.0.0.1:9555/metrics"
    )


def test_summary_block_notes_other_clients() -> None:
    fig = breakdown(snapshot_from_proto(_resp(_stats(500, 0, 500_000_000)))["m"])
    doc = {
        "model": "m",
        "server": {"name": "triton", "version": "2.51.0"},
        "model_config": {"instance_group": [{"count": 2, "kind": "KIND_GPU"}]},
        "statistics": {"available": True, "note": "", "measured": {"m": fig}},
        "metrics": {"available": False, "note": "metrics down"},
    }
    out = summary_block(doc, client_ok=100)
    assert out["available"] and out["queue_ms"] == 0.0 and out["compute_infer_ms"] == 1.0
    assert out["source"] == "triton 2.51.0"
    assert out["instances"] == 2 and out["instance_kind"] == "KIND_GPU"
    assert "metrics down" in out["notes"]
    assert any("other clients" in n for n in out["notes"])
    assert not any("other" in n for n in summary_block(doc, client_ok=500)["notes"])


class _NoStatsServicer(triton_grpc.GRPCInferenceServiceServicer):
    """A KServe v2 server without the statistics extension: every RPC unimplemented."""


async def test_monitor_degrades_without_statistics() -> None:
    server = grpc.aio.server()
    triton_grpc.add_GRPCInferenceServiceServicer_to_server(_NoStatsServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        mon = ServerMonitor.for_target(f"127.0.0.1:{port}", "m", "127.0.0.1:1")
        mon.begin(time.monotonic_ns(), 0.0)
        doc = await mon.stop()
    finally:
        await server.stop(0)
    assert doc["statistics"]["available"] is False
    assert "UNIMPLEMENTED" in doc["statistics"]["note"]
    assert doc["metrics"]["available"] is False and doc["metrics"]["note"]
    block = summary_block(doc)
    assert block["available"] is False and block["queue_ms"] is None
    assert len(block["notes"]) == 2


async def test_monitor_off() -> None:
    mon = ServerMonitor.for_target("127.0.0.1:1", "m", None, enabled=False)
    mon.begin(time.monotonic_ns(), 0.0)
    doc = await mon.stop()
    assert doc["statistics"] == {"available": False, "note": "server statistics turned off"}
