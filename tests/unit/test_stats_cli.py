"""The statistics options of `volley run`: bad values are one line (exit 2); the exit code
of outcomes; --repeat's seeds."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from volley.cli import app
from volley.cli.run import exit_code, repeated_plan
from volley.plan import plan_from_dict


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--duration", "auto", "--stages", "1s:10"], "--duration auto"),
        (["--duration", "auto", "--max-duration", "banana"], "--max-duration"),
        (["--confidence", "1.5"], "--confidence"),
        (["--repeat", "0"], "--repeat"),
        (["--repeat-seed", "x"], "--repeat-seed"),
        (["--target-width", "0"], "--target-width"),
    ],
)
def test_bad_statistics_options(args: list[str], names: str) -> None:
    res = CliRunner().invoke(
        app, ["run", "--target", "127.0.0.1:1", "--model", "m", "--rate", "10", *args]
    )
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and names in res.output and "Traceback" not in res.output


def _s(valid: bool, outcome: str) -> Any:
    return {"verdict": {"valid": valid, "slo_passed": outcome == "pass", "slo_outcome": outcome}}


def test_exit_code_is_the_worst_outcome() -> None:
    assert exit_code([_s(True, "pass")]) == 0
    assert exit_code([_s(True, "pass"), _s(True, "inconclusive")]) == 3
    assert exit_code([_s(True, "inconclusive"), _s(True, "fail")]) == 1
    assert exit_code([_s(False, "pass")]) == 1
    # a summary written before outcomes existed
    assert exit_code([{"verdict": {"valid": True, "slo_passed": False}}]) == 1


def test_repeats_use_fresh_or_same_seeds() -> None:
    plan = plan_from_dict({"target": "127.0.0.1:1", "model": "m", "seed": 41, "load": {"rate": 5}})
    assert [repeated_plan(plan, i, "fresh").seed for i in range(3)] == [41, 42, 43]
    assert {repeated_plan(plan, i, "same").seed for i in range(3)} == {41}
