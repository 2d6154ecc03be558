"""`volley run`: plan one load, run it over the agents, write the run directory."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from volley.cli import run_options as o
from volley.cli.common import (
    EXIT_FAILED,
    EXIT_INCONCLUSIVE,
    EXIT_OK,
    check_writable_dir,
    fail,
    kv,
)
from volley.cli.planning import (
    build_plan,
    json_service_options,
    parse_id_range,
    parse_stages,
    target_options,
)
from volley.plan import Plan, PlanError, parse_duration

if TYPE_CHECKING:
    from coordinator.documents import AffinityDoc


def run(
    plan_file: o.PlanFile = None,
    # Target and protocol
    target: o.Target = None,
    model: o.Model = None,
    model_version: o.ModelVersion = None,
    protocol: o.Protocol = None,
    transport: o.Transport = None,
    connections: o.Connections = None,
    connections_per_worker: o.ConnectionsPerWorker = None,
    compression: o.Compression = None,
    http_body: o.HttpBody = None,
    timeout: o.Timeout = None,
    json_path: o.JsonPath = None,
    json_template: o.JsonTemplate = None,
    json_bodies: o.JsonBodies = None,
    expect_status: o.ExpectStatus = None,
    expect_field: o.ExpectField = None,
    header_file: o.HeaderFile = None,
    header_env: o.HeaderEnv = None,
    # Load
    rate: o.Rate = None,
    concurrency: o.Concurrency = None,
    arrival: o.Arrival = None,
    duration: o.Duration = None,
    warmup: o.Warmup = None,
    stages: o.Stages = None,
    trace: o.Trace = None,
    trace_format: o.TraceFormat = "timestamps",
    trace_unit: o.TraceUnit = "s",
    trace_speed: o.TraceSpeed = 1.0,
    max_in_flight: o.MaxInFlight = None,
    seed: o.Seed = None,
    # Inputs
    input_: o.Input = None,
    shape: o.Shape = None,
    vary: o.Vary = None,
    batch_size: o.BatchSize = None,
    input_data: o.InputData = None,
    prompts: o.Prompts = None,
    prompt_input: o.PromptInput = None,
    max_tokens: o.MaxTokens = None,
    # Sequences and composed models
    sequence_length: o.SeqLength = None,
    sequence_think: o.SeqThink = None,
    sequence_id_range: o.SeqIdRange = None,
    sequence_id_type: o.SeqIdType = None,
    sequence_live: o.SeqLive = None,
    sequence_check: o.SeqCheck = None,
    sequence_drain: o.SeqDrain = None,
    composing_models: o.ComposingModels = None,
    # Agents
    agent: o.Agent = None,
    local_agents: o.LocalAgents = 1,
    workers: o.Workers = 0,
    pin: o.Pin = True,
    start_lead: o.StartLead = 0.0,
    # Output and SLOs
    slo: o.Slo = None,
    name: o.Name = None,
    out: o.Out = Path("runs"),
    raw: o.Raw = True,
    quiet: o.Quiet = False,
    # Statistics
    confidence: o.Confidence = None,
    max_duration: o.MaxDuration = "5m",
    target_width: o.TargetWidth = 0.1,
    repeat: o.Repeat = 1,
    repeat_seed: o.RepeatSeed = "fresh",
    # Monitoring
    metrics_port: o.MetricsPort = None,
    server_metrics: o.ServerMetrics = None,
    server_stats: o.ServerStats = True,
    # Security
    tls: o.Tls = False,
    tls_ca: o.TlsCa = None,
    tls_cert: o.TlsCert = None,
    tls_key: o.TlsKey = None,
    tls_server_name: o.TlsServerName = None,
    token_file: o.TokenFile = None,
    agent_tls_ca: o.AgentTlsCa = None,
    agent_tls_cert: o.AgentTlsCert = None,
    agent_tls_key: o.AgentTlsKey = None,
) -> None:
    """Run one load test: plan, split over agents, start together, merge, report.

    Exit codes: 0 the run is valid and every SLO passed (its whole confidence interval
    meets it); 1 invalid, or an SLO failed; 2 bad usage or input; 3 an SLO was
    inconclusive (its interval straddles the threshold, or too few requests) and none
    failed.
    """
    import uvloop

    from coordinator.agents import AgentError, resolve_agents
    from coordinator.local import LocalAgents, fresh_token, local_spool_dir, protect_workers
    from coordinator.metrics import parse_listen
    from coordinator.preflight import PreflightError, preflight_check
    from coordinator.progress import live_outputs
    from coordinator.repeats import write_repeats
    from coordinator.run import RunOptions, execute
    from coordinator.run.autostop import AutoDuration
    from coordinator.rundir import new_run_dir
    from coordinator.slo import parse_slo
    from volley.cli.console import print_repeats, print_summary
    from volley.security import ClientSecurity, SecurityError, load_client_security

    try:
        security = load_client_security(token_file, agent_tls_ca, agent_tls_cert, agent_tls_key)
    except SecurityError as exc:
        fail(str(exc))
    try:
        overrides: dict[str, Any] = {
            "target": target,
            "model": model,
            "model_version": model_version,
            "seed": seed,
            "name": name,
            "timeout_s": timeout,
            "slos": list(slo) if slo else None,
            "raw_records": None if raw else False,
            "batch_size": batch_size,
            "protocol": protocol,
            "transport": transport,
            "connections": connections_per_worker,
            "connections_total": connections,
            "compression": compression,
            "composing_models": [m for m in composing_models.split(",") if m]
            if composing_models
            else None,
            "http_body": http_body,
        }
        json_service_options(
            plan_file,
            overrides,
            {
                "path": json_path,
                "template": json_template,
                "bodies_file": json_bodies,
                "expect_status": expect_status,
                "expect_field": expect_field,
            },
        )
        target_options(
            plan_file,
            overrides,
            tls,
            {"ca": tls_ca, "cert": tls_cert, "key": tls_key, "server_name": tls_server_name},
            header_file or [],
            header_env or [],
        )
        auto = duration is not None and duration.strip().lower() == "auto"
        if auto:
            parse_duration(max_duration, "--max-duration")
        load_over: dict[str, Any] = {
            "rate": rate,
            "concurrency": concurrency,
            "arrival": arrival,
            "duration": max_duration if auto else duration,
            "warmup": warmup,
            "max_in_flight": max_in_flight,
        }
        if rate is not None and concurrency is not None:
            raise PlanError("give either --rate (open loop) or --concurrency (closed loop)")
        if stages is not None:
            key = "concurrency" if concurrency is not None else "rate"
            load_over["stages"] = parse_stages(stages, key)
            if concurrency is None and rate is None:
                load_over["mode"] = "open"
        if trace is not None:
            load_over["arrival"] = "trace"
            load_over["mode"] = "open"
            load_over["trace"] = {
                "file": str(trace),
                "format": trace_format,
                "unit": trace_unit,
                "speed": trace_speed,
            }
        plan = build_plan(
            plan_file,
            overrides,
            load_over,
            kv(input_, "--input"),
            kv(shape, "--shape"),
            kv(vary, "--vary"),
            input_data,
            sequence={
                "length": sequence_length,
                "think_ms": sequence_think,
                "id_range": parse_id_range(sequence_id_range) if sequence_id_range else None,
                "id_type": sequence_id_type,
                "max_live": sequence_live,
                "check": sequence_check,
                "drain_s": sequence_drain,
            },
            max_tokens=max_tokens,
            prompts=prompts,
            prompt_input=prompt_input,
        )
        for s in plan.slos:
            parse_slo(s)
        plan = statistics_options(plan, confidence, auto, target_width, repeat, repeat_seed)
        auto_settings = AutoDuration(target_width=target_width) if auto else None
        addresses = resolve_agents(list(agent or []))
        if metrics_port is not None:
            parse_listen(metrics_port)
        if local_agents < 1 and not addresses:
            raise PlanError("--local-agents must be >= 1 when no --agent is given")
    except PlanError as exc:
        fail(str(exc))
    check_writable_dir(out, "--out")

    stop_event: asyncio.Event | None = None

    async def main(
        plan: Plan,
        addrs: list[str],
        local: ClientSecurity | None = None,
        local_run_dir: Path | None = None,
        pinning: AffinityDoc | None = None,
    ) -> Any:
        nonlocal stop_event
        stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop_event.set)
        loop.add_signal_handler(signal.SIGTERM, stop_event.set)
        opts = RunOptions(
            out_dir=out,
            start_lead_s=start_lead,
            workers=workers,
            stop_event=stop_event,
            server_metrics=server_metrics,
            server_stats=server_stats,
            # local agents listen on loopback in plaintext, with the token (given or random)
            security=local or security,
            auto=auto_settings,
            affinity=pinning,
            note=None if quiet else lambda text: typer.echo(f"note: {text}", err=True),
        )
        if local_run_dir is not None:  # local agents spool inside it (for volley collect)
            opts.at_start = protect_workers  # the coordinator below their workers
            opts.run_dir = local_run_dir
            opts.local_spools = {a: local_spool_dir(local_run_dir, i) for i, a in enumerate(addrs)}
        labels = {"name": plan.name, "model": plan.model, "target": plan.target}
        with live_outputs(show=not quiet, metrics_listen=metrics_port, labels=labels) as cb:
            opts.progress = cb
            return await execute(plan, addrs, opts)

    def one_run(plan: Plan) -> Any:
        try:
            if addresses:
                return uvloop.run(main(plan, addresses))
            uvloop.run(preflight_check(plan))  # a bad target or model: before any agent spawns
            run_dir = new_run_dir(out, plan.name)
            token = security.token or fresh_token()  # no other local user drives them
            local = LocalAgents(local_agents, workers, token=token, run_dir=run_dir, pin=pin)
            with local as addrs:
                pinning = local.affinity.doc()
                done = uvloop.run(main(plan, addrs, ClientSecurity(token=token), run_dir, pinning))
            if pinning["note"] and pin and not quiet:  # after the run: errors stay one line
                typer.echo(f"note: {pinning['note']}", err=True)
            return done
        except (PreflightError, AgentError, PlanError) as exc:
            fail(str(exc))

    results = []
    for i in range(repeat):
        one = repeated_plan(plan, i, repeat_seed)
        result = one_run(one)
        results.append(result)
        if quiet:
            typer.echo(str(result.run_dir))
        else:
            print_summary(result.summary, result.run_dir)
        if stop_event is not None and stop_event.is_set():
            break  # interrupted: no more repeats
    if repeat > 1:
        doc = write_repeats(out, [(r.run_dir, r.summary) for r in results])
        if not quiet:
            print_repeats(doc)
    raise typer.Exit(exit_code([r.summary for r in results]))


def statistics_options(
    plan: Plan,
    confidence: float | None,
    auto: bool,
    target_width: float,
    repeat: int,
    repeat_seed: str,
) -> Plan:
    """--confidence into the plan; --duration auto, --target-width, --repeat checked."""
    import dataclasses

    if confidence is not None:
        if not 0.5 <= confidence <= 0.999:
            raise PlanError(f"--confidence: must be between 0.5 and 0.999, got {confidence:g}")
        plan = dataclasses.replace(
            plan, validity=dataclasses.replace(plan.validity, confidence=confidence)
        )
    if auto and (plan.load.stages or plan.load.arrival == "trace"):
        raise PlanError("--duration auto: not with --stages or a trace (their length is theirs)")
    if not 0.001 <= target_width <= 10:
        raise PlanError(f"--target-width: must be between 0.001 and 10, got {target_width:g}")
    if not 1 <= repeat <= 100:
        raise PlanError(f"--repeat: must be between 1 and 100, got {repeat}")
    if repeat_seed not in ("fresh", "same"):
        raise PlanError(f"--repeat-seed: 'fresh' or 'same', got {repeat_seed!r}")
    return plan


def repeated_plan(plan: Plan, i: int, repeat_seed: str) -> Plan:
    """Run i of --repeat: the same plan, with seed + i when seeds are fresh."""
    import dataclasses

    if i == 0 or repeat_seed == "same":
        return plan
    return dataclasses.replace(plan, seed=(plan.seed + i) % 2**63)


def exit_code(summaries: list[Any]) -> int:
    """The worst outcome of the runs: invalid or failed (1), inconclusive (3), passed (0)."""
    code = EXIT_OK
    for summary in summaries:
        verdict = summary["verdict"]
        outcome = verdict.get("slo_outcome", "pass" if verdict["slo_passed"] else "fail")
        if not verdict["valid"] or outcome == "fail":
            return EXIT_FAILED
        if outcome == "inconclusive":
            code = EXIT_INCONCLUSIVE
    return code
