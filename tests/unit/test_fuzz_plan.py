"""Fuzzed plan documents: every bad plan is a PlanError naming what is wrong, never a
traceback, and every accepted plan stays within the hard bounds (no plan can make an
agent allocate without limit)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
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
from volley.target import access_for_run
from volley.wire.payloads import build_payloads

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


# ------------------------------------------------ newer plan fields, decoded and built
#: Where a plan may name a file or environment variable: the agent must read none.
CANARY_DIR = "/nonexistent-volley-canary"
CANARY_ENV = "VOLLEY_FUZZ_CANARY"
CANARY_VALUE = "canary-secret-value"
_X = {"name": "X", "datatype": "FP32", "shape": [1, 4], "source": "random", "model_dims": [-1, 4]}
_P = {"name": "P", "datatype": "BYTES", "shape": [1], "source": "prompts", "model_dims": [1]}
#: Resolved plans of the features added since round one: protocol json (template and
#: bodies), decoupled streaming with request parameters, generate (SSE), sequences, HTTP
#: bodies and connections, headers by value, file, env and operator secret.
NEW_BASES: list[dict[str, Any]] = [
    {
        **RESOLVED,
        "protocol": "json",
        "models": [],
        "inputs": [{**_X, "model_dims": []}],
        "json_service": {
            "path": "/predict",
            "template": '{"features": "$X", "n": [1, 2.5, null, true, "s"]}',
            "expect_status": 200,
            "expect_field": "a.b",
        },
    },
    {
        **RESOLVED,
        "protocol": "json",
        "models": [],
        "inputs": [{**_X, "model_dims": []}],
        "json_service": {"path": "/p", "bodies": ['{"a": 1}', "[1, 2]", '"x"']},
    },
    {
        **RESOLVED,
        "models": [],
        "transport": "stream",
        "inputs": [
            {**_P, "items": [{"kind": "tensor", "data": "AQAAAGE=", "shape": [1]}]},
        ],
        "stream": {
            "decoupled": True,
            "token_output": "Y",
            "parameters": [["max_tokens", 16], ["temperature", 0.5], ["stop", "x"]],
            "drawn": [["top_k", "4..32"]],
        },
    },
    {
        **RESOLVED,
        "models": [],
        "protocol": "http",
        "http_body": "json",
        "connections": 4,
        "compression": "gzip",
        "inputs": [_X],
        "headers": [
            {"name": "x-plain", "value": "v"},
            {"name": "x-file", "file": f"{CANARY_DIR}/token"},
            {"name": "x-env", "env": CANARY_ENV},
            {"name": "x-secret", "secret": "s1"},
        ],
        "tls": {"enabled": True, "ca": f"{CANARY_DIR}/ca.pem"},
    },
    {
        **RESOLVED,
        "models": [],
        "inputs": [
            {**_X, "shape": [1, 1], "model_dims": [-1, 1]},
            {
                "name": "F",
                "datatype": "BYTES",
                "shape": [1],
                "source": "files",
                "path": f"{CANARY_DIR}/in",
                "model_dims": [1],
            },
            {
                "name": "J",
                "datatype": "BYTES",
                "shape": [1],
                "source": "json",
                "path": f"{CANARY_DIR}/in.json",
                "model_dims": [1],
            },
        ],
        "load": {"mode": "closed", "concurrency": 4, "duration": "5s"},
        "sequence": {
            "length": "2..5",
            "think_ms": "0..3",
            "id_type": "string",
            "id_prefix": "s-",
            "id_range": [1, 1000],
            "drain_s": 2,
            "check": "X:Y",
            "agent_ranges": [[1, 500], [500, 1000]],
            "controls": {"start": "START", "end": "END", "ready": "READY", "corrid": "CORRID"},
        },
    },
]
#: the fields these bases add (the others are fuzzed above)
NEW_FIELDS = {
    "protocol",
    "json_service",
    "transport",
    "inputs",
    "stream",
    "http_body",
    "connections",
    "compression",
    "headers",
    "tls",
    "sequence",
}
NEW_PATHS = [(b, p) for b, doc in enumerate(NEW_BASES) for p in _paths(doc) if p[0] in NEW_FIELDS]
new_leaves = st.one_of(
    odd_leaves,
    st.sampled_from(
        [
            f"{CANARY_DIR}/x",
            f"@{CANARY_DIR}/x",
            CANARY_ENV,
            '{"a": NaN}',
            '{"a": 1e400}',
            "[" * 2000,
            "$X",
            "$nope",
            "stream",
            "grpcio",
            "json",
            "http",
            "binary",
            "1..0",
            "0..nan",
        ]
    ),
)
new_values = st.recursive(
    new_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
_watching: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _watching and event == "open" and CANARY_DIR in str(args[0]):
        _watching.append(str(args[0]))


sys.addaudithook(_audit)


def agent_builds(text: str) -> None:
    """agent/service.py Run (decode, check, header values and TLS without reading
    anything), then what its workers do before the first send (agent/worker.py run:
    build_payloads). Nothing opens a file the plan names, no canary reaches a request,
    and what is refused is a PlanError."""
    os.environ[CANARY_ENV] = CANARY_VALUE
    _watching[:] = ["on"]
    try:
        agent_decode(text)
        plan = Plan.from_json(text)
        # what the coordinator read and sent (RunRequest.headers), as a live run does
        sent_values = [(h.name, "coordinator-value") for h in plan.headers]
        named = any(h.env or h.file for h in plan.headers)
        access = access_for_run(
            plan, sent_values if named else [], b"ca", b"", b"", {"s1": "operator-value"}
        )
        payloads = build_payloads(plan, headers=access.headers)
        sent = repr(access.headers).encode() + b"".join(
            w.msg + w.body + w.head for w in payloads.wires
        )
        assert CANARY_VALUE.encode() not in sent
    finally:
        opened, _watching[:] = _watching[1:], []
        os.environ.pop(CANARY_ENV, None)
    assert not opened, opened


def _agent_builds_or_plan_error(text: str) -> None:
    try:
        agent_builds(text)
    except PlanError as exc:
        assert str(exc) and "\n" not in str(exc) and len(str(exc)) < 1000, str(exc)[:300]
        assert CANARY_VALUE not in str(exc)


@pytest.mark.parametrize("base", range(len(NEW_BASES)))
def test_the_new_bases_are_built_or_refused_without_reading(base: int) -> None:
    """Each base as sent: built, or (headers/TLS naming files) refused, reading nothing."""
    _agent_builds_or_plan_error(json.dumps(NEW_BASES[base]))
    plain = {k: v for k, v in NEW_BASES[base].items() if k not in ("headers", "tls")}
    agent_builds(json.dumps(plain))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(NEW_BASES))), st.lists(st.data(), min_size=1, max_size=1))
def test_agent_new_fields_mutated(base: int, draws: list[st.DataObject]) -> None:
    doc = NEW_BASES[base]
    data = draws[0]
    paths = [p for b, p in NEW_PATHS if b == base]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        with contextlib.suppress(KeyError, IndexError, TypeError):  # path gone
            doc = _mutate(doc, path, data.draw(new_values))
    _agent_builds_or_plan_error(json.dumps(doc))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(NEW_PATHS), st.integers(1, 3000), st.sampled_from("[{"))
def test_agent_new_fields_nested_deep(
    where: tuple[int, tuple[Any, ...]], depth: int, bracket: str
) -> None:
    base, path = where
    marker = "__deep__"
    text = json.dumps(_mutate(NEW_BASES[base], path, marker))
    opening, closing = ("[", "]") if bracket == "[" else ('{"a":', "}")
    _agent_builds_or_plan_error(
        text.replace(f'"{marker}"', opening * depth + "1" + closing * depth, 1)
    )
