"""Read a run directory back for the reports (summary, server, histograms, timeseries)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.documents import Summary, SummaryError, load_summary, mismatch
from coordinator.stats.documents import ServerDoc, no_server_doc
from volley.histogram import LogHistogram
from volley.plan import PlanError, load_plan_yaml, plan_from_dict
from volley.shown import clipped

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
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ReportError(f"{path.name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path.name}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path.name}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (ValueError, RecursionError):  # 4300-digit numbers, deep nesting
        raise ReportError(f"{path.name}: not valid JSON (too deep, or a huge number)") from None


#: timeseries.parquet: the columns that are text (every other one is a number or a flag).
_TEXT_COLUMNS = {"agent", "error_codes"}


def _timeseries(path: Path) -> list[dict[str, Any]]:
    """timeseries.parquet's rows; ReportError when it is unreadable or its columns are
    not those a run writes (`t_s` and `agent` at least, numbers elsewhere)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(str(path))
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ReportError(f"timeseries.parquet unreadable: {clipped(str(exc))}") from None
    schema = table.schema
    try:
        names = schema.names
    except ValueError as exc:  # a column name that is not UTF-8
        raise ReportError(f"timeseries.parquet unreadable: {clipped(str(exc))}") from None
    if table.num_rows and not {"t_s", "agent"} <= set(names):
        raise ReportError("timeseries.parquet unreadable: no t_s or agent column")
    for f in schema:
        t = f.type
        numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
        text = pa.types.is_string(t) or pa.types.is_large_string(t)
        if not (pa.types.is_null(t) or (text if f.name in _TEXT_COLUMNS else numeric)):
            raise ReportError(f"timeseries.parquet unreadable: column {f.name!r} holds {t}")
    try:
        rows: list[dict[str, Any]] = table.to_pylist()
    except (ValueError, pa.ArrowException) as exc:  # text columns that are not UTF-8
        raise ReportError(f"timeseries.parquet unreadable: {clipped(str(exc))}") from None
    return rows


def _plan(text: str) -> dict[str, Any]:
    """plan.yaml as the reports read it (a mapping that is a valid plan), else ReportError."""
    try:
        loaded = load_plan_yaml(text)
        plan_from_dict(loaded)
    except PlanError as exc:
        raise ReportError(f"plan.yaml unreadable: {exc}") from None
    return loaded


def load_run(path: Path) -> RunData:
    """Read what a report needs. Only summary.json is required (and must be a volley
    summary); a missing or malformed other file becomes a note, and the report is drawn
    without it."""
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
        try:
            server = _json(path / "server.json")
            why = mismatch(server, ServerDoc)
            if why:
                raise ReportError(f"server.json unreadable: {why}")
            run.server = server
        except ReportError as exc:
            run.notes.append(str(exc))
    else:
        run.notes.append("no server.json in this run directory")
    if (path / "histograms.json").is_file():
        try:
            doc = _json(path / "histograms.json")
            if not isinstance(doc, dict) or not isinstance(doc.get("agents") or {}, dict):
                raise ValueError("not an object of histograms")
            for key in ("latency", "service_time", "send_lateness"):
                if key in doc:
                    run.histograms[key] = LogHistogram.from_dict(doc[key])
            for name, hs in (doc.get("agents") or {}).items():
                if not isinstance(hs, dict):
                    raise ValueError(f"agent {clipped(str(name), 60)}: not an object")
                run.agent_histograms[name] = {k: LogHistogram.from_dict(v) for k, v in hs.items()}
        except ReportError as exc:
            run.notes.append(f"histograms.json unreadable: {exc}")
            run.histograms, run.agent_histograms = {}, {}
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            run.notes.append(f"histograms.json unreadable: {clipped(str(exc))}")
            run.histograms, run.agent_histograms = {}, {}
    else:
        run.notes.append("no histograms.json: histogram and percentile curve not drawn")
    if (path / "timeseries.parquet").is_file():
        try:
            run.timeseries = _timeseries(path / "timeseries.parquet")
        except ReportError as exc:
            run.notes.append(str(exc))
    else:
        run.notes.append("no timeseries.parquet: charts over time not drawn")
    if (path / "plan.yaml").is_file():
        try:
            run.plan_text = (path / "plan.yaml").read_bytes().decode("utf-8", "replace")
            run.plan = _plan(run.plan_text)
        except OSError as exc:
            run.notes.append(f"plan.yaml unreadable: {exc.strerror or exc}")
        except ReportError as exc:
            run.notes.append(str(exc))
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
