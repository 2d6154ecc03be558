"""`volley run`: plan one load, run it over the agents, write the run directory."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from volley.cli.common import (
    EXIT_FAILED,
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
from volley.cli.planning import _target_options, build_plan, parse_stages
from volley.plan import PlanError

# The options, one alias each, grouped by panel as `volley run --help` shows them.

RUN_OUTPUT = f"{PANEL_OUTPUT} and SLOs"

PlanFile = Annotated[Path | None, typer.Argument(help="Plan YAML (options below override it).")]

# ---- Target and protocol
Target = Annotated[str | None, option(PANEL_TARGET, "Inference server HOST:PORT (gRPC).")]
Model = Annotated[str | None, option(PANEL_TARGET, "Model name on the server.")]
ModelVersion = Annotated[str | None, option(PANEL_TARGET, "Model version (default: latest).")]
Protocol = Annotated[str | None, option(PANEL_TARGET, "grpc (default) or http (KServe v2 REST).")]
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
Duration = Annotated[str | None, option(PANEL_LOAD, "Load duration, e.g. 30s, 2m.")]
Warmup = Annotated[str | None, option(PANEL_LOAD, "Sent but excluded from results.")]
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

# ---- Agents
Agent = Annotated[
    list[str] | None,
    option(PANEL_AGENTS, "Agent HOST:PORT or dns:///NAME:PORT (repeatable).", "--agent"),
]
LocalAgents = Annotated[
    int, option(PANEL_AGENTS, "Without --agent: spawn this many agents on this machine.")
]
Workers = Annotated[int, option(PANEL_AGENTS, "Worker processes per agent (0: agent default).")]
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
    timeout: Timeout = None,
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
    # Agents
    agent: Agent = None,
    local_agents: LocalAgents = 1,
    workers: Workers = 0,
    start_lead: StartLead = 0.0,
    # Output and SLOs
    slo: Slo = None,
    name: Name = None,
    out: Out = Path("runs"),
    raw: Raw = True,
    quiet: Quiet = False,
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
    """Run one load test: plan, split over agents, start together, merge, report."""
    import uvloop

    from coordinator.agents import AgentError, resolve_agents
    from coordinator.local import LocalAgents, fresh_token, local_spool_dir, protect_workers
    from coordinator.metrics import parse_listen
    from coordinator.preflight import PreflightError
    from coordinator.progress import live_outputs
    from coordinator.run import RunOptions, execute
    from coordinator.rundir import new_run_dir
    from coordinator.slo import parse_slo
    from volley.cli.console import print_summary
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
        }
        _target_options(
            plan_file,
            overrides,
            tls,
            {"ca": tls_ca, "cert": tls_cert, "key": tls_key, "server_name": tls_server_name},
            header_file or [],
            header_env or [],
        )
        load_over: dict[str, Any] = {
            "rate": rate,
            "concurrency": concurrency,
            "arrival": arrival,
            "duration": duration,
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
        )
        for s in plan.slos:
            parse_slo(s)
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
        addrs: list[str], local: ClientSecurity | None = None, local_run_dir: Path | None = None
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
        )
        if local_run_dir is not None:  # local agents spool inside it (for volley collect)
            opts.at_start = protect_workers  # the coordinator below their workers
            opts.run_dir = local_run_dir
            opts.local_spools = {a: local_spool_dir(local_run_dir, i) for i, a in enumerate(addrs)}
        labels = {"name": plan.name, "model": plan.model, "target": plan.target}
        with live_outputs(show=not quiet, metrics_listen=metrics_port, labels=labels) as cb:
            opts.progress = cb
            return await execute(plan, addrs, opts)

    try:
        if addresses:
            result = uvloop.run(main(addresses))
        else:
            run_dir = new_run_dir(out, plan.name)
            token = security.token or fresh_token()  # no other local user drives them
            with LocalAgents(local_agents, workers, token=token, run_dir=run_dir) as addrs:
                result = uvloop.run(main(addrs, ClientSecurity(token=token), run_dir))
    except (PreflightError, AgentError, PlanError) as exc:
        fail(str(exc))
    summary = result.summary
    if quiet:
        typer.echo(str(result.run_dir))
    else:
        print_summary(summary, result.run_dir)
    verdict = summary["verdict"]
    if not verdict["valid"] or not verdict["slo_passed"]:
        raise typer.Exit(EXIT_FAILED)
