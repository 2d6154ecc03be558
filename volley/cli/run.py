"""`volley run`: plan one load, run it over the agents, write the run directory."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from volley.cli.common import EXIT_FAILED, fail, kv
from volley.cli.planning import _target_options, build_plan, parse_stages
from volley.plan import (
    PlanError,
    plan_from_dict,
)


def run(
    plan_file: Annotated[
        Path | None, typer.Argument(help="Plan YAML (options below override it).")
    ] = None,
    target: Annotated[str | None, typer.Option(help="Inference server HOST:PORT (gRPC).")] = None,
    model: Annotated[str | None, typer.Option(help="Model name on the server.")] = None,
    model_version: Annotated[
        str | None, typer.Option(help="Model version (default: latest).")
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Open loop: requests per second (total).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Closed loop: requests in flight (total).")
    ] = None,
    arrival: Annotated[str | None, typer.Option(help="constant | poisson | trace.")] = None,
    duration: Annotated[str | None, typer.Option(help="Load duration, e.g. 30s, 2m.")] = None,
    warmup: Annotated[str | None, typer.Option(help="Sent but excluded from results.")] = None,
    stages: Annotated[
        str | None,
        typer.Option(
            help="Ramps, e.g. '10s:100,20s:400' (rate, or concurrency with --concurrency)."
        ),
    ] = None,
    trace: Annotated[
        Path | None,
        typer.Option(help="Replay arrivals from a file (one timestamp or gap per line)."),
    ] = None,
    trace_format: Annotated[str, typer.Option(help="timestamps | gaps.")] = "timestamps",
    trace_unit: Annotated[str, typer.Option(help="s | ms | us | ns.")] = "s",
    trace_speed: Annotated[float, typer.Option(help="Replay speed factor.")] = 1.0,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            help="Open loop: per-agent in-flight cap (late past it, dropped past the backlog)."
        ),
    ] = None,
    agent: Annotated[
        list[str] | None,
        typer.Option("--agent", help="Agent HOST:PORT or dns:///NAME:PORT (repeatable)."),
    ] = None,
    local_agents: Annotated[
        int, typer.Option(help="Without --agent: spawn this many agents on this machine.")
    ] = 1,
    workers: Annotated[
        int, typer.Option(help="Worker processes per agent (0: agent default).")
    ] = 0,
    input_: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="NAME=VALUE constant, NAME=random|zeros, or NAME=@DIR (files) / "
            "NAME=@FILE.json (perf_analyzer data) (repeatable).",
        ),
    ] = None,
    shape: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=DIMS, e.g. IMAGE=224x224x3, or varying: IMAGE=200..800x200..800x3 "
            "(repeatable)."
        ),
    ] = None,
    vary: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME.KEY=VALUE, KEY: shapes (224x224x3:3,480x640x3:1), pixels (50k..2M), "
            "aspect (0.5..2), dims, length, layout (repeatable; see README)."
        ),
    ] = None,
    batch_size: Annotated[
        str | None, typer.Option(help="Batch size per request: 8, 1..8 or 1:5|4:3|8:2.")
    ] = None,
    input_data: Annotated[
        str | None, typer.Option(help="perf_analyzer-style JSON input data for its inputs.")
    ] = None,
    slo: Annotated[
        list[str] | None,
        typer.Option(
            help="e.g. 'p99<50ms', 'errors<0.1%', 'throughput>=0.98*offered' (repeatable)."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the schedule and inputs.")] = None,
    name: Annotated[
        str | None, typer.Option(help="Run name (in the run directory's name).")
    ] = None,
    timeout: Annotated[str | None, typer.Option(help="Per-request timeout, e.g. 10s.")] = None,
    out: Annotated[Path, typer.Option(help="Parent folder of run directories.")] = Path("runs"),
    raw: Annotated[bool, typer.Option(help="Write every request to requests.parquet.")] = True,
    start_lead: Annotated[float, typer.Option(help="Seconds from start command to start.")] = 2.0,
    quiet: Annotated[bool, typer.Option(help="Print only the run directory.")] = False,
    metrics_port: Annotated[
        str | None,
        typer.Option(help="Serve live figures for Prometheus on PORT or HOST:PORT (/metrics)."),
    ] = None,
    server_metrics: Annotated[
        str | None,
        typer.Option(
            help="Triton's metrics URL or HOST:PORT to scrape, or 'off' (default: found)."
        ),
    ] = None,
    server_stats: Annotated[
        bool, typer.Option(help="Sample the server's statistics and metrics (server.json).")
    ] = True,
    protocol: Annotated[
        str | None, typer.Option(help="grpc (default) or http (KServe v2 REST).")
    ] = None,
    transport: Annotated[
        str | None,
        typer.Option(
            help="gRPC: unary (one ModelInfer per request, volley's HTTP/2 client), stream "
            "(ModelStreamInfer) or grpcio (grpc.aio with tritonclient's service stubs)."
        ),
    ] = None,
    connections: Annotated[
        int | None, typer.Option(help="Connections to the target per agent worker.")
    ] = None,
    compression: Annotated[
        str | None, typer.Option(help="Request compression: none, gzip or deflate.")
    ] = None,
    tls: Annotated[bool, typer.Option("--tls", help="TLS to the target.")] = False,
    tls_ca: Annotated[str | None, typer.Option(help="CA bundle (PEM) for the target.")] = None,
    tls_cert: Annotated[str | None, typer.Option(help="Client certificate (PEM).")] = None,
    tls_key: Annotated[str | None, typer.Option(help="Client key (PEM).")] = None,
    tls_server_name: Annotated[
        str | None, typer.Option(help="Server name to verify instead of the target host.")
    ] = None,
    header_file: Annotated[
        list[str] | None,
        typer.Option(help="File of 'Name: value' request headers, read where requests are sent."),
    ] = None,
    header_env: Annotated[
        list[str] | None,
        typer.Option(help="NAME=ENVVAR: header NAME from environment variable ENVVAR."),
    ] = None,
    token_file: Annotated[
        str | None, typer.Option(help="File holding the agents' token (or env VOLLEY_TOKEN).")
    ] = None,
    agent_tls_ca: Annotated[
        str | None,
        typer.Option(help="Control plane: talk TLS to agents, verifying them with this CA."),
    ] = None,
    agent_tls_cert: Annotated[
        str | None, typer.Option(help="Control plane: client certificate (mTLS to agents).")
    ] = None,
    agent_tls_key: Annotated[
        str | None, typer.Option(help="Control plane: client key (mTLS to agents).")
    ] = None,
) -> None:
    """Run one load test: plan, split over agents, start together, merge, report."""
    import uvloop

    from coordinator.agents import AgentError, resolve_agents
    from coordinator.local import LocalAgents
    from coordinator.metrics import parse_listen
    from coordinator.preflight import PreflightError
    from coordinator.progress import live_outputs
    from coordinator.run import RunOptions, execute
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
        if plan.seed == 0 and seed is None and not (plan_file and "seed" in plan_file.read_text()):
            import secrets

            plan = plan_from_dict({**plan.to_dict(), "seed": secrets.randbits(32)})
        addresses = resolve_agents(list(agent or []))
        if metrics_port is not None:
            parse_listen(metrics_port)
        if local_agents < 1 and not addresses:
            raise PlanError("--local-agents must be >= 1 when no --agent is given")
    except PlanError as exc:
        fail(str(exc))

    stop_event: asyncio.Event | None = None

    async def main(addrs: list[str], local: bool = False) -> Any:
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
            # local agents listen on loopback in plaintext (with the token, if one is given)
            security=ClientSecurity(token=security.token) if local else security,
        )
        labels = {"name": plan.name, "model": plan.model, "target": plan.target}
        with live_outputs(show=not quiet, metrics_listen=metrics_port, labels=labels) as cb:
            opts.progress = cb
            return await execute(plan, addrs, opts)

    try:
        if addresses:
            result = uvloop.run(main(addresses))
        else:
            with LocalAgents(local_agents, workers, token=security.token) as addrs:
                result = uvloop.run(main(addrs, local=True))
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
