"""The sweep's search and judgement, driven by fake measure functions (no server)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.sweep.search import (
    StepResult,
    SweepSettings,
    bracket,
    completion_rate,
    judge,
    knee,
    next_step,
    search,
    step_plan,
    superseded,
)
from volley.plan import PlanError, plan_from_dict


def server(capacity: float, generator_limit: float = math.inf) -> Any:
    """A fake measure: passes up to ``capacity``; above ``generator_limit`` volley
    itself is the bottleneck. Latency rises once the load exceeds the capacity."""
    calls: list[float] = []

    async def measure(index: int, load: float, longer: int = 0) -> StepResult:
        calls.append(load)
        if load > generator_limit:
            return StepResult(index, load, False, "generator", ["agent a was the bottleneck"])
        ok = load <= capacity
        tp = min(load, capacity)
        mean = 20.0 if ok else 20.0 + 100.0 * (load - capacity) / capacity * 10
        return StepResult(
            index,
            load,
            ok,
            "pass" if ok else "server",
            [] if ok else ["throughput below 95% of the offered rate"],
            offered_rps=load,
            throughput_rps=tp,
            latency_ms={"mean": mean, "p50": mean, "p99": mean * 1.5},
        )

    measure.calls = calls  # type: ignore[attr-defined]
    return measure


async def test_finds_the_capacity_within_tolerance() -> None:
    s = SweepSettings(start=10, growth=2, tolerance=0.05, max_steps=30)
    steps, out = await search(s, server(47.0))
    assert out.limited_by == "server"
    assert out.max_load is not None and out.fail_load is not None
    assert out.max_load <= 47.0 < out.fail_load
    assert out.fail_load - out.max_load <= 0.05 * out.max_load
    assert [x.load for x in steps[:4]] == [10, 20, 40, 80]  # stepped, then bisected
    assert out.knee is not None and out.knee.load == out.max_load


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.floats(1.0, 50_000.0),
    start=st.floats(1.0, 500.0),
    growth=st.floats(1.2, 4.0),
    tolerance=st.floats(0.01, 0.3),
)
async def test_search_brackets_any_capacity(
    capacity: float, start: float, growth: float, tolerance: float
) -> None:
    s = SweepSettings(start=start, growth=growth, tolerance=tolerance, max_steps=200)
    steps, out = await search(s, server(capacity))
    if capacity < s.floor:
        assert out.limited_by == "nothing-passed"
        return
    assert out.limited_by == "server", out
    assert out.max_load is not None and out.fail_load is not None
    assert out.max_load <= capacity < out.fail_load
    # within tolerance, or as narrow as the 4-significant-digit load resolution allows
    assert out.fail_load - out.max_load <= tolerance * out.max_load + 1e-3 * out.fail_load
    assert len({x.load for x in steps}) == len(steps)  # never the same load twice


async def test_first_step_failing_steps_down() -> None:
    s = SweepSettings(start=100, growth=2, tolerance=0.1)
    steps, out = await search(s, server(30.0))
    assert [x.load for x in steps[:3]] == [100, 50, 25]
    assert out.max_load is not None and 27.0 <= out.max_load <= 30.0


async def test_nothing_passes() -> None:
    s = SweepSettings(start=100, growth=2)
    steps, out = await search(s, server(0.001))
    assert out.limited_by == "nothing-passed" and out.max_load is None
    assert min(x.load for x in steps) >= s.floor
    assert "no step passed" in out.message


async def test_every_step_passes_up_to_max_load() -> None:
    s = SweepSettings(start=10, growth=3, max_load=200)
    steps, out = await search(s, server(1e6))
    assert [x.load for x in steps] == [10, 30, 90, 200]
    assert out.limited_by == "max-load" and out.max_load == 200


async def test_max_steps_reports_an_unnarrowed_bracket() -> None:
    s = SweepSettings(start=10, growth=2, max_steps=5, tolerance=0.01)
    steps, out = await search(s, server(47.0))
    assert len(steps) == 5
    assert out.limited_by == "max-steps"
    assert "max-steps" in out.stop and "between" in out.message


async def test_generator_limit_is_never_the_servers() -> None:
    s = SweepSettings(start=10, growth=2, tolerance=0.05, max_steps=40)
    fake = server(capacity=1000.0, generator_limit=60.0)
    steps, out = await search(s, fake)
    assert out.limited_by == "generator"
    assert out.max_load is not None and out.max_load <= 60.0
    assert "volley was the bottleneck" in out.message
    # each volley-limited load was measured twice (one retry) before it counted
    gen = [x for x in steps if x.kind == "generator"]
    assert gen and all(sum(1 for y in gen if y.load == x.load) == 2 for x in gen)


async def test_a_transient_generator_limit_is_retried_and_superseded() -> None:
    seen: set[float] = set()
    inner = server(47.0)

    async def flaky(index: int, load: float, longer: int = 0) -> StepResult:
        if load == 20 and load not in seen:
            seen.add(load)
            return StepResult(index, load, False, "generator", ["busy host"])
        res: StepResult = await inner(index, load)
        return res

    s = SweepSettings(start=10, growth=2, tolerance=0.05, max_steps=30)
    steps, out = await search(s, flaky)
    assert [x.load for x in steps[:4]] == [10, 20, 20, 40]
    assert superseded(steps) == {1}
    assert out.limited_by == "server" and out.max_load is not None and out.max_load > 40


def test_a_generator_step_after_an_inconclusive_one_is_still_retried() -> None:
    # CI, a loaded 2-core host: 43.67/s was inconclusive, measured longer it was volley's
    # (a 25 ms stall), and the search bisected down without measuring it again, then
    # called volley the limit. The longer attempt used no retry, so it gets one, as long.
    s = SweepSettings(start=39.7, growth=1.2, tolerance=0.05)
    steps = [
        StepResult(0, 39.7, True, "pass", []),
        StepResult(1, 47.64, False, "server", ["SLO p50<100ms failed"]),
        StepResult(2, 43.67, False, "inconclusive", ["SLO p50<100ms inconclusive"]),
        StepResult(3, 43.67, False, "generator", ["agent t0 was the bottleneck"]),
    ]
    d = next_step(s, steps)
    assert (d.load, d.phase, d.longer) == (43.67, "retry", 1)
    # that retry volley's again: its one retry is spent, and the search goes on below
    steps.append(StepResult(4, 43.67, False, "generator", ["agent t0 was the bottleneck"]))
    d = next_step(s, steps)
    assert d.phase == "bisect" and d.load is not None and d.load < 43.67


async def test_concurrency_mode_uses_whole_numbers() -> None:
    s = SweepSettings(mode="concurrency", start=1, growth=2, max_steps=30)
    steps, out = await search(s, server(7.0))
    assert all(x.load == int(x.load) for x in steps)
    assert out.max_load == 7 and out.fail_load == 8
    assert out.limited_by == "server"


def _step(i: int, load: float, ok: bool) -> StepResult:
    return StepResult(i, load, ok, "pass" if ok else "server", [])


def test_bracket_is_conservative_with_noise() -> None:
    steps = [
        _step(0, 10, True),
        _step(1, 40, False),
        _step(2, 20, True),
        _step(3, 30, False),
        _step(4, 50, True),
    ]  # a lucky pass above a failure does not count
    lo, hi = bracket(steps)
    assert lo is not None and hi is not None
    assert (lo.load, hi.load) == (20, 30)
    d = next_step(SweepSettings(start=10, tolerance=0.05), steps)
    assert d.phase == "bisect" and d.load == 25


async def test_resume_replays_finished_steps_without_measuring() -> None:
    s = SweepSettings(start=10, growth=2, tolerance=0.05, max_steps=30)
    full, out_full = await search(s, server(47.0))
    again = server(47.0)
    reused: list[bool] = []
    steps, out = await search(s, again, full[:4], lambda st_, r: reused.append(r))
    assert [x.load for x in steps] == [x.load for x in full]
    assert again.calls == [x.load for x in full[4:]]
    assert reused == [True] * 4 + [False] * (len(full) - 4)
    assert out.max_load == out_full.max_load
    # different settings: nothing is reused past the first difference
    other = server(47.0)
    steps2, _ = await search(SweepSettings(start=12, tolerance=0.05), other, full)
    assert other.calls[0] == 12 and len(other.calls) == len(steps2)


def test_knee_is_the_highest_power() -> None:
    def st_(i: int, load: float, tp: float, mean: float, kind: str = "pass") -> StepResult:
        return StepResult(
            i,
            load,
            kind == "pass",
            kind,
            [],
            throughput_rps=tp,  # type: ignore[arg-type]
            latency_ms={"mean": mean},
        )

    steps = [
        st_(0, 10, 10, 20),
        st_(1, 20, 20, 21),
        st_(2, 40, 39, 30),
        st_(3, 80, 45, 900, "server"),
        st_(4, 100, 200, 1, "generator"),
    ]
    k = knee(steps)
    assert k is not None and k.index == 2  # 39/30 > 20/21; the volley-limited step never counts


# ---------------------------------------------------------------- judge


def summary(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "offered_rps": 100.0,
        "throughput_rps": 100.0,
        "error_rate": 0.0,
        "partial": False,
        "agents": [
            {"id": "a", "workers": 1, "saturated": False, "saturation": "", "cpu_percent_avg": 30.0}
        ],
        "verdict": {
            "valid": True,
            "reasons": [],
            "slo": [{"slo": "p99<50ms", "passed": True, "actual": 20.0}],
        },
    }
    base.update(kw)
    return base


def test_judge_pass_and_server_failures() -> None:
    assert judge("rate", summary(), 99.0, 0.95, 0.01) == (True, "pass", [])
    ok, kind, why = judge("rate", summary(), 80.0, 0.95, 0.01)
    assert (ok, kind) == (False, "server") and "fell behind" in why[0]
    slo_fail = summary(
        verdict={
            "valid": True,
            "reasons": [],
            "slo": [{"slo": "p99<50ms", "passed": False, "actual": 73.5}],
        }
    )
    ok, kind, why = judge("rate", slo_fail, 100.0, 0.95, 0.01)
    assert (ok, kind) == (False, "server") and "p99<50ms" in why[0] and "73.5" in why[0]
    errs = summary(
        error_rate=0.2,
        verdict={
            "valid": False,
            "reasons": [
                "error rate 20.00% above 1.00%",
                "3 successful requests, fewer than the 100 minimum",
            ],
            "slo": [],
        },
    )
    ok, kind, why = judge("rate", errs, 100.0, 0.95, 0.01)
    assert (ok, kind) == (False, "server") and why == ["error rate 20.00% above 1.00%"]
    # closed loop: no offered rate to keep up with
    assert judge("concurrency", summary(), 10.0, 0.95, 0.01)[0]


def test_judge_generator_saturation_is_volleys() -> None:
    busy = summary(
        agents=[
            {
                "id": "a",
                "workers": 1,
                "saturated": True,
                "cpu_percent_avg": 99.0,
                "saturation": "agent a was the bottleneck (CPU 99% of 1 workers)",
            }
        ],
        verdict={"valid": False, "reasons": ["agent a was the bottleneck (...)"], "slo": []},
    )
    ok, kind, why = judge("rate", busy, 70.0, 0.95, 0.01)
    assert (ok, kind) == (False, "generator") and "bottleneck" in why[0]
    # late sends with CPU to spare while the server fell behind: the in-flight cap filled
    queued = summary(
        agents=[
            {
                "id": "a",
                "workers": 2,
                "saturated": True,
                "cpu_percent_avg": 40.0,
                "saturation": "agent a was the bottleneck (arrivals dropped)",
            }
        ]
    )
    ok, kind, why = judge("rate", queued, 60.0, 0.95, 0.01)
    assert (ok, kind) == (False, "server") and any("in-flight cap" in w for w in why)


def test_judge_invalid_measurements() -> None:
    short = summary(
        verdict={
            "valid": False,
            "reasons": ["measured for 1.0s, less than the 5s minimum"],
            "slo": [],
        }
    )
    assert judge("rate", short, 100.0, 0.95, 0.01) == (
        False,
        "invalid",
        ["measured for 1.0s, less than the 5s minimum"],
    )
    lost = summary(
        partial=True, verdict={"valid": False, "reasons": ["agent b missing"], "slo": []}
    )
    ok, kind, why = judge("rate", lost, 10.0, 0.95, 0.01)
    assert (ok, kind) == (False, "invalid") and "partial" in why[0]


def test_completion_rate_uses_whole_measured_windows() -> None:
    rows = [
        {"agent": "all", "window": w, "achieved_rps": r}
        for w, r in enumerate([5.0, 40.0, 44.0, 46.0, 90.0])
    ]
    rows.append({"agent": "a0", "window": 2, "achieved_rps": 1000.0})  # per-agent rows ignored
    assert completion_rate(rows, 1.0, 4.0) == pytest.approx(130.0 / 3)
    assert completion_rate(rows, 0.5, 4.5) == pytest.approx(130.0 / 3)  # partial windows out
    assert completion_rate(rows, 3.5, 3.9) is None


# ---------------------------------------------------------------- step plan


def _base(**kw: Any) -> Any:
    doc: dict[str, Any] = {
        "target": "127.0.0.1:1",
        "model": "m",
        "load": {"rate": 1},
        "validity": {"min_duration_s": 5, "min_requests": 100},
        **kw,
    }
    return plan_from_dict(doc)


def test_step_plan_sets_the_load_and_a_reachable_validity() -> None:
    s = SweepSettings(step_duration_s=3, warmup_s=1)
    p = step_plan(_base(), s, 50.0, target="127.0.0.1:2", name="x-50rps")
    assert (p.target, p.name, p.load.mode, p.load.rate) == ("127.0.0.1:2", "x-50rps", "open", 50)
    assert p.load.warmup_s == 1 and p.load.duration_s == pytest.approx(1 + 3.0)
    assert p.validity.min_duration_s == 3 and p.validity.min_requests == 100
    low = step_plan(_base(), s, 20.0)  # 100 requests need 5.5 s at 20/s
    assert low.load.duration_s == pytest.approx(1 + 5.5)
    tiny = step_plan(_base(), s, 1.0)  # capped at 4x the step
    assert tiny.load.duration_s == pytest.approx(1 + 12)
    c = step_plan(_base(), SweepSettings(mode="concurrency", start=1), 8.0)
    assert (c.load.mode, c.load.concurrency) == ("closed", 8)


def test_settings_validation() -> None:
    for bad in (
        dict(growth=1.0),
        dict(tolerance=0.0),
        dict(start=0),
        dict(max_steps=0),
        dict(mode="concurrency", start=1.5),
        dict(max_load=5, start=10),
        dict(min_throughput_ratio=1.5),
        dict(retries=9),
    ):
        with pytest.raises(PlanError):
            SweepSettings(**bad).validate()  # type: ignore[arg-type]
    s = SweepSettings(start=3, growth=1.5)
    assert SweepSettings.from_dict(s.to_dict()) == s


def test_judge_inconclusive_slo() -> None:
    straddles = summary(
        verdict={
            "valid": True,
            "reasons": [],
            "slo": [
                {
                    "slo": "p99<50ms",
                    "passed": False,
                    "actual": 48.0,
                    "outcome": "inconclusive",
                    "interval": {"low": 44.0, "high": 53.0},
                    "reason": "",
                }
            ],
        }
    )
    ok, kind, why = judge("rate", straddles, 100.0, 0.95, 0.01)
    assert (ok, kind) == (False, "inconclusive") and "44-53" in why[0]
    # a failed SLO beside it is the server's
    both = summary(
        verdict={
            "valid": True,
            "reasons": [],
            "slo": [
                *straddles["verdict"]["slo"],
                {"slo": "errors<1%", "passed": False, "actual": 0.2},
            ],
        }
    )
    assert judge("rate", both, 100.0, 0.95, 0.01)[1] == "server"


async def test_an_inconclusive_step_is_measured_longer_then_counts_as_a_failure() -> None:
    """Up to 40/s the SLO is decided (pass); at 80/s it is decided only when measured
    four times as long; above, never: after two longer tries those loads fail."""
    calls: list[tuple[float, int]] = []

    async def measure(index: int, load: float, longer: int = 0) -> StepResult:
        calls.append((load, longer))
        decided = load <= 40 or (load <= 80 and longer >= 2)
        kind = "pass" if decided else "inconclusive"
        return StepResult(
            index,
            load,
            decided,
            kind,
            [] if decided else ["SLO inconclusive"],
            offered_rps=load,
            throughput_rps=load,
            latency_ms={"mean": 10.0, "p99": 20.0},
        )

    s = SweepSettings(start=20, growth=2, tolerance=0.05, max_steps=20)
    steps, out = await search(s, measure)
    assert [st.kind for st in steps[2:5]] == ["inconclusive", "inconclusive", "pass"]
    assert calls[:5] == [(20, 0), (40, 0), (80, 0), (80, 1), (80, 2)]
    assert (160, 0) in calls and (160, 1) in calls and (160, 2) in calls
    assert not any(longer > 2 for _, longer in calls)
    assert out.max_load is not None and 80 <= out.max_load < 160
    assert out.limited_by == "inconclusive" and out.fail_load is not None
    assert out.fail_load <= 160
