"""Plan documents (YAML, JSON mappings) to a validated Plan; PlanError names the bad field."""

from __future__ import annotations

import math
import re
from dataclasses import fields
from typing import Any, cast

import yaml

from volley.dist import (
    DistError,
    canonical,
    parse_bytes,
    parse_dims_pattern,
    parse_dist,
    parse_shapes,
)
from volley.plan.service import json_service_from
from volley.plan.spec import (
    GRPC_MAX_MESSAGE_BYTES,
    MAX_BACKLOG,
    MAX_CONCURRENCY,
    MAX_DIMS,
    MAX_DURATION_S,
    MAX_IN_FLIGHT,
    MAX_INPUTS,
    MAX_LIVE_SEQUENCES,
    MAX_NAME_CHARS,
    MAX_NAMES,
    MAX_POOL_BYTES,
    MAX_POOL_PAYLOADS,
    MAX_RATE,
    MAX_SEND_HORIZON_US,
    MAX_SEQUENCE_ID,
    MAX_SEQUENCE_LENGTH,
    MAX_STAGES,
    MAX_TIMEOUT_S,
    MAX_TRACE_ENTRIES,
    SOURCES,
    VARY_KEYS,
    AgentSpec,
    Arrival,
    Compression,
    DataItem,
    HeaderSpec,
    HttpBody,
    InputSpec,
    LoadSpec,
    Mode,
    ModelSpec,
    Plan,
    PlanError,
    PoolSpec,
    Protocol,
    SequenceControls,
    SequenceSpec,
    StageSpec,
    StreamSpec,
    TlsSpec,
    TraceSpec,
    Transport,
    ValiditySpec,
)
from volley.plan.text import parse_address, parse_duration
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
#: HOST:PORT: a DNS name is at most 253 characters.
MAX_ADDRESS_CHARS = 300


def _check_keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed, key=shown)
    if unknown:
        names = [
            clipped(k, 60) if isinstance(k, str) and k.isprintable() else shown(k, 60)
            for k in unknown
        ]
        more = f" and {len(names) - 8} more" if len(names) > 8 else ""
        raise PlanError(f"{where}: unknown key(s) {', '.join(names[:8])}{more}")


def _num(data: dict[str, Any], key: str, where: str, default: float) -> float:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise PlanError(f"{where}.{key}: expected a number, got {shown(v)}")
    try:
        number = float(v)
    except OverflowError:  # an int beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise PlanError(f"{where}.{key}: expected a finite number, got {shown(v)}")
    return number


def _int(data: dict[str, Any], key: str, where: str, default: int) -> int:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        raise PlanError(f"{where}.{key}: expected an integer, got {shown(v)}")
    return v


def _str(data: dict[str, Any], key: str, where: str, default: str) -> str:
    v = data.get(key, default)
    if not isinstance(v, str):
        raise PlanError(f"{where}.{key}: expected a string, got {shown(v)}")
    return v


def _choice(
    data: dict[str, Any], key: str, where: str, default: str, options: tuple[str, ...]
) -> str:
    v = _str(data, key, where, default)
    if v not in options:
        raise PlanError(f"{where}.{key}: must be one of {', '.join(options)}, got {shown(v)}")
    return v


def _dict(v: object, where: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise PlanError(f"{where}: expected a mapping, got {type(v).__name__}")
    return cast(dict[str, Any], v)


def _list(v: object, where: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list | tuple):
        raise PlanError(f"{where}: expected a list, got {type(v).__name__}")
    return list(v)


def _stage(raw: object, i: int, key: str) -> StageSpec:
    where = f"load.stages[{i}]"
    d = _dict(raw, where)
    _check_keys(d, {"duration", "duration_s", key, "target"}, where)
    dur = parse_duration(d.get("duration", d.get("duration_s", 0)), f"{where}.duration")
    if key in d:
        target = _num(d, key, where, 0.0)
    elif "target" in d:
        target = _num(d, "target", where, 0.0)
    else:
        raise PlanError(f"{where}: needs '{key}'")
    if target < 0:
        raise PlanError(f"{where}.{key}: must be >= 0")
    return StageSpec(dur, target)


def _load(raw: object) -> LoadSpec:
    d = _dict(raw, "load")
    allowed = {f.name for f in fields(LoadSpec)} | {"duration", "warmup"}
    _check_keys(d, allowed, "load")
    mode = cast(Mode, _choice(d, "mode", "load", "open", ("open", "closed")))
    arrival = cast(
        Arrival, _choice(d, "arrival", "load", "constant", ("constant", "poisson", "trace"))
    )
    stage_key = "rate" if mode == "open" else "concurrency"
    stages = tuple(
        _stage(s, i, stage_key) for i, s in enumerate(_list(d.get("stages"), "load.stages"))
    )
    duration_s = parse_duration(d.get("duration", d.get("duration_s", 30.0)), "load.duration")
    raw_warmup = d.get("warmup", d.get("warmup_s", 0.0))
    warmup_auto = raw_warmup == "auto" or d.get("warmup_auto") is True
    warmup_s = 0.0 if raw_warmup == "auto" else parse_duration(raw_warmup, "load.warmup")
    trace: TraceSpec | None = None
    if d.get("trace") is not None:
        t = _dict(d["trace"], "load.trace")
        _check_keys(t, {f.name for f in fields(TraceSpec)}, "load.trace")
        times = _list(t.get("times_ns"), "load.trace.times_ns")
        if len(times) > MAX_TRACE_ENTRIES:
            raise PlanError(f"load.trace: more than {MAX_TRACE_ENTRIES} entries")
        times_ns = _trace_times(times)
        trace = TraceSpec(
            file=_str(t, "file", "load.trace", ""),
            format=cast(
                Any, _choice(t, "format", "load.trace", "timestamps", ("timestamps", "gaps"))
            ),
            unit=cast(Any, _choice(t, "unit", "load.trace", "s", ("s", "ms", "us", "ns"))),
            speed=_num(t, "speed", "load.trace", 1.0),
            times_ns=times_ns,
        )
        if trace.speed <= 0:
            raise PlanError("load.trace.speed: must be > 0")
    spec = LoadSpec(
        mode=mode,
        arrival=arrival,
        rate=_num(d, "rate", "load", 0.0),
        concurrency=_int(d, "concurrency", "load", 0),
        stages=stages,
        duration_s=duration_s,
        warmup_s=warmup_s,
        warmup_auto=warmup_auto,
        max_in_flight=_int(d, "max_in_flight", "load", 1024),
        max_backlog=_int(d, "max_backlog", "load", 10_000),
        spin_us=_num(d, "spin_us", "load", 0.0),
        trace=trace,
        timer=cast(Any, _choice(d, "timer", "load", "precise", ("precise", "loop"))),
        send_horizon_us=_num(d, "send_horizon_us", "load", 200.0),
    )
    _validate_load(spec)
    return spec


def _trace_times(raw: list[Any]) -> tuple[int, ...]:
    """Trace arrival times: integer nanoseconds, >= 0, non-decreasing."""
    out: list[int] = []
    prev = 0
    for i, x in enumerate(raw):
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise PlanError(
                f"load.trace.times_ns[{i}]: expected integer nanoseconds, got {shown(x)}"
            )
        if isinstance(x, float) and not (math.isfinite(x) and x.is_integer()):
            raise PlanError(
                f"load.trace.times_ns[{i}]: expected integer nanoseconds, got {shown(x)}"
            )
        v = int(x)
        if v < prev or v > 2**62:
            raise PlanError(
                f"load.trace.times_ns[{i}]: times must be >= 0, non-decreasing and < 2^62"
            )
        out.append(v)
        prev = v
    return tuple(out)


def _str_list(v: object, where: str, limit: int = MAX_NAMES) -> tuple[str, ...]:
    items = _list(v, where)
    if len(items) > limit:
        raise PlanError(f"{where}: more than {limit} entries")
    for i, x in enumerate(items):
        if not isinstance(x, str):
            raise PlanError(f"{where}[{i}]: expected a string, got {type(x).__name__}")
    return tuple(items)


def _validate_load(s: LoadSpec) -> None:
    if s.mode == "open":
        if s.arrival == "trace":
            if s.trace is None:
                raise PlanError("load.trace: arrival 'trace' needs a trace file")
        elif not s.stages and s.rate <= 0:
            raise PlanError("load.rate: open-loop load needs a rate > 0 (or stages)")
        if s.rate > MAX_RATE or any(st.target > MAX_RATE for st in s.stages):
            raise PlanError(f"load.rate: above the hard limit of {MAX_RATE:g}/s")
    else:
        if not s.stages and s.concurrency <= 0:
            raise PlanError(
                "load.concurrency: closed-loop load needs a concurrency > 0 (or stages)"
            )
        if s.concurrency > MAX_CONCURRENCY or any(st.target > MAX_CONCURRENCY for st in s.stages):
            raise PlanError(f"load.concurrency: above the hard limit of {MAX_CONCURRENCY}")
    if s.arrival != "trace" and s.total_s <= 0:
        raise PlanError("load.duration: must be > 0")
    if s.total_s > MAX_DURATION_S:
        raise PlanError(f"load.duration: above the hard limit of {MAX_DURATION_S:g}s")
    if s.warmup_auto and (s.stages or s.trace is not None):
        raise PlanError("load.warmup: 'auto' needs a steady load (no stages or trace)")
    if s.warmup_s >= s.total_s > 0:
        raise PlanError("load.warmup: must be shorter than the duration")
    if len(s.stages) > MAX_STAGES:
        raise PlanError(f"load.stages: more than {MAX_STAGES} stages")
    if s.max_in_flight < 0 or s.max_in_flight > MAX_IN_FLIGHT:
        raise PlanError(f"load.max_in_flight: must be between 0 and {MAX_IN_FLIGHT}")
    if not 0 <= s.spin_us <= 100_000:
        raise PlanError("load.spin_us: must be between 0 and 100000")
    if not 0 <= s.send_horizon_us <= MAX_SEND_HORIZON_US:
        raise PlanError(
            f"load.send_horizon_us: must be between 0 and {MAX_SEND_HORIZON_US:g} "
            "(a send is never more than 1 ms early)"
        )
    if s.max_backlog < 0 or s.max_backlog > MAX_BACKLOG:
        raise PlanError(f"load.max_backlog: must be between 0 and {MAX_BACKLOG}")


def _dist_text(d: dict[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if v is None or v == "":
        return ""
    try:
        return canonical(v)
    except DistError as exc:
        raise PlanError(f"{where}.{key}: {exc}") from None


def _item(raw: object, where: str) -> DataItem:
    d = _dict(raw, where)
    _check_keys(d, {"kind", "data", "shape", "name"}, where)
    kind = _choice(d, "kind", where, "raw", ("image", "npy", "raw", "tensor"))
    shape = _list(d.get("shape"), f"{where}.shape")
    if any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= MAX_DIM for x in shape):
        raise PlanError(f"{where}.shape: expected integers from 0 to 2^63-1")
    if len(shape) > MAX_DIMS:
        raise PlanError(f"{where}.shape: more than {MAX_DIMS} dimensions")
    return DataItem(
        kind=cast(Any, kind),
        data=_str(d, "data", where, ""),
        shape=tuple(shape),
        name=_str(d, "name", where, ""),
    )


def _input(raw: object, i: int) -> InputSpec:
    where = f"inputs[{i}]"
    d = _dict(raw, where)
    _check_keys(d, {f.name for f in fields(InputSpec)}, where)
    name = _str(d, "name", where, "")
    if not name and d.get("source") != "prompts":
        raise PlanError(f"{where}.name: required")
    where = f"input {clipped(name, 60)}"
    shape_raw = _list(d.get("shape"), f"{where}.shape")
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
    datatype = _str(d, "datatype", where, "")
    if datatype and datatype not in DATATYPES:
        raise PlanError(
            f"{where}.datatype: {shown(datatype)} is not a datatype volley sends "
            f"({', '.join(DATATYPES)})"
        )
    model_dims = _list(d.get("model_dims"), f"{where}.model_dims")
    if len(model_dims) > MAX_DIMS + 1:
        raise PlanError(f"{where}.model_dims: more than {MAX_DIMS + 1} dimensions")
    for j, dim in enumerate(model_dims):
        if isinstance(dim, bool) or not isinstance(dim, int) or not -1 <= dim <= MAX_DIM:
            raise PlanError(
                f"{where}.model_dims[{j}]: expected an integer from -1 (dynamic) to 2^63-1, "
                f"got {shown(dim)}"
            )
    source = _choice(d, "source", where, "random", SOURCES)
    dims_raw = d.get("dims")
    dims: list[str] = []
    try:
        if isinstance(dims_raw, str):
            dims = parse_dims_pattern(dims_raw)
        else:
            dims = [canonical(x) for x in _list(dims_raw, f"{where}.dims")]
        shapes = (
            [str(s) for s in parse_shapes(_list(d.get("shapes"), f"{where}.shapes"))]
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
        pixels=_dist_text(d, "pixels", where),
        aspect=_dist_text(d, "aspect", where),
        layout=_choice(d, "layout", where, "", ("", "HWC", "CHW", "HW")),
        length=_dist_text(d, "length", where),
        path=_str(d, "path", where, ""),
        items=tuple(
            _item(x, f"{where}.items[{j}]") for j, x in enumerate(_list(d.get("items"), where))
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


def _inputs(raw: object) -> tuple[InputSpec, ...]:
    specs = tuple(_input(x, i) for i, x in enumerate(_list(raw, "plan.inputs")))
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise PlanError(f"input {s.name}: given twice in plan.inputs")
        seen.add(s.name)
    return specs


def _pool(raw: object) -> PoolSpec:
    d = _dict(raw, "plan.input_pool")
    _check_keys(d, {f.name for f in fields(PoolSpec)}, "plan.input_pool")
    default = PoolSpec()
    payloads = _int(d, "payloads", "plan.input_pool", default.payloads)
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


_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
#: Set by volley itself; a plan may not override them.
RESERVED_HEADERS = {
    "host",
    "content-type",
    "content-length",
    "te",
    "connection",
    "transfer-encoding",
    "inference-header-content-length",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "content-encoding",
    "accept-encoding",
}


def _tls(raw: object) -> TlsSpec | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        return TlsSpec(enabled=True)
    d = _dict(raw, "plan.tls")
    _check_keys(d, {f.name for f in fields(TlsSpec)}, "plan.tls")
    enabled = d.get("enabled", True)
    verify = d.get("verify", True)
    if not isinstance(enabled, bool) or not isinstance(verify, bool):
        raise PlanError("plan.tls.enabled / plan.tls.verify: expected true or false")
    spec = TlsSpec(
        enabled=enabled,
        ca=_str(d, "ca", "plan.tls", ""),
        cert=_str(d, "cert", "plan.tls", ""),
        key=_str(d, "key", "plan.tls", ""),
        server_name=_str(d, "server_name", "plan.tls", ""),
        verify=verify,
    )
    if bool(spec.cert) != bool(spec.key):
        raise PlanError("plan.tls: a client certificate needs its key (cert and key together)")
    return spec if spec.enabled else None


_SECRET_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")


def _header(raw: object, i: int) -> HeaderSpec:
    where = f"plan.headers[{i}]"
    d = _dict(raw, where)
    _check_keys(d, {"name", "value", "env", "file", "secret"}, where)
    name = _str(d, "name", where, "")
    if not _HEADER_NAME_RE.match(name):
        raise PlanError(f"{where}.name: not a valid header name: {shown(name)}")
    if name.lower() in RESERVED_HEADERS or name.lower().startswith("grpc-"):
        raise PlanError(f"{where}.name: {shown(name)} is set by volley itself")
    spec = HeaderSpec(
        name=name,
        value=_str(d, "value", where, ""),
        env=_str(d, "env", where, ""),
        file=_str(d, "file", where, ""),
        secret=_str(d, "secret", where, ""),
    )
    sources = sum(bool(x) for x in (spec.value, spec.env, spec.file))
    if sources != 1 and not (spec.secret and sources == 0):
        raise PlanError(f"{where}: give exactly one of value, env, file or secret")
    if spec.secret and spec.value:
        raise PlanError(f"{where}: a secret (the agent's) goes with env or file, not value")
    if spec.secret and not _SECRET_NAME_RE.match(spec.secret):
        raise PlanError(f"{where}.secret: a name is 1-64 letters, digits, '_', '-' or '.'")
    if any(c in spec.value for c in "\r\n\0"):
        raise PlanError(f"{where}.value: control characters are not allowed")
    return spec


def _model(raw: object, i: int) -> ModelSpec:
    where = f"plan.models[{i}]"
    if isinstance(raw, str):
        raw = {"name": raw}
    d = _dict(raw, where)
    _check_keys(d, {"name", "version", "weight", "inputs", "outputs", "max_batch_size"}, where)
    name = _str(d, "name", where, "")
    if not name:
        raise PlanError(f"{where}.name: required")
    weight = _num(d, "weight", where, 1.0)
    if not 0 < weight <= 1e6:
        raise PlanError(f"{where}.weight: must be > 0 and at most 1e6")
    return ModelSpec(
        name=name,
        version=_str(d, "version", where, ""),
        weight=weight,
        inputs=tuple(_input(x, j) for j, x in enumerate(_list(d.get("inputs"), f"{where}.inputs"))),
        outputs=_str_list(d.get("outputs"), f"{where}.outputs"),
        max_batch_size=_int(d, "max_batch_size", where, 0),
    )


def _id_pair(v: object, where: str) -> tuple[int, int]:
    pair = _list(v, where)
    if len(pair) != 2 or any(isinstance(x, bool) or not isinstance(x, int) for x in pair):
        raise PlanError(f"{where}: expected [lo, hi), two integers, got {shown(v)}")
    lo, hi = int(pair[0]), int(pair[1])
    if not 1 <= lo < hi <= MAX_SEQUENCE_ID:
        raise PlanError(f"{where}: need 1 <= lo < hi <= 2^63-1, got [{lo}, {hi})")
    return lo, hi


def _sequence(raw: object) -> SequenceSpec | None:
    """plan.sequence: stateful sequences (see SequenceSpec)."""
    if raw is None or raw is False:
        return None
    where = "plan.sequence"
    d = {} if raw is True else _dict(raw, where)
    _check_keys(d, {f.name for f in fields(SequenceSpec)}, where)
    default = SequenceSpec()
    length = _dist_text(d, "length", where) or default.length
    think = _dist_text(d, "think_ms", where) or default.think_ms
    ln, th = parse_dist(length), parse_dist(think)
    if ln.min() < 1 or ln.max() > MAX_SEQUENCE_LENGTH:
        raise PlanError(f"{where}.length: steps must be from 1 to {MAX_SEQUENCE_LENGTH}")
    if th.min() < 0 or th.max() > 3_600_000:
        raise PlanError(f"{where}.think_ms: must be from 0 to 3600000 ms")
    id_type = _choice(d, "id_type", where, default.id_type, ("uint64", "string"))
    prefix = _str(d, "id_prefix", where, default.id_prefix)
    if len(prefix) > 64 or not prefix.isprintable():
        raise PlanError(f"{where}.id_prefix: at most 64 printable characters")
    id_range = _id_pair(d["id_range"], f"{where}.id_range") if "id_range" in d else default.id_range
    if id_range[1] - id_range[0] < 2:
        raise PlanError(f"{where}.id_range: needs at least 2 IDs (the first is preflight's)")
    max_live = _int(d, "max_live", where, 0)
    if not 0 <= max_live <= MAX_LIVE_SEQUENCES:
        raise PlanError(f"{where}.max_live: must be from 0 to {MAX_LIVE_SEQUENCES}")
    drain = parse_duration(d.get("drain_s", default.drain_s), f"{where}.drain_s")
    if not 0 <= drain <= 60:
        raise PlanError(f"{where}.drain_s: must be from 0 to 60 s")
    check = _str(d, "check", where, "")
    if check and (check.count(":") != 1 or not all(check.split(":"))):
        raise PlanError(f"{where}.check: expected INPUT:OUTPUT, got {shown(check)}")
    ranges = tuple(
        _id_pair(x, f"{where}.agent_ranges[{i}]")
        for i, x in enumerate(_list(d.get("agent_ranges"), f"{where}.agent_ranges"))
    )
    if len(ranges) > 10_000:
        raise PlanError(f"{where}.agent_ranges: more than 10000 agents")
    for i in range(1, len(ranges)):
        if ranges[i][0] < ranges[i - 1][1]:
            raise PlanError(f"{where}.agent_ranges: ranges overlap or are out of order")
    cd = _dict(d.get("controls"), f"{where}.controls")
    _check_keys(cd, {f.name for f in fields(SequenceControls)}, f"{where}.controls")
    controls = SequenceControls(
        **{f.name: _str(cd, f.name, f"{where}.controls", "") for f in fields(SequenceControls)}
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


def plan_from_dict(data: object) -> Plan:
    """Validate a plan document (from YAML/JSON) into a Plan; PlanError names the bad field."""
    d = _dict(data, "plan")
    allowed = {f.name for f in fields(Plan)}
    _check_keys(d, allowed, "plan")
    target = _str(d, "target", "plan", "")
    if not target:
        raise PlanError("plan.target: required (HOST:PORT of the inference server)")
    if len(target) > MAX_ADDRESS_CHARS:
        raise PlanError(f"plan.target: longer than {MAX_ADDRESS_CHARS} characters")
    parse_address(target, "plan.target")
    model = _str(d, "model", "plan", "")
    models = tuple(_model(x, i) for i, x in enumerate(_list(d.get("models"), "plan.models")))
    if len(models) > 256:
        raise PlanError("plan.models: at most 256 models")
    if len({(m.name, m.version) for m in models}) != len(models):
        raise PlanError("plan.models: a model (name and version) is listed twice")
    if not model and models:
        model = models[0].name
    protocol = cast(Protocol, _choice(d, "protocol", "plan", "grpc", ("grpc", "http", "json")))
    if not model and protocol == "json":
        model = "service"  # a label only: a plain JSON service has no models
    if not model:
        raise PlanError("plan.model: required (the model name on the server)")
    agents: list[AgentSpec] = []
    for i, a in enumerate(_list(d.get("agents"), "plan.agents")):
        if isinstance(a, str):
            agents.append(AgentSpec(a))
            continue
        ad = _dict(a, f"plan.agents[{i}]")
        _check_keys(ad, {"address", "weight"}, f"plan.agents[{i}]")
        w = _int(ad, "weight", f"plan.agents[{i}]", 1)
        if w < 1 or w > 10_000:
            raise PlanError(f"plan.agents[{i}].weight: must be between 1 and 10000")
        agents.append(AgentSpec(_str(ad, "address", f"plan.agents[{i}]", ""), w))
    vd = _dict(d.get("validity"), "plan.validity")
    _check_keys(vd, {f.name for f in fields(ValiditySpec)}, "plan.validity")
    default_v = ValiditySpec()
    validity = ValiditySpec(
        min_duration_s=_num(vd, "min_duration_s", "plan.validity", default_v.min_duration_s),
        min_requests=_int(vd, "min_requests", "plan.validity", default_v.min_requests),
        max_error_rate=_num(vd, "max_error_rate", "plan.validity", default_v.max_error_rate),
        max_late_fraction=_num(
            vd, "max_late_fraction", "plan.validity", default_v.max_late_fraction
        ),
        warn_late_fraction=_num(
            vd, "warn_late_fraction", "plan.validity", default_v.warn_late_fraction
        ),
        max_lateness_p99_ms=_num(
            vd, "max_lateness_p99_ms", "plan.validity", default_v.max_lateness_p99_ms
        ),
        confidence=_num(vd, "confidence", "plan.validity", default_v.confidence),
    )
    if not 0.5 <= validity.confidence <= 0.999:
        raise PlanError(
            f"plan.validity.confidence: must be between 0.5 and 0.999, got {validity.confidence:g}"
        )
    seed = _int(d, "seed", "plan", 0)
    if not 0 <= seed < 2**63:
        raise PlanError("plan.seed: must be a non-negative 63-bit integer")
    timeout_s = parse_duration(d.get("timeout_s", 30.0), "plan.timeout_s")
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise PlanError(f"plan.timeout_s: must be > 0 and at most {MAX_TIMEOUT_S:g}s")
    connections = _int(d, "connections", "plan", 1)
    if not 1 <= connections <= 1024:
        raise PlanError("plan.connections: must be between 1 and 1024")
    compression = cast(
        Compression,
        _choice(d, "compression", "plan", "none", ("none", "gzip", "deflate")),
    )
    if compression != "none" and d.get("transport") == "stream":
        raise PlanError("plan.compression: not supported with transport 'stream' (use unary)")
    if d.get("transport") in ("stream", "grpcio") and d.get("protocol", "grpc") != "grpc":
        raise PlanError(f"plan.transport: {shown(d.get('transport'))} needs protocol grpc")
    name = _str(d, "name", "plan", "run")
    if len(name) > MAX_NAME_CHARS:
        raise PlanError(f"plan.name: longer than {MAX_NAME_CHARS} characters")
    inputs_raw = _list(d.get("inputs"), "plan.inputs")
    if len(inputs_raw) > MAX_INPUTS:
        raise PlanError(f"plan.inputs: more than {MAX_INPUTS} inputs")
    max_batch = _int(d, "max_batch_size", "plan", 0)
    if not 0 <= max_batch <= 2**31 - 1:
        raise PlanError("plan.max_batch_size: must be between 0 and 2^31-1")
    inputs = _inputs(d.get("inputs"))
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
        model_version=_str(d, "model_version", "plan", ""),
        protocol=protocol,
        seed=seed,
        load=_load(d.get("load")),
        inputs=inputs,
        outputs=_str_list(d.get("outputs"), "plan.outputs"),
        max_batch_size=max_batch,
        batch_size=_dist_text(d, "batch_size", "plan"),
        input_pool=_pool(d.get("input_pool")),
        agents=tuple(agents),
        timeout_s=timeout_s,
        raw_records=raw,
        slos=_str_list(d.get("slos"), "plan.slos"),
        validity=validity,
        transport=cast(
            Transport,
            _choice(d, "transport", "plan", "unary", ("unary", "stream", "grpcio")),
        ),
        connections=connections,
        compression=compression,
        http_body=cast(
            HttpBody, _choice(d, "http_body", "plan", "auto", ("auto", "binary", "json"))
        ),
        json_service=json_service,
        tls=_tls(d.get("tls")),
        headers=tuple(_header(x, i) for i, x in enumerate(_list(d.get("headers"), "plan.headers"))),
        models=models,
        sequence=_sequence(d.get("sequence")),
        composing_models=_str_list(d.get("composing_models"), "plan.composing_models"),
        ensemble_steps=_str_list(d.get("ensemble_steps"), "plan.ensemble_steps"),
        stream=_stream(d.get("stream")),
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


def _stream(raw: Any) -> StreamSpec:
    d = _dict(raw, "plan.stream")
    _check_keys(d, {f.name for f in fields(StreamSpec)}, "plan.stream")
    decoupled = d.get("decoupled", False)
    if not isinstance(decoupled, bool):
        raise PlanError("plan.stream.decoupled: expected true or false")
    token_output = _str(d, "token_output", "plan.stream", "")
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
    for k, v in [*raw_drawn, *raw_params.items()]:
        if not isinstance(k, str) or not k or len(k) > 128 or k.startswith("triton_"):
            raise PlanError(f"plan.stream.parameters: bad name {shown(k)}")
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
