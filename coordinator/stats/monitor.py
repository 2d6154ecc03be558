"""The server's side of a run: Triton's statistics and Prometheus metrics.

`ServerMonitor` takes Triton's per-model statistics (gRPC `ModelStatistics`, the KServe
v2 statistics extension) before the load, at the end of the warm-up, once per 1 s
window during the run and after it; the deltas give per-request means of queue and
compute (input, infer, output) time, success/failure counts and batch statistics. It
also scrapes Triton's Prometheus endpoint once per window (CPU and GPU utilisation,
GPU memory and power when present, pending requests).

A server without the statistics extension (any KServe v2 server that is not Triton),
or an unreachable metrics endpoint, is not an error: that part is "unavailable" with a
note saying why, and the run goes on. Statistics count every request the server saw
for the model, including other clients'; the report says so when the counts disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2
from tritonclient.grpc import service_pb2_grpc as triton_grpc

log = logging.getLogger("volley.server_stats")

#: Duration statistics of `InferStatistics` (each a (count, ns) pair).
DURATIONS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)
BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


# ---------------------------------------------------------------- statistics (pure)
@dataclass
class ModelCounters:
    """Cumulative statistics of one model (all its versions summed)."""

    inference_count: int = 0
    execution_count: int = 0
    #: statistic -> [count, total ns]
    durations: dict[str, list[int]] = field(default_factory=lambda: {k: [0, 0] for k in DURATIONS})
    #: batch size -> statistic -> [count, total ns]
    batches: dict[int, dict[str, list[int]]] = field(default_factory=dict)

    def add(self, other: ModelCounters, sign: int = 1) -> None:
        self.inference_count += sign * other.inference_count
        self.execution_count += sign * other.execution_count
        for k, (c, ns) in other.durations.items():
            d = self.durations.setdefault(k, [0, 0])
            d[0] += sign * c
            d[1] += sign * ns
        for b, stats in other.batches.items():
            mine = self.batches.setdefault(b, {k: [0, 0] for k in BATCH_DURATIONS})
            for k, (c, ns) in stats.items():
                mine[k][0] += sign * c
                mine[k][1] += sign * ns

    def minus(self, before: ModelCounters) -> ModelCounters:
        out = ModelCounters()
        out.add(self)
        out.add(before, -1)
        out.batches = {b: s for b, s in out.batches.items() if any(c for c, _ in s.values())}
        return out


#: model name -> counters
Snapshot = dict[str, ModelCounters]


def snapshot_from_proto(resp: service_pb2.ModelStatisticsResponse) -> Snapshot:
    out: Snapshot = {}
    for ms in resp.model_stats:
        c = ModelCounters(
            inference_count=int(ms.inference_count), execution_count=int(ms.execution_count)
        )
        for k in DURATIONS:
            d = getattr(ms.inference_stats, k)
            c.durations[k] = [int(d.count), int(d.ns)]
        for bs in ms.batch_stats:
            c.batches[int(bs.batch_size)] = {
                k: [int(getattr(bs, k).count), int(getattr(bs, k).ns)] for k in BATCH_DURATIONS
            }
        out.setdefault(ms.name, ModelCounters()).add(c)
    return out


def snapshot_delta(after: Snapshot, before: Snapshot) -> Snapshot:
    return {m: c.minus(before.get(m, ModelCounters())) for m, c in after.items()}


def _mean_ms(pair: list[int]) -> float | None:
    count, ns = pair
    return round(ns / count / 1e6, 4) if count > 0 else None


def breakdown(c: ModelCounters) -> dict[str, Any]:
    """Per-request means (ms) and counts of one model's statistics delta."""
    d = c.durations
    parts = [_mean_ms(d[k]) for k in ("queue", "compute_input", "compute_infer", "compute_output")]
    request = _mean_ms(d["success"])
    overhead = (
        round(request - sum(parts), 4)  # type: ignore[arg-type]
        if request is not None and all(p is not None for p in parts)
        else None
    )
    return {
        "success": d["success"][0],
        "fail": d["fail"][0],
        "inference_count": c.inference_count,
        "execution_count": c.execution_count,
        "avg_batch_size": (
            round(c.inference_count / c.execution_count, 3) if c.execution_count else None
        ),
        "request_ms": request,
        "queue_ms": parts[0],
        "compute_input_ms": parts[1],
        "compute_infer_ms": parts[2],
        "compute_output_ms": parts[3],
        "overhead_ms": overhead,
        "fail_ms": _mean_ms(d["fail"]),
        "cache_hit": d["cache_hit"][0],
        "cache_miss": d["cache_miss"][0],
        "batch_stats": [
            {
                "batch_size": b,
                "executions": s["compute_infer"][0],
                **{f"{k}_ms": _mean_ms(s[k]) for k in BATCH_DURATIONS},
            }
            for b, s in sorted(c.batches.items())
        ],
    }


def _active(c: ModelCounters) -> bool:
    return bool(c.durations["success"][0] or c.durations["fail"][0] or c.execution_count)


# ---------------------------------------------------------------- Prometheus (pure)
_GPU_FIELDS = {
    "nv_gpu_utilization": "utilization",
    "nv_gpu_memory_used_bytes": "memory_used_bytes",
    "nv_gpu_memory_total_bytes": "memory_total_bytes",
    "nv_gpu_power_usage": "power_w",
    "nv_gpu_power_limit": "power_limit_w",
}
_HOST_FIELDS = {
    "nv_cpu_utilization": "cpu_utilization",
    "nv_cpu_memory_used_bytes": "cpu_memory_used_bytes",
    "nv_cpu_memory_total_bytes": "cpu_memory_total_bytes",
}


def parse_metrics(text: str) -> dict[str, Any]:
    """Triton's Prometheus exposition -> one sample (utilisations as fractions 0..1)."""
    sample: dict[str, Any] = {"gpus": {}, "pending": {}}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in _HOST_FIELDS:
                sample[_HOST_FIELDS[s.name]] = float(s.value)
            elif s.name in _GPU_FIELDS:
                gpu = s.labels.get("gpu_uuid", "gpu")
                sample["gpus"].setdefault(gpu, {})[_GPU_FIELDS[s.name]] = float(s.value)
            elif s.name == "nv_inference_pending_request_count":
                model = s.labels.get("model", "")
                sample["pending"][model] = sample["pending"].get(model, 0) + int(s.value)
    return sample


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "mean": round(sum(values) / len(values), 4),
        "max": round(max(values), 4),
    }


def summarize_metrics(samples: list[dict[str, Any]], model: str) -> dict[str, Any]:
    cpu = [s["cpu_utilization"] * 100 for s in samples if "cpu_utilization" in s]
    mem = [s["cpu_memory_used_bytes"] for s in samples if "cpu_memory_used_bytes" in s]
    gpu_util: list[float] = []
    gpu_mem: list[float] = []
    gpu_power: list[float] = []
    for s in samples:
        gpus = s.get("gpus", {}).values()
        if not gpus:
            continue
        utils = [g["utilization"] * 100 for g in gpus if "utilization" in g]
        if utils:
            gpu_util.append(sum(utils) / len(utils))
        gpu_mem.append(sum(g.get("memory_used_bytes", 0.0) for g in gpus))
        gpu_power.append(sum(g.get("power_w", 0.0) for g in gpus))
    pending = [float(s.get("pending", {}).get(model, 0)) for s in samples if "pending" in s]
    return {
        "samples": len(samples),
        "cpu_utilization_percent": _stats(cpu),
        "cpu_memory_used_bytes": _stats(mem),
        "gpu_utilization_percent": _stats(gpu_util),
        "gpu_memory_used_bytes": _stats(gpu_mem),
        "gpu_power_w": _stats(gpu_power),
        "pending_requests": _stats(pending),
        "gpus": sorted({g for s in samples for g in s.get("gpus", {})}),
    }


# ---------------------------------------------------------------- where the metrics are
def resolve_metrics_url(
    target: str, explicit: str | None, state_dir: Path | None = None
) -> tuple[str | None, str]:
    """The Prometheus URL to scrape, and a note when there is none.

    explicit: a URL or HOST:PORT (path /metrics added), or "off". Without it: the
    server `volley triton start` recorded for this target, else Triton's default
    layout (gRPC 8001 -> metrics 8002)."""
    if explicit is not None:
        text = explicit.strip()
        if text.lower() in ("off", "none", "no", ""):
            return None, "metrics scraping turned off"
        if "://" not in text:
            text = "http://" + text
        scheme, _, rest = text.partition("://")
        if "/" not in rest:
            text = f"{scheme}://{rest}/metrics"
        return text, ""
    from coordinator.triton import DEFAULT_STATE_DIR, STATE_FILE

    host, _, port = target.rpartition(":")
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        state = json.loads(((state_dir or DEFAULT_STATE_DIR) / STATE_FILE).read_text())
        local = {"127.0.0.1", "localhost", str(state.get("host", ""))}
        if port == str(state["grpc_port"]) and host in local:
            return f"http://{host}:{int(state['metrics_port'])}/metrics", ""
    if port == "8001":
        return f"http://{host}:8002/metrics", ""
    return None, (
        "no Prometheus metrics URL known for this target: pass --server-metrics HOST:PORT"
    )


def _fetch(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read(16 * 1024 * 1024)
        return body.decode("utf-8", "replace")


def _grpc_error(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        details = (exc.details() or "").splitlines()
        return f"{exc.code().name}: {details[0] if details else ''}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- the monitor
@dataclass
class _Tick:
    t_s: float
    stats: Snapshot | None = None
    metrics: dict[str, Any] | None = None


class ServerMonitor:
    """Samples the server around and during one run (see the module docstring)."""

    def __init__(
        self,
        target: str,
        model: str,
        metrics_url: str | None,
        metrics_note: str = "",
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        enabled: bool = True,
    ) -> None:
        self.target = target
        self.model = model
        self.metrics_url = metrics_url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.enabled = enabled
        self.stats_ok = enabled
        self.metrics_ok = enabled and metrics_url is not None
        self.stats_note = "" if enabled else "server statistics turned off"
        self.metrics_note = metrics_note if enabled else "server statistics turned off"
        self.poll_failures = 0
        self.server_info: dict[str, Any] = {}
        self.model_config: dict[str, Any] = {}
        self._channel: grpc.aio.Channel | None = None
        self._stub: triton_grpc.GRPCInferenceServiceStub | None = None
        self._start_ns = 0
        self._before: Snapshot | None = None
        self._warm: Snapshot | None = None
        self._warmup_s = 0.0
        self._ticks: list[_Tick] = []
        #: per-window deltas, computed as ticks come (the older snapshot is then freed,
        #: so a long run keeps one snapshot, not one per second)
        self._window_rows: list[dict[str, Any]] = []
        self._prev: _Tick | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._starting: asyncio.Task[None] | None = None

    @classmethod
    def for_target(
        cls, target: str, model: str, metrics: str | None, enabled: bool = True
    ) -> ServerMonitor:
        """metrics: a URL, HOST:PORT, "off", or None to find it (resolve_metrics_url)."""
        url, note = resolve_metrics_url(target, metrics)
        return cls(target, model, url, note, enabled=enabled)

    def begin(self, start_ns: int, warmup_s: float) -> None:
        """start() in the background (the run's start does not wait for the server)."""
        self._starting = asyncio.create_task(self.start(start_ns, warmup_s))

    def abort(self) -> None:
        for t in [*self._tasks, *([self._starting] if self._starting else [])]:
            t.cancel()

    # -- sampling
    async def _stats(self) -> Snapshot | None:
        if not self.stats_ok or self._stub is None:
            return None
        resp = await self._stub.ModelStatistics(
            service_pb2.ModelStatisticsRequest(name="", version=""), timeout=self.timeout_s
        )
        return snapshot_from_proto(resp)

    async def _metrics(self) -> dict[str, Any] | None:
        if not self.metrics_ok or self.metrics_url is None:
            return None
        text = await asyncio.to_thread(_fetch, self.metrics_url, self.timeout_s)
        return parse_metrics(text)

    def _t(self) -> float:
        return (time.monotonic_ns() - self._start_ns) / 1e9

    async def _tick(self) -> _Tick:
        t = self._t()
        stats, metrics = await asyncio.gather(
            self._stats(), self._metrics(), return_exceptions=True
        )
        tick = _Tick(t)
        if isinstance(stats, BaseException):
            self.poll_failures += 1
        else:
            tick.stats = stats
        if isinstance(metrics, BaseException):
            self.poll_failures += 1
        else:
            tick.metrics = metrics
        return tick

    # -- lifecycle
    async def start(self, start_ns: int, warmup_s: float) -> None:
        """Take the 'before' sample now and sample each window from `start_ns` on."""
        self._start_ns = start_ns
        self._warmup_s = warmup_s
        if not self.enabled:
            return
        self._channel = grpc.aio.insecure_channel(self.target)
        self._stub = triton_grpc.GRPCInferenceServiceStub(self._channel)
        try:
            meta = await self._stub.ServerMetadata(
                service_pb2.ServerMetadataRequest(), timeout=self.timeout_s
            )
            self.server_info = {
                "name": meta.name,
                "version": meta.version,
                "extensions": list(meta.extensions),
            }
            cfg = await self._stub.ModelConfig(
                service_pb2.ModelConfigRequest(name=self.model), timeout=self.timeout_s
            )
            from google.protobuf.json_format import MessageToDict

            full = MessageToDict(cfg.config, preserving_proto_field_name=True)
            self.model_config = {
                k: full[k]
                for k in (
                    "name",
                    "platform",
                    "backend",
                    "max_batch_size",
                    "instance_group",
                    "dynamic_batching",
                    "sequence_batching",
                    "ensemble_scheduling",
                )
                if k in full
            }
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            log.info("server metadata/config unavailable: %s", _grpc_error(exc))
        try:
            self._before = await self._stats()
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            self.stats_ok = False
            self.stats_note = (
                f"the server gave no model statistics ({_grpc_error(exc)}); "
                "server-side breakdown unavailable (not Triton, or statistics disabled)"
            )
        try:
            await self._metrics()
        except (OSError, ValueError, urllib.error.URLError) as exc:
            self.metrics_ok = False
            self.metrics_note = f"metrics from {self.metrics_url} unavailable: {exc}"
        if self.stats_ok or self.metrics_ok:
            self._tasks.append(asyncio.create_task(self._poll()))
            if warmup_s > 0 and self.stats_ok:
                self._tasks.append(asyncio.create_task(self._warmup_mark(warmup_s)))

    async def _sleep_until(self, t_s: float) -> None:
        delay = t_s - self._t()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _poll(self) -> None:
        k = 0
        while True:
            await self._sleep_until(k * self.interval_s)
            tick = await self._tick()
            self._ticks.append(tick)
            if tick.stats is not None:
                if self._prev is not None:
                    self._window_rows.append(self._window_row(self._prev, tick))
                    self._prev.stats = None
                self._prev = tick
            k = max(k + 1, int(self._t() / self.interval_s) + 1)

    async def _warmup_mark(self, warmup_s: float) -> None:
        await self._sleep_until(warmup_s)
        with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
            self._warm = await self._stats()

    async def stop(self) -> dict[str, Any]:
        """Take the 'after' sample, stop sampling; returns the server.json document."""
        if self._starting is not None:
            try:
                await self._starting
            except Exception as exc:  # never lose the run over the server's figures
                self.stats_ok = self.metrics_ok = False
                self.stats_note = self.metrics_note = f"server sampling failed: {exc}"
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        after = _Tick(self._t())
        if self.enabled and (self.stats_ok or self.metrics_ok):
            after = await self._tick()
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()
        return self._report(after)

    # -- results
    def _report(self, after: _Tick) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "target": self.target,
            "model": self.model,
            "server": self.server_info,
            "model_config": self.model_config,
            "interval_s": self.interval_s,
            "poll_failures": self.poll_failures,
        }
        stats: dict[str, Any] = {"available": False, "note": self.stats_note}
        if self.stats_ok and self._before is not None and after.stats is not None:
            run = snapshot_delta(after.stats, self._before)
            base = self._warm if self._warm is not None else self._before
            measured = snapshot_delta(after.stats, base)
            note = ""
            if self._warmup_s > 0 and self._warm is None:
                note = "no sample at the end of the warm-up: figures cover the whole run"
            stats = {
                "available": True,
                "note": note,
                "period": "measured" if self._warm is not None or not self._warmup_s else "run",
                "measured": {m: breakdown(c) for m, c in measured.items() if _active(c)},
                "run": {m: breakdown(c) for m, c in run.items() if _active(c)},
                "windows": self._windows(),
            }
        elif self.stats_ok:
            stats["note"] = "statistics sampling failed at the end of the run"
        doc["statistics"] = stats
        metrics: dict[str, Any] = {
            "available": False,
            "url": self.metrics_url,
            "note": self.metrics_note,
        }
        samples = [
            {"t_s": round(t.t_s, 3), **t.metrics}
            for t in [*self._ticks, after]
            if t.metrics is not None
        ]
        if self.metrics_ok and samples:
            metrics = {
                "available": True,
                "url": self.metrics_url,
                "note": "",
                "summary": summarize_metrics(samples, self.model),
                "samples": samples,
            }
        doc["metrics"] = metrics
        return doc

    def _windows(self) -> list[dict[str, Any]]:
        """Deltas between consecutive samples (computed as they came, see _poll)."""
        return list(self._window_rows)

    def _window_row(self, a: _Tick, b: _Tick) -> dict[str, Any]:
        assert a.stats is not None and b.stats is not None
        models = {
            m: _window_figures(c) for m, c in snapshot_delta(b.stats, a.stats).items() if _active(c)
        }
        return {
            "window": round(a.t_s / self.interval_s),
            "t_s": round(a.t_s, 3),
            "span_s": round(b.t_s - a.t_s, 3),
            "models": models,
        }


def _window_figures(c: ModelCounters) -> dict[str, Any]:
    b = breakdown(c)
    return {
        k: b[k]
        for k in (
            "success",
            "fail",
            "execution_count",
            "request_ms",
            "queue_ms",
            "compute_input_ms",
            "compute_infer_ms",
            "compute_output_ms",
        )
    }


def summary_block(doc: dict[str, Any], client_ok: int | None = None) -> dict[str, Any]:
    """summary.json's `server` from a server.json document (the plan's model)."""
    model = doc.get("model", "")
    stats = doc.get("statistics", {})
    metrics = doc.get("metrics", {})
    notes = [n for n in (stats.get("note"), metrics.get("note")) if n]
    out: dict[str, Any] = {
        "available": bool(stats.get("available")),
        "source": " ".join(
            str(v)
            for v in (doc.get("server", {}).get("name"), doc.get("server", {}).get("version"))
            if v
        ),
        "model": model,
        "queue_ms": None,
        "compute_input_ms": None,
        "compute_infer_ms": None,
        "compute_output_ms": None,
    }
    if stats.get("available"):
        fig = stats["measured"].get(model)
        if fig is None:
            notes.append(f"the server reported no requests for model {model!r}")
        else:
            out.update(fig)
            out["period"] = stats.get("period", "measured")
            if client_ok is not None and fig["success"] > client_ok * 1.02 + 5:
                notes.append(
                    f"the server counted {fig['success']} successful requests, volley "
                    f"{client_ok}: other clients share this model and are in these figures"
                )
    groups = doc.get("model_config", {}).get("instance_group") or []
    if groups:
        out["instances"] = sum(int(g.get("count", 1)) for g in groups)
        out["instance_kind"] = ",".join(sorted({str(g.get("kind", "")) for g in groups}))
    if metrics.get("available"):
        out["utilization"] = metrics["summary"]
    out["notes"] = notes
    return out


def write_server_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n")
