"""`volley certs` and `volley collect`: a test fleet's TLS material, and recovery of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from volley.cli.common import check_writable_dir, fail


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

    check_writable_dir(out, "--out")
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


def _check_run_dir(run_dir: Path) -> None:
    """What `volley collect` reads before it calls any agent -- run.json (the agents,
    their slots and clocks) and plan.yaml -- is text of the right shape; PlanError
    naming the file otherwise."""
    import json

    from volley.cli.planning import read_text_file
    from volley.plan import PlanError, load_plan_yaml, plan_from_dict

    if not run_dir.is_dir():
        raise PlanError(f"{run_dir} is not a run directory")
    if not (run_dir / "run.json").is_file():
        return  # collect_run says so
    text = read_text_file(run_dir / "run.json", "run manifest")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(f"{run_dir / 'run.json'}: not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError):
        raise PlanError(f"{run_dir / 'run.json'}: too deep, or a number too long") from None
    agents = manifest.get("agents") if isinstance(manifest, dict) else None
    for i, a in enumerate(agents if isinstance(agents, list) else []):
        why = _agent_entry_problem(a)
        if why:
            raise PlanError(f"{run_dir / 'run.json'}: agents[{i}]: {why}")
    if isinstance(manifest, dict):
        span = manifest.get("span_s")
        if span is not None and (isinstance(span, bool) or not isinstance(span, int | float)):
            raise PlanError(f"{run_dir / 'run.json'}: span_s: expected a number")
    if (run_dir / "plan.yaml").is_file():
        try:
            plan_from_dict(load_plan_yaml(read_text_file(run_dir / "plan.yaml", "plan file")))
        except PlanError as exc:
            raise PlanError(f"{run_dir / 'plan.yaml'}: {exc}") from None


def _agent_entry_problem(a: object) -> str | None:
    if not isinstance(a, dict):
        return "expected an object"
    for key in ("index", "workers", "cores"):
        v = a.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**31:
            return f"{key}: expected a non-negative integer"
    for key in ("address", "id", "host"):
        if not isinstance(a.get(key, ""), str):
            return f"{key}: expected a string"
    clock = a.get("clock")
    if clock:
        if not isinstance(clock, dict):
            return "clock: expected an object"
        for key in ("offset_ns", "uncertainty_ns", "rtt_ns", "samples"):
            v = clock.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or abs(v) >= 2**63:
                return f"clock.{key}: expected a 64-bit integer"
    return None


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
        _check_run_dir(run_dir)
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
        if sp.faults:
            kinds = ", ".join(f"{k}: {n}" for k, n in sp.faults.items())
            typer.echo(f"  dropped {sp.invalid} invalid records, ignored invalid events ({kinds})")
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
