"""Capacity planning maths (pure)."""

from __future__ import annotations

import math

import pytest

from coordinator.sweep.capacity import (
    CapacityInputs,
    cost_per_1k,
    parse_fraction,
    plan_capacity,
    rank_configs,
    scale_check,
)
from volley.plan import PlanError


def test_parse_fraction() -> None:
    assert parse_fraction("30%", "--headroom") == pytest.approx(0.3)
    assert parse_fraction("0.3", "--headroom") == pytest.approx(0.3)
    assert parse_fraction(0.25, "--headroom") == 0.25
    for bad in ("thirty", "-5%", "5000%", "1e5"):
        with pytest.raises(PlanError, match="--headroom"):
            parse_fraction(bad, "--headroom")


def test_replicas_follow_from_the_measured_maximum() -> None:
    inputs = CapacityInputs(
        12_000, headroom=0.3, gpus_per_replica=1, cpus_per_replica=4, cost_per_hour=2.5
    )
    cp = plan_capacity(46.9, inputs, slos=["p99<100ms"], measured_on="sleep")
    assert cp.required_rps == pytest.approx(15_600)
    assert cp.replicas == math.ceil(15_600 / 46.9) == 333
    assert (cp.gpus, cp.cpus) == (333, 1332)
    assert cp.cost_per_hour == pytest.approx(333 * 2.5)
    assert cp.cost_per_1k_rps == pytest.approx(2.5 / 0.0469, rel=1e-3)
    assert cp.utilization == pytest.approx(12_000 / (333 * 46.9), rel=1e-3)
    text = " ".join(cp.assumptions)
    assert "p99<100ms" in text and "linearly" in text and "30%" in text and "2.5" in text


def test_exact_fit_needs_no_extra_replica() -> None:
    cp = plan_capacity(100.0, CapacityInputs(1000, headroom=0.0))
    assert cp.replicas == 10 and cp.utilization == 1.0


def test_measured_scaling_efficiency_is_used_and_never_above_one() -> None:
    sub = scale_check(base_rps=100, measured_rps=160, replicas=2)
    assert sub.efficiency == pytest.approx(0.8) and not sub.linear
    cp = plan_capacity(100, CapacityInputs(1000, headroom=0.0), sub)
    assert cp.planned_rps_per_replica == pytest.approx(80)
    assert cp.replicas == math.ceil(1000 / 80)
    assert any("efficiency 80%" in a for a in cp.assumptions)
    sup = scale_check(100, 230, 2)
    assert sup.linear and sup.efficiency > 1
    assert plan_capacity(100, CapacityInputs(1000, headroom=0.0), sup).replicas == 10
    with pytest.raises(PlanError):
        scale_check(100, 200, 1)


def test_bad_inputs() -> None:
    with pytest.raises(PlanError, match="no maximum"):
        plan_capacity(0.0, CapacityInputs(100))
    with pytest.raises(PlanError, match="--production-rate"):
        CapacityInputs(0).validate()
    with pytest.raises(PlanError, match="--cost-per-hour"):
        CapacityInputs(10, cost_per_hour=-1).validate()


def test_rank_by_rate_and_by_cost() -> None:
    rows = rank_configs(
        [
            {"name": "cpu", "max_rps": 50.0, "cost_per_hour": 0.1, "limited_by": "server"},
            {"name": "gpu", "max_rps": 900.0, "cost_per_hour": 3.0, "limited_by": "server"},
            {
                "name": "gpu-batch",
                "max_rps": 2000.0,
                "cost_per_hour": 3.0,
                "limited_by": "generator",
            },
            {
                "name": "broken",
                "max_rps": None,
                "cost_per_hour": 1.0,
                "limited_by": "nothing-passed",
            },
        ]
    )
    assert [r.name for r in rows] == ["gpu-batch", "gpu", "cpu", "broken"]
    assert [r.rank_by_rate for r in rows] == [1, 2, 3, None]
    by_cost = {r.name: r.rank_by_cost for r in rows}
    # per 1k req/s: cpu 2.0, gpu 3.33, gpu-batch 1.5
    assert by_cost == {"gpu-batch": 1, "cpu": 2, "gpu": 3, "broken": None}
    assert "lower bound" in rows[0].note and rows[3].note == "no step passed"
    assert cost_per_1k(None, 10) is None and cost_per_1k(1.0, 0) is None


def test_the_plan_states_its_confidence() -> None:
    plan = plan_capacity(100.0, CapacityInputs(production_rps=250.0), slos=["p99<50ms"],
                         confidence=0.95)  # fmt: skip
    assert "95% confidence interval" in plan.assumptions[0]
    plain = plan_capacity(100.0, CapacityInputs(production_rps=250.0))
    assert "confidence" not in plain.assumptions[0]
