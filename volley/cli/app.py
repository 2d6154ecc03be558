"""`volley`: the command line, and the one composition root.

Every command group is its own module, registered here by plain imports (a broken module
fails loudly, it is never silently dropped). CLI options -> typed config (Plan,
AgentConfig, RunOptions) -> async serve()/execute(). Exit codes: volley/cli/common.py.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from volley.cli import agent as agent_cmd
from volley.cli import ops, results
from volley.cli import run as run_cmd
from volley.cli.sweep import sweep_cmd
from volley.cli.triton import triton_app
from volley.version import __version__

app = typer.Typer(
    name="volley",
    help="Distributed load generator for NVIDIA Triton / KServe v2 inference servers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


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


app.command("agent")(agent_cmd.agent)
app.command("run")(run_cmd.run)
app.command("report")(results.report)
app.command("compare")(results.compare)
app.command("sweep")(sweep_cmd)
app.add_typer(triton_app, name="triton")
app.command("certs")(ops.certs)
app.command("collect")(ops.collect)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
