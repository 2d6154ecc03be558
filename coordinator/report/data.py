"""Read a run directory back for the reports (summary, server, histograms, timeseries)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from coordinator.documents import Summary, SummaryError, load_summary
from coordinator.stats.documents import ServerDoc, no_server_doc
from volley.histogram import LogHistogram

#: Percentiles drawn on percentile curves (those beyond the data's resolution are cut).
CURVE_QS = (
    0.0,
    10.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    70.0,
    75.0,
    80.0,
    85.0,
    90.0,
    92.5,
    95.0,
    96.0,
    97.0,
    98.0,
    99.0,
    99.5,
    99.7,
    99.8,
    99.9,
    99.95,
    99.97,
    99.99,
    99.995,
    99.999,
)


class ReportError(Exception):
    """A run directory cannot be read; the message says which file and why."""


@dataclass
class RunData:
    path: Path
    summary: Summary
    server: ServerDoc = field(default_factory=no_server_doc)
    histograms: dict[str, LogHistogram] = field(default_factory=dict)
    agent_histograms: dict[str, dict[str, LogHistogram]] = field(default_factory=dict)
    timeseries: list[dict[str, Any]] = field(default_factory=list)
    plan_text: str = ""
    plan: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return str(self.summary.get("name") or self.path.name)

    def series(self, agent: str = "all") -> list[dict[str, Any]]:
        return [r for r in self.timeseries if r.get("agent") == agent]

    def window_error_codes(self) -> list[tuple[float, dict[str, int]]]:
        """(window start s, errors by status name) of each window of the whole run
        (timeseries.parquet's `error_codes`, JSON text per row)."""
        out: list[tuple[float, dict[str, int]]] = []
        for r in self.series("all"):
            codes: dict[str, int] = {}
            text = r.get("error_codes")
            if isinstance(text, str) and text:
                try:
                    parsed = json.loads(text)
                except json.JSONDecodeError:
                    parsed = {}
                if isinstance(parsed, dict):
                    codes = {str(k): int(v) for k, v in parsed.items() if isinstance(v, int)}
            out.append((float(r["t_s"]), codes))
        return out

    def agents(self) -> list[str]:
        seen: list[str] = []
        for r in self.timeseries:
            a = str(r.get("agent"))
            if a != "all" and a not in seen:
                seen.append(a)
        return seen


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ReportError(f"{path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def load_run(path: Path) -> RunData:
    """Read what a report needs; only summary.json is required (notes say what is not
    there)."""
    if not path.is_dir():
        raise ReportError(f"{path} is not a directory")
    if not (path / "summary.json").is_file():
        raise ReportError(f"{path} is not a run directory (no summary.json)")
    try:
        summary = load_summary(path / "summary.json")
    except SummaryError as exc:
        raise ReportError(str(exc)) from None
    run = RunData(path=path, summary=summary)
    if (path / "server.json").is_file():
        run.server = _json(path / "server.json")
    else:
        run.notes.append("no server.json in this run directory")
    if (path / "histograms.json").is_file():
        doc = _json(path / "histograms.json")
        try:
            for key in ("latency", "service_time", "send_lateness"):
                if key in doc:
                    run.histograms[key] = LogHistogram.from_dict(doc[key])
            for name, hs in (doc.get("agents") or {}).items():
                run.agent_histograms[name] = {k: LogHistogram.from_dict(v) for k, v in hs.items()}
        except (ValueError, KeyError, TypeError) as exc:
            run.notes.append(f"histograms.json unreadable: {exc}")
    else:
        run.notes.append("no histograms.json: histogram and percentile curve not drawn")
    if (path / "timeseries.parquet").is_file():
        import pyarrow.parquet as pq

        try:
            run.timeseries = pq.read_table(str(path / "timeseries.parquet")).to_pylist()
        except (OSError, ValueError) as exc:
            run.notes.append(f"timeseries.parquet unreadable: {exc}")
    else:
        run.notes.append("no timeseries.parquet: charts over time not drawn")
    if (path / "plan.yaml").is_file():
        run.plan_text = (path / "plan.yaml").read_text()
        try:
            loaded = yaml.safe_load(run.plan_text)
            run.plan = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            run.notes.append("plan.yaml unreadable")
    return run


def curve(h: LogHistogram) -> list[tuple[float, float]]:
    """(percentile, value ms) points of a percentile curve, up to the data's resolution,
    plus the maximum."""
    if h.count == 0:
        return []
    qs = [q for q in CURVE_QS if h.count * (1 - q / 100.0) >= 1.0]
    vals = h.percentiles(qs)
    pts = [(q, vals[q] / 1e6) for q in qs]
    pts.append((100.0, h.max_ns / 1e6))
    return pts
