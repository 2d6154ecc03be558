"""Preflight: before any load, check the target and resolve the plan's inputs.

Server live and ready, model ready, inputs resolved from the model's metadata
and config (names, datatypes, shapes, batch size), then one probe request built
by the shared request builder. Any failure is a PreflightError with one line.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import grpc
from tritonclient.grpc import service_pb2
from tritonclient.grpc import service_pb2_grpc as triton_grpc

from volley import inputs as vin
from volley.dist import fmt_bytes
from volley.inputs import resolve_specs
from volley.plan import Plan, PlanError
from volley.request import RequestPool, build_plan_pool, check_response


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


def _first_line(exc: grpc.aio.AioRpcError) -> str:
    text: str = exc.details() or exc.code().name
    return text.splitlines()[0]


async def fetch_model(
    stub: triton_grpc.GRPCInferenceServiceStub, plan: Plan, timeout: float
) -> ModelInfo:
    target, model = plan.target, plan.model
    try:
        live = await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        raise PreflightError(
            f"target {target}: not reachable over gRPC ({_first_line(exc)})"
        ) from None
    if not live.live:
        raise PreflightError(f"target {target}: server is not live")
    ready = await stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=timeout)
    if not ready.ready:
        raise PreflightError(f"target {target}: server is not ready")
    try:
        mready = await stub.ModelReady(
            service_pb2.ModelReadyRequest(name=model, version=plan.model_version), timeout=timeout
        )
    except grpc.aio.AioRpcError as exc:
        raise PreflightError(f"model {model!r} on {target}: {_first_line(exc)}") from None
    if not mready.ready:
        try:
            index = await stub.RepositoryIndex(
                service_pb2.RepositoryIndexRequest(ready=True), timeout=timeout
            )
            names = sorted({m.name for m in index.models})
        except grpc.aio.AioRpcError:
            names = []
        known = f" (ready models: {', '.join(names)})" if names else ""
        raise PreflightError(f"model {model!r} is not ready on {target}{known}")
    meta = await stub.ModelMetadata(
        service_pb2.ModelMetadataRequest(name=model, version=plan.model_version), timeout=timeout
    )
    cfg = await stub.ModelConfig(
        service_pb2.ModelConfigRequest(name=model, version=plan.model_version), timeout=timeout
    )
    from google.protobuf.json_format import MessageToDict

    config = MessageToDict(cfg.config, preserving_proto_field_name=True)
    return ModelInfo(
        name=meta.name,
        versions=tuple(meta.versions),
        inputs=tuple((t.name, t.datatype, tuple(int(d) for d in t.shape)) for t in meta.inputs),
        outputs=tuple(t.name for t in meta.outputs),
        max_batch_size=int(cfg.config.max_batch_size),
        config=config,
    )


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
    pool: dict[str, Any]  #: RequestPool.describe() of the pool every worker builds
    model: ModelInfo


async def preflight(plan: Plan, timeout: float = 5.0) -> Plan:
    """Check the target and model, resolve inputs, send one probe request. Returns the
    resolved plan."""
    return (await preflight_check(plan, timeout)).plan


async def preflight_check(plan: Plan, timeout: float = 5.0) -> PreflightResult:
    """Preflight, also describing the payload pool (built once here, as every worker will)."""
    if plan.protocol != "grpc":
        raise PreflightError(f"protocol {plan.protocol!r} is not supported by this build")
    async with grpc.aio.insecure_channel(plan.target) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout=timeout)
        except TimeoutError:
            raise PreflightError(
                f"target {plan.target}: no gRPC server answers (waited {timeout:g}s)"
            ) from None
        stub = triton_grpc.GRPCInferenceServiceStub(channel)
        info = await fetch_model(stub, plan, timeout)
        resolved = resolve_inputs(plan, info)
        try:
            resolved = vin.embed_sources(resolved)
            draws, _ = vin.draw_payloads(resolved, resolved.input_pool.payloads)
            check_limits(resolved, draws, info)
            pool = build_plan_pool(resolved)
        except PlanError as exc:
            raise PreflightError(str(exc)) from None
        check_pool(resolved, pool)
        # Probe with the largest payload: the one most likely to be refused.
        probe = max(pool.payloads, key=lambda p: p.req_bytes)
        probe_text = f"{pool.shapes[probe.shape_id]}, {fmt_bytes(probe.req_bytes)}"
        described = pool.describe()
        del pool
        method = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            body = await method(probe.body, timeout=max(timeout, plan.timeout_s))
        except grpc.aio.AioRpcError as exc:
            raise PreflightError(
                f"model {plan.model!r} rejected the probe request (the largest payload: "
                f"{probe_text}): {_first_line(exc)}"
            ) from None
        if not check_response(body, len(resolved.outputs)):
            raise PreflightError(f"model {plan.model!r}: probe response lacks its outputs")
        return PreflightResult(resolved, described, info)
