"""``volley sweep``: the highest rate under the SLOs, the knee, and a capacity plan.

Mounted on the main CLI as ``app.command("sweep")(sweep_cmd)``. Exit codes: 0 every
configuration has a maximum sustainable rate, 1 none passed for some configuration
(or the sweep was interrupted: resume it with ``--resume DIR``), 2 bad usage or input.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from coordinator.sweep.capacity import CapacityInputs, parse_fraction
from coordinator.sweep.runner import (
    REPORT_FILE,
    SWEEP_FILE,
    SweepSpec,
    SweepTarget,
)
from coordinator.sweep.search import StepResult, SweepSettings, load_label
from volley.cli.common import (
    EXIT_FAILED,
    PANEL_AGENTS,
    PANEL_INPUTS,
    PANEL_LOAD,
    PANEL_OUTPUT,
    PANEL_TARGET,
    check_writable_dir,
    fail,
    kv,
    option,
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
    }
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise PlanError(f"sweep: unknown key(s) {', '.join(unknown)}")
    for k, v in cli.items():
        if v is not None:
            d[k] = v
    mode = str(d.get("mode", "rate"))
    if mode not in ("rate", "concurrency"):
        raise PlanError(f"--mode must be rate or concurrency, got {shown(mode)}")
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
        mode="concurrency" if mode == "concurrency" else "rate",
        start=num("start", defaults.start if mode == "rate" else 1.0),
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
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise PlanError(f"capacity: unknown key(s) {', '.join(unknown)}")
    for k, v in cli.items():
        if v is not None:
            d[k] = v
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


def _step_line(target: SweepTarget, step: StepResult, mode: str, several: bool) -> str:
    lat = step.latency_ms
    head = f"[{target.name}] " if several else ""
    verdict = {
        "pass": "PASS",
        "server": "FAIL",
        "generator": "VOLLEY-LIMITED",
        "invalid": "INVALID",
        "inconclusive": "INCONCLUSIVE",
    }[step.kind]
    why = f": {'; '.join(step.reasons[:2])}" if step.reasons else ""
    return (
        f"{head}step {step.index + 1:>2}  {load_label(mode, step.load):>10}  "  # type: ignore[arg-type]
        f"achieved {step.throughput_rps:8.1f}/s  p50 {lat.get('p50', 0):8.2f} ms  "
        f"p99 {lat.get('p99', 0):8.2f} ms  {verdict}{why}"
    )


def print_result(doc: dict[str, Any], sweep_dir: Path) -> None:
    mode = doc["spec"]["settings"]["mode"]
    typer.echo("")
    for t in doc["targets"]:
        o = t.get("outcome")
        if o is None:
            typer.echo(f"{t['name']}: not swept")
            continue
        head = f"{t['name']} ({t['address']}, {t['model']})"
        if t.get("max_rps") is not None:
            extra = f" at concurrency {o['max_load']:g}" if mode == "concurrency" else ""
            typer.echo(f"{head}: max sustainable {t['max_rps']:,.1f} req/s{extra}")
        else:
            typer.echo(f"{head}: no maximum")
        typer.echo(f"  {o['message']}")
        kn = o.get("knee")
        if kn:
            typer.echo(
                f"  knee: {kn['throughput_rps']:,.1f} req/s at {kn['latency_ms']:.2f} ms mean "
                f"latency (step {kn['index'] + 1}, highest throughput/latency)"
            )
    ranking = doc.get("ranking") or []
    if len(ranking) > 1:
        typer.echo("\nconfigurations by max rate per replica (and by cost per 1k req/s):")
        for r in ranking:
            cost = (
                f"  {r['cost_per_1k_rps']:.3f}/h per 1k req/s (#{r['rank_by_cost']})"
                if r.get("cost_per_1k_rps") is not None
                else ""
            )
            rate = "-" if r.get("max_rps") is None else f"{r['max_rps']:,.1f} req/s"
            note = f"  ({r['note']})" if r.get("note") else ""
            typer.echo(f"  #{r.get('rank_by_rate') or '-'} {r['name']}: {rate}{cost}{note}")
    for name, sc in (doc.get("scaling") or {}).items():
        if "error" in sc:
            typer.echo(f"\nscaling check {name}: {sc['error']}")
            continue
        typer.echo(
            f"\nscaling check {name}: {sc['replicas']} replicas {sc['measured_rps']:,.1f} req/s "
            f"vs 1 x {sc['base_rps']:,.1f}: efficiency {sc['efficiency']:.0%} "
            f"({'linear' if sc['linear'] else 'sub-linear'})"
        )
    for name, cp in (doc.get("capacity") or {}).items():
        if "error" in cp:
            typer.echo(f"\ncapacity plan ({name}): {cp['error']}")
            continue
        cost = f", {cp['cost_per_hour']:,.2f}/hour" if cp.get("cost_per_hour") is not None else ""
        typer.echo(
            f"\ncapacity plan ({name}): {cp['replicas']} replica(s) for "
            f"{cp['production_rps']:,.0f} req/s + {cp['headroom']:.0%} headroom "
            f"= {cp['required_rps']:,.0f} req/s: {cp['gpus']:g} GPU(s), {cp['cpus']:g} CPU(s)"
            f"{cost}; {cp['utilization']:.0%} utilised at the target"
        )
        if cp.get("max_tokens_per_s_per_replica") is not None:
            typer.echo(
                f"  per replica {cp['max_tokens_per_s_per_replica']:,.1f} tokens/s = "
                f"{cp['max_rps_per_replica']:,.1f} req/s x {cp['tokens_per_request']:,.2f} "
                f"tokens per request; the target needs {cp['required_tokens_per_s']:,.0f} tokens/s"
            )
        for a in cp["assumptions"]:
            typer.echo(f"  - {a}")
    typer.echo(f"\nresults: {sweep_dir / SWEEP_FILE}  report: {sweep_dir / REPORT_FILE}")


# ---- the options, one alias each, grouped as `volley sweep --help` shows them

SEARCH = "Search and SLOs"
CAPACITY = "Capacity plan"

File = Annotated[
    Path | None,
    typer.Argument(help="A sweep YAML (targets, sweep, capacity) or a plain plan YAML."),
]
Resume = Annotated[Path | None, typer.Option(help="Resume an interrupted sweep directory.")]
# Target and protocol
Target = Annotated[
    list[str] | None,
    option(PANEL_TARGET, "Endpoint HOST:PORT, or NAME=HOST:PORT to compare several."),
]
Model = Annotated[str | None, option(PANEL_TARGET, "Model name on the server.")]
ModelVersion = Annotated[str | None, option(PANEL_TARGET, "Model version.")]
Timeout = Annotated[str | None, option(PANEL_TARGET, "Per-request timeout, e.g. 10s.")]
# Inputs
Input = Annotated[
    list[str] | None,
    option(PANEL_INPUTS, "NAME=VALUE constant, or NAME=random|zeros (repeatable).", "--input"),
]
Shape = Annotated[list[str] | None, option(PANEL_INPUTS, "NAME=DIMS (repeatable).")]
# Load (of each step)
Arrival = Annotated[str | None, option(PANEL_LOAD, "constant | poisson.")]
MaxInFlight = Annotated[int | None, option(PANEL_LOAD, "Per-agent in-flight cap.")]
Seed = Annotated[
    int | None, option(PANEL_LOAD, "Seed of the schedule and inputs (default: random, recorded).")
]
# Search and SLOs
Slo = Annotated[
    list[str] | None,
    option(SEARCH, "e.g. 'p99<50ms', 'errors<0.1%' (repeatable); each step must meet them."),
]
Mode = Annotated[
    str | None, option(SEARCH, "rate (open loop, default) or concurrency (closed loop).")
]
Start = Annotated[float | None, option(SEARCH, "First load (req/s or concurrency).")]
Growth = Annotated[float | None, option(SEARCH, "Ramp factor until a step fails.")]
Tolerance = Annotated[
    str | None, option(SEARCH, "Bisect until the bracket is this narrow (e.g. 5%).")
]
MaxSteps = Annotated[int | None, option(SEARCH, "At most this many steps.")]
MaxLoad = Annotated[float | None, option(SEARCH, "Never offer more than this.")]
StepDuration = Annotated[
    str | None, option(SEARCH, "Measured time per step (after warm-up), e.g. 10s.")
]
Warmup = Annotated[str | None, option(SEARCH, "Warm-up per step, e.g. 2s.")]
MinThroughputRatio = Annotated[
    str | None,
    option(SEARCH, "A step fails below this share of the offered rate (default 95%)."),
]
Retries = Annotated[
    int | None, option(SEARCH, "Measure a volley-limited or invalid step again (default 1).")
]
MinRequests = Annotated[
    int | None, option(SEARCH, "Validity: minimum successful requests per step.")
]
# Capacity plan
ProductionRate = Annotated[float | None, option(CAPACITY, "The production req/s to carry.")]
Headroom = Annotated[str | None, option(CAPACITY, "Spare capacity (default 30%).")]
GpusPerReplica = Annotated[float | None, option(CAPACITY, "GPUs behind a replica.")]
CpusPerReplica = Annotated[float | None, option(CAPACITY, "CPUs behind a replica.")]
CostPerHour = Annotated[
    list[str] | None,
    option(CAPACITY, "Cost of a replica-hour: X (all targets) or NAME=X (repeatable)."),
]
ScaleCheckTarget = Annotated[
    str | None,
    option(CAPACITY, "HOST:PORT serving N replicas/instances of the first target's config."),
]
ScaleCheckReplicas = Annotated[
    int, option(CAPACITY, "Replicas/instances behind --scale-check-target.")
]
# Agents
Agent = Annotated[
    list[str] | None, option(PANEL_AGENTS, "Agent HOST:PORT (repeatable).", "--agent")
]
LocalAgents = Annotated[
    int | None, option(PANEL_AGENTS, "Without --agent: spawn this many local agents.")
]
Workers = Annotated[int | None, option(PANEL_AGENTS, "Worker processes per agent.")]
StartLead = Annotated[
    float | None, option(PANEL_AGENTS, "Seconds from each step's start command to its start.")
]
# Output
Name = Annotated[str | None, option(PANEL_OUTPUT, "Sweep name (in its directory name).")]
Out = Annotated[Path, option(PANEL_OUTPUT, "Parent folder of the sweep directory.")]
Raw = Annotated[
    bool | None, option(PANEL_OUTPUT, "Write requests.parquet per step.", "--raw/--no-raw")
]
Json = Annotated[bool, option(PANEL_OUTPUT, "Print sweep.json at the end.", "--json")]
Quiet = Annotated[bool, option(PANEL_OUTPUT, "Print only the sweep directory.")]


def sweep_cmd(
    file: File = None,
    resume: Resume = None,
    # Target and protocol
    target: Target = None,
    model: Model = None,
    model_version: ModelVersion = None,
    timeout: Timeout = None,
    # Inputs
    input_: Input = None,
    shape: Shape = None,
    # Load
    arrival: Arrival = None,
    max_in_flight: MaxInFlight = None,
    seed: Seed = None,
    # Search and SLOs
    slo: Slo = None,
    mode: Mode = None,
    start: Start = None,
    growth: Growth = None,
    tolerance: Tolerance = None,
    max_steps: MaxSteps = None,
    max_load: MaxLoad = None,
    step_duration: StepDuration = None,
    warmup: Warmup = None,
    min_throughput_ratio: MinThroughputRatio = None,
    retries: Retries = None,
    min_requests: MinRequests = None,
    # Capacity plan
    production_rate: ProductionRate = None,
    headroom: Headroom = None,
    gpus_per_replica: GpusPerReplica = None,
    cpus_per_replica: CpusPerReplica = None,
    cost_per_hour: CostPerHour = None,
    scale_check_target: ScaleCheckTarget = None,
    scale_check_replicas: ScaleCheckReplicas = 2,
    # Agents
    agent: Agent = None,
    local_agents: LocalAgents = None,
    workers: Workers = None,
    start_lead: StartLead = None,
    # Output
    name: Name = None,
    out: Out = Path("runs"),
    raw: Raw = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Find the highest rate (or concurrency) meeting the SLOs, the knee, and a capacity plan."""
    from coordinator.rundir import new_run_dir
    from coordinator.sweep.runner import load_sweep

    previous: dict[str, list[StepResult]] = {}
    created = ""
    try:
        if resume is not None:
            given = {
                "FILE": file,
                "--target": target,
                "--model": model,
                "--input": input_,
                "--slo": slo,
                "--mode": mode,
                "--start": start,
                "--growth": growth,
                "--tolerance": tolerance,
                "--max-steps": max_steps,
                "--max-load": max_load,
                "--step-duration": step_duration,
                "--warmup": warmup,
                "--seed": seed,
                "--production-rate": production_rate,
                "--headroom": headroom,
                "--cost-per-hour": cost_per_hour,
                "--scale-check-target": scale_check_target,
                "--shape": shape,
                "--arrival": arrival,
                "--name": name,
                "--min-requests": min_requests,
                "--timeout": timeout,
                "--max-in-flight": max_in_flight,
                "--model-version": model_version,
                "--gpus-per-replica": gpus_per_replica,
                "--cpus-per-replica": cpus_per_replica,
                "--min-throughput-ratio": min_throughput_ratio,
                "--raw": raw,
                "--retries": retries,
            }
            extra = [k for k, v in given.items() if v is not None and v != []]
            if extra:
                raise PlanError(
                    f"--resume takes the sweep as it was defined; drop {', '.join(extra)}"
                )
            spec, previous, old = load_sweep(resume)
            created = str(old.get("created", ""))
            if agent:
                spec.agents = list(agent)
            if local_agents is not None:
                spec.local_agents = local_agents
            if workers is not None:
                spec.workers = workers
            if start_lead is not None:
                spec.start_lead_s = start_lead
            spec.validate()
            check_writable_dir(resume, "--resume")
            sweep_dir = resume
        else:
            spec = build_spec(
                file=file,
                target=target,
                model=model,
                model_version=model_version,
                input_=input_,
                shape=shape,
                slo=slo,
                arrival=arrival,
                max_in_flight=max_in_flight,
                timeout=timeout,
                seed=seed,
                name=name,
                mode=mode,
                start=start,
                growth=growth,
                tolerance=tolerance,
                max_steps=max_steps,
                max_load=max_load,
                step_duration=step_duration,
                warmup=warmup,
                min_throughput_ratio=min_throughput_ratio,
                min_requests=min_requests,
                retries=retries,
                production_rate=production_rate,
                headroom=headroom,
                gpus_per_replica=gpus_per_replica,
                cpus_per_replica=cpus_per_replica,
                cost_per_hour=cost_per_hour,
                scale_check_target=scale_check_target,
                scale_check_replicas=scale_check_replicas,
                agent=agent,
                local_agents=local_agents,
                workers=workers,
                raw=raw,
                start_lead=start_lead,
            )
            check_writable_dir(out, "--out")
            sweep_dir = new_run_dir(out, f"sweep-{spec.name}")
    except PlanError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--out {out}: cannot create the sweep folder ({exc.strerror or exc})")

    doc = execute_sweep(spec, sweep_dir, previous, created, quiet)
    if quiet:
        typer.echo(str(sweep_dir))
    elif json_:
        typer.echo(json.dumps(doc, indent=2))
    else:
        print_result(doc, sweep_dir)
    main_targets = [t for t in doc["targets"] if not t.get("scale_of")]
    if any(t.get("max_rps") is None for t in main_targets):
        raise typer.Exit(EXIT_FAILED)


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
    if settings.mode == "rate":
        base_load.pop("concurrency", None)
        load["rate"] = settings.start
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


def execute_sweep(
    spec: SweepSpec,
    sweep_dir: Path,
    previous: dict[str, list[StepResult]],
    created: str,
    quiet: bool,
) -> dict[str, Any]:
    """Run (or resume) the sweep with real agents; exits 1 when interrupted."""
    import uvloop

    from coordinator.agents import AgentError, resolve_agents
    from coordinator.local import LocalAgents
    from coordinator.preflight import PreflightError
    from coordinator.sweep.runner import SweepInterrupted, real_measure, run_sweep
    from volley.security import ClientSecurity

    several = len(spec.targets) > 1

    def on_step(t: SweepTarget, step: StepResult, reused: bool) -> None:
        if quiet:
            return
        line = _step_line(t, step, spec.settings.mode, several)
        typer.echo(line + ("  (from the earlier run)" if reused else ""))

    async def main(addresses: list[str], security: ClientSecurity | None = None) -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)

        def factory(t: SweepTarget, s: SweepSettings) -> Any:
            return real_measure(spec, t, s, sweep_dir, addresses, stop, security)

        return await run_sweep(spec, sweep_dir, factory, previous, created, on_step)

    if not quiet:
        typer.echo(f"sweep {spec.name}: {sweep_dir}")
    try:
        addresses = resolve_agents(spec.agents)
        if addresses:
            return uvloop.run(main(addresses))
        spawned = LocalAgents(spec.local_agents, spec.workers)
        with spawned as addrs:
            return uvloop.run(main(addrs, spawned.security))
    except SweepInterrupted:
        fail(
            f"sweep interrupted; finished steps are in {sweep_dir / SWEEP_FILE}: "
            f"continue with `volley sweep --resume {sweep_dir}`",
            EXIT_FAILED,
        )
    except (PreflightError, AgentError, PlanError) as exc:
        fail(f"{exc} (sweep saved in {sweep_dir}; fix and `volley sweep --resume {sweep_dir}`)")
