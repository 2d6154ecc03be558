"""The coordinator's live figures on a Prometheus endpoint (`volley run --metrics-port`).

Served with prometheus-client from its own registry on a background thread. The event
loop publishes a fresh `LiveFigures` every ~250 ms (one reference swap); a scrape
reads the latest one, so the exporter never touches the aggregator itself.

Families (all prefixed `volley_`): `run_info`, `elapsed_seconds`, `duration_seconds`,
`requests_total{agent,outcome}` (sent, ok, error, dropped), `offered_rps`,
`achieved_rps`, `latency_seconds{quantile}` (last complete 1 s window, from the
intended time), `agent_up{agent,state}`, `agent_cpu_percent{agent}`,
`agent_send_lateness_p99_seconds{agent}`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from coordinator.progress import LiveFigures
from volley.plan import PlanError, parse_address


def parse_listen(value: str) -> tuple[str, int]:
    """'9100' (loopback) or 'HOST:PORT' -> (host, port)."""
    text = value.strip()
    if text.isdigit():
        host, port = "127.0.0.1", int(text)
    else:
        host, port = parse_address(text, "--metrics-port")
    if not 0 <= port <= 65535:
        raise PlanError(f"--metrics-port: port out of range in {value!r}")
    return host, port


class _FiguresCollector(Collector):
    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.figures: LiveFigures | None = None

    def collect(self) -> Iterable[Metric]:
        f = self.figures
        info = InfoMetricFamily("volley_run", "The run being measured")
        info.add_metric([], self.labels)
        yield info
        if f is None:
            return
        yield GaugeMetricFamily(
            "volley_elapsed_seconds", "Seconds since the agreed start", value=f.elapsed_s
        )
        yield GaugeMetricFamily(
            "volley_duration_seconds", "Planned load duration incl. warm-up", value=f.total_s
        )
        yield GaugeMetricFamily(
            "volley_offered_rps", "Scheduled requests/s, last complete window", f.offered_rps
        )
        yield GaugeMetricFamily(
            "volley_achieved_rps", "Successful responses/s, last complete window", f.achieved_rps
        )
        lat = GaugeMetricFamily(
            "volley_latency_seconds",
            "Latency from the intended send time, last complete window",
            labels=["quantile"],
        )
        for q, v in (("0.5", f.p50_ms), ("0.99", f.p99_ms)):
            if v is not None:
                lat.add_metric([q], v / 1e3)
        yield lat
        req = CounterMetricFamily(
            "volley_requests", "Requests by agent and outcome", labels=["agent", "outcome"]
        )
        up = GaugeMetricFamily(
            "volley_agent_up", "1 while the agent runs or finished well", labels=["agent", "state"]
        )
        cpu = GaugeMetricFamily("volley_agent_cpu_percent", "Agent CPU use", labels=["agent"])
        late = GaugeMetricFamily(
            "volley_agent_send_lateness_p99_seconds",
            "Agent send lateness p99 so far",
            labels=["agent"],
        )
        for a in f.agents:
            for outcome, n in (
                ("sent", a.sent),
                ("ok", a.ok),
                ("error", a.errors),
                ("dropped", a.dropped),
            ):
                req.add_metric([a.name, outcome], n)
            up.add_metric([a.name, a.state], 0 if a.state in ("failed", "missing") else 1)
            cpu.add_metric([a.name], a.cpu_percent)
            if a.lateness_p99_ms is not None:
                late.add_metric([a.name], a.lateness_p99_ms / 1e3)
        yield from (req, up, cpu, late)


class MetricsExporter:
    """Context manager: serves /metrics while the run lasts."""

    def __init__(self, listen: str, labels: dict[str, str]) -> None:
        self.host, self.port = parse_listen(listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = _FiguresCollector(labels)
        self.registry.register(self._collector)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MetricsExporter:
        try:
            self._server, self._thread = start_http_server(
                self.port, addr=self.host, registry=self.registry
            )
        except OSError as exc:
            raise PlanError(
                f"--metrics-port: cannot listen on {self.host}:{self.port} ({exc.strerror})"
            ) from None
        self.port = int(self._server.server_port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def update(self, figures: LiveFigures) -> None:
        self._collector.figures = figures
