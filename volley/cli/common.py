"""What every command shares: the exit codes and the one `fail()`.

Exit codes: 0 success (every SLO passed), 1 an SLO or validity check failed, 2 bad usage
or input, 3 an SLO was inconclusive (its confidence interval straddles the threshold, or
too few requests to bound it) and none failed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, NoReturn

import typer

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCONCLUSIVE = 0, 1, 2, 3


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """One line on stderr (`volley: error: ...`) and the exit code; never a traceback."""
    typer.echo(f"volley: error: {message}", err=True)
    raise typer.Exit(code)


def check_writable_dir(path: Path, what: str, named: Path | None = None) -> None:
    """`path` is a folder volley can write in, or one it can create: fail() naming the
    option (and `named`, else `path`) otherwise -- a file in the way, no permission, a
    read-only file system -- before anything is sent. Creates nothing."""
    shown_path = named or path
    where = path
    while not where.exists():
        if where.is_symlink():  # a dangling link: mkdir would fail on it
            fail(f"{what} {shown_path}: {where} is a broken symbolic link")
        if where.parent == where:
            break
        where = where.parent
    if not where.is_dir():
        which = "it is" if where == shown_path else f"{where} is"
        fail(f"{what} {shown_path}: {which} a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:
        fail(f"{what} {shown_path}: cannot write in {where} ({exc.strerror or exc})")


def kv(items: list[str] | None, what: str) -> dict[str, str]:
    """NAME=VALUE options into a dict; a malformed item is a usage error naming `what`."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"{what}: expected NAME=VALUE, got {item!r}")
        out[key] = value
    return out


# --help panels (Typer's rich_help_panel), shared so commands group alike
PANEL_TARGET = "Target and protocol"
PANEL_LOAD = "Load"
PANEL_INPUTS = "Inputs"
PANEL_AGENTS = "Agents"
PANEL_OUTPUT = "Output"
PANEL_MONITOR = "Monitoring"
PANEL_SECURITY = "Security"


def option(panel: str, help: str, *decls: str) -> Any:
    """A typer.Option shown under `panel` in --help (decls: explicit names, e.g. "--input")."""
    return typer.Option(*decls, help=help, rich_help_panel=panel)
