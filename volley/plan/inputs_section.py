"""The plan's `inputs`, `pool` and `models` sections: tensor specs (datatype, shape,
source, data items), the payload pool's bounds, and the models a run mixes.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, cast

from volley.dist import (
    DistError,
    canonical,
    parse_bytes,
    parse_dims_pattern,
    parse_shapes,
)
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
from volley.plan.spec import (
    GRPC_MAX_MESSAGE_BYTES,
    MAX_DIMS,
    MAX_POOL_BYTES,
    MAX_POOL_PAYLOADS,
    SOURCES,
    VARY_KEYS,
    DataItem,
    InputSpec,
    ModelSpec,
    PlanError,
    PoolSpec,
)
from volley.shown import clipped, shown

#: KServe v2 datatypes volley sends ("" in a plan: taken from the model in preflight).
DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)
#: Dims are int64 on the wire (model_dims: -1 = dynamic).
MAX_DIM = 2**63 - 1


def _item(raw: object, where: str) -> DataItem:
    d = as_dict(raw, where)
    check_keys(d, {"kind", "data", "shape", "name"}, where)
    kind = get_choice(d, "kind", where, "raw", ("image", "npy", "raw", "tensor"))
    shape = as_list(d.get("shape"), f"{where}.shape")
    if any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= MAX_DIM for x in shape):
        raise PlanError(f"{where}.shape: expected integers from 0 to 2^63-1")
    if len(shape) > MAX_DIMS:
        raise PlanError(f"{where}.shape: more than {MAX_DIMS} dimensions")
    return DataItem(
        kind=cast(Any, kind),
        data=get_str(d, "data", where, ""),
        shape=tuple(shape),
        name=get_str(d, "name", where, ""),
    )


def _input(raw: object, i: int) -> InputSpec:
    where = f"inputs[{i}]"
    d = as_dict(raw, where)
    check_keys(d, {f.name for f in fields(InputSpec)}, where)
    name = get_str(d, "name", where, "")
    if not name and d.get("source") != "prompts":
        raise PlanError(f"{where}.name: required")
    where = f"input {clipped(name, 60)}"
    shape_raw = as_list(d.get("shape"), f"{where}.shape")
    if len(shape_raw) > MAX_DIMS:
        raise PlanError(f"{where}.shape: more than {MAX_DIMS} dimensions")
    shape: list[int] = []
    for j, dim in enumerate(shape_raw):
        if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim <= MAX_DIM:
            raise PlanError(
                f"{where}.shape[{j}]: expected an integer from 0 to 2^63-1, got {shown(dim)}"
            )
        shape.append(dim)
    value = d.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float | str)):
        raise PlanError(f"{where}.value: expected a number or string, got {shown(value)}")
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        raise PlanError(f"{where}.value: out of the 64-bit range, got {shown(value)}")
    datatype = get_str(d, "datatype", where, "")
    if datatype and datatype not in DATATYPES:
        raise PlanError(
            f"{where}.datatype: {shown(datatype)} is not a datatype volley sends "
            f"({', '.join(DATATYPES)})"
        )
    model_dims = as_list(d.get("model_dims"), f"{where}.model_dims")
    if len(model_dims) > MAX_DIMS + 1:
        raise PlanError(f"{where}.model_dims: more than {MAX_DIMS + 1} dimensions")
    for j, dim in enumerate(model_dims):
        if isinstance(dim, bool) or not isinstance(dim, int) or not -1 <= dim <= MAX_DIM:
            raise PlanError(
                f"{where}.model_dims[{j}]: expected an integer from -1 (dynamic) to 2^63-1, "
                f"got {shown(dim)}"
            )
    source = get_choice(d, "source", where, "random", SOURCES)
    dims_raw = d.get("dims")
    dims: list[str] = []
    try:
        if isinstance(dims_raw, str):
            dims = parse_dims_pattern(dims_raw)
        else:
            dims = [canonical(x) for x in as_list(dims_raw, f"{where}.dims")]
        shapes = (
            [str(s) for s in parse_shapes(as_list(d.get("shapes"), f"{where}.shapes"))]
            if d.get("shapes")
            else []
        )
    except DistError as exc:
        key = "dims" if not dims and dims_raw else "shapes"
        raise PlanError(f"{where}.{key}: {exc}") from None
    spec = InputSpec(
        name=name,
        datatype=datatype,
        shape=tuple(shape),
        source=cast(Any, source),
        value=value,
        dims=tuple(dims),
        shapes=tuple(shapes),
        pixels=get_dist_text(d, "pixels", where),
        aspect=get_dist_text(d, "aspect", where),
        layout=get_choice(d, "layout", where, "", ("", "HWC", "CHW", "HW")),
        length=get_dist_text(d, "length", where),
        path=get_str(d, "path", where, ""),
        items=tuple(
            _item(x, f"{where}.items[{j}]") for j, x in enumerate(as_list(d.get("items"), where))
        ),
        model_dims=tuple(model_dims),
    )
    varying = [k for k in VARY_KEYS if getattr(spec, k)]
    if len(varying) > 1:
        raise PlanError(f"{where}: give one of dims, shapes, pixels (got {', '.join(varying)})")
    if varying and spec.shape:
        raise PlanError(f"{where}: give either a fixed shape or {varying[0]}, not both")
    if spec.aspect and not spec.pixels:
        raise PlanError(f"{where}.aspect: needs pixels (the image area) too")
    if spec.source in ("files", "json", "prompts") and not spec.path and not spec.items:
        raise PlanError(f"{where}: source {spec.source} needs a path")
    if spec.source in ("json", "prompts") and varying:
        raise PlanError(f"{where}: a JSON input-data file gives its own shapes ({varying[0]})")
    if spec.source == "constant" and spec.value is None:
        raise PlanError(f"{where}: source constant needs a value")
    return spec


def inputs_section(raw: object) -> tuple[InputSpec, ...]:
    specs = tuple(_input(x, i) for i, x in enumerate(as_list(raw, "plan.inputs")))
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise PlanError(f"input {s.name}: given twice in plan.inputs")
        seen.add(s.name)
    return specs


def pool_section(raw: object) -> PoolSpec:
    d = as_dict(raw, "plan.input_pool")
    check_keys(d, {f.name for f in fields(PoolSpec)}, "plan.input_pool")
    default = PoolSpec()
    payloads = get_int(d, "payloads", "plan.input_pool", default.payloads)
    if not 1 <= payloads <= MAX_POOL_PAYLOADS:
        raise PlanError(f"plan.input_pool.payloads: must be between 1 and {MAX_POOL_PAYLOADS}")
    try:
        max_bytes = parse_bytes(d.get("max_bytes", default.max_bytes))
        max_req = parse_bytes(d.get("max_request_bytes", default.max_request_bytes))
    except DistError as exc:
        raise PlanError(f"plan.input_pool: {exc}") from None
    if not 1024 <= max_bytes <= MAX_POOL_BYTES:
        raise PlanError(f"plan.input_pool.max_bytes: must be between 1kB and {MAX_POOL_BYTES}")
    if not 64 <= max_req <= GRPC_MAX_MESSAGE_BYTES:
        raise PlanError(
            f"plan.input_pool.max_request_bytes: must be between 64 and {GRPC_MAX_MESSAGE_BYTES}"
        )
    return PoolSpec(payloads=payloads, max_bytes=max_bytes, max_request_bytes=max_req)


def model_section(raw: object, i: int) -> ModelSpec:
    where = f"plan.models[{i}]"
    if isinstance(raw, str):
        raw = {"name": raw}
    d = as_dict(raw, where)
    check_keys(d, {"name", "version", "weight", "inputs", "outputs", "max_batch_size"}, where)
    name = get_str(d, "name", where, "")
    if not name:
        raise PlanError(f"{where}.name: required")
    weight = get_num(d, "weight", where, 1.0)
    if not 0 < weight <= 1e6:
        raise PlanError(f"{where}.weight: must be > 0 and at most 1e6")
    return ModelSpec(
        name=name,
        version=get_str(d, "version", where, ""),
        weight=weight,
        inputs=tuple(
            _input(x, j) for j, x in enumerate(as_list(d.get("inputs"), f"{where}.inputs"))
        ),
        outputs=as_str_list(d.get("outputs"), f"{where}.outputs"),
        max_batch_size=get_int(d, "max_batch_size", where, 0),
    )
