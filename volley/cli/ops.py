"""`volley certs` and `volley collect`: a test fleet's TLS material, and recovery of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from volley.cli.common import fail


def certs(
    out: Annotated[Path, typer.Option(help="Folder to write the CA, certificates and token to.")],
    host: Annotated[
        list[str] | None,
        typer.Option(help="DNS name or IP the agents are reached by (repeatable)."),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 30,
    force: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
) -> None:
    """Generate a CA, an agent (server) and a coordinator (client) certificate, and a token."""
    from volley.certs import CertError, generate_fleet

    try:
        paths = generate_fleet(out, list(host or []), days=days, force=force)
    except CertError as exc:
        fail(str(exc))
    d = out
    typer.echo(f"wrote {', '.join(p.name for p in paths.values())} to {d}")
    typer.echo(
        f"agents:      volley agent --listen HOST:7070 --token-file {d}/token "
        f"--tls-cert {d}/agent.pem --tls-key {d}/agent.key --tls-client-ca {d}/ca.pem"
    )
    typer.echo(
        f"coordinator: volley run ... --token-file {d}/token --agent-tls-ca {d}/ca.pem "
        f"--agent-tls-cert {d}/client.pem --agent-tls-key {d}/client.key"
    )


def collect(
    run_dir: Annotated[Path, typer.Argument(help="The run directory to complete.")],
    agent: Annotated[
        list[str] | None,
        typer.Option(
            "--agent",
            help="Agent HOST:PORT to collect from (repeatable; default: the run's agents "
            "whose records may be incomplete; local agents' spool files are read from the "
            "run directory).",
        ),
    ] = None,
    token_file: Annotated[
        str | None, typer.Option(help="File holding the agents' token (or env VOLLEY_TOKEN).")
    ] = None,
    agent_tls_ca: Annotated[
        str | None, typer.Option(help="CA of the agents' certificates.")
    ] = None,
    agent_tls_cert: Annotated[str | None, typer.Option(help="Client certificate (mTLS).")] = None,
    agent_tls_key: Annotated[str | None, typer.Option(help="Client key (mTLS).")] = None,
    keep: Annotated[bool, typer.Option(help="Leave the spools on the agents.")] = False,
) -> None:
    """Recover records agents kept in their spools (after a coordinator or agent loss)."""
    import uvloop

    from coordinator.collect import CollectError, collect_run
    from coordinator.recovery import ManifestError
    from volley.plan import PlanError, parse_address
    from volley.security import SecurityError, load_client_security

    try:
        security = load_client_security(token_file, agent_tls_ca, agent_tls_cert, agent_tls_key)
        for a in agent or []:
            parse_address(a, "--agent")
        report = uvloop.run(
            collect_run(run_dir, list(agent) if agent else None, security, keep=keep)
        )
    except (SecurityError, ManifestError, CollectError, PlanError) as exc:
        fail(str(exc))
    for sp in report.agents:
        state, why = sp.state()
        typer.echo(
            f"agent {sp.address} (slot {sp.index}): {sp.records} records spooled, "
            f"ended {state}{': ' + why if why else ''}"
        )
        for note in sp.notes:
            typer.echo(f"  note: {note}")
    for why in report.failures.values():
        typer.echo(f"not collected: {why}", err=True)
    typer.echo(
        f"records: {report.records_before} in the run directory before, "
        f"{report.records_after} after ({report.recovered} recovered)"
    )
    s = report.summary
    if s is not None:
        req = s["requests"]
        typer.echo(
            f"measured {s['duration_s']:g} s (from the records): offered {s['offered_rps']:g}/s, "
            f"achieved {s['throughput_rps']:g}/s"
        )
        if "no_record" in req:
            typer.echo(
                f"scheduled {req['scheduled']} (the plan's schedule, measured period), "
                f"{req.get('recorded', 0)} recorded, {req['no_record']} with no record"
            )
    if report.discarded:
        typer.echo(f"spools released on {len(report.discarded)} agent(s)")
    typer.echo(f"results: {report.run_dir}")
