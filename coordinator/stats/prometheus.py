"""Triton's Prometheus metrics: where they are, one scrape, and their summary over a run.

CPU and GPU utilisation, memory and power (GPU figures where Triton has GPUs), and
pending requests per model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from pathlib import Path
from typing import Literal

from prometheus_client.parser import text_string_to_metric_families

from coordinator.stats.documents import (
    MeanMax,
    MetricsSample,
    MetricsSummary,
    TimedSample,
)

_GpuKey = Literal[
    "utilization", "memory_used_bytes", "memory_total_bytes", "power_w", "power_limit_w"
]
_HostKey = Literal["cpu_utilization", "cpu_memory_used_bytes", "cpu_memory_total_bytes"]
_GPU_FIELDS: dict[str, _GpuKey] = {
    "nv_gpu_utilization": "utilization",
    "nv_gpu_memory_used_bytes": "memory_used_bytes",
    "nv_gpu_memory_total_bytes": "memory_total_bytes",
    "nv_gpu_power_usage": "power_w",
    "nv_gpu_power_limit": "power_limit_w",
}
_HOST_FIELDS: dict[str, _HostKey] = {
    "nv_cpu_utilization": "cpu_utilization",
    "nv_cpu_memory_used_bytes": "cpu_memory_used_bytes",
    "nv_cpu_memory_total_bytes": "cpu_memory_total_bytes",
}


def parse_metrics(text: str) -> MetricsSample:
    """Triton's Prometheus exposition -> one sample (utilisations as fractions 0..1)."""
    sample: MetricsSample = {"gpus": {}, "pending": {}}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in _HOST_FIELDS:
                sample[_HOST_FIELDS[s.name]] = float(s.value)
            elif s.name in _GPU_FIELDS:
                gpu = sample["gpus"].setdefault(s.labels.get("gpu_uuid", "gpu"), {})
                gpu[_GPU_FIELDS[s.name]] = float(s.value)
            elif s.name == "nv_inference_pending_request_count":
                model = s.labels.get("model", "")
                sample["pending"][model] = sample["pending"].get(model, 0) + int(s.value)
    return sample


def timed(t_s: float, s: MetricsSample) -> TimedSample:
    return {"t_s": round(t_s, 3), **s}


def _mean_max(values: list[float]) -> MeanMax | None:
    if not values:
        return None
    return {"mean": round(sum(values) / len(values), 4), "max": round(max(values), 4)}


def summarize_metrics(samples: list[TimedSample], model: str) -> MetricsSummary:
    cpu = [s["cpu_utilization"] * 100 for s in samples if "cpu_utilization" in s]
    mem = [s["cpu_memory_used_bytes"] for s in samples if "cpu_memory_used_bytes" in s]
    gpu_util: list[float] = []
    gpu_mem: list[float] = []
    gpu_power: list[float] = []
    for s in samples:
        gpus = s["gpus"].values()
        if not gpus:
            continue
        utils = [g["utilization"] * 100 for g in gpus if "utilization" in g]
        if utils:
            gpu_util.append(sum(utils) / len(utils))
        gpu_mem.append(sum(g.get("memory_used_bytes", 0.0) for g in gpus))
        gpu_power.append(sum(g.get("power_w", 0.0) for g in gpus))
    pending = [float(s["pending"].get(model, 0)) for s in samples]
    return {
        "samples": len(samples),
        "cpu_utilization_percent": _mean_max(cpu),
        "cpu_memory_used_bytes": _mean_max(mem),
        "gpu_utilization_percent": _mean_max(gpu_util),
        "gpu_memory_used_bytes": _mean_max(gpu_mem),
        "gpu_power_w": _mean_max(gpu_power),
        "pending_requests": _mean_max(pending),
        "gpus": sorted({g for s in samples for g in s["gpus"]}),
    }


# ---------------------------------------------------------------- where the metrics are
def resolve_metrics_url(
    target: str, explicit: str | None, state_dir: Path | None = None
) -> tuple[str | None, str]:
    """The Prometheus URL to scrape, and a note when there is none.

    explicit: a URL or HOST:PORT (path /metrics added), or "off". Without it: the
    server `volley triton start` recorded for this target (its gRPC or HTTP port),
    else Triton's default layout (HTTP 8000, gRPC 8001 -> metrics 8002)."""
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
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
        state = json.loads(((state_dir or DEFAULT_STATE_DIR) / STATE_FILE).read_text())
        local = {"127.0.0.1", "localhost", str(state.get("host", ""))}
        ports = {str(state["grpc_port"]), str(state.get("http_port", ""))}
        if port in ports and host in local:
            return f"http://{host}:{int(state['metrics_port'])}/metrics", ""
    if port in ("8000", "8001"):
        return f"http://{host}:8002/metrics", ""
    return None, (
        "no Prometheus metrics URL known for this target: pass --server-metrics HOST:PORT"
    )


def _fetch(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read(16 * 1024 * 1024)
        return body.decode("utf-8", "replace")


async def scrape(url: str, timeout: float) -> MetricsSample:
    """One scrape (raises OSError or ValueError when there is none)."""
    return parse_metrics(await asyncio.to_thread(_fetch, url, timeout))
