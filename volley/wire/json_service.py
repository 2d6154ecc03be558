"""Plain JSON prediction services (protocol json): the request bodies and the answer check.

Bodies are built once, like every payload pool: from the plan's template, with each
"$NAME" string replaced by input NAME's drawn value (the pool's own draws, weights and
seed: `build_plan_pool` with this module's serializer), or from the plan's list of
whole bodies (a JSONL file's lines), picked uniformly by the seed. Every request is
`POST path` with `Content-Type: application/json`; a good answer has the expected
status (any 2xx by default) and, when asked, a JSON body holding a field at a dotted
path ("predictions", "result.0.label").
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from volley.inputs import Tensor
from volley.plan import JsonServiceSpec, Plan, PlanError
from volley.request import Payload, RequestPool, build_plan_pool
from volley.wire.grpc import USER_AGENT
from volley.wire.kserve_json import tensor_data


def _nest(flat: list[object], shape: tuple[int, ...]) -> object:
    """A flat row-major list as nested lists of `shape` (a scalar for shape [])."""
    if not shape:
        return flat[0] if flat else None
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def tensor_value(t: Tensor) -> object:
    """One input's value in a body: a number or string for shape [], else nested lists."""
    return _nest(tensor_data(t.datatype, t.data, t.name), t.shape)


def render(template: object, values: dict[str, object]) -> object:
    """The template with every "$NAME" string replaced by values[NAME]."""
    if isinstance(template, str):
        if template.startswith("$") and template[1:] in values:
            return values[template[1:]]
        return template
    if isinstance(template, list):
        return [render(v, values) for v in template]
    if isinstance(template, dict):
        return {k: render(v, values) for k, v in template.items()}
    return template


def template_serializer(spec: JsonServiceSpec) -> Callable[[Plan, list[Tensor]], bytes]:
    """`build_plan_pool`'s serializer: one payload's tensors into the rendered body."""
    doc = json.loads(spec.template)

    def serialize(plan: Plan, tensors: list[Tensor]) -> bytes:
        del plan
        body = render(doc, {t.name: tensor_value(t) for t in tensors})
        return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()

    return serialize


def json_pool(plan: Plan) -> RequestPool:
    """The plan's bodies, as a pool every worker builds the same way."""
    spec = plan.json_service
    if spec is None:
        raise PlanError("protocol json needs plan.json_service")
    if spec.template:
        return build_plan_pool(plan, serialize=template_serializer(spec))
    if not spec.bodies:
        raise PlanError("plan.json_service: no bodies (the coordinator reads bodies_file)")
    payloads = [Payload(b.encode(), len(b.encode()), 0, 1) for b in spec.bodies]
    return RequestPool(payloads, ["body"], seed=plan.seed, requested=len(payloads))


def json_head(plan: Plan, headers: Sequence[tuple[str, str]]) -> bytes:
    """Request line and headers without Content-Length (added per body)."""
    spec = plan.json_service
    path = spec.path if spec is not None else "/"
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {plan.target}",
        f"User-Agent: {USER_AGENT}",
        "Content-Type: application/json",
        "Accept: application/json",
    ]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def field_present(doc: Any, path: str) -> bool:
    """Whether the dotted `path` leads somewhere in `doc` (numbers index lists)."""
    for part in path.split("."):
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif (
            isinstance(doc, list)
            and part.lstrip("-").isdigit()
            and len(part) <= 18  # an index of a list in memory (int() of 5000 digits raises)
            and -len(doc) <= int(part) < len(doc)
        ):
            doc = doc[int(part)]
        else:
            return False
    return True


def answer_ok(status: int, body: bytes, spec: JsonServiceSpec) -> bool:
    """A good answer: the expected status (any 2xx by default), and the expected field
    in its JSON body where one is asked for."""
    if spec.expect_status:
        if status != spec.expect_status:
            return False
    elif not 200 <= status < 300:
        return False
    if not spec.expect_field:
        return True
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    return field_present(doc, spec.expect_field)
