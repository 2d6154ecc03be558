"""Connect-time SLOs (`connect_p99<50ms`): parsed into summary.json's
`connections.connect_ms`, judged on a run's summary (nothing to judge: failed, with the
reason), a bad one refused in one line, and judged per step of a connections sweep:
the search stops where connect time grows past the SLO and names it (`connect-slow`)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from typer.testing import CliRunner

from coordinator.documents import Summary
from coordinator.slo import parse_slo
from coordinator.sweep.search import StepResult, SweepSettings, search
from tests.unit.test_sweep_connections import judged_step
from volley.cli import app
from volley.conns import KINDS
from volley.plan import PlanError


def _summary(n: int, connect_p99_ms: float | None, slos: list[str]) -> Summary:
    """A clean connections step (everything held, no errors) whose connect p99 is given
    (None: no connection timed); its SLOs judged by the real parser and evaluator."""
    ms = {} if connect_p99_ms is None else {"p50": 0.5, "p99": connect_p99_ms, "max": 99.0}
    doc: dict[str, Any] = {
        "offered_rps": 2.0 * n,
        "throughput_rps": 2.0 * n,
        "error_rate": 0.0,
        "requests": {"ok": 2 * n, "sent": 2 * n},
        "latency_ms": {"p99": 3.0},
        "agents": [],
        "partial": False,
        "verdict": {"valid": True, "reasons": [], "slo": []},
        "connections": {
            "wanted": n,
            "opened": n,
            "held": n,
            "connect_ms": ms,
            "errors": {k.value: 0 for k in KINDS},
            "errors_total": 0,
            "resets_received": 0,
            "goaways_received": 0,
            "waited": 0,
        },
    }
    doc["verdict"]["slo"] = [parse_slo(s).evaluate(doc) for s in slos]
    return cast(Summary, doc)


def test_a_connect_slo_reads_the_connection_block_and_a_bad_one_is_refused() -> None:
    s = parse_slo("connect_p99<50ms")
    assert (s.metric, s.op, s.value) == ("connections.connect_ms.p99", "<", 50.0)
    assert parse_slo("connect.max<=0.2s").value == 200.0
    assert parse_slo("connect_p50<800us").metric == "connections.connect_ms.p50"
    ok = parse_slo("connect_p99<50ms").evaluate(_summary(4, 12.5, []))
    slow = parse_slo("connect_p99<50ms").evaluate(_summary(4, 61.0, []))
    assert ok["passed"] and ok["actual"] == 12.5
    assert not slow["passed"] and slow["actual"] == 61.0
    untimed = parse_slo("connect_p99<50ms").evaluate(_summary(4, None, []))
    assert not untimed["passed"] and "no connection was opened" in untimed["reason"]
    bare = cast(dict[str, Any], _summary(4, 1.0, []))
    del bare["connections"]
    none = parse_slo("connect_p99<50ms").evaluate(bare)
    assert not none["passed"] and "no connection figures" in none["reason"]
    with pytest.raises(PlanError, match="connect time needs a unit"):
        parse_slo("connect_p99<50")
    with pytest.raises(PlanError, match="unknown metric 'connect_p42'"):
        parse_slo("connect_p42<5ms")


def test_bad_connect_slo_on_the_command_line_is_one_line_exit_2() -> None:
    r = CliRunner().invoke(
        app,
        [
            "run",
            "--target",
            "127.0.0.1:1",
            "--model",
            "m",
            "--rate",
            "1",
            "--slo",
            "connect_p99<50",
        ],
    )
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "connect time needs a unit" in lines[0], r.output


async def test_a_sweep_step_fails_when_connect_time_grows_past_the_slo() -> None:
    """The fake target holds every connection cleanly, but above 40 its connect p99 is
    80 ms (a server slow to accept): the step fails on `connect_p99<50ms` alone."""
    settings = SweepSettings(mode="connections", start=8, tolerance=0.05)
    settings.validate()
    seen: list[int] = []

    async def measure(index: int, load: float, longer: int = 0) -> StepResult:
        n = int(load)
        seen.append(n)
        s = _summary(n, 4.0 if n <= 40 else 80.0, ["connect_p99<50ms", "p99<50ms"])
        return judged_step(index, load, s, 2.0 * n)

    steps, outcome = await search(settings, measure)
    assert outcome.max_load is not None and 38 <= outcome.max_load <= 40
    assert outcome.fail_load is not None and outcome.fail_load > 40
    assert outcome.failed_first == "connect-slow" and outcome.limited_by == "server"
    failed = [st for st in steps if not st.passed]
    assert failed and all(st.failed_first == "connect-slow" for st in failed)
    assert any("SLO connect_p99<50ms failed (actual 80)" in r for r in failed[0].reasons)
