"""The plan's `sequence` (stateful sequences: length, think time, ID ranges, checks) and
`stream` (decoupled models: prompts, token counts) sections.
"""

from __future__ import annotations

import math
import re
from dataclasses import fields
from typing import Any, cast

from volley.dist import (
    DistError,
    parse_dist,
)
from volley.plan.fields import (
    as_dict,
    as_id_pair,
    as_list,
    check_keys,
    get_choice,
    get_dist_text,
    get_int,
    get_str,
)
from volley.plan.spec import (
    MAX_LIVE_SEQUENCES,
    MAX_SEQUENCE_LENGTH,
    PlanError,
    SequenceControls,
    SequenceSpec,
    StreamSpec,
)
from volley.plan.text import parse_duration
from volley.shown import shown


def sequence_section(raw: object) -> SequenceSpec | None:
    """plan.sequence: stateful sequences (see SequenceSpec)."""
    if raw is None or raw is False:
        return None
    where = "plan.sequence"
    d = {} if raw is True else as_dict(raw, where)
    check_keys(d, {f.name for f in fields(SequenceSpec)}, where)
    default = SequenceSpec()
    length = get_dist_text(d, "length", where) or default.length
    think = get_dist_text(d, "think_ms", where) or default.think_ms
    ln, th = parse_dist(length), parse_dist(think)
    if ln.min() < 1 or ln.max() > MAX_SEQUENCE_LENGTH:
        raise PlanError(f"{where}.length: steps must be from 1 to {MAX_SEQUENCE_LENGTH}")
    if th.min() < 0 or th.max() > 3_600_000:
        raise PlanError(f"{where}.think_ms: must be from 0 to 3600000 ms")
    id_type = get_choice(d, "id_type", where, default.id_type, ("uint64", "string"))
    prefix = get_str(d, "id_prefix", where, default.id_prefix)
    if len(prefix) > 64 or not prefix.isprintable():
        raise PlanError(f"{where}.id_prefix: at most 64 printable characters")
    id_range = (
        as_id_pair(d["id_range"], f"{where}.id_range") if "id_range" in d else default.id_range
    )
    if id_range[1] - id_range[0] < 2:
        raise PlanError(f"{where}.id_range: needs at least 2 IDs (the first is preflight's)")
    max_live = get_int(d, "max_live", where, 0)
    if not 0 <= max_live <= MAX_LIVE_SEQUENCES:
        raise PlanError(f"{where}.max_live: must be from 0 to {MAX_LIVE_SEQUENCES}")
    drain = parse_duration(d.get("drain_s", default.drain_s), f"{where}.drain_s")
    if not 0 <= drain <= 60:
        raise PlanError(f"{where}.drain_s: must be from 0 to 60 s")
    check = get_str(d, "check", where, "")
    if check and (check.count(":") != 1 or not all(check.split(":"))):
        raise PlanError(f"{where}.check: expected INPUT:OUTPUT, got {shown(check)}")
    ranges = tuple(
        as_id_pair(x, f"{where}.agent_ranges[{i}]")
        for i, x in enumerate(as_list(d.get("agent_ranges"), f"{where}.agent_ranges"))
    )
    if len(ranges) > 10_000:
        raise PlanError(f"{where}.agent_ranges: more than 10000 agents")
    for i in range(1, len(ranges)):
        if ranges[i][0] < ranges[i - 1][1]:
            raise PlanError(f"{where}.agent_ranges: ranges overlap or are out of order")
    cd = as_dict(d.get("controls"), f"{where}.controls")
    check_keys(cd, {f.name for f in fields(SequenceControls)}, f"{where}.controls")
    controls = SequenceControls(
        **{f.name: get_str(cd, f.name, f"{where}.controls", "") for f in fields(SequenceControls)}
    )
    return SequenceSpec(
        length=length,
        think_ms=think,
        id_type=cast(Any, id_type),
        id_prefix=prefix,
        id_range=id_range,
        max_live=max_live,
        drain_s=drain,
        check=check,
        agent_ranges=ranges,
        controls=controls,
    )


def stream_section(raw: Any) -> StreamSpec:
    d = as_dict(raw, "plan.stream")
    check_keys(d, {f.name for f in fields(StreamSpec)}, "plan.stream")
    decoupled = d.get("decoupled", False)
    if not isinstance(decoupled, bool):
        raise PlanError("plan.stream.decoupled: expected true or false")
    token_output = get_str(d, "token_output", "plan.stream", "")
    if len(token_output) > 256:
        raise PlanError("plan.stream.token_output: longer than 256 characters")
    raw_params = d.get("parameters") or {}
    # a mapping (as written), or [name, value] pairs (as plan.to_dict writes them back)
    if isinstance(raw_params, list) and all(
        isinstance(p, list | tuple) and len(p) == 2 for p in raw_params
    ):
        raw_params = {str(k): v for k, v in raw_params}
    if not isinstance(raw_params, dict):
        raise PlanError("plan.stream.parameters: expected a mapping of name: value")
    if len(raw_params) > 64:
        raise PlanError("plan.stream.parameters: more than 64 parameters")
    params: list[tuple[str, bool | int | float | str]] = []
    raw_drawn = d.get("drawn") or []
    if not isinstance(raw_drawn, list | tuple) or not all(
        isinstance(p, list | tuple) and len(p) == 2 for p in raw_drawn
    ):
        raise PlanError("plan.stream.drawn: expected [name, distribution] pairs")
    drawn: list[tuple[str, str]] = []
    seen: set[str] = set()
    for k, v in [*raw_drawn, *raw_params.items()]:
        if not isinstance(k, str) or not k or len(k) > 128 or k.startswith("triton_"):
            raise PlanError(f"plan.stream.parameters: bad name {shown(k)}")
        if k in seen:  # a request carries one value per parameter
            raise PlanError(f"plan.stream.parameters: {shown(k)} is given twice")
        seen.add(k)
        dist = _drawn_dist(k, v)
        if dist:
            drawn.append((k, dist))
            continue
        if isinstance(v, bool | str) or (isinstance(v, int) and -(2**63) <= v < 2**63):
            if isinstance(v, str) and len(v) > 4096:
                raise PlanError(f"plan.stream.parameters.{k}: longer than 4096 characters")
            params.append((k, v))
        elif isinstance(v, float) and math.isfinite(v):
            params.append((k, v))
        else:
            raise PlanError(
                f"plan.stream.parameters.{k}: expected a boolean, integer, number or text"
            )
    if len(drawn) + len(params) > 64:
        raise PlanError("plan.stream.parameters: more than 64 parameters")
    return StreamSpec(
        decoupled=decoupled,
        token_output=token_output,
        parameters=tuple(params),
        drawn=tuple(drawn),
    )


def _drawn_dist(name: str, value: object) -> str:
    """A parameter's value as a distribution's text when it is one (a mapping, or text in
    the distribution syntax that is not a constant: "uniform(16, 64)", "16..64", "8|32"),
    else "" (a plain value)."""
    if not isinstance(value, dict) and not (
        isinstance(value, str) and any(c in value for c in "(.|")
    ):
        return ""
    try:
        dist = parse_dist(value)
    except DistError as exc:
        if isinstance(value, str) and not re.match(
            r"\s*(uniform|normal|lognormal|choice)\s*\(", value
        ):
            return ""  # plain text that only looks like one
        raise PlanError(f"plan.stream.parameters.{name}: {exc}") from None
    if dist.is_fixed:
        return ""
    if dist.min() < -(2**62) or dist.max() > 2**62:
        raise PlanError(f"plan.stream.parameters.{name}: {dist} is out of the int64 range")
    return str(dist)
