"""`volley agent`: serve the control plane and fire at the targets plans name."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Annotated

import typer

from volley.cli.common import PANEL_SECURITY, check_writable_dir, fail, option
from volley.plan import (
    PlanError,
    parse_address,
    parse_duration,
)

SERVE = "Serving"
LIMITS = "Limits"
SPOOL = "Spool"


def agent(
    listen: Annotated[
        str, option(SERVE, "HOST:PORT to serve the control plane on (loopback by default).")
    ] = "127.0.0.1:7070",
    workers: Annotated[int, option(SERVE, "Worker processes (default: one per core).")] = 0,
    agent_id: Annotated[str, option(SERVE, "Name shown in results (default host-pid).")] = "",
    coordinator_grace: Annotated[
        str, option(SERVE, "Stop a run whose coordinator is gone for this long.")
    ] = "5s",
    allow_target: Annotated[
        list[str] | None, option(LIMITS, "Only fire at these HOST:PORT targets (repeatable).")
    ] = None,
    max_rate: Annotated[float, option(LIMITS, "Refuse plans giving this agent more req/s.")] = 0.0,
    max_in_flight: Annotated[int, option(LIMITS, "Refuse plans above this in-flight cap.")] = 0,
    max_duration: Annotated[str, option(LIMITS, "Refuse plans longer than this (e.g. 1h).")] = "0",
    spool_dir: Annotated[
        str | None,
        option(
            SPOOL,
            "Where runs' records wait until the coordinator has them "
            "(default ~/.volley/spool, or env VOLLEY_SPOOL_DIR).",
        ),
    ] = None,
    spool_max_mb: Annotated[
        int, option(SPOOL, "Largest spool of one run, MiB (~18k records per MiB).")
    ] = 2048,
    token_file: Annotated[
        str | None,
        option(
            PANEL_SECURITY,
            "File holding the shared token callers must present (or env "
            "VOLLEY_TOKEN). Required to listen beyond loopback (or mTLS).",
        ),
    ] = None,
    tls_cert: Annotated[str | None, option(PANEL_SECURITY, "TLS certificate (PEM).")] = None,
    tls_key: Annotated[str | None, option(PANEL_SECURITY, "TLS private key (PEM).")] = None,
    tls_client_ca: Annotated[
        str | None,
        option(PANEL_SECURITY, "Require client certificates from this CA (mutual TLS)."),
    ] = None,
    header_secret: Annotated[
        list[str] | None,
        option(
            PANEL_SECURITY,
            "NAME=env:VAR or NAME=file:PATH: a header secret read now, at start; plans "
            "name it (headers: [{name: ..., secret: NAME}]) and never see it (repeatable).",
        ),
    ] = None,
    port_file: Annotated[str, typer.Option(hidden=True)] = "",
) -> None:
    """Run an agent: receives plan slices from a coordinator and fires them at the target."""
    import os

    import uvloop

    from agent.config import AgentConfig, AgentLimits
    from agent.server import serve
    from volley.security import SecurityError, load_server_tls, read_token
    from volley.target import read_header_secrets

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
        secrets = read_header_secrets(header_secret or [])
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
        header_secrets=tuple(secrets.items()),
    )
    if spool_dir:
        base = dataclasses.replace(base, spool_dir=spool_dir)
    cfg = dataclasses.replace(base, agent_id=agent_id) if agent_id else base
    check_writable_dir(Path(cfg.spool_dir), "--spool-dir" if spool_dir else "spool folder")
    if port_file:
        check_writable_dir(Path(port_file).parent, "--port-file", named=Path(port_file))
    logging.getLogger("volley").setLevel(logging.INFO)
    try:
        uvloop.run(serve(cfg))
    except SecurityError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"agent cannot start: {exc}")
