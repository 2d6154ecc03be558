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


def build_plan(
    plan_file: Path | None,
    overrides: dict[str, Any],
    load_overrides: dict[str, Any],
    inputs: dict[str, str],
    shapes: dict[str, str],
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
    for name, value in inputs.items():
        spec = specs.setdefault(name, {"name": name})
        if value in ("random", "zeros"):
            spec["source"] = value
        else:
            spec["source"] = "constant"
            spec["value"] = _number(value)
    for name, shape in shapes.items():
        spec = specs.setdefault(name, {"name": name})
        try:
            spec["shape"] = [int(d) for d in shape.lower().split("x")]
        except ValueError:
            raise PlanError(f"--shape {name}={shape}: expected dims like 1x224x224x3") from None
    if specs:
        data["inputs"] = list(specs.values())
    return plan_from_dict(data)


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
        typer.Option("--input", help="NAME=VALUE constant, or NAME=random|zeros (repeatable)."),
    ] = None,
    shape: Annotated[
        list[str] | None, typer.Option(help="NAME=DIMS, e.g. IMAGE=1x224x224x3 (repeatable).")
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
    token_file: Annotated[
        str | None, typer.Option(help="File holding the agents' token (or env VOLLEY_TOKEN).")
    ] = None,
    tls_ca: Annotated[
        str | None, typer.Option(help="Talk TLS to agents, verifying them with this CA.")
    ] = None,
    tls_cert: Annotated[str | None, typer.Option(help="Client certificate (mTLS).")] = None,
    tls_key: Annotated[str | None, typer.Option(help="Client key (mTLS).")] = None,
) -> None:
    """Run one load test: plan, split over agents, start together, merge, report."""
    import uvloop

    from coordinator.agents import AgentError, resolve_agents
    from coordinator.local import LocalAgents
    from coordinator.preflight import PreflightError
    from coordinator.run import RunOptions, execute
    from coordinator.slo import parse_slo
    from volley.console import print_summary
    from volley.security import ClientSecurity, SecurityError, load_client_security

    try:
        security = load_client_security(token_file, tls_ca, tls_cert, tls_key)
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
        }
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
        plan = build_plan(
            plan_file, overrides, load_over, _kv(input_, "--input"), _kv(shape, "--shape")
        )
        for s in plan.slos:
            parse_slo(s)
        if plan.seed == 0 and seed is None and not (plan_file and "seed" in plan_file.read_text()):
            import secrets

            plan = plan_from_dict({**plan.to_dict(), "seed": secrets.randbits(32)})
        addresses = resolve_agents(list(agent or []))
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
            # local agents listen on loopback in plaintext (with the token, if one is given)
            security=ClientSecurity(token=security.token) if local else security,
        )
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
) -> None:
    """Show a finished run's results again."""
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
