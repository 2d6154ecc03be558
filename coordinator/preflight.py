"""Preflight: before any load, check the target and resolve the plan's inputs.

Server live and ready, model ready, inputs resolved from the model's metadata
and config (names, datatypes, shapes, batch size), then one probe request built
by the shared request builder. Any failure is a PreflightError with one line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
from tritonclient.grpc import service_pb2
from tritonclient.grpc import service_pb2_grpc as triton_grpc

from coordinator.probe import Probe, ProbeError, make_probe
from volley.plan import InputSpec, ModelSpec, Plan, PlanError, plan_models
from volley.request import DTYPES


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


async def preflight(plan: Plan, timeout: float = 5.0) -> Plan:
    """Check the target and every model, resolve inputs, send one probe request per model
    over the plan's protocol, TLS and headers. Returns the resolved plan."""
    from agent.transport import build_payloads

    try:
        probe = make_probe(plan, timeout)
    except PlanError as exc:
        raise PreflightError(str(exc)) from None
    try:
        try:
            await probe.open()
            live = await probe.live()
            if not live:
                raise PreflightError(f"target {plan.target}: server is not live")
            if not await probe.ready():
                raise PreflightError(f"target {plan.target}: server is not ready")
        except ProbeError as exc:
            raise PreflightError(
                str(exc) if str(exc).startswith("target") else f"target {plan.target}: {exc}"
            ) from None
        resolved_models: list[ModelSpec] = []
        for m in plan_models(plan):
            info = await fetch_model_info(probe, plan, m.name, m.version)
            one = dataclasses.replace(
                plan,
                model=m.name,
                model_version=m.version,
                inputs=m.inputs,
                outputs=m.outputs,
                models=(),
            )
            one = resolve_inputs(one, info)
            try:
                wires = build_payloads(one, one.seed).wires
                wire = wires[0]
            except PlanError as exc:
                raise PreflightError(str(exc)) from None
            try:
                why = await probe.infer(wire)
            except ProbeError as exc:
                why = str(exc)
            if why:
                raise PreflightError(f"model {m.name!r} rejected the probe request: {why}")
            resolved_models.append(
                dataclasses.replace(
                    m,
                    inputs=one.inputs,
                    outputs=one.outputs,
                    max_batch_size=one.max_batch_size,
                )
            )
    finally:
        await probe.close()
    if plan.models:
        first = resolved_models[0]
        return dataclasses.replace(
            plan,
            models=tuple(resolved_models),
            model=first.name,
            model_version=first.version,
        )
    only = resolved_models[0]
    return dataclasses.replace(
        plan, inputs=only.inputs, outputs=only.outputs, max_batch_size=only.max_batch_size
    )
