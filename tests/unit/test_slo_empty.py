"""SLOs with nothing to judge (coordinator/slo.py): a percentile of an empty histogram
(no successful request), an error rate of no request, a share of nothing offered all
fail with the reason, never pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console

from coordinator.aggregate import Aggregator
from coordinator.report.html import verdict_html
from coordinator.slo import parse_slo
from coordinator.summary import AgentInfo, build_summary
from volley import records as rc
from volley.arrivals import global_schedule
from volley.cli.console import print_summary
from volley.plan import Plan, plan_from_dict
from volley.records import COLUMNS, RecordBlock


def _plan(slos: tuple[str, ...]) -> Plan:
    return plan_from_dict(
        {
            "target": "127.0.0.1:8001",
            "model": "add",
            "load": {"rate": 20, "duration": "3s", "arrival": "constant"},
            "slos": list(slos),
        }
    )


def _timeouts(plan: Plan) -> RecordBlock:
    """Every arrival of the schedule, each one timed out."""
    idx, t = global_schedule(plan).all()
    cols = {k: np.zeros(idx.size, dt) for k, dt in COLUMNS.items()}
    cols["index"][:] = idx
    cols["intended_ns"][:] = t
    cols["sent_ns"][:] = t + 100_000
    cols["done_ns"][:] = t + 1_100_000
    cols["status"][:] = rc.DEADLINE_EXCEEDED
    return RecordBlock(cols, [])


def test_latency_slo_without_a_successful_request_fails_with_the_reason() -> None:
    plan = _plan(("p99<50ms", "service.p50<1s", "max<10s", "errors<100%"))
    agg = Aggregator(1, 0)
    agg.ingest(0, _timeouts(plan))
    infos = [AgentInfo(index=0, address="a0:1", workers=1)]
    summary = build_summary(plan, "r1", agg, infos, 3.0, None)
    assert summary["latency_ms"]["p99"] == 0.0  # the figure means nothing...
    v = summary["verdict"]
    assert not v["slo_passed"]  # ...and does not pass
    lat, svc, mx, err = v["slo"]
    for r in (lat, svc, mx):
        assert r == {**r, "passed": False, "actual": None, "reason": "no successful request"}
    assert err["passed"] is False and err["actual"] == 1.0 and err["reason"] == ""


def test_error_and_share_slos_with_nothing_sent_fail() -> None:
    plan = _plan(("errors<1%", "throughput>=0.9*offered"))
    infos = [AgentInfo(index=0, address="a0:1", workers=1)]
    summary = build_summary(plan, "r1", Aggregator(1, 0), infos, 3.0, None)
    errors, share = summary["verdict"]["slo"]
    assert (errors["passed"], errors["reason"]) == (False, "no request sent")
    assert (share["passed"], share["reason"]) == (False, "nothing offered")


def test_slo_sample_counts_come_from_the_histograms() -> None:
    summary = {"latency_ms": {"p99": 0.0}, "requests": {"ok": 5}}
    slo = parse_slo("p99<50ms")
    assert slo.evaluate(summary)["passed"]
    empty = slo.evaluate(summary, {"latency_ms": 0, "service_time_ms": 0})
    assert (empty["passed"], empty["reason"]) == (False, "no successful request")
    missing = parse_slo("service.p99<1ms").evaluate({"requests": {"ok": 5}})
    assert not missing["passed"]
    assert missing["reason"] == "the summary has no service_time_ms.p99"


def test_the_reason_is_shown_in_the_terminal_and_the_report(tmp_path: Path) -> None:
    """summary.json's SLO reason reaches the terminal summary and report.html."""
    plan = _plan(("p99<50ms",))
    agg = Aggregator(1, 0)
    agg.ingest(0, _timeouts(plan))
    summary = build_summary(plan, "r1", agg, [AgentInfo(index=0, address="a0:1")], 3.0, None)
    con = Console(record=True, width=200)
    print_summary(summary, tmp_path, con)
    line = next(x for x in con.export_text().splitlines() if x.startswith("SLO p99<50ms"))
    assert line.endswith("FAIL (actual none, threshold 50): no successful request"), line
    html = verdict_html(summary)
    assert "FAIL</span> (no successful request)</td>" in html
