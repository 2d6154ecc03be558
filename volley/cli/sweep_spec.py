"""What `volley sweep` measures, from its YAML file and its options: targets, costs, the
search settings, the capacity inputs and the base plan, merged into one SweepSpec
(options override the file; a bad value raises PlanError with one line naming it).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, cast

from coordinator.sweep.capacity import CapacityInputs, parse_fraction
from coordinator.sweep.runner import (
    SweepSpec,
    SweepTarget,
)
from coordinator.sweep.search import SweepMode, SweepSettings
from volley.cli.common import (
    kv,
)
from volley.cli.planning import read_text_file
from volley.plan import PlanError, load_plan_yaml, parse_address, parse_duration
from volley.shown import shown

SWEEP_KEYS = {"name", "plan", "plan_file", "sweep", "targets", "capacity", "scale_check"}


def _float(text: str | float, what: str) -> float:
    """A finite number from text or a number (PlanError naming `what` otherwise)."""
    try:
        value = float(text)
    except (ValueError, OverflowError):
        raise PlanError(f"{what}: expected a number, got {shown(text)}") from None
    if not math.isfinite(value) or abs(value) > 2**53:
        raise PlanError(f"{what}: expected a finite number, got {shown(text)}")
    return value


def parse_targets(items: list[str]) -> list[SweepTarget]:
    """``HOST:PORT`` or ``NAME=HOST:PORT`` (repeatable)."""
    out: list[SweepTarget] = []
    for item in items:
        name, sep, address = item.partition("=")
        if not sep:
            name, address = "", item
        parse_address(address, "--target")
        if not name:
            name = "target" if len(items) == 1 else address.replace(":", "_").strip("[]")
        out.append(SweepTarget(name=name, address=address))
    return out


def parse_costs(items: list[str]) -> tuple[float | None, dict[str, float]]:
    """``--cost-per-hour 0.9`` (every target) or ``NAME=0.9`` (one target)."""
    default: float | None = None
    per: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if sep:
            per[name] = _float(value, f"--cost-per-hour {item}")
        else:
            default = _float(item, "--cost-per-hour")
    for v in [default, *per.values()]:
        if v is not None and v < 0:
            raise PlanError("--cost-per-hour must be >= 0")
    return default, per


def read_sweep_file(path: Path) -> tuple[dict[str, Any], bool]:
    """(document, is_sweep_file): a sweep YAML has any of SWEEP_KEYS at the top."""
    data = load_plan_yaml(read_text_file(path, "sweep file"))
    _text_keys(data, str(path))
    is_sweep = bool(set(data) & SWEEP_KEYS) and not ({"model", "target"} & set(data))
    if is_sweep:
        unknown = sorted(set(data) - SWEEP_KEYS)
        if unknown:
            raise PlanError(f"{path}: unknown key(s) {', '.join(unknown)} in a sweep file")
    return data, is_sweep


def _fraction(v: object, what: str, upper: float = 10.0) -> float:
    """parse_fraction() of a YAML value: text or a number (an int beyond any float, a
    list or null are refused here)."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**64:
        raise PlanError(f"{what}: must be between 0 and {upper * 100:g}%, got {shown(v)}")
    if not isinstance(v, str | int | float):
        raise PlanError(f"{what}: expected a percentage like 30% or a fraction like 0.3")
    return parse_fraction(v, what, upper)


def _mapping(v: object, where: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise PlanError(f"{where}: expected a mapping")
    _text_keys(v, where)
    return dict(v)


def _text_keys(d: dict[Any, Any], where: str) -> None:
    """YAML mappings may have number or date keys; a sweep file's have names."""
    bad = next((k for k in d if not isinstance(k, str)), None)
    if bad is not None:
        raise PlanError(f"{where}: key {shown(bad)} is not a name")


def _merge_options(d: dict[str, Any], allowed: set[str], cli: dict[str, Any], where: str) -> None:
    """A file section's keys checked, then the options given on the command line over it."""
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {', '.join(unknown)}")
    d.update((k, v) for k, v in cli.items() if v is not None)


def settings_from(yaml_sweep: dict[str, Any], cli: dict[str, Any]) -> SweepSettings:
    d = _mapping(yaml_sweep, "sweep")
    allowed = {
        "mode",
        "start",
        "growth",
        "tolerance",
        "max_steps",
        "max_load",
        "step_duration",
        "warmup",
        "min_throughput_ratio",
        "retries",
        "rate_per_connection",
    }
    _merge_options(d, allowed, cli, "sweep")
    mode = str(d.get("mode", "rate"))
    if mode not in ("rate", "concurrency", "connections"):
        raise PlanError(f"--mode must be rate, concurrency or connections, got {shown(mode)}")
    defaults = SweepSettings()

    def num(key: str, default: float) -> float:
        v = d.get(key, default)
        if isinstance(v, bool):
            raise PlanError(f"sweep.{key}: expected a number, got {shown(v)}")
        if isinstance(v, str):
            return _float(v, f"sweep.{key}")
        if not isinstance(v, int | float):
            raise PlanError(f"sweep.{key}: expected a number, got {shown(v)}")
        return _float(v, f"sweep.{key}")

    tolerance = _fraction(d.get("tolerance", defaults.tolerance), "--tolerance", 1.0)
    ratio = _fraction(
        d.get("min_throughput_ratio", defaults.min_throughput_ratio), "--min-throughput-ratio", 1.0
    )
    s = SweepSettings(
        mode=cast(SweepMode, mode),  # one of the three, checked above
        start=num("start", {"rate": defaults.start, "connections": 8.0}.get(mode, 1.0)),
        growth=num("growth", defaults.growth),
        tolerance=tolerance,
        max_steps=int(num("max_steps", defaults.max_steps)),
        max_load=num("max_load", 0.0),
        step_duration_s=parse_duration(
            d.get("step_duration", defaults.step_duration_s), "--step-duration"
        ),
        warmup_s=parse_duration(d.get("warmup", defaults.warmup_s), "--warmup"),
        min_throughput_ratio=ratio,
        retries=int(num("retries", defaults.retries)),
        rate_per_connection=num("rate_per_connection", defaults.rate_per_connection),
    )
    s.validate()
    return s


def capacity_from(yaml_cap: dict[str, Any], cli: dict[str, Any]) -> CapacityInputs | None:
    d = _mapping(yaml_cap, "capacity")
    allowed = {
        "production_rate",
        "headroom",
        "gpus_per_replica",
        "cpus_per_replica",
        "cost_per_hour",
    }
    _merge_options(d, allowed, cli, "capacity")
    if d.get("production_rate") is None:
        extra = [k for k in ("headroom", "gpus_per_replica", "cpus_per_replica") if k in d]
        if extra:
            raise PlanError(f"--{extra[0].replace('_', '-')} needs --production-rate")
        return None

    def num(key: str, default: float) -> float:
        v = d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise PlanError(f"capacity.{key}: expected a number, got {shown(v)}")
        return _float(v, f"capacity.{key}")

    cost = d.get("cost_per_hour")
    cap = CapacityInputs(
        production_rps=num("production_rate", 0.0),
        headroom=_fraction(d.get("headroom", 0.3), "--headroom"),
        gpus_per_replica=num("gpus_per_replica", 0.0),
        cpus_per_replica=num("cpus_per_replica", 0.0),
        cost_per_hour=None if cost is None else num("cost_per_hour", 0.0),
    )
    cap.validate()
    return cap


def build_spec(**o: Any) -> SweepSpec:
    """Command-line options (and an optional sweep or plan YAML) -> a validated SweepSpec."""
    from volley.cli.planning import build_plan

    file: Path | None = o["file"]
    sweep_doc: dict[str, Any] = {}
    plan_doc: dict[str, Any] = {}
    if file is not None:
        data, is_sweep = read_sweep_file(file)
        if is_sweep:
            sweep_doc = data
            plan_doc = _mapping(data.get("plan"), "plan")
            if data.get("plan_file"):
                pf = Path(str(data["plan_file"]))
                pf = pf if pf.is_absolute() else file.parent / pf
                inner, inner_is_sweep = read_sweep_file(pf)
                if inner_is_sweep:
                    raise PlanError(f"plan_file {pf}: is a sweep file, not a plan")
                plan_doc = {**inner, **plan_doc}
        else:
            plan_doc = data

    # ---- targets
    targets: list[SweepTarget]
    if o["target"]:
        targets = parse_targets(list(o["target"]))
    elif sweep_doc.get("targets"):
        raw_targets = sweep_doc["targets"]
        if not isinstance(raw_targets, list):
            raise PlanError("targets: expected a list")
        for i, t in enumerate(raw_targets):
            _mapping(t, f"targets[{i}]")
        targets = [SweepTarget.from_dict(t, f"targets[{i}]") for i, t in enumerate(raw_targets)]
    elif plan_doc.get("target"):
        targets = [SweepTarget(name="target", address=str(plan_doc["target"]))]
    else:
        raise PlanError("give --target HOST:PORT (or NAME=HOST:PORT, repeatable)")

    # ---- search settings
    settings = settings_from(
        sweep_doc.get("sweep") or {},
        {
            "mode": o["mode"],
            "start": o["start"],
            "growth": o["growth"],
            "tolerance": o["tolerance"],
            "max_steps": o["max_steps"],
            "max_load": o["max_load"],
            "step_duration": o["step_duration"],
            "warmup": o["warmup"],
            "min_throughput_ratio": o["min_throughput_ratio"],
            "retries": o["retries"],
            "rate_per_connection": o.get("rate_per_connection"),
        },
    )

    # ---- base plan (placeholder load; each step sets its own)
    overrides: dict[str, Any] = {
        **{k: v for k, v in plan_doc.items() if k not in ("load",)},
        "target": targets[0].address,
    }
    for k, v in {
        "model": o["model"] or targets[0].model or None,
        "model_version": o["model_version"],
        "seed": o["seed"],
        "timeout_s": o["timeout"],
        "slos": list(o["slo"]) if o["slo"] else None,
        "raw_records": o["raw"],
    }.items():
        if v is not None:
            overrides[k] = v
    if o["min_requests"] is not None:
        if o["min_requests"] < 1:
            raise PlanError("--min-requests must be >= 1")
        validity = dict(_mapping(plan_doc.get("validity"), "plan.validity"))
        validity["min_requests"] = o["min_requests"]
        overrides["validity"] = validity
    load: dict[str, Any] = {
        "arrival": o["arrival"],
        "max_in_flight": o["max_in_flight"],
        "duration": settings.step_duration_s + settings.warmup_s,
        "warmup": settings.warmup_s,
    }
    base_load = dict(_mapping(plan_doc.get("load"), "plan.load"))
    base_load.pop("stages", None)
    if settings.mode in ("rate", "connections"):
        base_load.pop("concurrency", None)
        per = settings.rate_per_connection if settings.mode == "connections" else 1.0
        load["rate"] = settings.start * per
    else:
        base_load.pop("rate", None)
        load["concurrency"] = int(settings.start)
    if base_load:
        overrides["load"] = base_load
    inputs, shapes = kv(o["input_"], "--input"), kv(o["shape"], "--shape")
    plan = build_plan(None, overrides, load, inputs, shapes)
    if len(targets) == 1 and targets[0].name == "target" and not targets[0].model:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", plan.model).strip("-") or "target"
        targets[0] = SweepTarget(**{**targets[0].to_dict(), "name": safe})

    # ---- capacity inputs and costs
    default_cost, per_cost = parse_costs(list(o["cost_per_hour"] or []))
    cap = capacity_from(
        sweep_doc.get("capacity") or {},
        {
            "production_rate": o["production_rate"],
            "headroom": o["headroom"],
            "gpus_per_replica": o["gpus_per_replica"],
            "cpus_per_replica": o["cpus_per_replica"],
            "cost_per_hour": default_cost,
        },
    )
    names = {t.name for t in targets}
    unknown = sorted(set(per_cost) - names)
    if unknown:
        raise PlanError(f"--cost-per-hour {unknown[0]}=...: no target named {shown(unknown[0])}")
    targets = [
        SweepTarget(**{**t.to_dict(), "cost_per_hour": per_cost[t.name]})
        if t.name in per_cost
        else t
        for t in targets
    ]

    # ---- scaling check
    sc_doc = _mapping(sweep_doc.get("scale_check"), "scale_check")
    sc_target = o["scale_check_target"] or sc_doc.get("target")
    if sc_target:
        replicas = sc_doc.get("replicas", o["scale_check_replicas"])
        if (
            isinstance(replicas, bool)
            or not isinstance(replicas, int)
            or not 1 <= replicas <= 10_000
        ):
            raise PlanError("scale_check.replicas: expected an integer between 1 and 10000")
        if o["scale_check_target"]:
            replicas = o["scale_check_replicas"]
        base = next((t for t in targets if not t.scale_of), targets[0])
        targets.append(
            SweepTarget(
                name=f"{base.name}-x{replicas}",
                address=str(sc_target),
                model=base.model,
                replicas=replicas,
                cost_per_hour=base.cost_per_hour,
                gpus_per_replica=base.gpus_per_replica,
                cpus_per_replica=base.cpus_per_replica,
                scale_of=base.name,
            )
        )

    name = o["name"] or str(sweep_doc.get("name") or "") or plan.model
    spec = SweepSpec(
        name=name,
        plan=plan,
        settings=settings,
        targets=targets,
        capacity=cap,
        agents=list(o["agent"] or []),
        local_agents=o["local_agents"] if o["local_agents"] is not None else 1,
        workers=o["workers"] or 0,
        start_lead_s=o["start_lead"] if o["start_lead"] is not None else 1.0,
    )
    spec.validate()
    return spec
