"""The server's side of a run: Triton's statistics and Prometheus metrics over time.

`ServerMonitor` reads every model's statistics (`source.Source`: the plan's protocol,
TLS and headers) before the load, at the end of the warm-up, once per 1 s window (a
slow open-loop run: `sample_interval_s`, up to 5 s, so that a window holds some
requests and an idle run costs little) and after the last response. Deltas give
per-request means of queue and compute (input, infer, output) time, success/failure
counts and batch statistics, per model and per version; window deltas are computed as
samples come, so only the latest snapshot is kept. It also scrapes Triton's Prometheus
endpoint once per window.

A server without the statistics extension (any KServe v2 server that is not Triton),
or an unreachable metrics endpoint, is not an error: that part is "unavailable" with a
note saying why, and the run goes on. The measured period starts at the end-of-warm-up
sample: without that sample the summary's figures are unavailable, never replaced by
the whole run's. Statistics count every request the server saw, including other
clients'; the summary says so when the counts disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from coordinator.stats.counters import (
    EMPTY,
    Counters,
    Snapshot,
    Stat,
    by_model,
    delta,
    figures,
    select,
    version_figures,
    window_figures,
)
from coordinator.stats.documents import (
    ComposingPart,
    ComposingRow,
    ConfigPart,
    MeasuredPart,
    MetricsDoc,
    MetricsSample,
    ModelConfigDoc,
    PlanModelRow,
    PlanModelsDoc,
    ServerDoc,
    ServerInfo,
    ServerSummary,
    StatisticsDoc,
    TimedSample,
    UtilizationPart,
    WindowRow,
)
from coordinator.stats.prometheus import resolve_metrics_url, scrape, summarize_metrics, timed
from coordinator.stats.source import ProbeSource, Source, SourceError
from volley.plan import Plan, plan_models

log = logging.getLogger("volley.server_stats")

#: Monotonic time in ns, and a sleep (tests give fake ones).
Clock = Callable[[], int]
Sleep = Callable[[float], Awaitable[None]]

#: A slow open-loop run's windows are made long enough to hold about this many requests,
#: up to MAX_SAMPLE_S (each sample is a statistics request and a scrape: idle cost).
SAMPLE_REQUESTS = 10
MAX_SAMPLE_S = 5.0


def sample_interval_s(plan: Plan) -> float:
    """The monitor's window: 1 s, or for an open-loop run slower than SAMPLE_REQUESTS/s
    (its peak rate) whole seconds up to MAX_SAMPLE_S. Closed loop and traces: 1 s (their
    rate is not known ahead). The run's and the measured period's figures come from the
    samples at the start, the end of the warm-up and the end, whatever the window."""
    load = plan.load
    if load.mode != "open" or load.trace is not None:
        return 1.0
    peak = max([load.rate, *(s.target for s in load.stages)])
    if peak <= 0:
        return 1.0
    return float(min(MAX_SAMPLE_S, max(1, math.ceil(SAMPLE_REQUESTS / peak))))


PLAN_MODELS_SOURCE = "triton statistics extension (all clients of these models)"


class ServerMonitor:
    """Samples the server around and during one run (see the module docstring)."""

    def __init__(
        self,
        source: Source,
        target: str,
        model: str,
        metrics_url: str | None,
        metrics_note: str = "",
        *,
        models: Sequence[tuple[str, str]] = (),
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        enabled: bool = True,
        clock: Clock = time.monotonic_ns,
        sleep: Sleep = asyncio.sleep,
        composing: dict[str, str] | None = None,
    ) -> None:
        """models: the plan's (name, version) pairs (default: `model`, all versions);
        composing: models composing the plan's model, name -> role."""
        self.composing = dict(composing or {})
        self.source = source
        self.target = target
        self.model = model
        self.models = list(dict.fromkeys(models or [(model, "")]))
        self.metrics_url = metrics_url
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.enabled = enabled
        self.stats_ok = enabled
        self.metrics_ok = enabled and metrics_url is not None
        self.stats_note = "" if enabled else "server statistics turned off"
        self.metrics_note = metrics_note if enabled else "server statistics turned off"
        self.poll_failures = 0
        self.server_info: ServerInfo = {}
        self.model_config: ModelConfigDoc = {}
        self._clock = clock
        self._sleep = sleep
        self._start_ns = 0
        self._before: Snapshot | None = None
        self._warm: Snapshot | None = None
        self._warm_note = "the run ended before the end of its warm-up was sampled"
        self._warmup_s = 0.0
        self._samples: list[TimedSample] = []
        #: per-window deltas, computed as samples come; only the latest snapshot is kept
        self._windows: list[WindowRow] = []
        self._prev: tuple[float, Snapshot] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._starting: asyncio.Task[None] | None = None
        #: two-phase start (`prime`): set once the start instant is known (`set_start`)
        self._start_known: asyncio.Event | None = None

    @classmethod
    def for_plan(cls, plan: Plan, metrics: str | None, enabled: bool = True) -> ServerMonitor:
        """metrics: a URL, HOST:PORT, "off", or None to find it (resolve_metrics_url)."""
        url, note = resolve_metrics_url(plan.target, metrics)
        return cls(
            ProbeSource(plan),
            plan.target,
            plan.model,
            url,
            note,
            models=[(m.name, m.version) for m in plan_models(plan)],
            interval_s=sample_interval_s(plan),
            enabled=enabled,
            composing=composing_roles(plan),
        )

    def begin(self, start_ns: int, warmup_s: float) -> None:
        """start() in the background (the run's start does not wait for the server)."""
        self._starting = asyncio.create_task(self.start(start_ns, warmup_s))

    def prime(self, warmup_s: float) -> None:
        """Like begin(), before the start instant is known (the agents are preparing: no
        load yet): metadata and the 'before' sample now, windows from `set_start`'s
        instant on."""
        self._start_known = asyncio.Event()
        self._starting = asyncio.create_task(self.start(0, warmup_s))

    def set_start(self, start_ns: int) -> None:
        """The start instant of a primed monitor."""
        self._start_ns = start_ns
        if self._start_known is not None:
            self._start_known.set()

    def abort(self) -> None:
        for t in [*self._tasks, *([self._starting] if self._starting else [])]:
            t.cancel()

    # -- sampling
    def _t(self) -> float:
        return (self._clock() - self._start_ns) / 1e9

    async def _stats(self) -> Snapshot | None:
        return await self.source.statistics() if self.stats_ok else None

    async def _metrics(self) -> MetricsSample | None:
        if not self.metrics_ok or self.metrics_url is None:
            return None
        return await scrape(self.metrics_url, self.timeout_s)

    async def _tick(self) -> tuple[float, Snapshot | None, MetricsSample | None]:
        t = self._t()
        stats, metrics = await asyncio.gather(
            self._stats(), self._metrics(), return_exceptions=True
        )
        if isinstance(stats, BaseException):
            self.poll_failures += 1
            stats = None
        if isinstance(metrics, BaseException):
            self.poll_failures += 1
            metrics = None
        return t, stats, metrics

    # -- lifecycle
    async def start(self, start_ns: int, warmup_s: float) -> None:
        """Take the 'before' sample now and sample each window from `start_ns` on (primed:
        from the instant `set_start` gives)."""
        if self._start_known is None:
            self._start_ns = start_ns
        self._warmup_s = warmup_s
        if not self.enabled:
            return
        try:
            self.server_info = await self.source.server_info()
            self.model_config = await self.source.model_config(self.model)
        except SourceError as exc:
            log.info("server metadata/config unavailable: %s", exc)
        try:
            self._before = await self._stats()
        except SourceError as exc:
            self.stats_ok = False
            self.stats_note = (
                f"the server gave no model statistics ({exc}); "
                "server-side breakdown unavailable (not Triton, or statistics disabled)"
            )
        try:
            await self._metrics()
        except (OSError, ValueError) as exc:
            self.metrics_ok = False
            self.metrics_note = f"metrics from {self.metrics_url} unavailable: {exc}"
        if self._start_known is not None:
            await self._start_known.wait()
        if self.stats_ok or self.metrics_ok:
            self._tasks.append(asyncio.create_task(self._poll()))
            if warmup_s > 0 and self.stats_ok:
                self._tasks.append(asyncio.create_task(self._warmup_mark(warmup_s)))

    async def _sleep_until(self, t_s: float) -> None:
        delay = t_s - self._t()
        if delay > 0:
            await self._sleep(delay)

    async def _poll(self) -> None:
        k = 0
        while True:
            await self._sleep_until(k * self.interval_s)
            t, stats, metrics = await self._tick()
            if metrics is not None:
                self._samples.append(timed(t, metrics))
            if stats is not None:
                if self._prev is not None:
                    self._windows.append(self._window_row(*self._prev, t, stats))
                self._prev = (t, stats)
            k = max(k + 1, int(self._t() / self.interval_s) + 1)

    async def _warmup_mark(self, warmup_s: float) -> None:
        await self._sleep_until(warmup_s)
        try:
            self._warm = await self._stats()
        except SourceError as exc:
            self._warm_note = f"that statistics request failed: {exc}"

    async def stop(self) -> ServerDoc:
        """Take the 'after' sample, stop sampling; returns the server.json document."""
        if self._starting is not None:
            try:
                await self._starting
            except Exception as exc:  # never lose the run over the server's figures
                self.stats_ok = self.metrics_ok = False
                self.stats_note = self.metrics_note = f"server sampling failed: {exc}"
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        t, after, metrics = self._t(), None, None
        if self.enabled and (self.stats_ok or self.metrics_ok):
            t, after, metrics = await self._tick()
        with contextlib.suppress(Exception):
            await self.source.close()
        if metrics is not None:
            self._samples.append(timed(t, metrics))
        return self._report(after)

    # -- results
    def _report(self, after: Snapshot | None) -> ServerDoc:
        stats: StatisticsDoc = {"available": False, "note": self.stats_note}
        per_model: PlanModelsDoc = {}
        if self.stats_ok and self._before is not None and after is not None:
            run = delta(after, self._before)
            base = self._warm if self._warmup_s > 0 else self._before
            measured = delta(after, base) if base is not None else None
            note = ""
            if measured is None:
                note = (
                    "measured-period server figures unavailable: no statistics sample at "
                    f"the end of the warm-up ({self._warm_note})"
                )
            stats = {
                "available": True,
                "note": note,
                "period": "run" if measured is None else "measured",
                "measured": None if measured is None else figures(measured),
                "run": figures(run),
                "windows": list(self._windows),
                "measured_versions": None if measured is None else version_figures(measured),
                "run_versions": version_figures(run),
            }
            # the plan's models over the measured period only (never warm-up included)
            per_model = {} if measured is None else plan_models_block(measured, self.models)
        elif self.stats_ok:
            stats["note"] = "statistics sampling failed at the end of the run"
        metrics: MetricsDoc = {
            "available": False,
            "url": self.metrics_url,
            "note": self.metrics_note,
        }
        if self.metrics_ok and self._samples:
            metrics = {
                "available": True,
                "url": self.metrics_url,
                "note": "",
                "summary": summarize_metrics(self._samples, self.model),
                "samples": list(self._samples),
            }
        return {
            "target": self.target,
            "model": self.model,
            "server": self.server_info,
            "model_config": self.model_config,
            "interval_s": self.interval_s,
            "poll_failures": self.poll_failures,
            "statistics": stats,
            "metrics": metrics,
            "per_model": per_model,
            "composing": dict(self.composing),
        }

    def _window_row(self, t0: float, s0: Snapshot, t1: float, s1: Snapshot) -> WindowRow:
        return {
            "window": round(t0 / self.interval_s),
            "t_s": round(t0, 3),
            "span_s": round(t1 - t0, 3),
            "models": {
                m: window_figures(c) for m, c in by_model(delta(s1, s0)).items() if c.active
            },
        }


def _stages(c: Counters) -> tuple[Stat, Stat, Stat, Stat, Stat]:
    return c.queue, c.compute_input, c.compute_infer, c.compute_output, c.success


def plan_models_block(run: Snapshot, models: Sequence[tuple[str, str]]) -> PlanModelsDoc:
    """The plan's models over the run, and each stage's mean over all their requests."""
    rows: list[PlanModelRow] = []
    total = EMPTY
    for name, version in dict.fromkeys(models):
        c = select(run, name, version)
        if c is None:
            continue
        queue, c_input, c_infer, c_output, request = _stages(c)
        rows.append(
            {
                "name": name,
                "version": version,
                "requests": request.count,
                "failed": c.fail.count,
                "queue_ms": queue.mean_ms(),
                "compute_input_ms": c_input.mean_ms(),
                "compute_infer_ms": c_infer.mean_ms(),
                "compute_output_ms": c_output.mean_ms(),
                "request_ms": request.mean_ms(),
            }
        )
        total = total + c
    if not rows:
        return {}
    queue, c_input, c_infer, c_output, request = _stages(total)
    return {
        "queue_ms": queue.mean_ms(),
        "compute_input_ms": c_input.mean_ms(),
        "compute_infer_ms": c_infer.mean_ms(),
        "compute_output_ms": c_output.mean_ms(),
        "request_ms": request.mean_ms(),
        "requests": sum(r["requests"] for r in rows),
        "models": rows,
        "source": PLAN_MODELS_SOURCE,
    }


def composing_roles(plan: Plan) -> dict[str, str]:
    """The plan's composing models and their role: the preflight puts an ensemble's
    steps first (`ensemble_steps`), then those the user named."""
    steps = set(plan.ensemble_steps)
    return {m: ("ensemble step" if m in steps else "given") for m in plan.composing_models}


def composing_rows(doc: ServerDoc) -> list[ComposingRow]:
    """Each composing model's figures over the measured period (none without them)."""
    measured = doc["statistics"].get("measured") or {}
    rows: list[ComposingRow] = []
    for name, role in (doc.get("composing") or {}).items():
        fig = measured.get(name)
        if fig is None:
            continue
        rows.append(
            {
                "name": name,
                "role": role,
                "success": fig["success"],
                "fail": fig["fail"],
                "inference_count": fig["inference_count"],
                "execution_count": fig["execution_count"],
                "avg_batch_size": fig["avg_batch_size"],
                "request_ms": fig["request_ms"],
                "queue_ms": fig["queue_ms"],
                "compute_input_ms": fig["compute_input_ms"],
                "compute_infer_ms": fig["compute_infer_ms"],
                "compute_output_ms": fig["compute_output_ms"],
                "batch_stats": fig["batch_stats"],
            }
        )
    return rows


def summary_block(doc: ServerDoc, client_ok: int | None = None) -> ServerSummary:
    """summary.json's `server` from a server.json document (the plan's model, measured
    period; unavailable with the reason in `notes` when that period has no figures)."""
    model = doc["model"]
    stats = doc["statistics"]
    metrics = doc["metrics"]
    notes = [n for n in (stats["note"], metrics["note"]) if n]
    available = stats["available"]
    fig = None
    if available:
        measured = stats.get("measured")
        if measured is None:
            available = False
        else:
            fig = measured.get(model)
            if fig is None:
                notes.append(f"the server reported no requests for model {model!r}")
            elif client_ok is not None and fig["success"] > client_ok * 1.02 + 5:
                notes.append(
                    f"the server counted {fig['success']} successful requests, volley "
                    f"{client_ok}: other clients share this model and are in these figures"
                )
    part: MeasuredPart = {}
    if fig is not None:
        part = {
            "success": fig["success"],
            "fail": fig["fail"],
            "inference_count": fig["inference_count"],
            "execution_count": fig["execution_count"],
            "avg_batch_size": fig["avg_batch_size"],
            "request_ms": fig["request_ms"],
            "overhead_ms": fig["overhead_ms"],
            "fail_ms": fig["fail_ms"],
            "cache_hit": fig["cache_hit"],
            "cache_miss": fig["cache_miss"],
            "batch_stats": fig["batch_stats"],
            "period": stats.get("period", "measured"),
        }
    config: ConfigPart = {}
    groups = doc["model_config"].get("instance_group") or []
    if groups:
        config = {
            "instances": sum(int(g.get("count", 1)) for g in groups),
            "instance_kind": ",".join(sorted({str(g.get("kind", "")) for g in groups})),
        }
    util: UtilizationPart = {}
    if metrics["available"] and "summary" in metrics:
        util = {"utilization": metrics["summary"]}
    info = doc["server"]
    composed: ComposingPart = {"composing": composing_rows(doc)} if doc.get("composing") else {}
    return {
        "available": available,
        "source": " ".join(str(v) for v in (info.get("name"), info.get("version")) if v),
        "model": model,
        "queue_ms": fig["queue_ms"] if fig else None,
        "compute_input_ms": fig["compute_input_ms"] if fig else None,
        "compute_infer_ms": fig["compute_infer_ms"] if fig else None,
        "compute_output_ms": fig["compute_output_ms"] if fig else None,
        **part,
        **config,
        **util,
        **composed,
        "notes": notes,
        "models": doc["per_model"].get("models", []),
    }


def write_server_json(path: Path, doc: ServerDoc) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n")
