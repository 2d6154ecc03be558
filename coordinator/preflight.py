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
from volley.plan import ModelSpec, Plan, PlanError, plan_models
from volley.request import PoolDescription, RequestPool, build_plan_pool
from volley.wire.payloads import build_payloads


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
    decoupled = plan.stream.decoupled or is_decoupled(info)
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
    try:
        why = await (probe.stream_infer(wire) if decoupled else probe.infer(wire))
    except ProbeError as exc:
        why = str(exc)
    if why:
        raise PreflightError(
            f"model {m.name!r} rejected the probe request (the largest payload, "
            f"{fmt_bytes(wire.req_bytes)}): {why}"
        )
    resolved = dataclasses.replace(
        m, inputs=one.inputs, outputs=one.outputs, max_batch_size=one.max_batch_size
    )
    return resolved, described, info


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
        results = [await _preflight_model(probe, plan, m) for m in plan_models(plan)]
    finally:
        await probe.close()
    models = tuple(r[0] for r in results)
    first, described, info = results[0]
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
