"""`volley run`: plan one load, run it over the agents, write the run directory."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from volley.cli.common import (
    EXIT_FAILED,
    EXIT_INCONCLUSIVE,
    EXIT_OK,
    PANEL_AGENTS,
    PANEL_INPUTS,
    PANEL_LOAD,
    PANEL_MONITOR,
    PANEL_OUTPUT,
    PANEL_SECURITY,
    PANEL_TARGET,
    check_writable_dir,
    fail,
    kv,
    option,
)
from volley.cli.planning import (
    _json_service_options,
    _target_options,
    build_plan,
    parse_id_range,
    parse_stages,
)
from volley.plan import Plan, PlanError, parse_duration

if TYPE_CHECKING:
    from coordinator.documents import AffinityDoc

# The options, one alias each, grouped by panel as `volley run --help` shows them.

RUN_OUTPUT = f"{PANEL_OUTPUT} and SLOs"

PlanFile = Annotated[Path | None, typer.Argument(help="Plan YAML (options below override it).")]

# ---- Target and protocol
Target = Annotated[str | None, option(PANEL_TARGET, "Inference server HOST:PORT (gRPC).")]
Model = Annotated[str | None, option(PANEL_TARGET, "Model name on the server.")]
ModelVersion = Annotated[str | None, option(PANEL_TARGET, "Model version (default: latest).")]
Protocol = Annotated[
    str | None,
    option(
        PANEL_TARGET,
        "grpc (default), http (KServe v2 REST) or json (a plain JSON prediction service: "
        "POST a JSON body, 2xx is success; see the JSON service options).",
    ),
]
PANEL_JSON = "JSON service (--protocol json)"
JsonPath = Annotated[str | None, option(PANEL_JSON, "URL path to POST to, e.g. /predict.")]
JsonTemplate = Annotated[
    str | None,
    option(
        PANEL_JSON,
        'Body template, JSON text or @FILE: a string "$NAME" is replaced by input NAME\'s '
        'value (declare it with --input NAME=random --shape NAME=4), e.g. \'{"features": '
        '"$x"}\'.',
    ),
]
JsonBodies = Annotated[
    str | None,
    option(PANEL_JSON, "JSON Lines file of whole request bodies (one per line), read here."),
]
ExpectStatus = Annotated[
    int | None, option(PANEL_JSON, "The HTTP status of a good answer (default: any 2xx).")
]
ExpectField = Annotated[
    str | None,
    option(PANEL_JSON, "A dotted path that a good answer's JSON holds, e.g. predictions.0."),
]
Transport = Annotated[
    str | None,
    option(
        PANEL_TARGET,
        "gRPC: unary (one ModelInfer per request, volley's HTTP/2 client), stream "
        "(ModelStreamInfer) or grpcio (grpc.aio with tritonclient's service stubs).",
    ),
]
Connections = Annotated[
    int | None, option(PANEL_TARGET, "Connections to the target per agent worker.")
]
Compression = Annotated[
    str | None, option(PANEL_TARGET, "Request compression: none, gzip or deflate.")
]
HttpBody = Annotated[
    str | None,
    option(
        PANEL_TARGET,
        "HTTP request bodies: binary (Triton's binary tensor extension), json (plain "
        "KServe v2 JSON, for servers without it, e.g. MLServer) or auto (default: from the "
        "server metadata's extensions).",
    ),
]
Timeout = Annotated[str | None, option(PANEL_TARGET, "Per-request timeout, e.g. 10s.")]
HeaderFile = Annotated[
    list[str] | None,
    option(PANEL_TARGET, "File of 'Name: value' request headers, read here (agents get values)."),
]
HeaderEnv = Annotated[
    list[str] | None,
    option(PANEL_TARGET, "NAME=ENVVAR: header NAME from environment variable ENVVAR."),
]

# ---- Load
Rate = Annotated[float | None, option(PANEL_LOAD, "Open loop: requests per second (total).")]
Concurrency = Annotated[int | None, option(PANEL_LOAD, "Closed loop: requests in flight (total).")]
Arrival = Annotated[str | None, option(PANEL_LOAD, "constant | poisson | trace.")]
Duration = Annotated[
    str | None,
    option(
        PANEL_LOAD,
        "Load duration, e.g. 30s, 2m; or 'auto': run until the SLOs are decided (or their "
        "intervals are narrow enough) and throughput is stable, at most --max-duration.",
    ),
]
Warmup = Annotated[
    str | None,
    option(
        PANEL_LOAD,
        "Sent but excluded from results (e.g. 5s); 'auto': detect it from the 1 s windows "
        "(MSER-5, at most half the run) and leave the unsettled start out of the figures.",
    ),
]
Stages = Annotated[
    str | None,
    option(PANEL_LOAD, "Ramps, e.g. '10s:100,20s:400' (rate, or concurrency with --concurrency)."),
]
Trace = Annotated[
    Path | None,
    option(PANEL_LOAD, "Replay arrivals from a file (one timestamp or gap per line)."),
]
TraceFormat = Annotated[str, option(PANEL_LOAD, "timestamps | gaps.")]
TraceUnit = Annotated[str, option(PANEL_LOAD, "s | ms | us | ns.")]
TraceSpeed = Annotated[float, option(PANEL_LOAD, "Replay speed factor.")]
MaxInFlight = Annotated[
    int | None,
    option(
        PANEL_LOAD, "Open loop: per-agent in-flight cap (late past it, dropped past the backlog)."
    ),
]
Seed = Annotated[
    int | None, option(PANEL_LOAD, "Seed of the schedule and inputs (default: random, recorded).")
]

# ---- Inputs
Input = Annotated[
    list[str] | None,
    option(
        PANEL_INPUTS,
        "NAME=VALUE constant, NAME=random|zeros, or NAME=@DIR (files) / "
        "NAME=@FILE.json (perf_analyzer data) (repeatable).",
        "--input",
    ),
]
Shape = Annotated[
    list[str] | None,
    option(
        PANEL_INPUTS,
        "NAME=DIMS, e.g. IMAGE=224x224x3, or varying: IMAGE=200..800x200..800x3 (repeatable).",
    ),
]
Vary = Annotated[
    list[str] | None,
    option(
        PANEL_INPUTS,
        "NAME.KEY=VALUE, KEY: shapes (224x224x3:3,480x640x3:1), pixels (50k..2M), "
        "aspect (0.5..2), dims, length, layout (repeatable; see README).",
    ),
]
BatchSize = Annotated[
    str | None, option(PANEL_INPUTS, "Batch size per request: 8, 1..8 or 1:5|4:3|8:2.")
]
InputData = Annotated[
    str | None, option(PANEL_INPUTS, "perf_analyzer-style JSON input data for its inputs.")
]
Prompts = Annotated[
    str | None,
    option(
        PANEL_INPUTS,
        'Prompts for a BYTES input: a JSONL file (one object a line, its "text" or '
        '"prompt") or a text file (one prompt a line).',
    ),
]
PromptInput = Annotated[
    str | None,
    option(PANEL_INPUTS, "The input --prompts fills (default: the model's only BYTES input)."),
]
MaxTokens = Annotated[
    str | None,
    option(
        PANEL_INPUTS,
        "Streamed models: the max_tokens request parameter, an integer or a distribution "
        "drawn per payload, e.g. 128 or 'uniform(16, 64)'.",
    ),
]

# ---- Sequences and composed models
PANEL_SEQUENCES = "Sequences and composed models"
SeqLength = Annotated[
    str | None,
    option(
        PANEL_SEQUENCES,
        "Stateful sequences: steps per sequence, e.g. 10, 5..20 or 4|8|16. With --rate, "
        "sequences start at that rate; with --concurrency, each user runs one after another.",
    ),
]
SeqThink = Annotated[
    str | None, option(PANEL_SEQUENCES, "Think time between steps in ms: 0, 5..20, 10|50.")
]
SeqIdRange = Annotated[
    str | None,
    option(
        PANEL_SEQUENCES,
        "Correlation IDs LO:HI to use (split between agents and workers; the first is "
        "preflight's). Refused when too small for the live sequences.",
    ),
]
SeqIdType = Annotated[
    str | None, option(PANEL_SEQUENCES, "Correlation IDs: uint64 (default) or string.")
]
SeqLive = Annotated[
    int | None,
    option(PANEL_SEQUENCES, "Open loop: live sequences at most, all agents (default 1024)."),
]
SeqCheck = Annotated[
    str | None,
    option(
        PANEL_SEQUENCES,
        "INPUT:OUTPUT: check every response's OUTPUT is the running sum of INPUT "
        "(an accumulator's state), else SEQ_MISMATCH.",
    ),
]
SeqDrain = Annotated[
    str | None,
    option(PANEL_SEQUENCES, "After the load: time live sequences get to finish (default 5s)."),
]
ComposingModels = Annotated[
    str | None,
    option(
        PANEL_SEQUENCES,
        "A,B: models whose server statistics belong to this one (a BLS model's callees; "
        "an ensemble's steps are found from its config).",
    ),
]

# ---- Agents
Agent = Annotated[
    list[str] | None,
    option(PANEL_AGENTS, "Agent HOST:PORT or dns:///NAME:PORT (repeatable).", "--agent"),
]
LocalAgents = Annotated[
    int, option(PANEL_AGENTS, "Without --agent: spawn this many agents on this machine.")
]
Workers = Annotated[int, option(PANEL_AGENTS, "Worker processes per agent (0: agent default).")]
Pin = Annotated[
    bool,
    option(
        PANEL_AGENTS,
        "Local agents: each worker on a core of its own, the coordinator and the agents' "
        "main processes on the others, where the host has the cores (summary.json: affinity).",
    ),
]
StartLead = Annotated[
    float,
    option(
        PANEL_AGENTS,
        "At least this many seconds from the start command to the start (0: the lead "
        "measured once every agent is prepared: round trips, clocks, fan-out).",
    ),
]

# ---- Output and SLOs
Slo = Annotated[
    list[str] | None,
    option(
        RUN_OUTPUT,
        "Pass/fail rule (repeatable): e.g. 'p99<50ms', 'errors<0.1%' or "
        "'throughput>=0.98*offered'.",
    ),
]
Name = Annotated[str | None, option(RUN_OUTPUT, "Run name (in the run directory's name).")]
Out = Annotated[Path, option(RUN_OUTPUT, "Parent folder of run directories.")]
Raw = Annotated[bool, option(RUN_OUTPUT, "Write every request to requests.parquet.")]
Quiet = Annotated[bool, option(RUN_OUTPUT, "Print only the run directory.")]
# ---- Statistics
PANEL_STATS = "Statistics"
Confidence = Annotated[
    float | None,
    option(PANEL_STATS, "Confidence level of every interval and SLO verdict (default 0.95)."),
]
MaxDuration = Annotated[
    str, option(PANEL_STATS, "With --duration auto: the longest the run may go (warm-up included).")
]
TargetWidth = Annotated[
    float,
    option(
        PANEL_STATS,
        "With --duration auto: an undecided SLO percentile is enough once its interval is "
        "this narrow, relative to the figure (0.1: 10%).",
    ),
]
Repeat = Annotated[
    int,
    option(PANEL_STATS, "Run the plan N times; report the spread between runs (repeats.json)."),
]
RepeatSeed = Annotated[
    str, option(PANEL_STATS, "With --repeat: 'fresh' (seed + i for run i) or 'same' seed.")
]
# ---- Monitoring
MetricsPort = Annotated[
    str | None,
    option(PANEL_MONITOR, "Serve live figures for Prometheus on PORT or HOST:PORT (/metrics)."),
]
ServerMetrics = Annotated[
    str | None,
    option(
        PANEL_MONITOR, "Triton's metrics URL or HOST:PORT to scrape, or 'off' (default: found)."
    ),
]
ServerStats = Annotated[
    bool, option(PANEL_MONITOR, "Sample the server's statistics and metrics (server.json).")
]

# ---- Security
Tls = Annotated[bool, option(PANEL_SECURITY, "TLS to the target.", "--tls")]
TlsCa = Annotated[str | None, option(PANEL_SECURITY, "CA bundle (PEM) for the target.")]
TlsCert = Annotated[str | None, option(PANEL_SECURITY, "Client certificate (PEM).")]
TlsKey = Annotated[str | None, option(PANEL_SECURITY, "Client key (PEM).")]
TlsServerName = Annotated[
    str | None, option(PANEL_SECURITY, "Server name to verify instead of the target host.")
]
TokenFile = Annotated[
    str | None, option(PANEL_SECURITY, "File holding the agents' token (or env VOLLEY_TOKEN).")
]
AgentTlsCa = Annotated[
    str | None,
    option(PANEL_SECURITY, "Control plane: talk TLS to agents, verifying them with this CA."),
]
AgentTlsCert = Annotated[
    str | None, option(PANEL_SECURITY, "Control plane: client certificate (mTLS to agents).")
]
AgentTlsKey = Annotated[
    str | None, option(PANEL_SECURITY, "Control plane: client key (mTLS to agents).")
]


def run(
    plan_file: PlanFile = None,
    # Target and protocol
    target: Target = None,
    model: Model = None,
    model_version: ModelVersion = None,
    protocol: Protocol = None,
    transport: Transport = None,
    connections: Connections = None,
    compression: Compression = None,
    http_body: HttpBody = None,
    timeout: Timeout = None,
    json_path: JsonPath = None,
    json_template: JsonTemplate = None,
    json_bodies: JsonBodies = None,
    expect_status: ExpectStatus = None,
    expect_field: ExpectField = None,
    header_file: HeaderFile = None,
    header_env: HeaderEnv = None,
    # Load
    rate: Rate = None,
    concurrency: Concurrency = None,
    arrival: Arrival = None,
    duration: Duration = None,
    warmup: Warmup = None,
    stages: Stages = None,
    trace: Trace = None,
    trace_format: TraceFormat = "timestamps",
    trace_unit: TraceUnit = "s",
    trace_speed: TraceSpeed = 1.0,
    max_in_flight: MaxInFlight = None,
    seed: Seed = None,
    # Inputs
    input_: Input = None,
    shape: Shape = None,
    vary: Vary = None,
    batch_size: BatchSize = None,
    input_data: InputData = None,
    prompts: Prompts = None,
    prompt_input: PromptInput = None,
    max_tokens: MaxTokens = None,
    # Sequences and composed models
    sequence_length: SeqLength = None,
    sequence_think: SeqThink = None,
    sequence_id_range: SeqIdRange = None,
    sequence_id_type: SeqIdType = None,
    sequence_live: SeqLive = None,
    sequence_check: SeqCheck = None,
    sequence_drain: SeqDrain = None,
    composing_models: ComposingModels = None,
    # Agents
    agent: Agent = None,
    local_agents: LocalAgents = 1,
    workers: Workers = 0,
    pin: Pin = True,
    start_lead: StartLead = 0.0,
    # Output and SLOs
    slo: Slo = None,
    name: Name = None,
    out: Out = Path("runs"),
    raw: Raw = True,
    quiet: Quiet = False,
    # Statistics
    confidence: Confidence = None,
    max_duration: MaxDuration = "5m",
    target_width: TargetWidth = 0.1,
    repeat: Repeat = 1,
    repeat_seed: RepeatSeed = "fresh",
    # Monitoring
    metrics_port: MetricsPort = None,
    server_metrics: ServerMetrics = None,
    server_stats: ServerStats = True,
    # Security
    tls: Tls = False,
    tls_ca: TlsCa = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_server_name: TlsServerName = None,
    token_file: TokenFile = None,
    agent_tls_ca: AgentTlsCa = None,
    agent_tls_cert: AgentTlsCert = None,
    agent_tls_key: AgentTlsKey = None,
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
    from coordinator.preflight import PreflightError
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
            "connections": connections,
            "compression": compression,
            "composing_models": [m for m in composing_models.split(",") if m]
            if composing_models
            else None,
            "http_body": http_body,
        }
        _json_service_options(
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
        _target_options(
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
