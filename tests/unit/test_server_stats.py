"""Server-side figures: one statistics parser (proto and JSON), deltas per model and
version, the monitor's windows and periods (fake source, fake clock), Prometheus
parsing, reading over the plan's protocol, degrading gracefully."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.grpc import service_pb2_grpc as triton_grpc

from coordinator.stats.counters import (
    Counters,
    Snapshot,
    Stat,
    StatisticsError,
    breakdown,
    by_model,
    delta,
    figures,
    parse,
    parse_json,
    select,
    version_figures,
)
from coordinator.stats.documents import ModelConfigDoc, ServerDoc, ServerInfo
from coordinator.stats.monitor import (
    MAX_SAMPLE_S,
    ServerMonitor,
    sample_interval_s,
    summary_block,
)
from coordinator.stats.prometheus import (
    parse_metrics,
    resolve_metrics_url,
    summarize_metrics,
    timed,
)
from coordinator.stats.source import ProbeSource, SourceError
from volley.plan import plan_from_dict


# ---------------------------------------------------------------- the parser
def _stats(
    success: int, queue_ns: int, infer_ns: int, batch: int = 1, version: str = "1"
) -> service_pb2.ModelStatistics:
    ms = service_pb2.ModelStatistics(name="m", version=version)
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


#: What Triton's HTTP endpoint answers for the same statistics as PROTO below (numbers,
#: not strings; fields this client's proto may not know).
HTTP_JSON = """{"model_stats": [
 {"name": "m", "version": "1", "last_inference": 1700000000000, "inference_count": 20,
  "execution_count": 10,
  "inference_stats": {"success": {"count": 10, "ns": 93000000},
   "fail": {"count": 2, "ns": 4000000}, "queue": {"count": 10, "ns": 30000000},
   "compute_input": {"count": 10, "ns": 1000000},
   "compute_infer": {"count": 10, "ns": 60000000},
   "compute_output": {"count": 10, "ns": 2000000},
   "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0}},
  "response_stats": {}, "memory_usage": [],
  "batch_stats": [{"batch_size": 2, "compute_input": {"count": 10, "ns": 1000000},
   "compute_infer": {"count": 10, "ns": 60000000},
   "compute_output": {"count": 10, "ns": 2000000}}]},
 {"name": "m", "version": "2", "inference_count": 3, "execution_count": 3,
  "inference_stats": {"success": {"count": 3, "ns": 9000000},
   "queue": {"count": 3, "ns": 3000000}}, "batch_stats": []},
 {"name": "ensemble", "version": "1", "inference_count": 0, "execution_count": 0,
  "inference_stats": {}}
]}"""


def _proto_like_http_json() -> service_pb2.ModelStatisticsResponse:
    v1 = service_pb2.ModelStatistics(name="m", version="1", inference_count=20)
    v1.execution_count = 10
    st = v1.inference_stats
    st.success.count, st.success.ns = 10, 93_000_000
    st.fail.count, st.fail.ns = 2, 4_000_000
    st.queue.count, st.queue.ns = 10, 30_000_000
    st.compute_input.count, st.compute_input.ns = 10, 1_000_000
    st.compute_infer.count, st.compute_infer.ns = 10, 60_000_000
    st.compute_output.count, st.compute_output.ns = 10, 2_000_000
    bs = v1.batch_stats.add(batch_size=2)
    bs.compute_input.count, bs.compute_input.ns = 10, 1_000_000
    bs.compute_infer.count, bs.compute_infer.ns = 10, 60_000_000
    bs.compute_output.count, bs.compute_output.ns = 10, 2_000_000
    v2 = service_pb2.ModelStatistics(name="m", version="2", inference_count=3)
    v2.execution_count = 3
    v2.inference_stats.success.count, v2.inference_stats.success.ns = 3, 9_000_000
    v2.inference_stats.queue.count, v2.inference_stats.queue.ns = 3, 3_000_000
    ens = service_pb2.ModelStatistics(name="ensemble", version="1")
    return _resp(v1, v2, ens)


PROTO = _proto_like_http_json()


def test_proto_and_json_give_identical_counters() -> None:
    from_proto = parse(PROTO)
    from_json = parse_json(json.loads(HTTP_JSON))
    assert from_proto == from_json
    assert list(from_json) == [("m", "1"), ("m", "2"), ("ensemble", "1")]
    v1 = from_json[("m", "1")]
    assert v1.success == Stat(10, 93_000_000) and v1.fail == Stat(2, 4_000_000)
    assert v1.inference_count == 20 and v1.execution_count == 10
    assert v1.batches[2].compute_infer == Stat(10, 60_000_000)
    # uint64 as JSON strings (protobuf's own JSON mapping) read the same
    strings = json.loads(HTTP_JSON.replace('"count": 10,', '"count": "10",'))
    assert parse_json(strings) == from_proto


@pytest.mark.parametrize(
    "doc", [[], {"model_stats": "x"}, {"model_stats": [{"inference_count": "many"}]}]
)
def test_malformed_json_is_a_statistics_error(doc: Any) -> None:
    with pytest.raises(StatisticsError, match="statistics"):
        parse_json(doc)


def test_delta_gives_per_request_means() -> None:
    before = parse(_resp(_stats(100, 100 * 1_000_000, 100 * 5_000_000)))
    after = parse(_resp(_stats(300, 100 * 1_000_000 + 200 * 3_000_000, 300 * 5_000_000)))
    b = breakdown(by_model(delta(after, before))["m"])
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


def test_per_version_and_per_model_figures() -> None:
    before = parse(_resp(_stats(10, 10_000_000, 10_000_000), _stats(0, 0, 0, version="2")))
    after = parse(
        _resp(_stats(30, 30_000_000, 30_000_000), _stats(20, 80_000_000, 20_000_000, version="2"))
    )
    d = delta(after, before)
    assert select(d, "m", "1") == d[("m", "1")] and select(d, "m", "3") is None
    both = select(d, "m")
    assert both is not None and both.success.count == 40 and both.queue == Stat(40, 100_000_000)
    per_model = figures(d)
    assert per_model["m"]["success"] == 40 and per_model["m"]["queue_ms"] == 2.5
    per_version = version_figures(d)
    assert per_version["m"]["1"]["queue_ms"] == 1.0
    assert per_version["m"]["2"]["queue_ms"] == 4.0
    assert per_version["m"]["2"]["success"] == 20
    # no request in the delta: the model is left out, its means are None
    idle = delta(after, after)
    assert figures(idle) == {} and version_figures(idle) == {}
    b = breakdown(by_model(idle)["m"])
    assert b["success"] == 0 and b["queue_ms"] is None and b["batch_stats"] == []


def test_every_model_is_in_the_delta() -> None:
    step = parse(_resp(_stats(5, 5_000_000, 5_000_000)))
    comp = _stats(7, 0, 7_000_000)
    comp.name = "preprocess"  # e.g. a composing model of an ensemble
    after = parse(_resp(_stats(9, 9_000_000, 9_000_000), comp))
    assert set(figures(delta(after, step))) == {"m", "preprocess"}
    assert figures(delta(after, step))["preprocess"]["success"] == 7


# ---------------------------------------------------------------- the monitor
class FakeClock:
    """Monotonic ns and a sleep that wakes only when the test moves time on."""

    def __init__(self) -> None:
        self.ns = 0
        self._sleepers: list[tuple[int, asyncio.Future[None]]] = []

    def __call__(self) -> int:
        return self.ns

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.ns + round(seconds * 1e9), fut))
        await fut

    async def advance_to(self, t_s: float) -> None:
        end = round(t_s * 1e9)
        while True:
            await _settle()
            due = [w for w, _ in self._sleepers if w <= end]
            if not due:
                break
            self.ns = max(self.ns, min(due))
            for entry in [e for e in self._sleepers if e[0] <= self.ns]:
                self._sleepers.remove(entry)
                if not entry[1].done():
                    entry[1].set_result(None)
        self.ns = end
        await _settle()


async def _settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


class _Snap(dict[tuple[str, str], Counters]):
    """A snapshot that can be watched for being freed."""

    __slots__ = ("__weakref__",)


def _counters(n: int, queue_ms: float) -> Counters:
    return Counters(
        inference_count=n,
        execution_count=n,
        success=Stat(n, n * 10_000_000),
        queue=Stat(n, round(n * queue_ms * 1e6)),
        compute_infer=Stat(n, n * 5_000_000),
    )


class FakeSource:
    """Model m: version 1 at 10 requests/s (2 ms queue), version 2 at 5/s (4 ms), from
    t = 0 (the load's start, fake clock at 1 s); 100 earlier requests each."""

    def __init__(self, clock: FakeClock, fail_at: tuple[float, ...] = ()) -> None:
        self.clock = clock
        self.fail_at = fail_at
        self.calls: list[float] = []
        self.snapshots: list[weakref.ref[_Snap]] = []

    async def server_info(self) -> ServerInfo:
        return {"name": "triton", "version": "2.99.0", "extensions": ["statistics"]}

    async def model_config(self, name: str) -> ModelConfigDoc:
        return {"name": name, "instance_group": [{"kind": "KIND_CPU", "count": 2}]}

    async def model_ready(self, name: str, version: str) -> bool:
        return True

    async def statistics(self) -> Snapshot:
        t = self.clock.ns / 1e9 - 1.0
        self.calls.append(round(t, 3))
        if round(t, 3) in self.fail_at:
            raise SourceError("statistics: DEADLINE_EXCEEDED (no answer within 2s)")
        run = max(t, 0.0)
        snap = _Snap(
            {
                ("m", "1"): _counters(100 + int(10 * run), 2.0),
                ("m", "2"): _counters(100 + int(5 * run), 4.0),
                ("idle", "1"): _counters(3, 1.0),
            }
        )
        self.snapshots.append(weakref.ref(snap))
        return snap

    async def close(self) -> None:
        pass


async def _monitored_run(
    warmup_s: float, until_s: float, fail_at: tuple[float, ...] = ()
) -> tuple[ServerDoc, FakeSource, ServerMonitor]:
    clock = FakeClock()
    source = FakeSource(clock, fail_at)
    mon = ServerMonitor(
        source,
        "fake:8001",
        "m",
        None,
        models=[("m", ""), ("m", "2"), ("absent", "")],
        clock=clock,
        sleep=clock.sleep,
    )
    mon.begin(start_ns=1_000_000_000, warmup_s=warmup_s)  # the load starts in 1 s
    await clock.advance_to(1.0 + until_s)
    doc = await mon.stop()
    return doc, source, mon


async def test_monitor_windows_and_measured_period() -> None:
    doc, source, _ = await _monitored_run(warmup_s=1.5, until_s=4.2)
    # before the load, each window from t = 0, the end of the warm-up, the end
    assert source.calls == [-1.0, 0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 4.2]
    stats = doc["statistics"]
    assert stats["available"] and stats["note"] == "" and stats["period"] == "measured"
    wins = stats["windows"]
    assert [w["window"] for w in wins] == [0, 1, 2, 3]
    assert all(w["span_s"] == 1.0 for w in wins)
    for w in wins:
        assert set(w["models"]) == {"m"}  # models without requests are left out
        assert w["models"]["m"]["success"] == 15
        assert w["models"]["m"]["queue_ms"] == pytest.approx(2.6667)
    # measured: end of warm-up (1.5 s) to the end (4.2 s); run: from before the load
    measured, run = stats["measured"], stats["run"]
    assert measured is not None
    assert measured["m"]["success"] == (42 - 15) + (21 - 7)
    assert run["m"]["success"] == 42 + 21
    by_version = stats["measured_versions"]
    assert by_version is not None
    assert by_version["m"]["1"]["success"] == 27 and by_version["m"]["1"]["queue_ms"] == 2.0
    assert by_version["m"]["2"]["success"] == 14 and by_version["m"]["2"]["queue_ms"] == 4.0
    # the plan's models over the measured period, never the warm-up (one version, all
    # versions; absent ones left out)
    rows = doc["per_model"]["models"]
    assert [(r["name"], r["version"], r["requests"]) for r in rows] == [
        ("m", "", 41),
        ("m", "2", 14),
    ]
    block = summary_block(doc, client_ok=41)
    assert block["available"] and block["success"] == 41 and block["period"] == "measured"
    assert block["queue_ms"] == pytest.approx(2.6829, abs=1e-4)
    assert block["instances"] == 2 and block["instance_kind"] == "KIND_CPU"
    assert block["source"] == "triton 2.99.0" and block["models"] == rows
    assert block["notes"] == []


async def test_monitor_keeps_only_the_latest_window_snapshot() -> None:
    _, source, monitor = await _monitored_run(warmup_s=1.5, until_s=30.0)
    await _settle()
    gc.collect()  # the monitor is alive: what it holds is not freed
    alive = [r for r in source.snapshots if r() is not None]
    assert len(source.snapshots) == 1 + 31 + 1 + 1  # before, t = 0..30, warm-up, after
    assert len(alive) <= 3  # before, end of warm-up, the latest window
    assert monitor.poll_failures == 0


@pytest.mark.parametrize(
    ("fail_at", "until_s", "why"),
    [
        ((1.5,), 4.2, "DEADLINE_EXCEEDED"),
        ((), 1.2, "the run ended before the end of its warm-up was sampled"),
    ],
)
async def test_missing_warmup_sample_makes_the_measured_period_unavailable(
    fail_at: tuple[float, ...], until_s: float, why: str
) -> None:
    doc, _, _ = await _monitored_run(warmup_s=1.5, until_s=until_s, fail_at=fail_at)
    stats = doc["statistics"]
    # the run's figures are real and stay; the measured period has none
    assert stats["available"] and stats["run"]["m"]["success"] > 0
    assert stats["measured"] is None and stats["measured_versions"] is None
    assert stats["period"] == "run"
    assert "end of the warm-up" in stats["note"] and why in stats["note"]
    block = summary_block(doc, client_ok=10)
    assert block["available"] is False
    assert block["queue_ms"] is None and block["compute_infer_ms"] is None
    assert "success" not in block and "request_ms" not in block and "period" not in block
    assert [n for n in block["notes"] if "warm-up" in n] == [stats["note"]]


async def test_without_warmup_measured_is_the_run() -> None:
    doc, _, _ = await _monitored_run(warmup_s=0.0, until_s=2.0)
    stats = doc["statistics"]
    assert stats["period"] == "measured" and stats["measured"] == stats["run"]
    assert summary_block(doc)["success"] == 30


def _doc(**stats: Any) -> ServerDoc:
    fig = breakdown(by_model(parse(_resp(_stats(500, 0, 500_000_000))))["m"])
    return {
        "target": "t:8001",
        "model": "m",
        "server": {"name": "triton", "version": "2.51.0"},
        "model_config": {"instance_group": [{"count": 2, "kind": "KIND_GPU"}]},
        "interval_s": 1.0,
        "poll_failures": 0,
        "statistics": {"available": True, "note": "", "measured": {"m": fig}, **stats},
        "metrics": {"available": False, "url": None, "note": "metrics down"},
        "per_model": {},
    }


def test_summary_block_notes_other_clients() -> None:
    doc = _doc()
    out = summary_block(doc, client_ok=100)
    assert out["available"] and out["queue_ms"] == 0.0 and out["compute_infer_ms"] == 1.0
    assert out["source"] == "triton 2.51.0"
    assert out["instances"] == 2 and out["instance_kind"] == "KIND_GPU"
    assert "metrics down" in out["notes"]
    assert any("other clients" in n for n in out["notes"])
    assert not any("other" in n for n in summary_block(doc, client_ok=500)["notes"])
    assert list(out)[:7] == [
        "available",
        "source",
        "model",
        "queue_ms",
        "compute_input_ms",
        "compute_infer_ms",
        "compute_output_ms",
    ]
    assert list(out)[-2:] == ["notes", "models"]


async def test_monitor_off() -> None:
    mon = ServerMonitor(FakeSource(FakeClock()), "127.0.0.1:1", "m", None, enabled=False)
    mon.begin(0, 0.0)
    doc = await mon.stop()
    assert doc["statistics"] == {"available": False, "note": "server statistics turned off"}
    assert summary_block(doc)["available"] is False


# ---------------------------------------------------------------- Prometheus
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
    assert s.get("cpu_utilization") == 0.25
    assert s["gpus"]["GPU-a"] == {"utilization": 0.5, "memory_used_bytes": 2e9, "power_w": 100.5}
    assert s["pending"] == {"m": 4, "other": 9}
    summ = summarize_metrics([timed(0.0, s), timed(1.0, {**s, "cpu_utilization": 0.75})], "m")
    assert summ["cpu_utilization_percent"] == {"mean": 50.0, "max": 75.0}
    assert summ["gpu_utilization_percent"] == {"mean": 60.0, "max": 60.0}
    assert summ["gpu_memory_used_bytes"] == {"mean": 3e9, "max": 3e9}
    assert summ["gpu_power_w"] == {"mean": 150.5, "max": 150.5}
    assert summ["pending_requests"] == {"mean": 4.0, "max": 4.0}
    assert summ["gpus"] == ["GPU-a", "GPU-b"]
    cpu_only = summarize_metrics([timed(0.0, parse_metrics("nv_cpu_utilization 0.5\n"))], "m")
    assert cpu_only["gpu_utilization_percent"] is None


def test_metrics_url_resolution(tmp_path: Path) -> None:
    assert resolve_metrics_url("h:9", "10.0.0.1:8002")[0] == "http://10.0.0.1:8002/metrics"
    assert resolve_metrics_url("h:9", "https://x:1/m")[0] == "https://x:1/m"
    assert resolve_metrics_url("h:9", "off") == (None, "metrics scraping turned off")
    empty = tmp_path / "none"
    assert resolve_metrics_url("tr:8001", None, empty)[0] == "http://tr:8002/metrics"
    assert resolve_metrics_url("tr:8000", None, empty)[0] == "http://tr:8002/metrics"
    url, why = resolve_metrics_url("tr:9001", None, empty)
    assert url is None and "--server-metrics" in why
    (tmp_path / "state.json").write_text(
        json.dumps(
            {"host": "127.0.0.1", "grpc_port": 9001, "http_port": 9000, "metrics_port": 9555}
        )
    )
    for port in (9001, 9000):
        assert resolve_metrics_url(f"127.0.0.1:{port}", None, tmp_path)[0] == (
            "http://127.0.0.1:9555/metrics"
        )


# ---------------------------------------------------------------- over the plan's protocol
class _StatsServicer(triton_grpc.GRPCInferenceServiceServicer):
    """Triton's metadata, config and statistics RPCs, answering PROTO."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    def _seen(self, context: Any) -> None:
        self.metadata.append({k: v for k, v in context.invocation_metadata()})

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        self._seen(context)
        return service_pb2.ServerMetadataResponse(
            name="triton", version="2.99.0", extensions=["statistics"]
        )

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        self._seen(context)
        cfg = model_config_pb2.ModelConfig(name=request.name, max_batch_size=8, backend="python")
        cfg.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=3)
        return service_pb2.ModelConfigResponse(config=cfg)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        self._seen(context)
        return service_pb2.ModelReadyResponse(ready=request.name == "m")

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        self._seen(context)
        return PROTO


async def _grpc_server(servicer: Any) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    triton_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def _plan(target: str, protocol: str = "grpc") -> Any:
    return plan_from_dict(
        {
            "target": target,
            "model": "m",
            "protocol": protocol,
            "headers": [{"name": "x-tenant", "value": "blue"}],
            "load": {"rate": 1, "duration": "1s"},
        }
    )


async def test_grpc_source_reads_over_the_plans_connection() -> None:
    servicer = _StatsServicer()
    server, port = await _grpc_server(servicer)
    source = ProbeSource(_plan(f"127.0.0.1:{port}"))
    try:
        info = await source.server_info()
        cfg = await source.model_config("m")
        ready = (await source.model_ready("m", ""), await source.model_ready("x", ""))
        snap = await source.statistics()
    finally:
        await source.close()
        await server.stop(0)
    assert info == {"name": "triton", "version": "2.99.0", "extensions": ["statistics"]}
    assert cfg["max_batch_size"] == 8 and cfg["backend"] == "python"
    assert cfg["instance_group"] == [{"kind": "KIND_CPU", "count": 3}]
    assert ready == (True, False)
    assert snap == parse(PROTO)
    assert servicer.metadata and all(m.get("x-tenant") == "blue" for m in servicer.metadata)


async def test_http_source_reads_the_same_counters() -> None:
    seen: list[str] = []
    triton = [True]

    async def stats(request: web.Request) -> web.Response:
        seen.append(request.headers.get("x-tenant", ""))
        if not triton[0]:
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(text=HTTP_JSON, content_type="application/json")

    async def meta(request: web.Request) -> web.Response:
        return web.json_response({"name": "triton", "version": "2.99.0", "extensions": []})

    app = web.Application()
    app.router.add_get("/v2/models/stats", stats)
    app.router.add_get("/v2", meta)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    source = ProbeSource(_plan(f"127.0.0.1:{port}", "http"))
    try:
        assert (await source.server_info())["name"] == "triton"
        assert await source.statistics() == parse(PROTO)
        assert await source.model_config("m") == {}  # no config endpoint
        assert await source.model_ready("m", "") is False
        triton[0] = False  # a KServe v2 server without the statistics extension
        with pytest.raises(SourceError, match="HTTP_404: statistics: HTTP 404: not found"):
            await source.statistics()
    finally:
        await source.close()
        await runner.cleanup()
    assert seen == ["blue", "blue"]


class _NoStatsServicer(triton_grpc.GRPCInferenceServiceServicer):
    """A KServe v2 server without the statistics extension: every RPC unimplemented."""


async def test_monitor_degrades_without_statistics() -> None:
    server, port = await _grpc_server(_NoStatsServicer())
    try:
        mon = ServerMonitor.for_plan(_plan(f"127.0.0.1:{port}"), "127.0.0.1:1")
        mon.begin(0, 0.0)
        doc = await mon.stop()
    finally:
        await server.stop(0)
    assert doc["statistics"]["available"] is False
    assert "UNIMPLEMENTED" in doc["statistics"]["note"]
    assert doc["metrics"]["available"] is False and doc["metrics"]["note"]
    assert doc["per_model"] == {} and doc["server"] == {}
    block = summary_block(doc)
    assert block["available"] is False and block["queue_ms"] is None
    assert len(block["notes"]) == 2 and block["models"] == []


async def test_source_timeout_is_a_source_error() -> None:
    class Slow(_StatsServicer):
        async def ModelStatistics(self, request: Any, context: Any) -> Any:
            await asyncio.sleep(5)
            return PROTO

    server, port = await _grpc_server(Slow())
    source = ProbeSource(_plan(f"127.0.0.1:{port}"), timeout_s=0.3)
    try:
        with pytest.raises(SourceError, match="DEADLINE_EXCEEDED"):
            await source.statistics()
        assert (await source.server_info())["name"] == "triton"  # reconnected
    finally:
        await source.close()
        await server.stop(0)


def test_sample_interval_follows_the_open_loop_peak_rate() -> None:
    def plan(**load: Any) -> Any:
        return plan_from_dict({"target": "127.0.0.1:8001", "model": "m", "load": load})

    assert sample_interval_s(plan(rate=2000, duration="5s")) == 1.0
    assert sample_interval_s(plan(rate=10, duration="5s")) == 1.0
    assert sample_interval_s(plan(rate=4, duration="5s")) == 3.0
    assert sample_interval_s(plan(rate=1, duration="5s")) == MAX_SAMPLE_S
    # a ramp: its peak decides (its fast stage gets per-second windows)
    ramp = plan(stages=[{"duration": "5s", "target": 1}, {"duration": "5s", "target": 100}])
    assert sample_interval_s(ramp) == 1.0
    assert sample_interval_s(plan(mode="closed", concurrency=1, duration="5s")) == 1.0


async def test_slow_windows_keep_the_figures_exact() -> None:
    """5 s windows: fewer samples, each window's span and deltas exact, and the measured
    period still runs from the end-of-warm-up sample to the end."""
    clock = FakeClock()
    source = FakeSource(clock)
    mon = ServerMonitor(
        source, "fake:8001", "m", None, interval_s=5.0, clock=clock, sleep=clock.sleep
    )
    mon.begin(start_ns=1_000_000_000, warmup_s=1.5)
    await clock.advance_to(1.0 + 12.2)
    doc = await mon.stop()
    assert source.calls == [-1.0, 0.0, 1.5, 5.0, 10.0, 12.2]
    stats = doc["statistics"]
    assert doc["interval_s"] == 5.0
    assert [(w["window"], w["t_s"], w["span_s"]) for w in stats["windows"]] == [
        (0, 0.0, 5.0),
        (1, 5.0, 5.0),
    ]
    assert all(w["models"]["m"]["success"] == 75 for w in stats["windows"])
    measured = stats["measured"]
    assert measured is not None
    assert measured["m"]["success"] == (122 - 15) + (61 - 7)
