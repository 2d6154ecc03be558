"""Fuzzed files through the CLI entry points: plan files, trace files, a run directory's
files (summary.json, server.json, histograms.json, timeseries.parquet, plan.yaml,
run.json) and sweep YAML, as bytes. Every invocation ends with exit 0, 1 or 2; on 2,
stderr is exactly one `volley: error:` line; never a traceback.

Nothing here reaches a server or an agent: `volley run` and `volley sweep` stop where
the load would start (execute() is replaced), `volley collect` asks an agent address
that refuses at once (127.0.0.1:1).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from coordinator.preflight import PreflightError
from coordinator.rundir import write_json
from tests.unit.test_fuzz_plan import BASE, _mutate, _paths, values
from tests.unit.test_report import _run_dir
from tests.unit.test_server_stats import _monitored_run
from tests.unit.test_summary_document import _summary as full_summary
from volley.cli import app
from volley.cli import sweep as sweep_module
from volley.cli.common import fail

RUNNER = CliRunner()
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def check_result(res: Result) -> None:
    """Exit 0/1/2, no traceback, and a usage error is one `volley: error:` line."""
    exc = res.exception
    assert exc is None or isinstance(exc, SystemExit), f"{type(exc).__name__}: {exc}"
    assert res.exit_code in (0, 1, 2), (res.exit_code, res.output)
    assert "Traceback" not in res.output
    if res.exit_code == 2:
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("volley: error: "), res.stderr


def mangled(good: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes, or `good` cut short, or with a few bytes overwritten."""
    n = len(good)
    return st.one_of(
        st.binary(max_size=300),
        st.integers(0, n).map(lambda k: good[:k]),
        st.tuples(st.integers(0, max(n - 1, 0)), st.binary(min_size=1, max_size=6)).map(
            lambda t: good[: t[0]] + t[1] + good[t[0] + len(t[1]) :]
        ),
    )


def same_kind(value: object) -> st.SearchStrategy[Any]:
    """Another JSON value of the same kind as `value` (a loader passes it; readers must
    cope with any such value)."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(-(2**63) + 1, 2**63 - 1)
    if isinstance(value, float):
        return st.floats(allow_nan=False, allow_infinity=False)
    if isinstance(value, str):
        return st.text(max_size=30)
    if isinstance(value, list):
        return st.just([])
    if value is None:
        return st.none()
    return st.just({})


def leaf_paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in leaf_paths(v, (*prefix, k))] or [prefix]
    if isinstance(doc, list) and doc:
        return [p for i, v in enumerate(doc[:2]) for p in leaf_paths(v, (*prefix, i))]
    return [prefix]


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _workdir(base: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=base))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-cli")


@pytest.fixture
def no_load(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`volley run` / `volley sweep` get as far as the load, then stop with one line."""

    async def execute(*_: object, **__: object) -> NoReturn:
        raise PreflightError("fuzz: the load is not started")

    def execute_sweep(*_: object, **__: object) -> NoReturn:
        fail("fuzz: the sweep is not started")

    monkeypatch.setattr("coordinator.run.execute", execute)
    monkeypatch.setattr(sweep_module, "execute_sweep", execute_sweep)
    yield


# ---------------------------------------------------------------- plan files
PLAN = {**BASE, "target": "127.0.0.1:1", "agents": []}
PLAN_BYTES = yaml.safe_dump(PLAN).encode()
PATHS = _paths(PLAN)


def _run(plan: Path, out: Path, *extra: str) -> Result:
    argv = ["run", str(plan), "--agent", "127.0.0.1:1", "--out", str(out), "--quiet", *extra]
    return RUNNER.invoke(app, argv)


@FUZZ
@given(
    st.one_of(
        mangled(PLAN_BYTES),
        st.tuples(st.sampled_from(PATHS), values).map(
            lambda pv: yaml.safe_dump(_mutate(PLAN, *pv)).encode()
        ),
    )
)
def test_plan_files(base: Path, no_load: None, data: bytes) -> None:
    d = _workdir(base)
    (d / "plan.yaml").write_bytes(data)
    check_result(_run(d / "plan.yaml", d / "runs"))


# ---------------------------------------------------------------- trace files
TRACE_TEXT = st.text(alphabet="0123456789.-+eE#xinf \t\n", max_size=120).map(str.encode)


@FUZZ
@given(
    st.one_of(st.binary(max_size=200), TRACE_TEXT, mangled(b"0\n0.5\n1.25\n2\n")),
    st.sampled_from(["timestamps", "gaps"]),
    st.sampled_from(["s", "ms", "ns"]),
)
def test_trace_files(base: Path, no_load: None, data: bytes, fmt: str, unit: str) -> None:
    d = _workdir(base)
    plan = _mutate(PLAN, ("load", "trace"), None)
    (d / "plan.yaml").write_text(yaml.safe_dump(plan))
    (d / "trace.txt").write_bytes(data)
    extra = ["--trace", str(d / "trace.txt"), "--trace-format", fmt, "--trace-unit", unit]
    check_result(_run(d / "plan.yaml", d / "runs", *extra))


# ---------------------------------------------------------------- a run directory
RUN_FILES = ["summary.json", "server.json", "histograms.json", "timeseries.parquet", "plan.yaml"]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import asyncio

    d = _run_dir(tmp_path_factory.mktemp("good"), "good", 9.0, 2.0)
    write_json(d / "summary.json", full_summary())
    server, _, _ = asyncio.run(_monitored_run(1.5, 4.2))
    write_json(d / "server.json", server)
    (d / "plan.yaml").write_text(yaml.safe_dump(PLAN))
    return d


def _results(run: Path, out: Path, which: str = "both") -> list[Result]:
    """`volley report` (HTML and CSV) and/or `volley compare` of the run with itself."""
    out_of = {
        "report": ["report", str(run), "--csv", str(out / "r.csv")],
        "compare": ["compare", str(run), str(run), "--out", str(out / "c.html")],
    }
    return [RUNNER.invoke(app, argv) for what, argv in out_of.items() if which in (what, "both")]


COMMANDS = st.sampled_from(["report", "compare"])


@settings(FUZZ, max_examples=50)
@given(st.sampled_from(RUN_FILES), COMMANDS, st.data())
def test_run_dir_files_as_bytes(
    base: Path, good_run: Path, name: str, which: str, data: st.DataObject
) -> None:
    d = _workdir(base)
    run = shutil.copytree(good_run, d / "run")
    how = data.draw(st.sampled_from(["bytes", "bytes", "bytes", "missing", "a folder"]))
    (run / name).unlink()
    if how == "bytes":
        (run / name).write_bytes(data.draw(mangled((good_run / name).read_bytes())))
    elif how == "a folder":
        (run / name).mkdir()
    for res in _results(run, d, which):
        check_result(res)
        if name != "summary.json":  # only summary.json is required: the rest are notes
            assert res.exit_code == 0, res.output


@settings(FUZZ, max_examples=40)
@given(COMMANDS, st.data())
def test_summary_values_of_the_right_kind(
    base: Path, good_run: Path, which: str, data: st.DataObject
) -> None:
    """A summary whose values are each of the described kind, however odd (negative
    counts, empty names, huge floats), renders: the readers take what the loader lets
    through."""
    doc = json.loads((good_run / "summary.json").read_text())
    for path in data.draw(st.lists(st.sampled_from(leaf_paths(doc)), min_size=1, max_size=4)):
        value = data.draw(same_kind(_get(doc, path)))
        doc = _mutate(doc, path, value)
    d = _workdir(base)
    run = shutil.copytree(good_run, d / "run")
    (run / "summary.json").write_text(json.dumps(doc))
    for res in _results(run, d, which):
        check_result(res)


# ---------------------------------------------------------------- volley collect
MANIFEST = {
    "run_id": "abc123",
    "span_s": 2,
    "scheduled_total": 10,
    "agents": [
        {
            "index": 0,
            "address": "127.0.0.1:1",
            "id": "x",
            "workers": 1,
            "clock": {"offset_ns": 5, "uncertainty_ns": 1, "rtt_ns": 2, "samples": 16},
        }
    ],
}
MANIFEST_BYTES = json.dumps(MANIFEST).encode()


@FUZZ
@given(
    st.one_of(
        mangled(MANIFEST_BYTES),
        st.tuples(st.sampled_from(leaf_paths(MANIFEST)), values).map(
            lambda pv: json.dumps(_mutate(MANIFEST, *pv)).encode()
        ),
    ),
    st.one_of(st.just(PLAN_BYTES), mangled(PLAN_BYTES)),
)
def test_collect_run_json_and_plan(base: Path, manifest: bytes, plan: bytes) -> None:
    d = _workdir(base)
    (d / "run.json").write_bytes(manifest)
    (d / "plan.yaml").write_bytes(plan)
    res = RUNNER.invoke(
        app, ["collect", str(d), "--agent", "127.0.0.1:1"], env={"VOLLEY_TOKEN": ""}
    )
    check_result(res)
    assert res.exit_code == 2  # nothing can be collected from 127.0.0.1:1


# ---------------------------------------------------------------- sweep YAML
SWEEP = {
    "name": "s",
    "plan": {"model": "add", "load": {"max_in_flight": 64}, "slos": ["p99<50ms"]},
    "sweep": {"mode": "rate", "start": 10, "growth": 2, "max_steps": 3, "step_duration": "2s"},
    "targets": [{"name": "a", "address": "127.0.0.1:1"}],
    "capacity": {"production_rate": 100, "headroom": 0.3},
    "scale_check": {"target": "127.0.0.1:2", "replicas": 2},
}
SWEEP_BYTES = yaml.safe_dump(SWEEP).encode()


def _sweep_mutation(pv: tuple[tuple[Any, ...], Any]) -> bytes:
    return yaml.safe_dump(_mutate(SWEEP, *pv)).encode()


@FUZZ
@given(
    st.one_of(
        mangled(SWEEP_BYTES),
        st.tuples(st.sampled_from(leaf_paths(SWEEP)), values).map(_sweep_mutation),
    )
)
def test_sweep_files(base: Path, no_load: None, data: bytes) -> None:
    d = _workdir(base)
    (d / "sweep.yaml").write_bytes(data)
    res = RUNNER.invoke(app, ["sweep", str(d / "sweep.yaml"), "--out", str(d / "runs")])
    check_result(res)


def test_the_good_files_get_to_the_load(base: Path, good_run: Path, no_load: None) -> None:
    """The fuzzed files start from files that pass (so mutations test the checks)."""
    cases: list[tuple[str, Callable[[Path], Result]]] = [
        ("plan", lambda d: _run(d / "p.yaml", d / "runs")),
        ("sweep", lambda d: RUNNER.invoke(app, ["sweep", str(d / "s.yaml"), "--out", str(d)])),
    ]
    d = _workdir(base)
    (d / "p.yaml").write_bytes(PLAN_BYTES)
    (d / "s.yaml").write_bytes(SWEEP_BYTES)
    for what, call in cases:
        res = call(d)
        assert res.exit_code == 2 and "fuzz: the" in res.stderr, (what, res.output)
    for res in _results(good_run, d):
        assert res.exit_code == 0, res.output


# ------------------------------------------ the newer file options: prompts, JSON service
PROMPTS_BYTES = b'{"text": "hello"}\n{"prompt": "caf\xc3\xa9"}\n\n{"text": "x", "n": 1}\n'
TEMPLATE_BYTES = b'{"features": "$X", "k": [1, 2.5, null, true, "s"]}'
INPUT_DATA_BYTES = b'{"data": [{"X": [1.0, 2.0, 3.0, 4.0]}, [{"X": {"content": [5, 6, 7, 8]}}]]}'
#: JSON-ish damage: deep nesting, NaN, huge numbers, non-UTF-8, NUL, odd types
JSONISH = st.one_of(
    st.sampled_from(
        [
            b"[" * 5000,
            b'{"text":' * 5000,
            b'{"text": NaN}',
            b'{"a": 1e400, "features": "$X"}',
            b'{"text": ' + b"9" * 5000 + b"}",
            b"\xff\xfe{}",
            b"\x00" * 10,
            b"null",
            b'"$X"',
            b"[]",
            b'{"text": ["a"]}',
        ]
    ),
    st.binary(max_size=200),
)


def _json_run(d: Path, *extra: str) -> Result:
    argv = ["run", "--protocol", "json", "--target", "127.0.0.1:1", "--json-path", "/p"]
    argv += ["--rate", "5", "--duration", "1s", "--agent", "127.0.0.1:1", "--out", str(d)]
    return RUNNER.invoke(app, [*argv, "--quiet", *extra])


@FUZZ
@given(st.sampled_from(["prompts", "template", "input-data"]), st.data())
def test_new_file_options_as_bytes(
    base: Path, no_load: None, which: str, data: st.DataObject
) -> None:
    """--prompts, --json-template @FILE and --input-data files of any bytes: one line and
    exit 2, or on to the load."""
    good = {"prompts": PROMPTS_BYTES, "template": TEMPLATE_BYTES}.get(which, INPUT_DATA_BYTES)
    d = _workdir(base)
    f = d / "in.txt"
    f.write_bytes(data.draw(st.one_of(mangled(good), JSONISH)))
    if which == "prompts":
        plan = d / "plan.yaml"
        plan.write_text(yaml.safe_dump(_mutate(PLAN, ("inputs",), [])))
        res = _run(plan, d / "runs", "--prompts", str(f), "--prompt-input", "TEXT")
    elif which == "template":
        res = _json_run(d, "--json-template", f"@{f}", "--input", "X=random", "--shape", "X=4")
    else:
        (d / "p.yaml").write_bytes(PLAN_BYTES)
        res = _run(d / "p.yaml", d / "runs", "--input-data", str(f))
    check_result(res)


@settings(FUZZ, max_examples=60)
@given(st.one_of(mangled(b'{"a": 1}\n\n[1, 2]\n"x"\n{"b": {"c": null}}\n'), JSONISH))
def test_json_bodies_files_as_bytes(base: Path, data: bytes) -> None:
    """The --json-bodies file (read by the coordinator's preflight): the bodies, or one
    PreflightError line naming the file."""
    from coordinator.preflight import read_json_bodies
    from volley.plan import plan_from_dict

    d = _workdir(base)
    f = d / "bodies.jsonl"
    f.write_bytes(data)
    plan = plan_from_dict(
        {
            "target": "127.0.0.1:1",
            "protocol": "json",
            "load": {"rate": 5, "duration": "1s"},
            "json_service": {"path": "/p", "bodies_file": str(f)},
        }
    )
    try:
        got = read_json_bodies(plan)
    except PreflightError as exc:
        assert str(f) in str(exc) and "\n" not in str(exc) and len(str(exc)) < 1000
    else:
        assert got.json_service is not None and got.json_service.bodies


def test_the_good_new_files_get_to_the_load(base: Path, no_load: None) -> None:
    d = _workdir(base)
    (d / "pr.jsonl").write_bytes(PROMPTS_BYTES)
    (d / "t.json").write_bytes(TEMPLATE_BYTES)
    (d / "in.json").write_bytes(INPUT_DATA_BYTES)
    (d / "plan.yaml").write_text(yaml.safe_dump(_mutate(PLAN, ("inputs",), [])))
    (d / "p.yaml").write_bytes(PLAN_BYTES)
    for res in (
        _run(d / "plan.yaml", d / "runs", "--prompts", str(d / "pr.jsonl")),
        _json_run(
            d, "--json-template", f"@{d / 't.json'}", "--input", "X=random", "--shape", "X=4"
        ),
        _run(d / "p.yaml", d / "runs", "--input-data", str(d / "in.json")),
    ):
        assert res.exit_code == 2 and "fuzz: the" in res.stderr, res.output


def test_a_json_bodies_file_is_read_up_to_the_plan_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bodies file larger than any plan an agent takes is refused after reading that
    much (not read whole into memory); a body holding U+2028 stays one body."""
    from coordinator import preflight
    from volley.plan import plan_from_dict

    f = tmp_path / "bodies.jsonl"
    doc = {
        "target": "127.0.0.1:1",
        "protocol": "json",
        "load": {"rate": 5, "duration": "1s"},
        "json_service": {"path": "/p", "bodies_file": str(f)},
    }
    f.write_text('{"a": "x\u2028y"}\r\n{"b": 2}\n')
    got = preflight.read_json_bodies(plan_from_dict(doc)).json_service
    assert got is not None and got.bodies == ('{"a": "x\u2028y"}', '{"b": 2}')
    monkeypatch.setattr(preflight, "MAX_BODIES_FILE_BYTES", 1000)
    f.write_text('{"a": 1}\n' * 200)
    with pytest.raises(PreflightError, match=r"over 1.0 kB \(the largest plan an agent takes\)"):
        preflight.read_json_bodies(plan_from_dict(doc))


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--start-lead", "nan", "--start-lead: expected seconds from 0 to 590"),
        ("--start-lead", "inf", "--start-lead"),
        ("--start-lead", "-1", "--start-lead"),
        ("--start-lead", "1e300", "--start-lead"),
        ("--workers", "-3", "--workers: expected 0"),
        ("--workers", str(2**40), "--workers"),
    ],
)
def test_start_lead_and_workers_are_checked(
    base: Path, no_load: None, option: str, value: str, needle: str
) -> None:
    """A NaN --start-lead was a ValueError once the agents were running."""
    d = _workdir(base)
    (d / "p.yaml").write_bytes(PLAN_BYTES)
    res = _run(d / "p.yaml", d / "runs", option, value)
    check_result(res)
    assert res.exit_code == 2 and needle in res.stderr, res.output
