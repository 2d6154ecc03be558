"""`plan.json_service` (protocol json, a plain JSON prediction service), validated.

The template and every body must be JSON; the template's placeholders ("$NAME" strings)
must name inputs of the plan. Bodies are bounded like payload pools."""

from __future__ import annotations

import json
import math
from typing import Any

from volley.plan.spec import (
    MAX_INPUT_BYTES,
    MAX_POOL_PAYLOADS,
    InputSpec,
    JsonServiceSpec,
    PlanError,
)
from volley.shown import clipped, shown

_KEYS = {"path", "template", "bodies", "bodies_file", "expect_status", "expect_field"}
MAX_TEMPLATE_BYTES = 1 << 20


def placeholders(doc: object) -> list[str]:
    """The input names a template refers to ("$NAME" strings), in order of appearance."""
    out: list[str] = []
    if isinstance(doc, str):
        if doc.startswith("$") and len(doc) > 1:
            out.append(doc[1:])
    elif isinstance(doc, list):
        for v in doc:
            out += placeholders(v)
    elif isinstance(doc, dict):
        for v in doc.values():
            out += placeholders(v)
    return out


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PlanError(f"{where}: not JSON ({clipped(str(exc), 120)})") from None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} has no JSON form")


def _finite(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"{clipped(text, 40)} is out of a double's range")
    return x


def _template_json(text: str, where: str) -> Any:
    """A template is parsed and written again per body (strict JSON): NaN, Infinity and
    numbers beyond a double's range are refused here, not when the first body is built."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        raise PlanError(f"{where}: not JSON ({clipped(str(exc), 120)})") from None


def _text(d: dict[str, Any], key: str, default: str) -> str:
    v = d.get(key, default)
    if not isinstance(v, str):
        raise PlanError(f"plan.json_service.{key}: expected a string, got {shown(v)}")
    return v


def json_service_from(raw: object, inputs: tuple[InputSpec, ...]) -> JsonServiceSpec:
    """Validate a `json_service` mapping against the plan's inputs."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PlanError(f"plan.json_service: expected a mapping, got {shown(raw)}")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise PlanError(
            f"plan.json_service: unknown key {shown(unknown[0])} "
            f"(known: {', '.join(sorted(_KEYS))})"
        )
    path = _text(raw, "path", "/")
    if not path.startswith("/") or any(c in path for c in " \r\n\t"):
        raise PlanError(
            f"plan.json_service.path: must start with / and hold no spaces: {shown(path)}"
        )
    template = _text(raw, "template", "")
    bodies_file = _text(raw, "bodies_file", "")
    bodies_raw = raw.get("bodies") or []
    if not isinstance(bodies_raw, list) or not all(isinstance(b, str) for b in bodies_raw):
        raise PlanError("plan.json_service.bodies: expected a list of JSON texts")
    if len(bodies_raw) > MAX_POOL_PAYLOADS:
        raise PlanError(f"plan.json_service.bodies: more than {MAX_POOL_PAYLOADS} bodies")
    for i, b in enumerate(bodies_raw):
        if len(b) > MAX_INPUT_BYTES:
            raise PlanError(f"plan.json_service.bodies[{i}]: over {MAX_INPUT_BYTES} bytes")
        _json(b, f"plan.json_service.bodies[{i}]")
    if sum(1 for x in (template, bodies_raw or bodies_file) if x) != 1:
        raise PlanError(
            "plan.json_service: give a body template (--json-template) or a file of bodies "
            "(--json-bodies), one of them"
        )
    if template:
        if len(template) > MAX_TEMPLATE_BYTES:
            raise PlanError(f"plan.json_service.template: over {MAX_TEMPLATE_BYTES} bytes")
        names = {s.name for s in inputs}
        for name in placeholders(_template_json(template, "plan.json_service.template")):
            if name not in names:
                raise PlanError(
                    f"plan.json_service.template: ${clipped(name, 60)} names no input "
                    "(declare it with --input NAME=... and --shape NAME=DIMS)"
                )
    status = raw.get("expect_status", 0)
    if (
        isinstance(status, bool)
        or not isinstance(status, int)
        or not (status == 0 or 100 <= status <= 599)
    ):
        raise PlanError("plan.json_service.expect_status: 0 (any 2xx) or an HTTP status")
    return JsonServiceSpec(
        path=path,
        template=template,
        bodies=tuple(bodies_raw),
        bodies_file=bodies_file,
        expect_status=status,
        expect_field=_text(raw, "expect_field", ""),
    )
