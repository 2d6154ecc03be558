"""`volley`: the command line, and the one composition root.

CLI options -> typed config (Plan, AgentConfig, RunOptions) -> async serve()/execute().
Exit codes: 0 success, 1 an SLO or validity check failed, 2 bad usage or input.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from volley.plan import (
    Plan,
    PlanError,
    load_plan_yaml,
    parse_address,
    parse_duration,
    plan_from_dict,
)
from volley.version import __version__

app = typer.Typer(
    name="volley",
    help="Distributed load generator for NVIDIA Triton / KServe v2 inference servers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    typer.echo(f"volley: error: {message}", err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"volley {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    log_level: Annotated[
        str, typer.Option(help="Logging level (debug, info, warning).")
    ] = "warning",
) -> None:
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )


# ---------------------------------------------------------------- triton
try:
    from volley.cli_triton import triton_app

    app.add_typer(triton_app, name="triton")
except ImportError:  # pragma: no cover - the module ships with volley
    pass


# ---------------------------------------------------------------- sweep
try:
    from volley.cli_sweep import sweep_cmd

    app.command("sweep")(sweep_cmd)
except ImportError:  # pragma: no cover - the module ships with volley
    pass
# ---------------------------------------------------------------- certs, collect
from volley.cli_ops import certs as _certs  # noqa: E402
from volley.cli_ops import collect as _collect  # noqa: E402

app.command("certs")(_certs)
app.command("collect")(_collect)


# ---------------------------------------------------------------- agent
@app.command()
def agent(
    listen: Annotated[
        str, typer.Option(help="HOST:PORT to serve the control plane on (loopback by default).")
    ] = "127.0.0.1:7070",
    workers: Annotated[int, typer.Option(help="Worker processes (default: one per core).")] = 0,
    agent_id: Annotated[str, typer.Option(help="Name shown in results (default host-pid).")] = "",
    allow_target: Annotated[
        list[str] | None, typer.Option(help="Only fire at these HOST:PORT targets (repeatable).")
    ] = None,
    max_rate: Annotated[
        float, typer.Option(help="Refuse plans giving this agent more req/s.")
    ] = 0.0,
    max_in_flight: Annotated[int, typer.Option(help="Refuse plans above this in-flight cap.")] = 0,
    max_duration: Annotated[
        str, typer.Option(help="Refuse plans longer than this (e.g. 1h).")
    ] = "0",
    token_file: Annotated[
        str | None,
        typer.Option(
            help="File holding the shared token callers must present (or env "
            "VOLLEY_TOKEN). Required to listen beyond loopback (or mTLS)."
        ),
    ] = None,
    tls_cert: Annotated[str | None, typer.Option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[str | None, typer.Option(help="TLS private key (PEM).")] = None,
    tls_client_ca: Annotated[
        str | None, typer.Option(help="Require client certificates from this CA (mutual TLS).")
    ] = None,
    spool_dir: Annotated[
        str | None,
        typer.Option(
            help="Where runs' records wait until the coordinator has them "
            "(default ~/.volley/spool, or env VOLLEY_SPOOL_DIR)."
        ),
    ] = None,
    coordinator_grace: Annotated[
        str, typer.Option(help="Stop a run whose coordinator is gone for this long.")
    ] = "5s",
    spool_max_mb: Annotated[
        int, typer.Option(help="Largest spool of one run, MiB (~18k records per MiB).")
    ] = 2048,
    port_file: Annotated[str, typer.Option(hidden=True)] = "",
) -> None:
    """Run an agent: receives plan slices from a coordinator and fires them at the target."""
    import os

    import uvloop

    from agent.config import AgentConfig, AgentLimits
    from agent.server import serve
    from volley.security import SecurityError, load_server_tls, read_token

    try:
        parse_address(listen, "--listen")
        for t in allow_target or []:
            parse_address(t, "--allow-target")
        if max_rate < 0 or max_in_flight < 0:
            raise PlanError("--max-rate and --max-in-flight must be >= 0")
        limits = AgentLimits(
            max_rate=max_rate,
            max_in_flight=max_in_flight,
            max_duration_s=parse_duration(max_duration, "--max-duration"),
            allowed_targets=tuple(allow_target or ()),
        )
        if not 1 <= spool_max_mb <= 1024 * 1024:
            raise PlanError("--spool-max-mb: must be between 1 and 1048576")
        grace_s = parse_duration(coordinator_grace, "--coordinator-grace")
        if grace_s <= 0:
            raise PlanError("--coordinator-grace: must be > 0")
        token = read_token(token_file)
        tls = load_server_tls(tls_cert, tls_key, tls_client_ca)
    except (PlanError, SecurityError) as exc:
        fail(str(exc))
    if workers < 0:
        fail("--workers must be >= 0")
    base = AgentConfig(
        listen=listen,
        workers=workers or (os.cpu_count() or 1),
        limits=limits,
        port_file=port_file,
        token=token,
        tls=tls,
        coordinator_grace_s=grace_s,
        spool_max_bytes=spool_max_mb * 1024 * 1024,
    )
    if spool_dir:
        base = dataclasses.replace(base, spool_dir=spool_dir)
    cfg = dataclasses.replace(base, agent_id=agent_id) if agent_id else base
    logging.getLogger("volley").setLevel(logging.INFO)
    try:
        uvloop.run(serve(cfg))
    except SecurityError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"agent cannot start: {exc}")


# ---------------------------------------------------------------- run
def _kv(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{what}: expected NAME=VALUE, got {item!r}")
        out[key] = value
    return out


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def parse_stages(text: str, key: str) -> list[dict[str, Any]]:
    """'10s:100,20s:400' -> [{duration: 10s, rate: 100}, ...]."""
    out: list[dict[str, Any]] = []
    for part in text.split(","):
        dur, sep, target = part.strip().partition(":")
        if not sep:
            raise PlanError(f"--stages: expected DURATION:TARGET items, got {part.strip()!r}")
        try:
            value = float(target)
        except ValueError:
            raise PlanError(f"--stages: {target!r} is not a number") from None
        out.append({"duration": parse_duration(dur, "--stages duration"), key: value})
    return out


def resolve_trace(data: dict[str, Any]) -> None:
    """Read a plan's trace file into load.trace.times_ns (agents never read files)."""
    from volley.schedule import parse_trace

    trace = (data.get("load") or {}).get("trace")
    if not isinstance(trace, dict) or not trace.get("file") or trace.get("times_ns"):
        return
    path = Path(str(trace["file"]))
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlanError(f"trace file {path}: {exc.strerror}") from None
    try:
        times = parse_trace(
            text,
            trace.get("format", "timestamps"),
            trace.get("unit", "s"),
            float(trace.get("speed", 1.0)),
        )
    except ValueError as exc:
        raise PlanError(f"trace file {path}: {exc}") from None
    if times.size == 0:
        raise PlanError(f"trace file {path}: no arrivals")
    trace["times_ns"] = times.tolist()


VARY_FIELDS = ("dims", "shapes", "pixels", "aspect", "layout", "length")


def _apply_input_options(
    specs: dict[str, dict[str, Any]],
    inputs: dict[str, str],
    shapes: dict[str, str],
    vary: dict[str, str],
    input_data: str | None,
) -> None:
    """--input, --shape, --vary and --input-data onto the plan's input specs (options win)."""
    from volley.dist import DistError, parse_dims_pattern, parse_dist
    from volley.inputs import json_input_names

    if input_data:
        for name in json_input_names(input_data):
            spec = specs.setdefault(name, {"name": name})
            spec.update(source="json", path=input_data)
    for name, value in inputs.items():
        spec = specs.setdefault(name, {"name": name})
        if value in ("random", "zeros"):
            spec["source"] = value
        elif value.startswith("@"):
            path = value[1:]
            spec["source"] = "json" if path.lower().endswith(".json") else "files"
            spec["path"] = path
        else:
            spec["source"] = "constant"
            spec["value"] = _number(value)
    for name, shape in shapes.items():
        spec = specs.setdefault(name, {"name": name})
        for k in ("dims", "shapes", "pixels", "aspect", "shape"):
            spec.pop(k, None)
        try:
            dims = parse_dims_pattern(shape)
        except DistError as exc:
            raise PlanError(f"--shape {name}={shape}: {exc}") from None
        if all(parse_dist(d).kind == "fixed" for d in dims):
            try:
                spec["shape"] = [int(d) for d in dims]
            except ValueError:
                raise PlanError(f"--shape {name}={shape}: dims must be integers") from None
        else:
            spec["dims"] = dims
    for key, value in vary.items():
        name, dot, what = key.rpartition(".")
        if not dot or not name or what not in VARY_FIELDS:
            raise PlanError(
                f"--vary {key}={value}: expected NAME.KEY=VALUE with KEY one of "
                f"{', '.join(VARY_FIELDS)}"
            )
        spec = specs.setdefault(name, {"name": name})
        if what in ("dims", "shapes", "pixels"):
            for k in ("dims", "shapes", "pixels", "aspect", "shape"):
                spec.pop(k, None)
        spec[what] = [v for v in value.split(",") if v] if what == "shapes" else value


def build_plan(
    plan_file: Path | None,
    overrides: dict[str, Any],
    load_overrides: dict[str, Any],
    inputs: dict[str, str],
    shapes: dict[str, str],
    vary: dict[str, str] | None = None,
    input_data: str | None = None,
) -> Plan:
    """Merge a plan file with command-line options (options win) and validate."""
    data: dict[str, Any] = {}
    if plan_file is not None:
        try:
            text = plan_file.read_text()
        except OSError as exc:
            raise PlanError(f"plan file {plan_file}: {exc.strerror}") from None
        data = load_plan_yaml(text)
    for k, v in overrides.items():
        if v is not None:
            data[k] = v
    if not isinstance(data.get("load") or {}, dict):
        raise PlanError("load: expected a mapping")
    if not isinstance(data.get("inputs") or [], list):
        raise PlanError("inputs: expected a list")
    load = dict(data.get("load") or {})
    for k, v in load_overrides.items():
        if v is not None:
            load[k] = v
    if "concurrency" in load_overrides and load_overrides["concurrency"] is not None:
        load["mode"] = "closed"
    elif "rate" in load_overrides and load_overrides["rate"] is not None:
        load["mode"] = "open"
    data["load"] = load
    specs: dict[str, dict[str, Any]] = {}
    for i in data.get("inputs") or []:
        if isinstance(i, dict) and isinstance(i.get("name"), str):
            specs[i["name"]] = dict(i)
    _apply_input_options(specs, inputs, shapes, vary or {}, input_data)
    if specs:
        data["inputs"] = list(specs.values())
    resolve_trace(data)
    return plan_from_dict(data)


def _target_options(
    plan_file: Path | None,
    overrides: dict[str, Any],
    tls: bool,
    tls_fields: dict[str, str | None],
    header_files: list[str],
    header_envs: list[str],
) -> None:
    """TLS and header options into plan overrides (the values of headers stay out of it)."""
    from volley.target import parse_header_file, read_file_bytes

    given = {k: v for k, v in tls_fields.items() if v is not None}
    if tls or given:
        base: dict[str, Any] = {}
        if plan_file is not None:
            raw = load_plan_yaml(plan_file.read_text()).get("tls")
            base = dict(raw) if isinstance(raw, dict) else {}
        overrides["tls"] = {**base, "enabled": True, **given}
    headers: list[dict[str, str]] = []
    for path in header_files:
        text = read_file_bytes(path, "--header-file").decode("utf-8", "replace")
        headers += [
            {"name": h.name, "file": str(Path(path).resolve())}
            for h in parse_header_file(text, path)
        ]
    for item in header_envs:
        name, sep, env = item.partition("=")
        if not sep or not name or not env:
            raise PlanError(f"--header-env: expected NAME=ENVVAR, got {item!r}")
        headers.append({"name": name, "env": env})
    if headers:
        if plan_file is not None:
            raw_h = load_plan_yaml(plan_file.read_text()).get("headers")
            headers = [*(raw_h if isinstance(raw_h, list) else []), *headers]
        overrides["headers"] = headers


@app.command()
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
    from volley.console import print_summary
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
            _kv(input_, "--input"),
            _kv(shape, "--shape"),
            _kv(vary, "--vary"),
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


# ---------------------------------------------------------------- report
@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (runs/<time>-<name>).")],
    json_: Annotated[bool, typer.Option("--json", help="Print summary.json instead.")] = False,
    html: Annotated[bool, typer.Option(help="Re-render the run's report.html.")] = True,
    csv_out: Annotated[
        Path | None,
        typer.Option("--csv", help="Write perf_analyzer-style CSV (microseconds) to this file."),
    ] = None,
) -> None:
    """Show a finished run's results again (and re-render its report.html)."""
    from volley.cli_results import report_outputs
    from volley.console import print_summary

    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        fail(f"{run_dir} is not a run directory (no summary.json)")
    except (OSError, json.JSONDecodeError) as exc:
        fail(f"{path}: {exc}")
    if json_:
        typer.echo(json.dumps(summary, indent=2))
    else:
        print_summary(summary, run_dir)
    for line in report_outputs(run_dir, html, csv_out):
        typer.echo(line, err=json_)


from volley.cli_results import compare  # noqa: E402

app.command()(compare)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
