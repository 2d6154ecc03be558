"""The command line as a person meets it: --help on every command, the terminal summary at
80 columns and in a log, and where a run's seed comes from."""

from __future__ import annotations

import inspect
import io
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from coordinator.affinity import plan_affinity
from coordinator.aggregate import Aggregator
from coordinator.clock import ClockEstimate
from coordinator.stats.documents import unavailable_server
from coordinator.summary import AgentInfo, build_summary
from volley import records as rc
from volley.cli import app
from volley.cli.console import print_summary
from volley.cli.planning import build_plan
from volley.cli.sweep import build_spec, sweep_cmd
from volley.plan import PlanError, plan_from_dict
from volley.records import RecordBuffer

ANSI = re.compile(r"\x1b\[")
BOX_DRAWING = re.compile(r"[\u2500-\u257f]")


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
        "JSON service (--protocol json)",
        "Load",
        "Inputs",
        "Sequences and composed models",
        "Agents",
        "Output and SLOs",
        "Statistics",
        "Monitoring",
        "Security",
    ]


# ---- the terminal summary -------------------------------------------------------------


def _block(n: int, lat_ns: int) -> Any:
    buf = RecordBuffer(n)
    for i in range(n):
        t = i * 10_000_000
        status = rc.OK if i < n - 5 else 14
        size = (64, 4_000, 32_000)[i % 3]
        buf.append(i, t, t + 50_000, t + lat_ns + i * 1000, status, size, 32, 1, 0)
    return buf.take(["16"])


def _summary(agent_id: str = "loadgen-host-{i}-12345") -> dict[str, Any]:
    """A summary as a run builds it: two agents, three request sizes, an SLO, a note."""
    plan = plan_from_dict(
        {
            "name": "nightly-capacity",
            "target": "triton-inference.prod.example.com:8001",
            "model": "resnet50_onnx_v2",
            "load": {"rate": 100, "duration": "4s", "warmup": "1s"},
            "slos": ["p99<5ms", "errors<0.1%"],
        }
    )
    agg = Aggregator(2, warmup_ns=1_000_000_000)
    infos = []
    for i in range(2):
        agg.ingest(i, _block(400, 2_000_000 * (i + 1)))
        clock = ClockEstimate(12_345 * (i + 1), 90_000, 180_000, 10)
        infos.append(
            AgentInfo(
                i,
                f"10.0.0.{i + 11}:7070",
                id=agent_id.format(i=i),
                workers=16,
                clock=clock,
                state="done",
                cpu_seconds=3.2,
            )
        )
    server = {
        **unavailable_server("resnet50_onnx_v2", "other clients sent 12"),
        "available": True,
        "queue_ms": 0.41,
        "compute_infer_ms": 1.93,
    }
    summary = build_summary(plan, "run", agg, infos, 3.0, None, server=server)
    summary["requests"]["error_codes"] = {"UNAVAILABLE": 10}
    return summary


def _render(summary: dict[str, Any], terminal: bool) -> str:
    out = io.StringIO()
    con = Console(file=out, width=80, force_terminal=terminal, color_system=None)
    print_summary(summary, Path("/tmp/run"), con)
    return out.getvalue()


HEADERS = [
    ("p50", "p90", "p95", "p99", "p999", "max", "mean"),
    ("request size", "sent", "errors", "p50", "p99", "max"),
    ("agent", "state", "ok", "errors", "req/s", "p99 ms", "saturated"),
    ("agent", "workers", "late p99", "clock ±", "start skew", "CPU µs/req"),
]


@pytest.mark.parametrize("agent_id", ["loadgen-host-{i}-12345", "a{i}", "x" * 60 + "{i}"])
@pytest.mark.parametrize("terminal", [True, False])
def test_summary_fits_80_columns(agent_id: str, terminal: bool) -> None:
    text = _render(_summary(agent_id), terminal)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    assert "…" not in text, text
    for header in HEADERS:
        # each table's header row is one line with every header whole, in order
        pattern = r"\s+".join(re.escape(h) for h in header)
        assert any(re.search(pattern, line) for line in lines), (header, text)
    assert "results: /tmp/run" in lines[-1]


def test_summary_keeps_every_agent_figure() -> None:
    summary = _summary()
    text = _render(summary, False)
    a = summary["agents"][0]
    for figure in (
        f"{a['throughput_rps']:.1f}",
        f"{a['clock_offset_ms']:.2f}±{a['clock_uncertainty_ms']:.2f}",
        f"{a['start_skew_ms']:.2f}",
        f"{a['cpu_us_per_request']:.0f}",
        str(a["ok"]),
        str(a["workers"]),
    ):
        assert figure in text, (figure, text)


def test_summary_in_a_log_is_plain() -> None:
    """Not a terminal (piped, redirected, CI): no escape codes, no box drawing."""
    text = _render(_summary(), False)
    assert not ANSI.search(text) and not BOX_DRAWING.search(text), text
    assert "FAIL" in text or "PASS" in text


def test_report_piped_is_plain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "summary.json").write_text(json.dumps(_summary()))
    res = CliRunner().invoke(app, ["report", "--no-html", str(tmp_path)], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    assert not ANSI.search(res.output) and not BOX_DRAWING.search(res.output), res.output
    assert "…" not in res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80


# ---- the seed -------------------------------------------------------------------------


@pytest.fixture
def randbits(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr("secrets.randbits", lambda bits: 4242)
    return 4242


PLAN_WITHOUT_SEED = """\
# reseeded nightly: no seed here on purpose
target: 127.0.0.1:8001
model: seed_classifier
load: {rate: 10}
inputs: [{name: SEED, source: constant, value: 1}]
"""


@pytest.mark.parametrize(
    ("text", "option", "expected"),
    [
        (PLAN_WITHOUT_SEED, None, "random"),
        (PLAN_WITHOUT_SEED + "seed: 0\n", None, 0),  # an explicit 0 is kept
        (PLAN_WITHOUT_SEED + "seed: 17\n", None, 17),
        (PLAN_WITHOUT_SEED + "seed: 17\n", 0, 0),  # the option wins
        (PLAN_WITHOUT_SEED, 5, 5),
    ],
)
def test_seed_given_is_read_from_the_plan(
    tmp_path: Path, randbits: int, text: str, option: int | None, expected: Any
) -> None:
    f = tmp_path / "plan.yaml"
    f.write_text(text)
    plan = build_plan(f, {"seed": option}, {}, {}, {})
    assert plan.seed == (randbits if expected == "random" else expected)


def test_no_plan_file_no_seed_is_random(randbits: int) -> None:
    plan = build_plan(None, {"target": "127.0.0.1:1", "model": "m"}, {"rate": 1}, {}, {})
    assert plan.seed == randbits


def test_run_command_plans_a_random_seed(
    tmp_path: Path, randbits: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`volley run` itself: the plan that reaches the agents carries the random seed."""
    import coordinator.local
    import coordinator.preflight
    import coordinator.run

    seen: list[Any] = []

    async def fake_preflight(plan: Any) -> Any:  # the CLI's own, before local agents
        return None

    async def fake_execute(plan: Any, addrs: list[str], opts: Any) -> Any:
        seen.append(plan)
        raise PlanError("stopped by the test")

    class fake_local:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.affinity = plan_affinity([], 1, 1)

        def __enter__(self) -> list[str]:
            return ["127.0.0.1:1"]

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(coordinator.run, "execute", fake_execute)
    monkeypatch.setattr(coordinator.local, "LocalAgents", fake_local)
    monkeypatch.setattr(coordinator.preflight, "preflight_check", fake_preflight)
    f = tmp_path / "plan.yaml"
    f.write_text(PLAN_WITHOUT_SEED)
    res = CliRunner().invoke(app, ["run", str(f), "--quiet", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "stopped by the test" in res.output, res.output
    assert [p.seed for p in seen] == [randbits]
    seen.clear()
    f.write_text(PLAN_WITHOUT_SEED + "seed: 0\n")
    CliRunner().invoke(app, ["run", str(f), "--quiet", "--out", str(tmp_path)])
    assert [p.seed for p in seen] == [0]


def _sweep_args(**kw: Any) -> dict[str, Any]:
    skip = {"resume", "out", "json_", "quiet"}
    args = {
        n: p.default for n, p in inspect.signature(sweep_cmd).parameters.items() if n not in skip
    }
    return {**args, **kw}


@pytest.mark.parametrize(("extra", "expected"), [("", "random"), ("seed: 0\n", 0)])
def test_sweep_seed_given_is_read_from_the_plan(
    tmp_path: Path, randbits: int, extra: str, expected: Any
) -> None:
    f = tmp_path / "plan.yaml"
    f.write_text(PLAN_WITHOUT_SEED + extra)
    spec = build_spec(**_sweep_args(file=f, slo=["p99<50ms"]))
    assert spec.plan.seed == (randbits if expected == "random" else expected)
