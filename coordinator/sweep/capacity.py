"""Capacity planning from measured maxima (pure): replicas, GPUs/CPUs, cost, ranking.

Input: the maximum sustainable rate of one replica under the SLOs (from a sweep),
optionally a second measurement of N replicas (the scaling check), and a production
target. Output: how many replicas (and GPUs/CPUs behind them) carry the target with
the asked headroom, with every assumption spelled out, and a ranking of configurations
by rate and by cost per 1k req/s.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from volley.plan import PlanError

#: At or above this scaling efficiency, N replicas count as scaling linearly.
LINEAR_EFFICIENCY = 0.9

_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(%?)\s*$")


def parse_fraction(text: str | float, what: str, upper: float = 10.0) -> float:
    """'30%' or '0.3' -> 0.3 (PlanError naming ``what`` otherwise)."""
    if isinstance(text, bool):
        raise PlanError(f"{what}: expected a percentage like 30% or a fraction like 0.3")
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = _FRACTION.match(text)
        if not m:
            raise PlanError(
                f"{what}: expected a percentage like 30% or a fraction like 0.3, got {text!r}"
            )
        value = float(m.group(1)) / (100.0 if m.group(2) else 1.0)
    if not math.isfinite(value) or not 0.0 <= value <= upper:
        raise PlanError(f"{what}: must be between 0 and {upper * 100:g}%, got {text!r}")
    return value


@dataclass(frozen=True)
class CapacityInputs:
    """The production target and what one replica costs."""

    production_rps: float
    #: Spare capacity above the production rate: capacity = rate * (1 + headroom).
    headroom: float = 0.3
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 0.0
    #: Price of one replica-hour (any currency), if known.
    cost_per_hour: float | None = None

    def validate(self) -> None:
        if not math.isfinite(self.production_rps) or self.production_rps <= 0:
            raise PlanError(f"--production-rate must be > 0, got {self.production_rps:g}")
        if not 0.0 <= self.headroom <= 10.0:
            raise PlanError(f"--headroom must be between 0 and 1000%, got {self.headroom:g}")
        for name, v in (
            ("--gpus-per-replica", self.gpus_per_replica),
            ("--cpus-per-replica", self.cpus_per_replica),
        ):
            if not math.isfinite(v) or v < 0:
                raise PlanError(f"{name} must be >= 0, got {v:g}")
        if self.cost_per_hour is not None and (
            not math.isfinite(self.cost_per_hour) or self.cost_per_hour < 0
        ):
            raise PlanError(f"--cost-per-hour must be >= 0, got {self.cost_per_hour:g}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CapacityInputs:
        out = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        out.validate()
        return out


@dataclass(frozen=True)
class ScaleCheck:
    """A second measurement: ``replicas`` replicas (or model instances) sustained
    ``measured_rps`` where one sustained ``base_rps``."""

    replicas: int
    base_rps: float
    measured_rps: float
    #: measured / (replicas * base): 1.0 is linear.
    efficiency: float
    linear: bool
    #: True when the N-replica sweep itself stopped for volley's own limit (a lower bound).
    lower_bound: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scale_check(
    base_rps: float, measured_rps: float, replicas: int, lower_bound: bool = False
) -> ScaleCheck:
    if replicas < 2:
        raise PlanError(f"a scaling check needs at least 2 replicas, got {replicas}")
    if base_rps <= 0:
        raise PlanError("a scaling check needs a positive single-replica maximum")
    eff = measured_rps / (replicas * base_rps)
    return ScaleCheck(
        replicas=replicas,
        base_rps=base_rps,
        measured_rps=measured_rps,
        efficiency=round(eff, 4),
        linear=eff >= LINEAR_EFFICIENCY,
        lower_bound=lower_bound,
    )


@dataclass
class CapacityPlan:
    """How many replicas carry the production target, and what they add up to."""

    production_rps: float
    headroom: float
    required_rps: float
    max_rps_per_replica: float
    #: Per-replica rate used for the plan (max * min(efficiency, 1)).
    planned_rps_per_replica: float
    scaling_efficiency: float
    replicas: int
    gpus: float
    cpus: float
    #: Share of the planned capacity the production rate uses.
    utilization: float
    cost_per_hour: float | None
    cost_per_1k_rps: float | None
    assumptions: list[str] = field(default_factory=list)
    #: Streamed (decoupled) models: output tokens per request at the highest passing step,
    #: and the same plan in tokens/s (None for unary models).
    tokens_per_request: float | None = None
    max_tokens_per_s_per_replica: float | None = None
    planned_tokens_per_s_per_replica: float | None = None
    required_tokens_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_capacity(
    max_rps_per_replica: float,
    inputs: CapacityInputs,
    scaling: ScaleCheck | None = None,
    slos: Sequence[str] = (),
    measured_on: str = "",
    confidence: float | None = None,
    tokens_per_request: float | None = None,
) -> CapacityPlan:
    """Replicas = ceil(production * (1 + headroom) / (max per replica * efficiency)).
    With `tokens_per_request` (a streamed model's tokens/s over req/s at the highest
    passing step) every rate is also stated in output tokens/s."""
    if not max_rps_per_replica > 0:
        raise PlanError("cannot plan capacity: no maximum sustainable rate was measured")
    inputs.validate()
    required = inputs.production_rps * (1.0 + inputs.headroom)
    eff = min(scaling.efficiency, 1.0) if scaling is not None else 1.0
    eff = max(eff, 1e-6)
    per_replica = max_rps_per_replica * eff
    replicas = max(1, math.ceil(required / per_replica - 1e-9))
    cost = inputs.cost_per_hour
    slo_text = ", ".join(slos) if slos else "no latency SLO (only keeping up with the offered rate)"
    where = f" on {measured_on}" if measured_on else ""
    assumptions = [
        f"one replica sustains {max_rps_per_replica:,.1f} req/s under {slo_text} "
        f"(the highest passing step of the sweep{where}; the true limit lies between it "
        "and the lowest failing step)"
        + (
            f"; a step passed only when the {confidence:.0%} confidence interval of each SLO "
            "figure lay wholly within it (undecided steps were measured longer, then failed)"
            if confidence is not None and slos
            else ""
        ),
        f"headroom {inputs.headroom:.0%}: capacity = {inputs.production_rps:,.0f} x "
        f"{1 + inputs.headroom:.2f} = {required:,.0f} req/s",
    ]
    if scaling is None:
        assumptions.append(
            "replicas are assumed to scale linearly (not measured: give "
            "--scale-check-target with a 2-replica/instance endpoint to check)"
        )
    else:
        shape = "linearly" if scaling.linear else "sub-linearly"
        bound = " (a lower bound: volley was the limit)" if scaling.lower_bound else ""
        assumptions.append(
            f"measured {scaling.replicas} replicas/instances at {scaling.measured_rps:,.1f} "
            f"req/s{bound} vs {scaling.base_rps:,.1f} for one: efficiency "
            f"{scaling.efficiency:.0%}, scaling {shape}; each replica is planned at "
            f"{per_replica:,.1f} req/s, assuming the efficiency measured at "
            f"{scaling.replicas} holds at {replicas} (optimistic if it keeps falling)"
        )
    assumptions.append(
        "traffic is spread evenly over replicas (a load balancer with no hot spots), "
        "with the same request mix, payload sizes and arrival pattern as the sweep"
    )
    if inputs.gpus_per_replica or inputs.cpus_per_replica:
        assumptions.append(
            f"each replica has {inputs.gpus_per_replica:g} GPU(s) and "
            f"{inputs.cpus_per_replica:g} CPU(s), as in the measured one"
        )
    if cost is not None:
        assumptions.append(f"one replica-hour costs {cost:g}")
    tpr = tokens_per_request if tokens_per_request and tokens_per_request > 0 else None
    if tpr is not None:
        assumptions.append(
            f"tokens: {tpr:,.2f} output tokens per request, as measured at the highest passing "
            f"step, so one replica streams {max_rps_per_replica * tpr:,.1f} tokens/s "
            f"({max_rps_per_replica:,.1f} req/s) and the target needs {required * tpr:,.0f} "
            "tokens/s (the same prompt and output-length mix as the sweep)"
        )
    return CapacityPlan(
        production_rps=inputs.production_rps,
        headroom=inputs.headroom,
        required_rps=round(required, 3),
        max_rps_per_replica=round(max_rps_per_replica, 3),
        planned_rps_per_replica=round(per_replica, 3),
        scaling_efficiency=round(eff, 4),
        replicas=replicas,
        gpus=replicas * inputs.gpus_per_replica,
        cpus=replicas * inputs.cpus_per_replica,
        utilization=round(inputs.production_rps / (replicas * per_replica), 4),
        cost_per_hour=round(replicas * cost, 4) if cost is not None else None,
        cost_per_1k_rps=cost_per_1k(cost, per_replica),
        assumptions=assumptions,
        tokens_per_request=round(tpr, 3) if tpr is not None else None,
        max_tokens_per_s_per_replica=round(max_rps_per_replica * tpr, 3) if tpr else None,
        planned_tokens_per_s_per_replica=round(per_replica * tpr, 3) if tpr else None,
        required_tokens_per_s=round(required * tpr, 3) if tpr else None,
    )


def cost_per_1k(cost_per_hour: float | None, rps: float | None) -> float | None:
    """Cost per hour of serving 1,000 req/s with replicas of this rate."""
    if cost_per_hour is None or not rps or rps <= 0:
        return None
    return round(cost_per_hour / (rps / 1000.0), 4)


@dataclass
class RankedConfig:
    name: str
    max_rps: float | None
    cost_per_hour: float | None
    cost_per_1k_rps: float | None
    rank_by_rate: int | None
    rank_by_cost: int | None
    limited_by: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank_configs(entries: Sequence[dict[str, Any]]) -> list[RankedConfig]:
    """Rank configurations by max rate (highest first) and by cost per 1k req/s (lowest
    first). Each entry: name, max_rps (None: nothing passed), cost_per_hour, limited_by."""
    rows = [
        RankedConfig(
            name=str(e["name"]),
            max_rps=e.get("max_rps"),
            cost_per_hour=e.get("cost_per_hour"),
            cost_per_1k_rps=cost_per_1k(e.get("cost_per_hour"), e.get("max_rps")),
            rank_by_rate=None,
            rank_by_cost=None,
            limited_by=str(e.get("limited_by", "")),
        )
        for e in entries
    ]
    by_rate = sorted((r for r in rows if r.max_rps), key=lambda r: -float(r.max_rps or 0))
    for i, r in enumerate(by_rate, 1):
        r.rank_by_rate = i
    by_cost = sorted(
        (r for r in rows if r.cost_per_1k_rps is not None),
        key=lambda r: float(r.cost_per_1k_rps or 0),
    )
    for i, r in enumerate(by_cost, 1):
        r.rank_by_cost = i
    for r in rows:
        if r.limited_by == "generator":
            r.note = "a lower bound: volley was the bottleneck"
        elif r.max_rps is None:
            r.note = "no step passed"
        elif r.limited_by in ("max-load", "max-steps"):
            r.note = "a lower bound: no step failed"
    rows.sort(key=lambda r: (r.rank_by_rate is None, r.rank_by_rate or 0))
    return rows
