"""`volley sweep --mode connections`, the pure parts: a step at N holds N connections at
a fixed per-connection rate; the search steps N up until a step fails (any connection
error, reset, connection not held, or the usual SLO/throughput reasons), bisects on
whole connections, and names what failed first. The measure is a fake server that
holds `limit` connections and then fails one way or another."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
from typer.testing import CliRunner

from coordinator.documents import Summary
from coordinator.sweep.conns import FAILURE_KINDS, FailureKind, failure_kind, step_rate
from coordinator.sweep.search import (
    StepResult,
    SweepSettings,
    judge_step,
    load_label,
    search,
    step_plan,
)
from volley.cli import app
from volley.conns import KINDS
from volley.plan import PlanError, plan_from_dict


def _summary(n: int, limit: int, fail: str, rate: float) -> Summary:
    errors = {k.value: 0 for k in KINDS}
    over = max(0, n - limit)
    resets = goaways = 0
    held = n
    latency = 2.0
    if over and fail in errors:
        errors[fail] = over
        held = limit
    elif over and fail == "reset-held":
        resets = over
        held = limit
    elif over and fail == "goaway":
        goaways = over
    elif over and fail == "slowed":
        latency = 80.0
    slo = [{"slo": "p99<50ms", "passed": latency < 50, "actual": latency, "outcome": "pass"}]
    doc = {
        "offered_rps": n * rate,
        "throughput_rps": n * rate,
        "error_rate": 0.0,
        "agents": [],
        "partial": False,
        "verdict": {"valid": True, "reasons": [], "slo": slo},
        "connections": {
            "wanted": n,
            "opened": n - sum(errors.values()),
            "held": held,
            "connect_ms": {"p50": 0.3, "p99": 1.0, "max": 1.2},
            "errors": errors,
            "errors_total": sum(errors.values()),
            "resets_received": resets,
            "goaways_received": goaways,
            "waited": 0,
        },
    }
    return cast(Summary, doc)


def judged_step(index: int, load: float, s: Summary, offered: float) -> StepResult:
    """A connections step's result from its summary, judged as the sweep judges it."""
    passed, kind, reasons, failures = judge_step("connections", s, offered, 0.95, 0.01)
    return StepResult(
        index,
        load,
        passed,
        kind,
        reasons,
        connections=s.get("connections"),
        failed_first=failure_kind(s, passed, failures),
    )


def _measure(settings: SweepSettings, limit: int, fail: str, seen: list[int]) -> Any:
    async def measure(index: int, load: float, longer: int = 0) -> StepResult:
        n = int(load)
        seen.append(n)
        s = _summary(n, limit, fail, settings.rate_per_connection)
        return judged_step(index, load, s, n * 1.0)

    return measure


@pytest.mark.parametrize(
    ("fail", "named"),
    [
        ("refused", "refused"),
        ("reset", "reset"),
        ("reset-held", "reset"),
        ("goaway", "goaway"),
        ("slowed", "slowed"),
    ],
)
async def test_the_search_finds_the_highest_clean_n_and_names_the_failure(
    fail: str, named: str
) -> None:
    settings = SweepSettings(mode="connections", start=8, tolerance=0.05)
    settings.validate()
    seen: list[int] = []
    steps, outcome = await search(settings, _measure(settings, 61, fail, seen))
    assert seen[:4] == [8, 16, 32, 64]  # up by the growth, then bisect on whole numbers
    assert outcome.max_load is not None and 58 <= outcome.max_load <= 61
    assert outcome.fail_load is not None and outcome.fail_load > 61
    assert outcome.limited_by == "server" and outcome.failed_first == named
    assert f"({named} first at" in outcome.message
    assert all(float(n).is_integer() for n in seen) and len(steps) <= 9


async def test_a_server_holding_everything_passes_up_to_the_ceiling() -> None:
    settings = SweepSettings(mode="connections", start=4, max_load=20)
    seen: list[int] = []
    _, outcome = await search(settings, _measure(settings, 10_000, "reset", seen))
    assert seen == [4, 8, 16, 20] and outcome.limited_by == "max-load"
    assert outcome.failed_first == ""


def test_a_connections_step_holds_n_at_the_per_connection_rate() -> None:
    base = plan_from_dict(
        {"target": "127.0.0.1:1", "model": "m", "load": {"rate": 1}, "slos": ["p99<50ms"]}
    )
    settings = SweepSettings(
        mode="connections", start=8, rate_per_connection=2.0, step_duration_s=2, warmup_s=0
    )
    plan = step_plan(base, settings, 40)
    assert plan.connections_total == 40 and plan.load.rate == step_rate(40, 2.0) == 80.0
    assert plan.load.mode == "open" and load_label("connections", 40) == "n40"
    with pytest.raises(PlanError, match="rate-per-connection"):
        SweepSettings(mode="connections", rate_per_connection=0).validate()
    with pytest.raises(PlanError, match="whole connections"):
        SweepSettings(mode="connections", start=2.5).validate()


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--mode", "connections", "--rate-per-connection", "0"], "--rate-per-connection"),
        (["--mode", "connections", "--start", "2.5"], "whole connections"),
        (["--mode", "sockets"], "rate, concurrency or connections"),
    ],
)
def test_bad_connections_sweep_options_are_one_line(
    tmp_path: Path, extra: list[str], named: str
) -> None:
    args = ["sweep", "--target", "127.0.0.1:1", "--model", "m", *extra, "--out", str(tmp_path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and named in lines[0], res.output


def test_failure_kinds_are_an_enum_with_the_old_json_values() -> None:
    assert [k.value for k in FAILURE_KINDS] == [
        *(k.value for k in KINDS),
        *("goaway", "not-held", "connect-slow", "slowed", "errors"),
    ]
    old = {"index": 3, "load": 64.0, "passed": False, "kind": "server", "reasons": ["x"]}
    step = StepResult.from_dict({**old, "failed_first": "goaway"})  # an old sweep.json
    assert step.failed_first is FailureKind.GOAWAY
    assert json.loads(json.dumps(step.to_dict()))["failed_first"] == "goaway"
    assert StepResult.from_dict(old).failed_first is FailureKind.NONE
    with pytest.raises(PlanError, match="unknown failed_first 'sideways'"):
        StepResult.from_dict({**old, "failed_first": "sideways"})


def test_what_failed_first_comes_from_the_judging_not_from_reason_texts() -> None:
    clean = _summary(8, 61, "slowed", 1.0)  # under the limit: held, no errors
    j = judge_step("connections", clean, 4.0, 0.95, 0.01)  # delivered half the offered
    assert not j.passed and j.server_failures == {FailureKind.SLOWED}
    assert failure_kind(clean, j.passed, j.server_failures) is FailureKind.SLOWED
    erring = cast(Summary, {**clean, "error_rate": 0.2})
    j = judge_step("connections", erring, 8.0, 0.95, 0.01)
    assert j.server_failures == {FailureKind.ERRORS}
    assert failure_kind(erring, j.passed, j.server_failures) is FailureKind.ERRORS
    assert failure_kind(erring, False, ()) is FailureKind.NONE  # text alone names nothing
    assert failure_kind(erring, True, {FailureKind.ERRORS}) is FailureKind.NONE
