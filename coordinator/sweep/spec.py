"""What a sweep measures: its targets (`SweepTarget`: a server, a model, a label) and the
whole spec (`SweepSpec`: base plan, settings, targets, capacity inputs, agents), as
sweep.json holds them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from coordinator.slo import parse_slo
from coordinator.sweep.capacity import (
    CapacityInputs,
)
from coordinator.sweep.search import (
    SweepSettings,
)
from volley.plan import Plan, PlanError, parse_address, plan_from_dict


@dataclass(frozen=True)
class SweepTarget:
    """One endpoint (or model configuration) to sweep."""

    name: str
    address: str
    #: Model name on this endpoint (default: the base plan's).
    model: str = ""
    #: Replicas (or model instances) behind this endpoint: max per replica = max / this.
    replicas: int = 1
    cost_per_hour: float | None = None
    gpus_per_replica: float | None = None
    cpus_per_replica: float | None = None
    #: Set on a scaling check: the name of the single-replica target it checks.
    scale_of: str = ""
    #: First load of this target's search (default: the sweep's --start).
    start: float | None = None

    def validate(self) -> None:
        if not self.name or not all(c.isalnum() or c in "._-" for c in self.name):
            raise PlanError(
                f"target name {self.name!r}: use letters, digits, '.', '_' and '-' only"
            )
        parse_address(self.address, f"target {self.name}")
        if not 1 <= self.replicas <= 10_000:
            raise PlanError(f"target {self.name}: replicas must be between 1 and 10000")
        for what, v in (
            ("cost_per_hour", self.cost_per_hour),
            ("gpus_per_replica", self.gpus_per_replica),
            ("cpus_per_replica", self.cpus_per_replica),
            ("start", self.start),
        ):
            if v is not None and (not math.isfinite(v) or v < 0):
                raise PlanError(f"target {self.name}: {what} must be >= 0, got {v:g}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "target") -> SweepTarget:
        if not isinstance(data, dict):
            raise PlanError(f"{where}: expected a mapping")
        allowed = set(cls.__dataclass_fields__) | {"target"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise PlanError(f"{where}: unknown key(s) {', '.join(unknown)}")
        d = dict(data)
        if "target" in d:
            d["address"] = d.pop("target")
        if not isinstance(d.get("address"), str):
            raise PlanError(f"{where}: needs 'target: HOST:PORT'")
        d.setdefault("name", d["address"].replace(":", "_").replace("[", "").replace("]", ""))
        for key in ("cost_per_hour", "gpus_per_replica", "cpus_per_replica", "start"):
            v = d.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
                raise PlanError(f"{where}.{key}: expected a number, got {v!r}")
        for key in ("replicas",):
            v = d.get(key, 1)
            if isinstance(v, bool) or not isinstance(v, int):
                raise PlanError(f"{where}.{key}: expected an integer, got {v!r}")
        for key in ("name", "model", "scale_of"):
            v = d.get(key, "")
            if not isinstance(v, str):
                raise PlanError(f"{where}.{key}: expected a string, got {v!r}")
        t = cls(**d)
        t.validate()
        return t


@dataclass
class SweepSpec:
    """Everything that defines a sweep (stored in sweep.json; enough to resume it)."""

    name: str
    plan: Plan
    settings: SweepSettings
    targets: list[SweepTarget]
    capacity: CapacityInputs | None = None
    #: Agent addresses; empty: ``local_agents`` agents spawned on this machine.
    agents: list[str] = field(default_factory=list)
    local_agents: int = 1
    workers: int = 0
    start_lead_s: float = 1.0

    def validate(self) -> None:
        self.settings.validate()
        if not self.targets:
            raise PlanError("a sweep needs at least one --target")
        names = [t.name for t in self.targets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise PlanError(f"target name(s) given twice: {', '.join(dup)}")
        for t in self.targets:
            t.validate()
            if t.scale_of and t.scale_of not in names:
                raise PlanError(f"target {t.name}: scale_of {t.scale_of!r} is no target")
            if t.scale_of and t.replicas < 2:
                raise PlanError(f"target {t.name}: a scaling check needs replicas >= 2")
        if self.settings.mode == "rate" and self.plan.load.arrival == "trace":
            raise PlanError("a rate sweep needs constant or poisson arrivals, not a trace")
        slos = [parse_slo(s) for s in self.plan.slos]
        if self.settings.mode == "concurrency" and not any(
            s.metric.startswith(("latency_ms.", "service_time_ms.")) for s in slos
        ):
            raise PlanError(
                "a concurrency sweep needs a latency SLO to fail on (e.g. --slo 'p99<50ms')"
            )
        if self.capacity is not None:
            self.capacity.validate()
        if not self.agents and self.local_agents < 1:
            raise PlanError("--local-agents must be >= 1 when no --agent is given")
        if self.start_lead_s < 0.2:
            raise PlanError("--start-lead must be at least 0.2 s")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "plan": self.plan.to_dict(),
            "settings": self.settings.to_dict(),
            "targets": [t.to_dict() for t in self.targets],
            "capacity": self.capacity.to_dict() if self.capacity else None,
            "agents": list(self.agents),
            "local_agents": self.local_agents,
            "workers": self.workers,
            "start_lead_s": self.start_lead_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        try:
            spec = cls(
                name=str(data["name"]),
                plan=plan_from_dict(data["plan"]),
                settings=SweepSettings.from_dict(data["settings"]),
                targets=[
                    SweepTarget.from_dict(t, f"targets[{i}]") for i, t in enumerate(data["targets"])
                ],
                capacity=(
                    CapacityInputs.from_dict(data["capacity"]) if data.get("capacity") else None
                ),
                agents=[str(a) for a in data.get("agents") or []],
                local_agents=int(data.get("local_agents", 1)),
                workers=int(data.get("workers", 0)),
                start_lead_s=float(data.get("start_lead_s", 1.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, PlanError):
                raise
            raise PlanError(f"sweep spec: missing or bad field {exc}") from None
        spec.validate()
        return spec

    def target(self, name: str) -> SweepTarget:
        return next(t for t in self.targets if t.name == name)
