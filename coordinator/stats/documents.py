"""What server.json and summary.json's `server` block hold.

Written by `coordinator.stats.monitor`, read by `coordinator.report`. Durations are
per-request means in ms (None where nothing was counted); counts are deltas over the
period named.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict


# ---------------------------------------------------------------- the server itself
class ServerInfo(TypedDict, total=False):
    """Server metadata (KServe v2); {} when the server did not answer."""

    name: str
    version: str
    extensions: list[str]


class InstanceGroup(TypedDict, total=False):
    name: str
    kind: str
    count: int


class ModelConfigDoc(TypedDict, total=False):
    """The parts of Triton's model config a report shows; {} when not Triton."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    instance_group: list[InstanceGroup]
    dynamic_batching: dict[str, object]
    sequence_batching: dict[str, object]
    ensemble_scheduling: dict[str, object]


# ---------------------------------------------------------------- statistics figures
class BatchFigures(TypedDict):
    batch_size: int
    executions: int
    compute_input_ms: float | None
    compute_infer_ms: float | None
    compute_output_ms: float | None


class ModelFigures(TypedDict):
    """One model (or model version) over a period."""

    success: int
    fail: int
    inference_count: int
    execution_count: int
    avg_batch_size: float | None
    request_ms: float | None
    queue_ms: float | None
    compute_input_ms: float | None
    compute_infer_ms: float | None
    compute_output_ms: float | None
    #: request time not in queue or compute
    overhead_ms: float | None
    fail_ms: float | None
    cache_hit: int
    cache_miss: int
    batch_stats: list[BatchFigures]


class WindowFigures(TypedDict):
    """One model over one sampling window."""

    success: int
    fail: int
    execution_count: int
    request_ms: float | None
    queue_ms: float | None
    compute_input_ms: float | None
    compute_infer_ms: float | None
    compute_output_ms: float | None


class WindowRow(TypedDict):
    window: int
    #: seconds since the load's start, and the span to the next sample
    t_s: float
    span_s: float
    #: model -> figures (models with requests in the window)
    models: dict[str, WindowFigures]


#: model -> version -> figures
VersionFigures = dict[str, dict[str, ModelFigures]]


class StatisticsDoc(TypedDict):
    """Triton's statistics; the other keys are there when `available`."""

    available: bool
    note: str
    #: "run" when the measured period could not be sampled (`measured` is then None)
    period: NotRequired[Literal["measured", "run"]]
    #: model -> figures from the end of the warm-up to the last response (every model
    #: with requests, composing models of ensembles too); None: not sampled (see note)
    measured: NotRequired[dict[str, ModelFigures] | None]
    #: the same from before the load
    run: NotRequired[dict[str, ModelFigures]]
    windows: NotRequired[list[WindowRow]]
    measured_versions: NotRequired[VersionFigures | None]
    run_versions: NotRequired[VersionFigures]


# ---------------------------------------------------------------- Prometheus metrics
class GpuSample(TypedDict, total=False):
    #: fraction 0..1
    utilization: float
    memory_used_bytes: float
    memory_total_bytes: float
    power_w: float
    power_limit_w: float


class MetricsSample(TypedDict):
    """One scrape; utilisations are fractions 0..1."""

    #: GPU uuid -> figures
    gpus: dict[str, GpuSample]
    #: model -> pending requests (all versions)
    pending: dict[str, int]
    cpu_utilization: NotRequired[float]
    cpu_memory_used_bytes: NotRequired[float]
    cpu_memory_total_bytes: NotRequired[float]


class TimedSample(MetricsSample):
    #: seconds since the load's start
    t_s: float


class MeanMax(TypedDict):
    mean: float
    max: float


class MetricsSummary(TypedDict):
    samples: int
    cpu_utilization_percent: MeanMax | None
    cpu_memory_used_bytes: MeanMax | None
    gpu_utilization_percent: MeanMax | None
    gpu_memory_used_bytes: MeanMax | None
    gpu_power_w: MeanMax | None
    #: of the plan's model
    pending_requests: MeanMax | None
    gpus: list[str]


class MetricsDoc(TypedDict):
    """Prometheus metrics; `summary` and `samples` are there when `available`."""

    available: bool
    url: str | None
    note: str
    summary: NotRequired[MetricsSummary]
    samples: NotRequired[list[TimedSample]]


# ---------------------------------------------------------------- the plan's models
class PlanModelRow(TypedDict):
    """One model of the plan over the measured period (end of warm-up to after the load)."""

    name: str
    version: str
    #: successful inference requests the server counted (all clients)
    requests: int
    failed: int
    queue_ms: float | None
    compute_input_ms: float | None
    compute_infer_ms: float | None
    compute_output_ms: float | None
    request_ms: float | None


class PlanModelsDoc(TypedDict, total=False):
    """The plan's models, and their mix (means over all their requests); {} when no
    model of the plan has statistics."""

    queue_ms: float | None
    compute_input_ms: float | None
    compute_infer_ms: float | None
    compute_output_ms: float | None
    request_ms: float | None
    requests: int
    models: list[PlanModelRow]
    source: str


class ComposingRow(TypedDict):
    """A model that serves part of the plan's model (an ensemble's step, a BLS model's
    callee) over the measured period, from the server's statistics (all clients)."""

    name: str
    #: "ensemble step" (from the ensemble's config) or "given" (--composing-models)
    role: str
    success: int
    fail: int
    inference_count: int
    execution_count: int
    avg_batch_size: float | None
    request_ms: float | None
    queue_ms: float | None
    compute_input_ms: float | None
    compute_infer_ms: float | None
    compute_output_ms: float | None
    batch_stats: list[BatchFigures]


# ---------------------------------------------------------------- the documents
class ServerDoc(TypedDict):
    """server.json."""

    target: str
    #: the plan's model: the headline of the summary
    model: str
    server: ServerInfo
    model_config: ModelConfigDoc
    interval_s: float
    #: statistics requests or scrapes that failed during the run
    poll_failures: int
    statistics: StatisticsDoc
    metrics: MetricsDoc
    per_model: PlanModelsDoc
    #: composing models of the plan's model: name -> role (ComposingRow.role)
    composing: NotRequired[dict[str, str]]


class MeasuredPart(TypedDict, total=False):
    """`ModelFigures` of the plan's model in `ServerSummary` (less the four means it
    always has)."""

    success: int
    fail: int
    inference_count: int
    execution_count: int
    avg_batch_size: float | None
    request_ms: float | None
    overhead_ms: float | None
    fail_ms: float | None
    cache_hit: int
    cache_miss: int
    batch_stats: list[BatchFigures]
    period: Literal["measured", "run"]


class ConfigPart(TypedDict, total=False):
    instances: int
    instance_kind: str


class UtilizationPart(TypedDict, total=False):
    utilization: MetricsSummary


class ComposingPart(TypedDict, total=False):
    #: the models composing the plan's model (ensemble steps, BLS callees), measured
    composing: list[ComposingRow]


class ServerSummary(MeasuredPart, ConfigPart, UtilizationPart, ComposingPart):
    """summary.json's `server`: the plan's model over the measured period.

    `available` is false, with the reason in `notes`, when the server's statistics
    could not be read or the measured period could not be sampled; the figures are
    then absent (the four means None), never taken from another period."""

    available: bool
    #: "NAME VERSION" of the server ("" when unknown)
    source: str
    model: str
    queue_ms: float | None
    compute_input_ms: float | None
    compute_infer_ms: float | None
    compute_output_ms: float | None
    notes: list[str]
    #: the plan's models over the measured period (`ServerDoc.per_model`)
    models: list[PlanModelRow]


def no_server_doc() -> ServerDoc:
    """What a run directory without server.json reads as: nothing available, no note."""
    return {
        "target": "",
        "model": "",
        "server": {},
        "model_config": {},
        "interval_s": 0.0,
        "poll_failures": 0,
        "statistics": {"available": False, "note": ""},
        "metrics": {"available": False, "url": None, "note": ""},
        "per_model": {},
    }


def unavailable_server(model: str, note: str) -> ServerSummary:
    """summary.json's `server` for a run without the server's figures (`note` says why)."""
    return {
        "available": False,
        "source": "",
        "model": model,
        "queue_ms": None,
        "compute_input_ms": None,
        "compute_infer_ms": None,
        "compute_output_ms": None,
        "notes": [note] if note else [],
        "models": [],
    }
