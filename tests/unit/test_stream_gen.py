"""Generative-model inputs: prompts from JSONL/text files into a BYTES input, and request
parameters drawn per payload from a distribution (max_tokens)."""

from __future__ import annotations

import dataclasses
import json
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from tritonclient.grpc import service_pb2

import volley.inputs as vin
from coordinator.sweep.capacity import CapacityInputs, plan_capacity
from coordinator.sweep.html import render_report
from coordinator.sweep.runner import TargetResult, tokens_per_request
from coordinator.sweep.search import StepResult, SweepOutcome
from volley.plan import Plan, PlanError, plan_from_dict
from volley.wire.payloads import build_payloads
from volley.wire.stream import drawn_values

MODEL = [("PROMPT", "BYTES", (1,)), ("COUNT", "INT32", (1,))]


def _plan(**extra: Any) -> Plan:
    doc: dict[str, Any] = {"target": "127.0.0.1:1", "model": "m", "seed": 5, "load": {"rate": 1}}
    return plan_from_dict(doc | extra)


def _prompts_plan(path: Path, **extra: Any) -> Plan:
    plan = _plan(inputs=[{"name": "", "source": "prompts", "path": str(path)}], **extra)
    return vin.embed_sources(vin.resolve_specs(plan, MODEL, 0, "m"))


def _texts(body: bytes) -> list[str]:
    req = service_pb2.ModelInferRequest.FromString(body)
    raw = req.raw_input_contents[[i.name for i in req.inputs].index("PROMPT")]
    (n,) = struct.unpack_from("<I", raw)
    assert len(raw) == 4 + n  # one element
    return [raw[4:].decode()]


def test_prompts_from_jsonl_and_text_fill_the_only_bytes_input(tmp_path: Path) -> None:
    lines = [json.dumps({"text": f"tell me {i} things"}) for i in range(6)]
    lines.insert(3, json.dumps({"prompt": "ünï prompt", "other": 1}))
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n\n")
    (tmp_path / "p.txt").write_text("first line\nsecond line\n")
    for name, want in (
        ("p.jsonl", {f"tell me {i} things" for i in range(6)} | {"ünï prompt"}),
        ("p.txt", {"first line", "second line"}),
    ):
        plan = _prompts_plan(tmp_path / name, input_pool={"payloads": 64})
        assert plan.inputs[0].name == "PROMPT"  # named in preflight
        pays = build_payloads(plan)
        seen = Counter(t for w in pays.wires for t in _texts(w.msg))
        assert set(seen) == want  # every prompt in the pool, nothing else
        picked = {t for i in range(400) for t in _texts(pays.wires[pays.pick_one(i)].msg)}
        assert picked == want
        # over HTTP generate_stream the prompt is JSON text
        http = dataclasses.replace(
            plan, protocol="http", stream=dataclasses.replace(plan.stream, decoupled=True)
        )
        bodies = {json.loads(w.body)["PROMPT"] for w in build_payloads(http).wires}
        assert bodies == want
    # the subset of a large file is bounded by the pool
    (tmp_path / "big.txt").write_text("".join(f"p{i}\n" for i in range(500)))
    plan = _prompts_plan(tmp_path / "big.txt", input_pool={"payloads": 20})
    assert len(plan.inputs[0].items) == 20


def test_bad_prompt_files_and_inputs_are_refused(tmp_path: Path) -> None:
    cases = {
        "empty.txt": ("\n \n", "no prompts"),
        "bad.jsonl": ('{"text": "a"}\nnot json\n', "line 2 is not a JSON object"),
        "nokey.jsonl": ('{"text": "a"}\n{"body": "b"}\n', 'line 2 has no "text"'),
        "bin.txt": (b"\xff\xfe\x00", "not UTF-8"),
    }
    for name, (content, msg) in cases.items():
        f = tmp_path / name
        f.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(PlanError, match=msg):
            _prompts_plan(f)
    with pytest.raises(PlanError, match="No such file"):
        _prompts_plan(tmp_path / "missing.txt")
    # no BYTES input, or two: the user names one
    plan = _plan(inputs=[{"name": "", "source": "prompts", "path": "x"}])
    for model in ([("A", "FP32", (1,))], [("A", "BYTES", (1,)), ("B", "BYTES", (1,))]):
        with pytest.raises(PlanError, match="--prompt-input"):
            vin.resolve_specs(plan, model, 0, "m")
    named = _plan(inputs=[{"name": "COUNT", "source": "prompts", "path": "x"}])
    with pytest.raises(PlanError, match="BYTES input"):
        vin.resolve_specs(named, MODEL, 0, "m")


def test_max_tokens_drawn_per_payload_from_a_distribution() -> None:
    stream = {"decoupled": True, "parameters": {"max_tokens": "uniform(4, 11)", "t": 0.5}}
    plan = _plan(
        inputs=[{"name": "COUNT", "source": "constant", "value": 64}],
        stream=stream,
        input_pool={"payloads": 64},
    )
    assert plan.stream.drawn == (("max_tokens", "4..11"),)
    assert plan.stream.parameters == (("t", 0.5),)
    assert type(plan).from_json(plan.to_json()).stream == plan.stream  # round trip
    plan = vin.resolve_specs(plan, [("COUNT", "INT32", (1,))], 0, "m")
    for protocol in ("grpc", "http"):
        pays = build_payloads(dataclasses.replace(plan, protocol=protocol))
        assert len(pays.wires) == 64  # one constant payload widened to the pool's size
        if protocol == "grpc":
            vals = [
                service_pb2.ModelInferRequest.FromString(w.msg).parameters["max_tokens"].int64_param
                for w in pays.wires
            ]
        else:
            docs = [json.loads(w.body)["parameters"] for w in pays.wires]
            assert all(d["t"] == 0.5 for d in docs)
            vals = [d["max_tokens"] for d in docs]
        c = Counter(vals)
        assert set(c) == set(range(4, 12)) and all(v == 8 for v in c.values())  # stratified
    # the same on every worker; another seed, another order
    assert drawn_values(plan.stream.drawn, 64, 5) == drawn_values(plan.stream.drawn, 64, 5)
    assert drawn_values(plan.stream.drawn, 64, 5) != drawn_values(plan.stream.drawn, 64, 6)
    # unary (not decoupled) plans do not send them
    unary = dataclasses.replace(plan, stream=dataclasses.replace(plan.stream, decoupled=False))
    w = build_payloads(unary).wires
    assert len(w) == 1 and not service_pb2.ModelInferRequest.FromString(w[0].msg).parameters
    # a bad distribution is refused; plain text stays a string
    for bad in ("uniform(4, x)", {"uniform": [1]}):
        with pytest.raises(PlanError, match="max_tokens"):
            _plan(stream={"parameters": {"max_tokens": bad}})
    assert _plan(stream={"parameters": {"stop": "a.b|c"}}).stream.parameters == (("stop", "a.b|c"),)


def _step(index: int, load: float, passed: bool, tps: float | None, rps: float) -> StepResult:
    kind: Any = "pass" if passed else "server"
    return StepResult(index, load, passed, kind, [], load, rps, tokens_per_s=tps)


def test_capacity_plan_in_tokens_per_s_beside_requests_per_s() -> None:
    res = TargetResult(
        steps=[_step(0, 10, True, 79.6, 9.95), _step(1, 20, True, 160.4, 20.05)],
        outcome=SweepOutcome("rate", 20.0, 20.05, 1, 30.0, "server", "", "", None, 2),
    )
    tpr = tokens_per_request(res)
    assert tpr == pytest.approx(8.0, rel=1e-3)  # the highest passing step's tokens/s / req/s
    cp = plan_capacity(20.0, CapacityInputs(100.0, headroom=0.5), tokens_per_request=tpr)
    assert cp.replicas == 8 and cp.max_tokens_per_s_per_replica == pytest.approx(160.0, rel=1e-3)
    assert cp.required_tokens_per_s == pytest.approx(150 * 8.0, rel=1e-3)
    assert any("tokens/s" in a for a in cp.assumptions)
    doc = {"mode": "rate", "capacity": {"one": cp.to_dict()}, "targets": []}
    page = render_report(doc)
    assert "160.0 tokens/s</b>" in page and "20.0 req/s" in page
    # a unary model: no tokens anywhere, the plan in req/s only
    unary = TargetResult(
        steps=[_step(0, 10, True, None, 9.9)],
        outcome=SweepOutcome("rate", 10.0, 9.9, 0, None, "max-steps", "", "", None, 1),
    )
    assert tokens_per_request(unary) is None
    cp = plan_capacity(10.0, CapacityInputs(100.0), tokens_per_request=None)
    assert cp.max_tokens_per_s_per_replica is None and "tokens/s" not in render_report(
        {"mode": "rate", "capacity": {"one": cp.to_dict()}, "targets": []}
    )
    assert StepResult.from_dict(_step(0, 1, True, 5.0, 1.0).to_dict()).tokens_per_s == 5.0
    # the step's own mean tokens per request wins over the ratio of two rates
    res.steps[1] = dataclasses.replace(res.steps[1], tokens_per_request=8.0)
    assert tokens_per_request(res) == 8.0
