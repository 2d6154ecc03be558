"""Each reported bad input, one test each: a one-line `volley: error:` and exit 2, never
a traceback, and the files a user gave are left as they were. (The agent's cases --
huge or non-integer dims, unknown datatypes, a 100 kB value -- are in
test_fuzz_control.py, against a real agent.)"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.unit.test_fuzz_cli import MANIFEST, PLAN_BYTES, check_result
from tests.unit.test_report import _run_dir
from volley.cli import app

BINARY = bytes(range(256)) * 8  # not UTF-8 from byte 128 on
RUNNER = CliRunner()


def _error(argv: list[str], *needles: str, env: dict[str, str] | None = None) -> str:
    res: Result = RUNNER.invoke(app, argv, env=env)
    check_result(res)
    assert res.exit_code == 2, res.output
    line = res.stderr.strip()
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    p = tmp_path / "plan.yaml"
    p.write_bytes(PLAN_BYTES)
    return p


def _run(plan: Path, out: Path, *extra: str) -> list[str]:
    # 127.0.0.1:1 refuses at once: if a check were missing, the run would stop there
    return ["run", str(plan), "--agent", "127.0.0.1:1", "--out", str(out), *extra]


def test_binary_plan_file(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_bytes(BINARY)
    line = _error(_run(tmp_path / "p.yaml", tmp_path), "plan file", "not UTF-8 text")
    assert (
        line == f"volley: error: plan file {tmp_path / 'p.yaml'}: not UTF-8 text (byte 128 is 0x80)"
    )
    _error(_run(tmp_path / "p.yaml", tmp_path, "--tls"), "not UTF-8 text")  # read for --tls too


def test_binary_trace_file(tmp_path: Path, plan: Path) -> None:
    (tmp_path / "t.txt").write_bytes(BINARY)
    _error(_run(plan, tmp_path, "--trace", str(tmp_path / "t.txt")), "trace file", "not UTF-8")
    _error(_run(plan, tmp_path, "--trace", str(tmp_path)), "trace file", "Is a directory")


def test_out_is_a_file(tmp_path: Path, plan: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("kept")
    _error(_run(plan, f), f"--out {f}: it is a file, not a folder")
    assert f.read_text() == "kept"


def test_out_unwritable(tmp_path: Path, plan: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("kept")
    # under a file: no folder can ever be made there, whoever runs the test
    _error(_run(plan, f / "sub" / "runs"), f"--out {f}/sub/runs: {f} is a file, not a folder")
    if Path("/proc/self").is_dir():  # a file system that takes no new files, even from root
        _error(
            _run(plan, Path("/proc/volley-runs")), "--out /proc/volley-runs: cannot write in /proc"
        )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_out_read_only_folder(tmp_path: Path, plan: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        _error(_run(plan, ro / "runs"), "cannot write in", "Permission denied")
    finally:
        ro.chmod(0o700)


def _malformed_summaries() -> list[tuple[str, str]]:
    good = json.dumps({"requests": {"scheduled": 1}})
    return [
        (good[: len(good) // 2], "not valid JSON"),  # truncated
        ('{"requests": {"sent": "12"}}', "requests.sent holds '12', not an integer"),
        ('{"requests": {}, "verdict": {"slo": [{"passed": 1}]}}', "verdict.slo[0].passed"),
        ('{"requests": {}}', "requests.scheduled is missing"),
        ('{"requests": {}, "latency_ms": {"p50": NaN}}', "not finite"),
        ("\udcff".encode("utf-8", "surrogateescape").decode("latin-1"), "not UTF-8"),
        ("[1, 2]", "is not a volley summary"),
    ]


@pytest.mark.parametrize(("text", "why"), _malformed_summaries())
def test_report_and_compare_malformed_summary(tmp_path: Path, text: str, why: str) -> None:
    good = _run_dir(tmp_path, "good", 9.0, 2.0)
    bad = shutil.copytree(good, tmp_path / "bad")
    (bad / "summary.json").write_bytes(text.encode("latin-1"))
    before = {p.name: p.read_bytes() for p in bad.iterdir()}
    _error(["report", str(bad)], str(bad / "summary.json"), why)
    _error(["compare", str(good), str(bad), "--out", str(tmp_path / "c.html")], why)
    assert {p.name: p.read_bytes() for p in bad.iterdir()} == before  # nothing lost
    assert not (tmp_path / "c.html").exists()


def test_report_run_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    _error(["report", str(tmp_path / "f")], "is not a run directory")
    d = tmp_path / "d"
    (d / "summary.json").mkdir(parents=True)  # a folder where the file should be
    _error(["report", str(d)], "is not a run directory (no summary.json)")
    _error(["compare", str(d), str(d)], "is not a run directory")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("histograms.json", b'{"latency": {"bins": "x"}}'),
        ("histograms.json", BINARY),
        ("server.json", b'{"target": 5}'),
        ("timeseries.parquet", b"PAR1 not parquet"),
        ("plan.yaml", BINARY),
        ("plan.yaml", b"load: [1, 2"),
    ],
)
def test_report_malformed_side_file_is_a_note(tmp_path: Path, name: str, content: bytes) -> None:
    """Only summary.json is required: a malformed other file is said on the page, and the
    report of everything else is still drawn (exit 0)."""
    d = _run_dir(tmp_path, "r", 9.0, 2.0)
    (d / name).write_bytes(content)
    res = RUNNER.invoke(app, ["report", str(d), "--csv", str(tmp_path / "r.csv")])
    check_result(res)
    assert res.exit_code == 0, res.output
    assert f"{name} unreadable" in (d / "report.html").read_text()
    for name in ("histograms.json", "timeseries.parquet"):  # the folder: a folder
        (d / name).unlink()
        (d / name).mkdir()
    assert RUNNER.invoke(app, ["report", str(d)]).exit_code == 0


def test_sweep_bad_files(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_bytes(BINARY)
    _error(["sweep", str(tmp_path / "s.yaml")], "sweep file", "not UTF-8 text")
    (tmp_path / "s.yaml").write_text(
        "sweep: {start: 1, 3: x}\ntargets: [{address: '127.0.0.1:1'}]\n"
    )
    _error(["sweep", str(tmp_path / "s.yaml")], "sweep: key 3 is not a name")
    (tmp_path / "s.yaml").write_text("capacity: {production_rate: 1, headroom: null}\n")
    _error(
        ["sweep", str(tmp_path / "s.yaml"), "--target", "127.0.0.1:1", "--model", "m"], "--headroom"
    )
    (tmp_path / "s.yaml").write_text("sweep: {max_steps: .inf}\n")
    _error(
        ["sweep", str(tmp_path / "s.yaml"), "--target", "127.0.0.1:1", "--model", "m"],
        "sweep.max_steps",
    )
    f = tmp_path / "afile"
    f.write_text("x")
    _error(["sweep", "--target", "127.0.0.1:1", "--model", "m", "--out", str(f)], "--out")


@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        (BINARY, "not UTF-8 text"),
        (b'{"run_id": "abc", "agents": [', "not valid JSON"),
        (json.dumps({**MANIFEST, "agents": [5]}).encode(), "agents[0]: expected an object"),
        (json.dumps({**MANIFEST, "agents": [{"index": "0"}]}).encode(), "agents[0]: index"),
        (
            json.dumps({**MANIFEST, "agents": [{"clock": {"offset_ns": 1.5}}]}).encode(),
            "clock.offset_ns",
        ),
        (json.dumps({**MANIFEST, "span_s": "2s"}).encode(), "span_s"),
    ],
)
def test_collect_malformed_run_json(tmp_path: Path, manifest: bytes, why: str) -> None:
    (tmp_path / "run.json").write_bytes(manifest)
    (tmp_path / "plan.yaml").write_bytes(PLAN_BYTES)
    _error(["collect", str(tmp_path)], "run.json", why, env={"VOLLEY_TOKEN": ""})
    assert (tmp_path / "run.json").read_bytes() == manifest


def test_collect_binary_plan_and_a_file_for_a_run_dir(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps(MANIFEST))
    (tmp_path / "plan.yaml").write_bytes(BINARY)
    _error(["collect", str(tmp_path)], "plan.yaml", "not UTF-8 text", env={"VOLLEY_TOKEN": ""})
    _error(["collect", str(tmp_path / "run.json")], "is not a run directory")


def test_certs_out_unwritable(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    _error(["certs", "--out", str(f / "sub")], f"--out {f}/sub: {f} is a file, not a folder")
    _error(["certs", "--out", str(f)], f"--out {f}: it is a file, not a folder")


def test_agent_bad_options(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    _error(["agent", "--listen", "nonsense"], "--listen: expected HOST:PORT")
    _error(["agent", "--listen", "127.0.0.1:99999"], "--listen: port out of range")
    _error(["agent", "--allow-target", "10.0.0.1"], "--allow-target: expected HOST:PORT")
    _error(["agent", "--allow-target", "h:" + "9" * 5000], "--allow-target: port")
    _error(["agent", "--spool-dir", str(f / "s")], f"--spool-dir {f}/s: {f} is a file")
    _error(["agent", "--port-file", str(f / "p")], f"--port-file {f}/p: {f} is a file")
    (tmp_path / "token").write_bytes(BINARY)
    _error(["agent", "--token-file", str(tmp_path / "token")], "--token-file")


def test_triton_start_bad_model_repository(tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path / "state")]
    f = tmp_path / "afile"
    f.write_text("x")
    _error(["triton", "start", "--model-repository", str(f), *state], "is not a directory")
    _error(["triton", "start", "--model-repository", str(tmp_path / "nope"), *state], "nope")
    (tmp_path / "repo" / "m").mkdir(parents=True)
    (tmp_path / "repo" / "m" / "config.pbtxt").write_bytes(BINARY)
    repo = ["--model-repository", str(tmp_path / "repo")]
    _error(["triton", "start", *repo, *state], "config.pbtxt: not UTF-8 text")


def test_shown_cuts_what_it_quotes() -> None:
    from volley.shown import MAX_SHOWN, clipped, shown

    assert shown("x" * 100_000) == "'" + "x" * (MAX_SHOWN - 1) + "... (100000 characters)"
    assert shown(10**400) == "an integer of about 401 digits"
    assert shown(10**5000).startswith("an integer")  # repr() would raise past 4300 digits
    assert shown([10**5000]) == "a list"
    assert shown(b"\x00" * 1000).endswith("(1000 characters)")
    assert shown("short") == "'short'" and shown(2**64) == "18446744073709551616"
    assert clipped("a" * 300, 10) == "aaaaaaaaaa... (300 characters)"


def test_plan_datatypes_are_those_volley_builds() -> None:
    from volley.inputs import DTYPES
    from volley.plan import DATATYPES

    assert set(DATATYPES) == {*DTYPES, "BYTES"}
