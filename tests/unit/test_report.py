"""Reports: SVG charts, report.html and compare pages, perf_analyzer CSV, live figures,
the Prometheus exporter (no server needed)."""

from __future__ import annotations

import csv
import io
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from typer.testing import CliRunner

from coordinator.aggregate import Aggregator
from coordinator.metrics import MetricsExporter, parse_listen
from coordinator.progress import live_figures, live_outputs, render
from coordinator.recovery import find_outages
from coordinator.report import ReportError, load_run, svg, write_compare, write_report
from coordinator.report.compare import comparison
from coordinator.report.export import COLUMNS_AFTER_LOAD, perf_analyzer_csv
from coordinator.run import Progress
from coordinator.rundir import timeseries_rows, write_histograms, write_json, write_timeseries
from coordinator.stats.documents import unavailable_server
from coordinator.summary import AgentInfo, requests_block
from tests.browser import find_chromium, render_page
from tests.triton_fixture import in_ci
from tests.unit.test_summary_document import _summary as complete_summary
from volley import records as rc
from volley.cli import app
from volley.plan import PlanError
from volley.records import RecordBuffer


def _block(n: int, start_ns: int, step_ns: int, lat_ns: int, errors: int = 0) -> Any:
    buf = RecordBuffer(n)
    for i in range(n):
        t = start_ns + i * step_ns
        status = rc.OK if i >= errors else 14
        buf.append(i, t, t + 50_000, t + lat_ns + i * 1000, status, 64 + 64 * (i % 2), 32, 1, 0)
    return buf.take(["16"])


def _agg(outage: bool = False, errors: int = 3) -> Aggregator:
    """Two agents, 3 s at 100/s each; with `outage`, every arrival of 2.0-3.0 s fails."""
    agg = Aggregator(2, warmup_ns=1_000_000_000)
    for a in range(2):
        agg.ingest(
            a, _block(300 if not outage else 200, 0, 10_000_000, 2_000_000 * (a + 1), errors)
        )
        if outage:
            down = _block(100, 2_000_000_000, 10_000_000, 1_000_000, errors=100)
            agg.ingest(a, down)
    return agg


def _summary(name: str, p99: float, queue: float | None, mode: str = "open") -> dict[str, Any]:
    """A complete summary (load_summary checks it against its description) with the
    figures these tests compare."""
    lat = {
        "p50": p99 / 3,
        "p90": p99 / 2,
        "p95": p99 / 1.5,
        "p99": p99,
        "p999": p99 * 1.2,
        "max": p99 * 1.5,
        "mean": p99 / 2.5,
    }
    service = {k: v * 0.9 for k, v in lat.items()}
    counts = {
        "scheduled": 300,
        "sent": 300,
        "ok": 297,
        "errors": 3,
        "dropped": 0,
        "not_sent": 0,
        "error_codes": {"UNAVAILABLE": 3},
    }
    server: dict[str, Any] = dict(
        unavailable_server("m", "" if queue is not None else "no statistics")
    )
    if queue is not None:
        server.update(
            available=True,
            queue_ms=queue,
            compute_input_ms=0.1,
            compute_infer_ms=2.0,
            compute_output_ms=0.2,
            request_ms=queue + 2.4,
            overhead_ms=0.1,
            instances=1,
        )
    payload = {"count": 10, "sent": 10, "errors": 0, "request_bytes_mean": 96.0}
    return {
        **complete_summary(),
        "name": name,
        "model": "m",
        "target": "127.0.0.1:1",
        "mode": mode,
        "arrival": "constant",
        "duration_s": 3.0,
        "warmup_s": 1.0,
        "seed": 1,
        "run_id": "x",
        "requests": counts,
        "warmup_requests": {**counts, "scheduled": 0, "sent": 0, "ok": 0, "errors": 0},
        "offered_rps": 100.0,
        "throughput_rps": 99.0,
        "error_rate": 0.01,
        "latency_ms": lat,
        "service_time_ms": service,
        "send_lateness_ms": {"p50": 0.1, "p99": 0.5, "max": 1.0, "late_fraction": 0.01},
        "agents": [],
        "models": [],
        "server": server,
        "latency_by_payload": [
            {"bucket_bytes": [64, 128], **payload, "latency_ms": lat, "service_time_ms": service},
            {"bucket_bytes": [128, 256], **payload, "latency_ms": lat, "service_time_ms": service},
        ],
        "latency_by_shape": [],
        "partial": False,
        "verdict": {
            "valid": False,
            "reasons": ["measured for 3.0s, less than the 5s minimum"],
            "warnings": [],
            "slo": [
                {
                    "slo": "p99<1ms",
                    "metric": "latency_ms.p99",
                    "op": "<",
                    "threshold": 1.0,
                    "actual": p99,
                    "passed": False,
                    "reason": "",
                }
            ],
            "slo_passed": False,
        },
    }


def _run_dir(
    tmp: Path,
    name: str,
    p99: float,
    queue: float | None,
    mode: str = "open",
    agg: Aggregator | None = None,
) -> Path:
    d = tmp / name
    d.mkdir()
    summary = _summary(name, p99, queue, mode)
    if agg is not None:  # the error figures of this aggregate, as a run writes them
        summary["requests"]["error_codes"] = requests_block(agg.total())["error_codes"]
        summary["warmup_requests"] = requests_block(agg.total_warmup())
        summary["outages"] = find_outages(agg)
    write_json(d / "summary.json", summary)
    agg = agg or _agg()
    write_histograms(d / "histograms.json", agg, ["a0", "a1"])
    write_timeseries(d / "timeseries.parquet", timeseries_rows(agg, ["a0", "a1"], {(0, 0): 5.0}))
    load = "{mode: closed, concurrency: 4}" if mode == "closed" else "{rate: 100}"
    (d / "plan.yaml").write_text(
        f"target: 127.0.0.1:1\nmodel: m\nmax_batch_size: 0\nload: {load}\n"
    )
    return d


def test_nice_and_log_ticks() -> None:
    assert svg.nice_ticks(0, 88) == [0, 20, 40, 60, 80, 100]
    t = svg.nice_ticks(0.0, 1.05)
    assert t[0] == 0 and t[-1] >= 1.05
    assert svg.log_ticks(1.0, 100.0) == [1, 2, 5, 10, 20, 50, 100]
    assert svg.pct_x(99.0, 1000) == pytest.approx(2.0)
    assert svg.pct_x(100.0, 1000) == pytest.approx(3.0)


def test_line_chart_gaps_and_empty() -> None:
    out = svg.line_chart(
        [svg.Series("a", [0, 1, 2, 3], [1.0, None, 2.0, 3.0])],
        title="t <x>",
        chart_id="c",
        x_label="x",
        y_label="y",
    )
    assert out.startswith("<svg") and out.endswith("</svg>")
    assert "t &lt;x&gt;" in out  # escaped
    path = re.search(r'<path d="([^"]+)"', out)
    assert path is not None and path.group(1).count("M") == 2  # the gap splits the line
    empty = svg.line_chart(
        [svg.Series("a", [0], [None])], title="t", chart_id="e", x_label="", y_label=""
    )
    assert 'class="na"' in empty


def test_report_html_is_self_contained(tmp_path: Path) -> None:
    d = _run_dir(tmp_path, "r1", 9.0, 1.5)
    html = write_report(d).read_text()
    assert "<script" not in html.lower()
    external = set(re.findall(r"(?:src|href)=\"([^\"]+)\"", html))
    assert not external, external
    assert "@import" not in html and "url(" not in html
    for chart in (
        "latency-over-time",
        "throughput-over-time",
        "latency-histogram",
        "percentile-curve",
        "agent-lateness",
        "server-breakdown",
        "latency-by-payload",
    ):
        assert f'data-chart="{chart}"' in html, chart
    assert "FAIL" in html and "p99&lt;1ms" in html and "INVALID" in html


def test_report_without_server_stats_says_so(tmp_path: Path) -> None:
    d = _run_dir(tmp_path, "r0", 9.0, None)
    html = write_report(d).read_text()
    assert "no statistics" in html
    assert 'data-chart="server-breakdown"' not in html


def test_load_run_errors(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="not a run directory"):
        load_run(tmp_path)
    (tmp_path / "summary.json").write_text("{nope")
    with pytest.raises(ReportError, match="not valid JSON"):
        load_run(tmp_path)


def test_compare_differences_and_page(tmp_path: Path) -> None:
    a = _run_dir(tmp_path, "one", 30.0, 20.0)
    b = _run_dir(tmp_path, "two", 15.0, 1.0)
    path, runs = write_compare([a, b], tmp_path / "cmp.html")
    rows = {r["figure"]: r for r in comparison(runs)}
    assert rows["latency p99"]["values"] == [30.0, 15.0]
    assert rows["latency p99"]["change_vs_first"] == [pytest.approx(-0.5)]
    assert rows["server queue"]["change_vs_first"] == [pytest.approx(-0.95)]
    html = path.read_text()
    assert "<script" not in html
    assert 'data-chart="compare-percentiles"' in html
    assert 'class="better">-50.0%' in html


def test_perf_analyzer_csv(tmp_path: Path) -> None:
    runs = [
        load_run(_run_dir(tmp_path, "a", 30.0, 20.0)),
        load_run(_run_dir(tmp_path, "b", 9, None)),
    ]
    text = perf_analyzer_csv(runs)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["Request Rate", *COLUMNS_AFTER_LOAD]
    first = dict(zip(rows[0], rows[1], strict=True))
    assert first["Request Rate"] == "100" and first["Inferences/Second"] == "99"
    assert first["Server Queue"] == "20000" and first["Server Compute Infer"] == "2000"
    assert first["p99 latency"] == "27000"  # service time p99 (30 ms * 0.9), microseconds
    assert first["Client Send"] == first["Client Recv"] == first["response wait"] == ""
    second = dict(zip(rows[0], rows[2], strict=True))
    assert second["Server Queue"] == "" and second["Network+Server Send/Recv"] == ""
    closed = load_run(_run_dir(tmp_path, "c", 5.0, 1.0, mode="closed"))
    assert perf_analyzer_csv([closed]).startswith("Concurrency,")
    assert perf_analyzer_csv([closed]).splitlines()[1].startswith("4,")
    with pytest.raises(ReportError, match="mix open and closed"):
        perf_analyzer_csv([runs[0], closed])


def _progress() -> Progress:
    agents = [AgentInfo(index=i, address=f"h:{i}", id=f"a{i}", state="running") for i in range(2)]
    agents[1].cpu_percent = 42.0
    return Progress(elapsed_s=2.5, total_s=3.0, agents=agents, agg=_agg(), window=2)


def test_live_figures_and_view() -> None:
    f = live_figures(_progress())
    assert f.window == 1
    assert f.offered_rps == 200.0  # 100 records per agent in window 1
    assert f.p50_ms is not None and f.p99_ms is not None and f.p99_ms >= f.p50_ms
    assert f.errors == 6 and f.sent == 600
    assert f.agents[1].cpu_percent == 42.0 and f.remaining_s == pytest.approx(0.5)
    con = Console(file=io.StringIO(), width=120)
    con.print(render(f, "t "))
    text = con.file.getvalue()  # type: ignore[attr-defined]
    assert "achieved" in text and "a1" in text and "42%" in text


def test_progress_quiet_when_not_a_terminal() -> None:
    con = Console(file=io.StringIO())
    with live_outputs(show=True, console=con) as cb:
        assert cb is None


def test_prometheus_exporter() -> None:
    with pytest.raises(PlanError):
        parse_listen("nonsense")
    assert parse_listen("9100") == ("127.0.0.1", 9100)
    with MetricsExporter("127.0.0.1:0", {"name": "t"}) as exp:
        exp.update(live_figures(_progress()))
        body = urllib.request.urlopen(f"http://127.0.0.1:{exp.port}/metrics", timeout=5).read()
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    req = {
        (s.labels["agent"], s.labels["outcome"]): s.value
        for s in fams["volley_requests"].samples
        if s.name == "volley_requests_total"
    }
    assert req[("a0", "sent")] == 300 and req[("a1", "error")] == 3
    assert fams["volley_offered_rps"].samples[0].value == 200.0
    assert {s.labels["quantile"] for s in fams["volley_latency_seconds"].samples} == {"0.5", "0.99"}
    info = [s for f in fams.values() for s in f.samples if s.name == "volley_run_info"]
    assert info and info[0].labels["name"] == "t"


def test_histograms_file_round_trips(tmp_path: Path) -> None:
    agg = _agg()
    write_histograms(tmp_path / "h.json", agg, ["a0", "a1"])
    doc = json.loads((tmp_path / "h.json").read_text())
    assert doc["latency"]["count"] == agg.total().latency.count
    assert set(doc["agents"]) == {"a0", "a1"}
    assert np.sum(doc["latency"]["counts"]) == doc["latency"]["count"]


# ---------------------------------------------------------------- errors and outages
def test_report_shows_error_codes_and_outages(tmp_path: Path) -> None:
    d = _run_dir(tmp_path, "down", 9.0, 1.5, agg=_agg(outage=True))
    summary = json.loads((d / "summary.json").read_text())
    assert summary["outages"] and summary["requests"]["error_codes"] == {"UNAVAILABLE": 200}
    html = write_report(d).read_text()
    assert 'data-section="errors"' in html
    assert 'class="error-codes"' in html and "UNAVAILABLE" in html
    assert 'class="outages"' in html and "2–3 s: 200 of 200 in error (100%)" in html
    assert 'data-chart="errors-over-time"' in html
    lat = re.search(r'<svg[^>]*data-chart="latency-over-time".*?</svg>', html, re.S)
    assert lat is not None and lat.group(0).count('class="outage"') == 1
    assert 'data-none="' not in html
    # `volley report RUN` renders it again from the files
    (d / "report.html").unlink()
    res = CliRunner().invoke(app, ["report", str(d)])
    assert res.exit_code == 0, res.output
    assert 'class="outages"' in (d / "report.html").read_text()


def test_report_says_none_without_errors(tmp_path: Path) -> None:
    d = _run_dir(tmp_path, "clean", 9.0, 1.5, agg=_agg(errors=0))
    html = write_report(d).read_text()
    assert 'data-none="error-codes"' in html and 'data-none="outages"' in html
    assert 'class="error-codes"' not in html and 'class="outages"' not in html
    assert 'data-chart="errors-over-time"' not in html and 'class="outage"' not in html


#: What the browser is asked about the errors section.
ERROR_QUERIES = {
    "sections": "document.querySelectorAll('[data-section=errors]').length",
    "code_rows": "document.querySelectorAll('table.error-codes tr').length",
    "outage_rows": "document.querySelectorAll('table.outages tr').length",
    "marks": "Array.from(document.querySelectorAll("
    "'svg[data-chart=\"latency-over-time\"] rect.outage'))"
    ".map(r => r.getBoundingClientRect().width)",
    "none": "Array.from(document.querySelectorAll('[data-none]'))"
    ".map(e => e.dataset.none + ': ' + e.textContent)",
}


async def test_errors_and_outages_in_chromium(tmp_path: Path) -> None:
    if find_chromium() is None:
        if in_ci():
            pytest.fail("chromium is not installed", pytrace=False)
        pytest.skip("chromium is not installed")
    down = write_report(_run_dir(tmp_path, "down", 9.0, 1.5, agg=_agg(outage=True)))
    page = await render_page(down, queries=ERROR_QUERIES)
    assert page.errors == [], page.errors
    v = page.values
    assert v["sections"] == 1 and v["code_rows"] == 2 and v["outage_rows"] == 2, v
    assert len(v["marks"]) == 1 and v["marks"][0] > 20, v  # 1 s of 4 s, on a ~1000 px chart
    assert v["none"] == [], v
    charts = {c["id"]: c for c in page.charts}
    assert "errors-over-time" in charts and not charts["errors-over-time"]["empty"]
    clean = write_report(_run_dir(tmp_path, "clean", 9.0, 1.5, agg=_agg(errors=0)))
    page = await render_page(clean, queries=ERROR_QUERIES)
    assert page.errors == [], page.errors
    v = page.values
    assert v["sections"] == 1 and v["code_rows"] == 0 and v["outage_rows"] == 0, v
    assert v["marks"] == [] and "errors-over-time" not in {c["id"] for c in page.charts}
    assert [n.split(":")[0] for n in v["none"]] == ["error-codes", "outages"], v
    assert all("none" in n for n in v["none"]), v
