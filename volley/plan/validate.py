"""Plan documents (YAML, JSON mappings) to a validated Plan; PlanError names the bad field.

The top level and its cross-section rules are here; each section has its own reader
(`load_section`, `inputs_section`, `target_section`, `sequence_section`), and `fields`
reads one field.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, cast

import yaml

from volley.plan.fields import (
    as_dict,
    as_list,
    as_str_list,
    check_keys,
    get_choice,
    get_dist_text,
    get_int,
    get_num,
    get_str,
)
from volley.plan.inputs_section import DATATYPES, inputs_section, model_section, pool_section
from volley.plan.load_section import load_section
from volley.plan.sequence_section import sequence_section, stream_section
from volley.plan.service import json_service_from
from volley.plan.spec import (
    MAX_CONNECTIONS_TOTAL,
    MAX_INPUTS,
    MAX_NAME_CHARS,
    MAX_TIMEOUT_S,
    AgentSpec,
    Compression,
    HttpBody,
    Plan,
    PlanError,
    Protocol,
    Transport,
    ValiditySpec,
)
from volley.plan.target_section import RESERVED_HEADERS, header_section, tls_section
from volley.plan.text import parse_address, parse_duration
from volley.shown import clipped, shown

__all__ = [
    "DATATYPES",
    "MAX_ADDRESS_CHARS",
    "RESERVED_HEADERS",
    "check_resolved",
    "load_plan_yaml",
    "plan_from_dict",
]

#: HOST:PORT: a DNS name is at most 253 characters.
MAX_ADDRESS_CHARS = 300


def plan_from_dict(data: object) -> Plan:
    """Validate a plan document (from YAML/JSON) into a Plan; PlanError names the bad field."""
    d = as_dict(data, "plan")
    allowed = {f.name for f in fields(Plan)}
    check_keys(d, allowed, "plan")
    target = get_str(d, "target", "plan", "")
    if not target:
        raise PlanError("plan.target: required (HOST:PORT of the inference server)")
    if len(target) > MAX_ADDRESS_CHARS:
        raise PlanError(f"plan.target: longer than {MAX_ADDRESS_CHARS} characters")
    parse_address(target, "plan.target")
    model = get_str(d, "model", "plan", "")
    models = tuple(
        model_section(x, i) for i, x in enumerate(as_list(d.get("models"), "plan.models"))
    )
    if len(models) > 256:
        raise PlanError("plan.models: at most 256 models")
    if len({(m.name, m.version) for m in models}) != len(models):
        raise PlanError("plan.models: a model (name and version) is listed twice")
    if not model and models:
        model = models[0].name
    protocol = cast(Protocol, get_choice(d, "protocol", "plan", "grpc", ("grpc", "http", "json")))
    if not model and protocol == "json":
        model = "service"  # a label only: a plain JSON service has no models
    if not model:
        raise PlanError("plan.model: required (the model name on the server)")
    agents: list[AgentSpec] = []
    for i, a in enumerate(as_list(d.get("agents"), "plan.agents")):
        if isinstance(a, str):
            agents.append(AgentSpec(a))
            continue
        ad = as_dict(a, f"plan.agents[{i}]")
        check_keys(ad, {"address", "weight"}, f"plan.agents[{i}]")
        w = get_int(ad, "weight", f"plan.agents[{i}]", 1)
        if w < 1 or w > 10_000:
            raise PlanError(f"plan.agents[{i}].weight: must be between 1 and 10000")
        agents.append(AgentSpec(get_str(ad, "address", f"plan.agents[{i}]", ""), w))
    vd = as_dict(d.get("validity"), "plan.validity")
    check_keys(vd, {f.name for f in fields(ValiditySpec)}, "plan.validity")
    default_v = ValiditySpec()
    validity = ValiditySpec(
        min_duration_s=get_num(vd, "min_duration_s", "plan.validity", default_v.min_duration_s),
        min_requests=get_int(vd, "min_requests", "plan.validity", default_v.min_requests),
        max_error_rate=get_num(vd, "max_error_rate", "plan.validity", default_v.max_error_rate),
        max_late_fraction=get_num(
            vd, "max_late_fraction", "plan.validity", default_v.max_late_fraction
        ),
        warn_late_fraction=get_num(
            vd, "warn_late_fraction", "plan.validity", default_v.warn_late_fraction
        ),
        max_lateness_p99_ms=get_num(
            vd, "max_lateness_p99_ms", "plan.validity", default_v.max_lateness_p99_ms
        ),
        confidence=get_num(vd, "confidence", "plan.validity", default_v.confidence),
    )
    if not 0.5 <= validity.confidence <= 0.999:
        raise PlanError(
            f"plan.validity.confidence: must be between 0.5 and 0.999, got {validity.confidence:g}"
        )
    seed = get_int(d, "seed", "plan", 0)
    if not 0 <= seed < 2**63:
        raise PlanError("plan.seed: must be a non-negative 63-bit integer")
    timeout_s = parse_duration(d.get("timeout_s", 30.0), "plan.timeout_s")
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise PlanError(f"plan.timeout_s: must be > 0 and at most {MAX_TIMEOUT_S:g}s")
    connections = get_int(d, "connections", "plan", 1)
    if not 1 <= connections <= 1024:
        raise PlanError("plan.connections: must be between 1 and 1024")
    connections_total = get_int(d, "connections_total", "plan", 0)
    if not 0 <= connections_total <= MAX_CONNECTIONS_TOTAL:
        raise PlanError(
            f"plan.connections_total: must be between 0 and {MAX_CONNECTIONS_TOTAL} (0: per worker)"
        )
    compression = cast(
        Compression,
        get_choice(d, "compression", "plan", "none", ("none", "gzip", "deflate")),
    )
    if compression != "none" and d.get("transport") == "stream":
        raise PlanError("plan.compression: not supported with transport 'stream' (use unary)")
    if d.get("transport") in ("stream", "grpcio") and d.get("protocol", "grpc") != "grpc":
        raise PlanError(f"plan.transport: {shown(d.get('transport'))} needs protocol grpc")
    name = get_str(d, "name", "plan", "run")
    if len(name) > MAX_NAME_CHARS:
        raise PlanError(f"plan.name: longer than {MAX_NAME_CHARS} characters")
    inputs_raw = as_list(d.get("inputs"), "plan.inputs")
    if len(inputs_raw) > MAX_INPUTS:
        raise PlanError(f"plan.inputs: more than {MAX_INPUTS} inputs")
    max_batch = get_int(d, "max_batch_size", "plan", 0)
    if not 0 <= max_batch <= 2**31 - 1:
        raise PlanError("plan.max_batch_size: must be between 0 and 2^31-1")
    inputs = inputs_section(d.get("inputs"))
    json_service = None
    if protocol == "json":
        if models:
            raise PlanError("plan.models: not with protocol json (one service per plan)")
        json_service = json_service_from(d.get("json_service"), inputs)
    elif d.get("json_service") is not None:
        raise PlanError("plan.json_service: only with protocol json")
    raw = d.get("raw_records", True)
    if not isinstance(raw, bool):
        raise PlanError("plan.raw_records: expected true or false")
    plan = Plan(
        target=target,
        model=model,
        name=name,
        model_version=get_str(d, "model_version", "plan", ""),
        protocol=protocol,
        seed=seed,
        load=load_section(d.get("load")),
        inputs=inputs,
        outputs=as_str_list(d.get("outputs"), "plan.outputs"),
        max_batch_size=max_batch,
        batch_size=get_dist_text(d, "batch_size", "plan"),
        input_pool=pool_section(d.get("input_pool")),
        agents=tuple(agents),
        timeout_s=timeout_s,
        raw_records=raw,
        slos=as_str_list(d.get("slos"), "plan.slos"),
        validity=validity,
        transport=cast(
            Transport,
            get_choice(d, "transport", "plan", "unary", ("unary", "stream", "grpcio")),
        ),
        connections=connections,
        connections_total=connections_total,
        compression=compression,
        http_body=cast(
            HttpBody, get_choice(d, "http_body", "plan", "auto", ("auto", "binary", "json"))
        ),
        json_service=json_service,
        tls=tls_section(d.get("tls")),
        headers=tuple(
            header_section(x, i) for i, x in enumerate(as_list(d.get("headers"), "plan.headers"))
        ),
        models=models,
        sequence=sequence_section(d.get("sequence")),
        composing_models=as_str_list(d.get("composing_models"), "plan.composing_models"),
        ensemble_steps=as_str_list(d.get("ensemble_steps"), "plan.ensemble_steps"),
        stream=stream_section(d.get("stream")),
    )
    if plan.sequence is not None:
        if plan.models:
            raise PlanError("plan.sequence: not with mixed traffic (plan.models): one model")
        if plan.transport != "unary":
            raise PlanError("plan.sequence: sequences are sent over gRPC unary or HTTP")
        if plan.protocol == "http" and plan.sequence.check:
            raise PlanError("plan.sequence.check: reads gRPC responses (use protocol grpc)")
        if plan.compression != "none":
            raise PlanError("plan.sequence: not with compression (requests are framed per step)")
        if plan.load.arrival == "trace":
            raise PlanError("plan.sequence: a trace gives request times, not sequence starts")
    return plan


def check_resolved(plan: Plan) -> None:
    """What an agent needs beyond a valid plan: preflight resolved every input against
    the model (its datatype, at least), so the workers can build their payloads."""
    for spec in (*plan.inputs, *(i for m in plan.models for i in m.inputs)):
        if not spec.datatype:
            raise PlanError(
                f"input {clipped(spec.name, 60)}: no datatype (the coordinator resolves a "
                "plan's inputs against the model before sending it to agents)"
            )


def load_plan_yaml(text: str) -> dict[str, Any]:
    """Parse YAML text to a plan mapping (not yet validated)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlanError(f"plan file is not valid YAML: {exc}".splitlines()[0]) from None
    except RecursionError:
        raise PlanError("plan file is nested too deeply") from None
    except ValueError as exc:  # a value YAML cannot build: a date like 2024-13-01, a huge int
        raise PlanError(f"plan file: {clipped(str(exc))}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PlanError("plan file: expected a mapping at the top level")
    return cast(dict[str, Any], data)
