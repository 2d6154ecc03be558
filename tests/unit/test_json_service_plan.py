"""protocol json: plan validation (one-line errors naming the field), template rendering
through the input pool, and the answer check."""

from __future__ import annotations

import json
from typing import Any

import pytest

from volley.plan import PlanError, plan_from_dict
from volley.wire.json_service import answer_ok, field_present
from volley.wire.payloads import build_payloads


def _doc(**service: Any) -> dict[str, Any]:
    return {
        "target": "127.0.0.1:8000",
        "protocol": "json",
        "load": {"rate": 1},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2]}],
        "json_service": {"path": "/p", "template": '{"f": "$x", "n": 1}', **service},
    }


@pytest.mark.parametrize(
    ("service", "fragment"),
    [
        ({"template": "{nope"}, "template: not JSON"),
        ({"template": '{"f": "$y"}'}, "$y names no input"),
        ({"bodies": ["{}"]}, "one of them"),
        ({"template": "", "bodies": ["{"]}, "bodies[0]: not JSON"),
        ({"path": "predict"}, "must start with /"),
        ({"expect_status": 700}, "expect_status"),
        ({"colour": "red"}, "unknown key 'colour'"),
    ],
)
def test_bad_json_service_is_one_line(service: dict[str, Any], fragment: str) -> None:
    with pytest.raises(PlanError) as err:
        plan_from_dict(_doc(**service))
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_json_service_needs_protocol_json_and_model_is_a_label() -> None:
    with pytest.raises(PlanError, match="only with protocol json"):
        plan_from_dict({**_doc(), "protocol": "grpc", "model": "m"})
    assert plan_from_dict(_doc()).model == "service"


def test_template_is_filled_per_payload_with_nested_values() -> None:
    plan = plan_from_dict(_doc())
    payloads = build_payloads(plan)
    bodies = [json.loads(w.body) for w in payloads.wires]
    assert len(bodies) == plan.input_pool.payloads
    for b in bodies:
        assert b["n"] == 1 and len(b["f"]) == 2 and all(len(row) == 2 for row in b["f"])
    assert len({json.dumps(b) for b in bodies}) > 1  # drawn, not one constant body
    assert payloads.wires[0].head.startswith(b"POST /p HTTP/1.1\r\n")


def test_answer_check() -> None:
    doc = plan_from_dict(_doc(expect_field="predictions.1.label")).json_service
    assert doc is not None
    good = json.dumps({"predictions": [{}, {"label": "a"}]}).encode()
    assert answer_ok(200, good, doc) and answer_ok(201, good, doc)
    assert not answer_ok(500, good, doc) and not answer_ok(200, b"{}", doc)
    assert not answer_ok(200, b"not json", doc)
    assert field_present({"a": [1, 2]}, "a.1") and not field_present({"a": [1, 2]}, "a.2")
    strict = plan_from_dict(_doc(expect_status=202)).json_service
    assert strict is not None and answer_ok(202, b"", strict) and not answer_ok(200, b"", strict)
