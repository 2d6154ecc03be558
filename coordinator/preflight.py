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

from volley.plan import InputSpec, Plan, PlanError
from volley.request import DTYPES, build_pool, check_response


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
    """Fill datatypes and shapes from the model; user specs only say what to vary."""
    given = {s.name: s for s in plan.inputs}
    names = {n for n, _, _ in info.inputs}
    unknown = sorted(set(given) - names)
    if unknown:
        raise PreflightError(
            f"input {unknown[0]!r} is not an input of model {info.name!r} "
            f"(its inputs: {', '.join(sorted(names))})"
        )
    resolved: list[InputSpec] = []
    for name, datatype, mshape in info.inputs:
        spec = given.get(name, InputSpec(name=name))
        if spec.datatype and spec.datatype != datatype:
            raise PreflightError(
                f"input {name!r}: plan says {spec.datatype}, model expects {datatype}"
            )
        if datatype not in DTYPES and datatype != "BYTES":
            raise PreflightError(f"input {name!r}: datatype {datatype} is not supported")
        dims = list(mshape)
        if info.max_batch_size > 0 and dims and dims[0] == -1:
            dims[0] = batch_size
        if spec.shape:
            if len(spec.shape) != len(dims):
                raise PreflightError(
                    f"input {name!r}: shape {list(spec.shape)} has rank {len(spec.shape)}, "
                    f"model expects rank {len(dims)} {list(mshape)}"
                )
            for i, (want, have) in enumerate(zip(spec.shape, dims, strict=True)):
                if have != -1 and want != have and not (i == 0 and info.max_batch_size > 0):
                    raise PreflightError(
                        f"input {name!r}: dim {i} is {want}, model expects "
                        f"{have} (model shape {list(mshape)})"
                    )
            if info.max_batch_size > 0 and spec.shape[0] > info.max_batch_size:
                raise PreflightError(
                    f"input {name!r}: batch {spec.shape[0]} is over the "
                    f"model's max_batch_size {info.max_batch_size}"
                )
            dims = list(spec.shape)
        elif any(d < 0 for d in dims):
            raise PreflightError(
                f"input {name!r} has dynamic dims {list(mshape)}: give a shape, e.g. "
                f"--shape {name}={'x'.join('224' if d < 0 else str(d) for d in dims)}"
            )
        resolved.append(dataclasses.replace(spec, datatype=datatype, shape=tuple(dims)))
    outputs = plan.outputs or info.outputs
    return dataclasses.replace(
        plan, inputs=tuple(resolved), outputs=tuple(outputs), max_batch_size=info.max_batch_size
    )


async def preflight(plan: Plan, timeout: float = 5.0) -> Plan:
    """Check the target and model, resolve inputs, send one probe request. Returns the
    resolved plan."""
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
            pool = build_pool(
                resolved.model,
                resolved.model_version,
                resolved.inputs,
                resolved.outputs,
                seed=resolved.seed,
                variants=1,
                batched=resolved.max_batch_size > 0,
            )
        except PlanError as exc:
            raise PreflightError(str(exc)) from None
        method = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            body = await method(pool.payloads[0].body, timeout=max(timeout, plan.timeout_s))
        except grpc.aio.AioRpcError as exc:
            raise PreflightError(
                f"model {plan.model!r} rejected the probe request: {_first_line(exc)}"
            ) from None
        if not check_response(body, len(resolved.outputs)):
            raise PreflightError(f"model {plan.model!r}: probe response lacks its outputs")
        return resolved
