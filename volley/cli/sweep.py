"""``volley sweep``: the highest rate under the SLOs, the knee, and a capacity plan.

Mounted on the main CLI as ``app.command("sweep")(sweep_cmd)``. Exit codes: 0 every
configuration has a maximum sustainable rate, 1 none passed for some configuration
(or the sweep was interrupted: resume it with ``--resume DIR``), 2 bad usage or input.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

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
    option,
)
from volley.cli.sweep_spec import build_spec
from volley.plan import PlanError

__all__ = ["build_spec", "execute_sweep", "print_result", "sweep_cmd"]


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
            if mode == "connections":
                first = f", {o['failed_first']} first above it" if o.get("failed_first") else ""
                extra = f" with {o['max_load']:g} connections held cleanly{first}"
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
    str | None,
    option(
        SEARCH,
        "rate (open loop, default), concurrency (closed loop) or connections (N held, "
        "each at --rate-per-connection: the highest N held cleanly).",
    ),
]
RatePerConnection = Annotated[
    float | None,
    option(SEARCH, "--mode connections: requests per second on each held connection (default 1)."),
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
    rate_per_connection: RatePerConnection = None,
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
                "--rate-per-connection": rate_per_connection,
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
                rate_per_connection=rate_per_connection,
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
