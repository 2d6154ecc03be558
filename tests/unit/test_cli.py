"""The command line as a person meets it: --help on every command."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from volley.cli import app

# ---- --help -----------------------------------------------------------------------------


def _commands() -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        out.append((" ".join(path), cmd))
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return out


COMMANDS = _commands()


def test_every_command_is_walked() -> None:
    names = {name for name, _ in COMMANDS}
    assert {"", "run", "sweep", "agent", "report", "triton start"} <= names


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=[n or "volley" for n, _ in COMMANDS])
def test_every_command_and_option_has_help(name: str, cmd: Any) -> None:
    assert (cmd.help or "").strip(), f"volley {name}: no help text"
    for p in cmd.params:
        if isinstance(p, typer.core.TyperOption) and not p.hidden:
            assert (p.help or "").strip(), f"volley {name} {p.opts[0]}: no help text"


@pytest.mark.parametrize("name", [n for n, _ in COMMANDS], ids=[n or "volley" for n, _ in COMMANDS])
def test_help_fits_80_columns(name: str) -> None:
    res = CliRunner().invoke(app, [*name.split(), "--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert "…" not in res.output, res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80


def test_run_help_panels() -> None:
    res = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "120"})
    panels = re.findall(r"╭─ (.+?) ─", res.output)
    assert panels == [
        "Arguments",
        "Options",
        "Target and protocol",
        "Load",
        "Inputs",
        "Agents",
        "Output and SLOs",
        "Monitoring",
        "Security",
    ]
