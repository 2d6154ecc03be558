"""Preflight: before any load, check the target and resolve the plan's inputs.

Server live and ready, model ready, inputs resolved from the model's metadata
and config (names, datatypes, shapes, batch size), then one probe request built
by the shared request builder. Any failure is a PreflightError with one line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from coordinator.probe import Probe, ProbeError, make_probe
from volley import inputs as vin
from volley.dist import fmt_bytes
from volley.inputs import resolve_specs
from volley.plan import (
    HttpBody,
    ModelSpec,
    Plan,
    PlanError,
    SequenceControls,
    SequenceSpec,
    plan_models,
)
from volley.request import PoolDescription, RequestPool, build_plan_pool
from volley.sequence import id_text, probe_id
from volley.wire.payloads import Wire, build_payloads
from volley.wire.seqframe import HttpTemplate, http_step, step_body


class PreflightError(Exception):
    """The target or model is not usable as the plan says; the message says why."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    versions: tuple[str, ...]
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...]  #: (name, datatype, shape)
    outputs: tuple[str, ...]
    max_batch_size: int
    config: dict[str, Any]


def resolve_inputs(plan: Plan, info: ModelInfo, batch_size: int = 1) -> Plan:
    """Fill datatypes and dims from the model; user specs only say what to vary."""
    try:
        resolved = resolve_specs(
            plan, info.inputs, info.max_batch_size, info.name, default_batch=batch_size
        )
    except PlanError as exc:
        raise PreflightError(str(exc)) from None
    outputs = plan.outputs or info.outputs
    return dataclasses.replace(resolved, outputs=tuple(outputs))


def model_parameter(info: ModelInfo, key: str) -> str | None:
    """A `parameters { key: ... value: { string_value: ... } }` entry of the model config."""
    params = info.config.get("parameters") or {}
    value = params.get(key)
    if isinstance(value, dict) and isinstance(value.get("string_value"), str):
        return str(value["string_value"])
    return None


def check_limits(plan: Plan, draws: list[vin.Draw], info: ModelInfo) -> None:
    """What the plan can send must fit the server: the model's max_pixels parameter, the
    gRPC message limit (input_pool.max_request_bytes). PreflightError names the input.
    Bounds come from the distributions where they are finite, else from the draws."""
    batched = plan.max_batch_size > 0
    raw_limit = model_parameter(info, "max_pixels")
    if raw_limit is not None and draws:
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        for j, spec in enumerate(plan.inputs):
            if limit <= 0 or not vin.is_image_like(spec, batched):
                continue
            px, text = vin.max_pixels(plan, j, draws)
            if px > limit:
                size = text if text.endswith("pixels") else f"{text} = {px:.0f} pixels"
                raise PreflightError(
                    f"input {spec.name!r}: images reach {size}, over max_pixels {limit} "
                    f"of model {info.name!r} (config parameter); use smaller sizes"
                )
    max_req = plan.input_pool.max_request_bytes
    for j, spec in enumerate(plan.inputs):
        bound, text = vin.input_bytes_bound(plan, j, draws)
        if bound > max_req:
            raise PreflightError(
                f"input {spec.name!r}: requests reach {text} ({fmt_bytes(bound)}), over the "
                f"{fmt_bytes(max_req)} request limit (input_pool.max_request_bytes, the "
                "server's gRPC message size)"
            )


def check_pool(plan: Plan, pool: RequestPool) -> None:
    """The serialized requests themselves fit the request limit."""
    max_req = plan.input_pool.max_request_bytes
    if pool.payloads:
        big = max(pool.payloads, key=lambda p: p.req_bytes)
        if big.req_bytes > max_req:
            raise PreflightError(
                f"request {pool.shapes[big.shape_id]} is {fmt_bytes(big.req_bytes)}, over the "
                f"{fmt_bytes(max_req)} request limit (input_pool.max_request_bytes)"
            )


def sequence_controls(config: dict[str, Any]) -> tuple[SequenceControls, str] | None:
    """The control tensors of a model config's `sequence_batching` (None: the model has
    none) and the CORRID datatype ("" when not declared)."""
    sb = config.get("sequence_batching")
    if not isinstance(sb, dict):
        return None
    names: dict[str, str] = {}
    corrid_type = ""
    kinds = {
        "CONTROL_SEQUENCE_START": "start",
        "CONTROL_SEQUENCE_END": "end",
        "CONTROL_SEQUENCE_READY": "ready",
        "CONTROL_SEQUENCE_CORRID": "corrid",
    }
    for ci in sb.get("control_input") or []:
        if not isinstance(ci, dict):
            continue
        for ctl in ci.get("control") or []:
            if isinstance(ctl, dict) and ctl.get("kind") in kinds:
                names[kinds[ctl["kind"]]] = str(ci.get("name", ""))
                if ctl["kind"] == "CONTROL_SEQUENCE_CORRID":
                    corrid_type = str(ctl.get("data_type", ""))
    return SequenceControls(**names), corrid_type


def check_sequences(plan: Plan, info: ModelInfo) -> Plan:
    """A sequence-batched model needs `sequence` in the plan, and the plan's sequences
    a model that has a sequence batcher; the model's control tensors are recorded."""
    found = sequence_controls(info.config)
    if plan.sequence is None:
        if found is not None:
            raise PreflightError(
                f"model {info.name!r} is stateful (sequence_batching): its requests need "
                "correlation IDs; give --sequence-length (or plan.sequence)"
            )
        return plan
    if found is None:
        raise PreflightError(
            f"model {info.name!r} has no sequence_batching in its config: drop "
            "--sequence-length (plan.sequence) to send it independent requests"
        )
    controls, corrid_type = found
    if plan.sequence.id_type == "string" and corrid_type not in ("", "TYPE_STRING"):
        raise PreflightError(
            f"model {info.name!r} takes {corrid_type} correlation IDs: use "
            "--sequence-id-type uint64"
        )
    if plan.sequence.id_type == "uint64" and corrid_type == "TYPE_STRING":
        raise PreflightError(
            f"model {info.name!r} takes string correlation IDs: use --sequence-id-type string"
        )
    return dataclasses.replace(plan, sequence=dataclasses.replace(plan.sequence, controls=controls))


def ensemble_steps(config: dict[str, Any]) -> tuple[str, ...]:
    """The models an ensemble config's steps call, in order, each once."""
    sched = config.get("ensemble_scheduling")
    if not isinstance(sched, dict):
        return ()
    names = [
        str(st["model_name"])
        for st in sched.get("step") or []
        if isinstance(st, dict) and st.get("model_name")
    ]
    return tuple(dict.fromkeys(names))


def add_composing(plan: Plan, info: ModelInfo) -> Plan:
    """The plan's composing models: an ensemble's steps (from its config), then those
    the user named (--composing-models: a BLS model's callees Triton cannot tell)."""
    steps = ensemble_steps(info.config)
    if not steps and not plan.composing_models:
        return plan
    names = tuple(dict.fromkeys((*steps, *plan.composing_models)))
    return dataclasses.replace(plan, composing_models=names, ensemble_steps=steps)


def sequence_probe(spec: SequenceSpec, wire: Wire) -> Wire:
    """`wire` as a one-step sequence (START and END) on the preflight's own ID."""
    n = probe_id(spec)
    seq_id: int | str = id_text(spec, n) if spec.id_type == "string" else n
    if wire.head:  # HTTP
        head, body = http_step(HttpTemplate.of(wire.head), wire.body, seq_id, True, True)
        return dataclasses.replace(wire, head=head, body=body)
    return dataclasses.replace(wire, body=step_body(wire.msg, seq_id, True, True))


@dataclasses.dataclass
class PreflightResult:
    plan: Plan  #: resolved: inputs from the model, sources embedded
    pool: PoolDescription  #: RequestPool.describe() of the pool every worker builds
    model: ModelInfo


async def fetch_model_info(probe: Probe, plan: Plan, name: str, version: str) -> ModelInfo:
    """Model readiness, metadata and config through the plan's own protocol."""
    target = plan.target
    try:
        ready = await probe.model_ready(name, version)
    except ProbeError as exc:
        raise PreflightError(f"model {name!r} on {target}: {exc}") from None
    if not ready:
        names = await probe.ready_models()
        known = f" (ready models: {', '.join(names)})" if names else ""
        raise PreflightError(f"model {name!r} is not ready on {target}{known}")
    try:
        mname, versions, inputs, outputs = await probe.metadata(name, version)
        config = await probe.config(name, version)
    except ProbeError as exc:
        raise PreflightError(f"model {name!r} on {target}: {exc}") from None
    try:
        mbs = int(config.get("max_batch_size", 0) or 0)
    except (TypeError, ValueError):
        mbs = 0
    return ModelInfo(mname, versions, inputs, outputs, mbs, config)


#: What Triton's server metadata lists when it takes binary tensor data over HTTP.
BINARY_TENSOR_EXTENSION = "binary_tensor_data"


async def choose_http_body(probe: Probe) -> HttpBody:
    """HTTP bodies for `http_body: auto`: binary where the server lists Triton's binary
    tensor extension, else plain KServe v2 JSON (which every KServe v2 server takes)."""
    try:
        meta = await probe.server_metadata()
    except ProbeError:
        return "json"
    return "binary" if BINARY_TENSOR_EXTENSION in meta.get("extensions", []) else "json"
def is_decoupled(info: ModelInfo) -> bool:
    """Whether the model config says `model_transaction_policy { decoupled: true }`."""
    policy = info.config.get("model_transaction_policy")
    return isinstance(policy, dict) and policy.get("decoupled") is True


async def preflight(plan: Plan, timeout: float = 5.0) -> Plan:
    """Check the target and every model, resolve inputs, probe. Returns the resolved plan."""
    return (await preflight_check(plan, timeout)).plan


async def _preflight_model(
    probe: Probe, plan: Plan, m: ModelSpec
) -> tuple[ModelSpec, PoolDescription, ModelInfo]:
    """One model: metadata and config, inputs resolved and checked against the server's
    limits, its pool built as every worker will, and a probe with its largest payload."""
    info = await fetch_model_info(probe, plan, m.name, m.version)
    check_sequences(plan, info)  # before the probe: a stateful model refuses plain ones
    decoupled = plan.stream.decoupled or is_decoupled(info)
    if decoupled and plan.sequence is not None:
        raise PreflightError(
            f"model {m.name!r} is decoupled (streaming): sequences are not supported with it"
        )
    one = dataclasses.replace(
        plan,
        model=m.name,
        model_version=m.version,
        inputs=m.inputs,
        outputs=m.outputs,
        models=(),
        stream=dataclasses.replace(plan.stream, decoupled=decoupled),
    )
    one = resolve_inputs(one, info)
    try:
        one = vin.embed_sources(one)
        draws, _ = vin.draw_payloads(one, one.input_pool.payloads)
        check_limits(one, draws, info)
        pool = build_plan_pool(one)
    except PlanError as exc:
        raise PreflightError(str(exc)) from None
    check_pool(one, pool)
    described = pool.describe()
    del pool
    try:
        wires = build_payloads(one, headers=probe.headers).wires
    except PlanError as exc:
        raise PreflightError(str(exc)) from None
    # Probe with the largest payload: the one most likely to be refused.
    wire = max(wires, key=lambda w: w.req_bytes)
    if plan.sequence is not None:
        # a sequence of one step (START and END) on the ID no agent gets
        wire = sequence_probe(plan.sequence, wire)
    try:
        why = await (probe.decoupled_infer(wire) if decoupled else probe.infer(wire))
    except ProbeError as exc:
        why = str(exc)
    if why:
        binary = plan.protocol == "http" and plan.http_body == "binary"
        if binary and await choose_http_body(probe) == "json":
            why += (
                f" (the server does not list Triton's {BINARY_TENSOR_EXTENSION} "
                "extension: use --http-body json)"
            )
        raise PreflightError(
            f"model {m.name!r} rejected the probe request (the largest payload, "
            f"{fmt_bytes(wire.req_bytes)}): {why}"
        )
    if plan.transport == "stream" and not decoupled:  # the load's method, before any load
        why = await probe.stream_infer(wire)
        if why:
            raise PreflightError(
                f"transport 'stream' needs ModelStreamInfer on {plan.target}: {why}; "
                "use --transport unary"
            )
    resolved = dataclasses.replace(
        m, inputs=one.inputs, outputs=one.outputs, max_batch_size=one.max_batch_size
    )
    return resolved, described, info


def read_json_bodies(plan: Plan) -> Plan:
    """protocol json: the bodies file (JSON Lines: one JSON document a line, blank lines
    skipped) read here, on the coordinator, into the plan; agents never read files."""
    spec = plan.json_service
    if spec is None or spec.bodies or not spec.bodies_file:
        return plan
    from volley.plan.service import json_service_from

    try:
        with open(spec.bodies_file, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise PreflightError(f"json bodies file {spec.bodies_file}: {exc}") from None
    bodies = [line for line in lines if line]
    if not bodies:
        raise PreflightError(f"json bodies file {spec.bodies_file}: no bodies in it")
    raw = {
        "path": spec.path,
        "bodies": bodies,
        "bodies_file": spec.bodies_file,
        "expect_status": spec.expect_status,
        "expect_field": spec.expect_field,
    }
    try:
        checked = json_service_from(raw, plan.inputs)
    except PlanError as exc:
        raise PreflightError(f"json bodies file {spec.bodies_file}: {exc}") from None
    return dataclasses.replace(plan, json_service=checked)


async def _preflight_json(probe: Probe, plan: Plan) -> PreflightResult:
    """A plain JSON service: inputs take their datatype from the plan (FP32 by default)
    and their shape as given; the pool is built as every worker will, and its largest
    body is POSTed once and must be answered as the plan expects."""
    plan = read_json_bodies(plan)
    inputs = tuple(
        dataclasses.replace(s, datatype=s.datatype or "FP32", model_dims=s.shape)
        for s in plan.inputs
    )
    plan = dataclasses.replace(plan, inputs=inputs)
    try:
        plan = vin.embed_sources(plan)
        payloads = build_payloads(plan, headers=probe.headers)
    except PlanError as exc:
        raise PreflightError(str(exc)) from None
    pool = payloads.pools[0]
    check_pool(plan, pool)
    wire = max(payloads.wires, key=lambda w: w.req_bytes)
    try:
        why = await probe.infer(wire)
    except ProbeError as exc:
        why = str(exc)
    if why:
        raise PreflightError(
            f"{plan.target}{plan.json_service.path if plan.json_service else ''} refused the "
            f"probe request (the largest body, {fmt_bytes(wire.req_bytes)}): {why}"
        )
    info = ModelInfo(plan.model, (), (), (), 0, {})
    return PreflightResult(plan, pool.describe(), info)


async def preflight_check(plan: Plan, timeout: float = 5.0) -> PreflightResult:
    """Preflight over the plan's protocol, TLS and headers, for every model of the plan;
    also describes the payload pool of the (first) model."""
    try:
        probe = make_probe(plan, timeout)
    except PlanError as exc:
        raise PreflightError(str(exc)) from None
    try:
        try:
            await probe.open()
            if not await probe.live():
                raise PreflightError(f"target {plan.target}: server is not live")
            if not await probe.ready():
                raise PreflightError(f"target {plan.target}: server is not ready")
        except ProbeError as exc:
            raise PreflightError(
                str(exc) if str(exc).startswith("target") else f"target {plan.target}: {exc}"
            ) from None
        if plan.protocol == "json":
            return await _preflight_json(probe, plan)
        if plan.protocol == "http" and plan.http_body == "auto":
            plan = dataclasses.replace(plan, http_body=await choose_http_body(probe))
        results = [await _preflight_model(probe, plan, m) for m in plan_models(plan)]
    finally:
        await probe.close()
    models = tuple(r[0] for r in results)
    first, described, info = results[0]
    plan = check_sequences(plan, info)
    plan = add_composing(plan, info)
    if not plan.stream.decoupled and any(is_decoupled(r[2]) for r in results):
        # one stream transport for every model: a non-decoupled model answers once, with
        # the final flag, on it as well
        plan = dataclasses.replace(plan, stream=dataclasses.replace(plan.stream, decoupled=True))
    if plan.stream.decoupled and plan.compression != "none":
        raise PreflightError("compression: not supported with a decoupled (streaming) model")
    if plan.models:
        resolved = dataclasses.replace(
            plan, models=models, model=first.name, model_version=first.version
        )
    else:
        resolved = dataclasses.replace(
            plan,
            inputs=first.inputs,
            outputs=first.outputs,
            max_batch_size=first.max_batch_size,
        )
    return PreflightResult(resolved, described, info)
