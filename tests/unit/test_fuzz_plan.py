"""Fuzzed plan documents: every bad plan is a PlanError naming what is wrong, never a
traceback, and every accepted plan stays within the hard bounds (no plan can make an
agent allocate without limit)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from agent.config import AgentLimits
from agent.limits import check_plan
from volley import plan as vp
from volley.cli import app
from volley.cli.planning import build_plan
from volley.plan import DATATYPES, Plan, PlanError, check_resolved, load_plan_yaml, plan_from_dict

BASE: dict[str, Any] = {
    "target": "127.0.0.1:8001",
    "model": "add",
    "name": "fuzz",
    "seed": 3,
    "timeout_s": "5s",
    "load": {
        "mode": "open",
        "arrival": "poisson",
        "rate": 100,
        "duration": "10s",
        "warmup": "1s",
        "max_in_flight": 64,
        "max_backlog": 100,
        "stages": [{"duration": "5s", "rate": 50}, {"duration": "5s", "rate": 100}],
        "trace": {"times_ns": [0, 10, 20], "unit": "ms"},
    },
    "inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 4], "source": "random"}],
    "outputs": ["Y"],
    "slos": ["p99<50ms"],
    "agents": [{"address": "127.0.0.1:7070", "weight": 2}],
    "validity": {"min_duration_s": 1, "min_requests": 10},
}

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["open", "closed", "trace", "constant", "poisson", "1e400", "-1s", "5m"])
)
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(BASE)


def _mutate(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    cur = doc
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return doc


def _check_bounded(plan: Plan) -> None:
    load = plan.load
    assert load.total_s <= vp.MAX_DURATION_S
    assert 0 <= load.max_in_flight <= vp.MAX_IN_FLIGHT
    assert 0 <= load.max_backlog <= vp.MAX_BACKLOG
    assert len(load.stages) <= vp.MAX_STAGES
    assert load.trace is None or len(load.trace.times_ns) <= vp.MAX_TRACE_ENTRIES
    assert 0 < plan.timeout_s <= vp.MAX_TIMEOUT_S
    assert len(plan.inputs) <= vp.MAX_INPUTS
    assert all(len(i.shape) <= vp.MAX_DIMS for i in plan.inputs)
    assert all(isinstance(o, str) for o in plan.outputs)
    assert all(isinstance(s, str) for s in plan.slos)
    # a valid plan round-trips through JSON (what agents receive)
    assert Plan.from_json(plan.to_json()) == plan


def _accepts_or_plan_error(doc: Any) -> None:
    try:
        plan = plan_from_dict(doc)
    except PlanError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg
        return
    _check_bounded(plan)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PATHS), values)
def test_mutated_plans_are_accepted_or_plan_error(path: tuple[Any, ...], value: Any) -> None:
    _accepts_or_plan_error(_mutate(BASE, path, value))


@settings(max_examples=200, deadline=None)
@given(values)
def test_random_documents_are_plan_errors(doc: Any) -> None:
    _accepts_or_plan_error(doc)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_random_yaml_and_json_text(text: str) -> None:
    try:
        data = load_plan_yaml(text)
        plan_from_dict(data)
    except PlanError:
        pass
    with contextlib.suppress(PlanError):
        Plan.from_json(text)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(PATHS), values)
def test_build_plan_from_file(tmp_path_factory: Any, path: tuple[Any, ...], value: Any) -> None:
    f: Path = tmp_path_factory.mktemp("plans") / "plan.yaml"
    f.write_text(yaml.safe_dump(_mutate(BASE, path, value)))
    try:
        build_plan(f, {}, {}, {}, {})
    except PlanError as exc:
        assert "\n" not in str(exc)


def test_bounds_named() -> None:
    for key, value, needle in [
        (("load", "max_backlog"), vp.MAX_BACKLOG + 1, "max_backlog"),
        (("load", "max_in_flight"), vp.MAX_IN_FLIGHT + 1, "max_in_flight"),
        (("timeout_s",), "2h", "timeout_s"),
        (("load", "stages"), [{"duration": "1s", "rate": 1}] * (vp.MAX_STAGES + 1), "stages"),
        (("outputs",), [["nested"]], "outputs"),
        (("load", "trace", "times_ns"), [5, 1], "times_ns"),
        (("load", "trace", "times_ns"), [0, "x"], "times_ns"),
        (("load", "trace", "times_ns"), [0, 1e400], "times_ns"),
        (("inputs", 0, "shape"), [1] * (vp.MAX_DIMS + 1), "shape"),
        (("name",), "n" * 300, "name"),
    ]:
        try:
            plan_from_dict(_mutate(BASE, key, value))
        except PlanError as exc:
            assert needle in str(exc), (key, str(exc))
        else:
            raise AssertionError(f"{key}={value!r} accepted")


def test_yaml_alias_bomb_is_refused_fast() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        bomb += f"{cur}: &{cur} [{', '.join(['*' + prev] * 10)}]\n"
    doc = "target: 127.0.0.1:8001\nmodel: add\nload: {rate: 1}\n" + bomb.replace(
        "i: &i", "outputs: &i"
    )
    try:
        plan_from_dict(load_plan_yaml(doc))
    except PlanError:
        pass
    else:
        raise AssertionError("alias bomb accepted")


def test_cli_fuzzed_plan_files_one_line_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    docs = [
        "load: [1, 2",  # not YAML
        "- just\n- a list\n",
        yaml.safe_dump(_mutate(BASE, ("load", "max_backlog"), -5)),
        yaml.safe_dump(_mutate(BASE, ("load", "trace", "times_ns"), [0, "zz"])),
        yaml.safe_dump(_mutate(BASE, ("timeout_s",), 1e300)),
        "a:\n" + "  - " * 2000 + "x\n",  # deep nesting
    ]
    for i, text in enumerate(docs):
        f = tmp_path / f"p{i}.yaml"
        f.write_text(text)
        res = runner.invoke(app, ["run", str(f), "--out", str(tmp_path / "runs")])
        assert res.exit_code == 2, (text[:60], res.output)
        assert "Traceback" not in res.output
        assert res.output.strip().count("\n") == 0, res.output


# ---------------------------------------------------------------- what an agent decodes
#: A plan as a coordinator sends it to agents: inputs resolved against the model.
RESOLVED: dict[str, Any] = {
    **BASE,
    "max_batch_size": 8,
    "inputs": [
        {
            "name": "X",
            "datatype": "FP32",
            "shape": [1, 4],
            "source": "random",
            "model_dims": [-1, 4],
        },
        {"name": "S", "datatype": "BYTES", "source": "constant", "value": "x", "model_dims": [1]},
    ],
    "models": [
        {
            "name": "add",
            "weight": 2,
            "inputs": [{"name": "X", "datatype": "INT64", "dims": ["1..4"], "model_dims": [-1]}],
        },
        {"name": "m2", "version": "3", "max_batch_size": 4},
    ],
}
RESOLVED_PATHS = _paths(RESOLVED)
AGENT_LIMITS = AgentLimits(
    max_rate=1000.0, max_in_flight=100, max_duration_s=60.0, allowed_targets=("127.0.0.1:8001",)
)

#: The numbers and names that broke agents: huge, negative, 2^64, floats, text, dtypes.
odd_leaves = st.one_of(
    st.sampled_from([10**400, -(10**400), -1, -2, 2**63, 2**64, -(2**63) - 1, 0, 1.5, -0.0]),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from([*DATATYPES, "FP8", "BF16", "fp32", "", "STRING", "TYPE_FP32"]),
    st.none(),
    st.booleans(),
)
odd_values = st.recursive(
    odd_leaves,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=10,
)


def agent_decode(text: str) -> None:
    """What agent/service.py Run does with a plan before any worker starts."""
    plan = Plan.from_json(text)
    check_resolved(plan)
    refusal = check_plan(plan, 0, AGENT_LIMITS)
    assert refusal is None or (isinstance(refusal, str) and "\n" not in refusal)
    _check_bounded(plan)
    for spec in (*plan.inputs, *(i for m in plan.models for i in m.inputs)):
        assert spec.datatype in DATATYPES
        assert all(-1 <= d < 2**63 for d in spec.model_dims)
        assert all(0 <= d < 2**63 for d in spec.shape)


def _agent_decodes_or_plan_error(text: str) -> None:
    try:
        agent_decode(text)
    except PlanError as exc:
        assert str(exc) and "\n" not in str(exc) and len(str(exc)) < 1000, str(exc)[:300]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(RESOLVED_PATHS), odd_values), min_size=1, max_size=3))
def test_agent_plan_json_mutated(changes: list[tuple[tuple[Any, ...], Any]]) -> None:
    doc = RESOLVED
    for path, value in changes:
        with contextlib.suppress(KeyError, IndexError, TypeError):  # path gone
            doc = _mutate(doc, path, value)
    _agent_decodes_or_plan_error(json.dumps(doc))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(RESOLVED_PATHS), st.integers(1, 3000), st.sampled_from("[{"))
def test_agent_plan_json_nested_deep(path: tuple[Any, ...], depth: int, bracket: str) -> None:
    """A field replaced by JSON nested `depth` deep (past the parser's recursion limit
    too), written as text since json.dumps would refuse it."""
    marker = "__deep__"
    text = json.dumps(_mutate(RESOLVED, path, marker))
    opening, closing = ("[", "]") if bracket == "[" else ('{"a":', "}")
    _agent_decodes_or_plan_error(
        text.replace(f'"{marker}"', opening * depth + "1" + closing * depth, 1)
    )


def test_the_resolved_plan_is_accepted() -> None:
    agent_decode(json.dumps(RESOLVED))
