"""The run plan: one typed, validated, fully resolved description of a run.

A plan is what `plan.yaml` holds and what every agent receives (as JSON). It is
pure data: parsing and validation here do no I/O beyond what the caller hands in.
Re-running a resolved plan (seed included) repeats the same global schedule.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, cast

import yaml

from volley.dist import DistError, canonical, parse_bytes, parse_dims_pattern, parse_shapes

Mode = Literal["open", "closed"]
Arrival = Literal["constant", "poisson", "trace"]
Protocol = Literal["grpc", "http"]
Transport = Literal["unary", "stream", "grpcio"]
Compression = Literal["none", "gzip", "deflate"]

#: Hard bounds so no plan can make an agent allocate without limit.
MAX_DURATION_S = 7 * 24 * 3600.0
MAX_RATE = 5_000_000.0
MAX_CONCURRENCY = 100_000
#: A trace is held as Python ints by the agent and each worker (~50 bytes an entry).
MAX_TRACE_ENTRIES = 5_000_000
MAX_INPUT_BYTES = 256 * 1024 * 1024
MAX_POOL_BYTES = 1024 * 1024 * 1024
#: Distinct pre-serialized payloads per worker: default and hard limit.
DEFAULT_POOL_PAYLOADS = 64
MAX_POOL_PAYLOADS = 4096
#: Default memory bound of one worker's payload pool.
DEFAULT_POOL_MAX_BYTES = 256 * 1024 * 1024
#: gRPC/protobuf messages cannot exceed 2 GiB - 1 (Triton's default gRPC limit too).
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1
#: Per agent: each request in flight costs a task and a gRPC call (a few KB).
MAX_IN_FLIGHT = 100_000
#: Per worker: arrivals waiting for an in-flight slot.
MAX_BACKLOG = 1_000_000
MAX_STAGES = 10_000
MAX_TIMEOUT_S = 3600.0
MAX_INPUTS = 256
MAX_DIMS = 16
MAX_NAMES = 1024  #: outputs, SLOs
MAX_NAME_CHARS = 200


class PlanError(ValueError):
    """A plan (or a command-line option that feeds it) is invalid; the message names what."""


_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object, what: str = "duration") -> float:
    """'30s', '500ms', '2m', '1h' or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise PlanError(f"{what}: expected a duration like 30s, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise PlanError(f"{what}: expected a duration like 30s, 500ms or 2m, got {value!r}")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2) or "s"]
    else:
        raise PlanError(f"{what}: expected a duration like 30s, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise PlanError(f"{what}: must be a non-negative duration, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds * 1000:g}ms"


def parse_address(value: str, what: str = "address") -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_s = rest.removeprefix(":")
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise PlanError(f"{what}: expected HOST:PORT, got {value!r}")
    if not host:
        raise PlanError(f"{what}: missing host in {value!r}")
    try:
        port = int(port_s)
    except ValueError:
        raise PlanError(f"{what}: port must be a number in {value!r}") from None
    if not 0 <= port <= 65535:
        raise PlanError(f"{what}: port out of range in {value!r}")
    return host, port


@dataclass(frozen=True)
class StageSpec:
    duration_s: float
    target: float


@dataclass(frozen=True)
class TraceSpec:
    file: str = ""
    format: Literal["timestamps", "gaps"] = "timestamps"
    unit: Literal["s", "ms", "us", "ns"] = "s"
    speed: float = 1.0
    #: Filled in by the coordinator when it resolves the plan (agents never read files).
    times_ns: tuple[int, ...] = ()


@dataclass(frozen=True)
class LoadSpec:
    mode: Mode = "open"
    arrival: Arrival = "constant"
    rate: float = 0.0
    concurrency: int = 0
    stages: tuple[StageSpec, ...] = ()
    duration_s: float = 30.0
    warmup_s: float = 0.0
    #: Open loop: per-agent cap on requests in flight; 0 = no cap (bounded by backlog).
    max_in_flight: int = 1024
    #: Open loop: arrivals waiting for a free in-flight slot before they are dropped.
    max_backlog: int = 10_000
    #: Open loop: the last microseconds before a send are waited by yielding to the event
    #: loop instead of a timer (timers wake up to ~1-2 ms late). 0 = timers only.
    spin_us: float = 0.0
    trace: TraceSpec | None = None
    #: Open loop: how a worker waits for the next arrival. "precise": a timerfd wakes it
    #: at the arrival's nanosecond (Linux); "loop": the event loop's whole-ms timers
    #: (~15% less CPU per request, sends ~0.5 ms late on average).
    timer: Literal["precise", "loop"] = "precise"

    @property
    def total_s(self) -> float:
        if self.stages:
            return sum(s.duration_s for s in self.stages)
        return self.duration_s


Source = Literal["random", "zeros", "constant", "files", "json"]
SOURCES: tuple[str, ...] = ("random", "zeros", "constant", "files", "json")
#: Input keys that make an input's shape vary from payload to payload.
VARY_KEYS = ("dims", "shapes", "pixels")


@dataclass(frozen=True)
class DataItem:
    """Data the coordinator read from a file for an input (agents never read files).

    kind: "image" (encoded image file, decoded by the pool builder), "npy" (a .npy
    file), "raw" (file bytes: one BYTES element, or raw little-endian tensor data),
    "tensor" (raw little-endian tensor data with `shape`, from a JSON input-data file;
    for BYTES: 4-byte-length-prefixed elements).
    """

    kind: Literal["image", "npy", "raw", "tensor"]
    data: str  #: base64
    shape: tuple[int, ...] = ()
    name: str = ""  #: file name or "entry N", for messages


@dataclass(frozen=True)
class InputSpec:
    """How to fill one model input. Resolved against the model's metadata in preflight.

    Data comes from `source`; the shape is `shape` (fixed), or varies per payload by
    one of `dims` (a distribution per dim), `shapes` (weighted list) or `pixels` (+
    `aspect`, `layout`) -- see volley/inputs.py and volley/dist.py for the syntax.
    """

    name: str
    datatype: str = ""
    shape: tuple[int, ...] = ()
    source: Source = "random"
    value: float | str | None = None
    #: Per-dim distributions (text form, one per dim of a batch item).
    dims: tuple[str, ...] = ()
    #: Weighted item shapes, e.g. "224x224x3:3".
    shapes: tuple[str, ...] = ()
    #: Image area H*W and aspect ratio W/H distributions.
    pixels: str = ""
    aspect: str = ""
    #: Where H and W are: HWC, CHW, HW (default: guessed from the model's dims).
    layout: str = ""
    #: BYTES inputs: bytes per element (distribution).
    length: str = ""
    #: files: a directory (or one file); json: a perf_analyzer --input-data JSON file.
    path: str = ""
    #: Filled by the coordinator from `path`.
    items: tuple[DataItem, ...] = ()
    #: Filled in preflight: the model's dims for this input (-1 = dynamic, batch included).
    model_dims: tuple[int, ...] = ()

    @property
    def varies(self) -> bool:
        return bool(self.dims or self.shapes or self.pixels)


@dataclass(frozen=True)
class PoolSpec:
    """The pre-built payload pool of each worker."""

    #: Distinct payloads drawn from the inputs' distributions.
    payloads: int = DEFAULT_POOL_PAYLOADS
    #: Memory bound of one worker's pool (payloads are dropped to fit, never exceeded).
    max_bytes: int = DEFAULT_POOL_MAX_BYTES
    #: Largest request the server accepts (gRPC message limit; lower it to your server's).
    max_request_bytes: int = GRPC_MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class TlsSpec:
    """TLS to the target. Paths are read where requests are sent (coordinator for
    preflight, every agent host for the load), so they must exist there."""

    enabled: bool = False
    ca: str = ""  #: PEM bundle to verify the server (default: the system's)
    cert: str = ""  #: client certificate (PEM), for mutual TLS
    key: str = ""  #: its private key (PEM)
    server_name: str = ""  #: name to verify instead of the target's host
    verify: bool = True  #: False: encrypt but do not verify the server (testing only)


@dataclass(frozen=True)
class HeaderSpec:
    """One request header / gRPC metadata entry. Secrets come from `env` or `file` (read
    where requests are sent), never from the command line; `value` is for plain values."""

    name: str
    value: str = ""
    env: str = ""
    file: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """One model of a mixed-traffic plan: its share of the arrivals and its inputs."""

    name: str
    version: str = ""
    weight: float = 1.0
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[str, ...] = ()
    #: Resolved from the model config in preflight.
    max_batch_size: int = 0


@dataclass(frozen=True)
class AgentSpec:
    address: str
    weight: int = 1


@dataclass(frozen=True)
class ValiditySpec:
    min_duration_s: float = 5.0
    min_requests: int = 100
    max_error_rate: float = 0.01
    #: An agent whose sends are > 1 ms late more often than this could not keep up.
    #: (Below it, late sends only warn: on VMs, timers wake ~1-2 ms late even when idle.)
    max_late_fraction: float = 0.5
    #: Above this share of > 1 ms late sends, the verdict warns.
    warn_late_fraction: float = 0.05
    max_lateness_p99_ms: float = 10.0


@dataclass(frozen=True)
class Plan:
    target: str
    model: str
    name: str = "run"
    model_version: str = ""
    protocol: Protocol = "grpc"
    seed: int = 0
    load: LoadSpec = field(default_factory=LoadSpec)
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[str, ...] = ()
    #: Resolved from the model config in preflight (0: the model does not batch).
    max_batch_size: int = 0
    #: Batch size per request, a distribution (volley/dist.py); "" = from shapes, else 1.
    batch_size: str = ""
    input_pool: PoolSpec = field(default_factory=PoolSpec)
    agents: tuple[AgentSpec, ...] = ()
    timeout_s: float = 30.0
    raw_records: bool = True
    slos: tuple[str, ...] = ()
    validity: ValiditySpec = field(default_factory=ValiditySpec)
    #: gRPC: one ModelInfer call per request (unary) or ModelStreamInfer streams (stream).
    transport: Transport = "unary"
    #: Connections to the target per agent worker (HTTP/2 multiplexes streams on each).
    connections: int = 1
    compression: Compression = "none"
    tls: TlsSpec | None = None
    headers: tuple[HeaderSpec, ...] = ()
    #: Mixed traffic: several models sharing the one arrival process by weight. Empty:
    #: the plan's `model` with its `inputs` is the only one.
    models: tuple[ModelSpec, ...] = ()

    # ---- serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _plain(asdict(self))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def to_yaml(self) -> str:
        data = self.to_dict()
        trace = data["load"].get("trace")
        if trace and trace.get("times_ns") and trace.get("file"):
            trace["times_ns"] = []  # re-read from the file; keeps plan.yaml readable
        for spec in data.get("inputs") or []:
            if spec.get("items") and spec.get("path"):
                spec["items"] = []  # re-read from the path, like the trace
        return yaml.safe_dump(data, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan JSON: {exc}") from None
        except RecursionError:
            raise PlanError("plan JSON is nested too deeply") from None
        return plan_from_dict(data)

    def with_agents(self, agents: list[AgentSpec]) -> Plan:
        return replace(self, agents=tuple(agents))

    @property
    def agent_weights(self) -> list[int]:
        return [a.weight for a in self.agents] or [1]


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


# ---- parsing and validation -----------------------------------------------


def _check_keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed, key=repr)
    if unknown:
        shown = [k if isinstance(k, str) and k.isprintable() else repr(k) for k in unknown]
        raise PlanError(f"{where}: unknown key(s) {', '.join(shown)}")


def _num(data: dict[str, Any], key: str, where: str, default: float) -> float:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        raise PlanError(f"{where}.{key}: expected a number, got {v!r}")
    return float(v)


def _int(data: dict[str, Any], key: str, where: str, default: int) -> int:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        raise PlanError(f"{where}.{key}: expected an integer, got {v!r}")
    return v


def _str(data: dict[str, Any], key: str, where: str, default: str) -> str:
    v = data.get(key, default)
    if not isinstance(v, str):
        raise PlanError(f"{where}.{key}: expected a string, got {v!r}")
    return v


def _choice(
    data: dict[str, Any], key: str, where: str, default: str, options: tuple[str, ...]
) -> str:
    v = _str(data, key, where, default)
    if v not in options:
        raise PlanError(f"{where}.{key}: must be one of {', '.join(options)}, got {v!r}")
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
    warmup_s = parse_duration(d.get("warmup", d.get("warmup_s", 0.0)), "load.warmup")
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
        max_in_flight=_int(d, "max_in_flight", "load", 1024),
        max_backlog=_int(d, "max_backlog", "load", 10_000),
        spin_us=_num(d, "spin_us", "load", 0.0),
        trace=trace,
        timer=cast(Any, _choice(d, "timer", "load", "precise", ("precise", "loop"))),
    )
    _validate_load(spec)
    return spec


def _trace_times(raw: list[Any]) -> tuple[int, ...]:
    """Trace arrival times: integer nanoseconds, >= 0, non-decreasing."""
    out: list[int] = []
    prev = 0
    for i, x in enumerate(raw):
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise PlanError(f"load.trace.times_ns[{i}]: expected integer nanoseconds, got {x!r}")
        if isinstance(x, float) and not (math.isfinite(x) and x.is_integer()):
            raise PlanError(f"load.trace.times_ns[{i}]: expected integer nanoseconds, got {x!r}")
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
    if s.warmup_s >= s.total_s > 0:
        raise PlanError("load.warmup: must be shorter than the duration")
    if len(s.stages) > MAX_STAGES:
        raise PlanError(f"load.stages: more than {MAX_STAGES} stages")
    if s.max_in_flight < 0 or s.max_in_flight > MAX_IN_FLIGHT:
        raise PlanError(f"load.max_in_flight: must be between 0 and {MAX_IN_FLIGHT}")
    if not 0 <= s.spin_us <= 100_000:
        raise PlanError("load.spin_us: must be between 0 and 100000")
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
    if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in shape):
        raise PlanError(f"{where}.shape: expected non-negative integers")
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
    if not name:
        raise PlanError(f"{where}.name: required")
    where = f"input {name}"
    shape_raw = _list(d.get("shape"), f"{where}.shape")
    if len(shape_raw) > MAX_DIMS:
        raise PlanError(f"{where}.shape: more than {MAX_DIMS} dimensions")
    shape: list[int] = []
    for j, dim in enumerate(shape_raw):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise PlanError(f"{where}.shape[{j}]: expected a non-negative integer, got {dim!r}")
        shape.append(dim)
    value = d.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float | str)):
        raise PlanError(f"{where}.value: expected a number or string, got {value!r}")
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
        datatype=_str(d, "datatype", where, ""),
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
        model_dims=tuple(int(x) for x in _list(d.get("model_dims"), f"{where}.model_dims")),
    )
    varying = [k for k in VARY_KEYS if getattr(spec, k)]
    if len(varying) > 1:
        raise PlanError(f"{where}: give one of dims, shapes, pixels (got {', '.join(varying)})")
    if varying and spec.shape:
        raise PlanError(f"{where}: give either a fixed shape or {varying[0]}, not both")
    if spec.aspect and not spec.pixels:
        raise PlanError(f"{where}.aspect: needs pixels (the image area) too")
    if spec.source in ("files", "json") and not spec.path and not spec.items:
        raise PlanError(f"{where}: source {spec.source} needs a path")
    if spec.source == "json" and varying:
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


def _header(raw: object, i: int) -> HeaderSpec:
    where = f"plan.headers[{i}]"
    d = _dict(raw, where)
    _check_keys(d, {"name", "value", "env", "file"}, where)
    name = _str(d, "name", where, "")
    if not _HEADER_NAME_RE.match(name):
        raise PlanError(f"{where}.name: not a valid header name: {name!r}")
    if name.lower() in RESERVED_HEADERS or name.lower().startswith("grpc-"):
        raise PlanError(f"{where}.name: {name!r} is set by volley itself")
    spec = HeaderSpec(
        name=name,
        value=_str(d, "value", where, ""),
        env=_str(d, "env", where, ""),
        file=_str(d, "file", where, ""),
    )
    if sum(bool(x) for x in (spec.value, spec.env, spec.file)) != 1:
        raise PlanError(f"{where}: give exactly one of value, env or file")
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
        outputs=tuple(str(x) for x in _list(d.get("outputs"), f"{where}.outputs")),
        max_batch_size=_int(d, "max_batch_size", where, 0),
    )


def plan_models(plan: Plan) -> tuple[ModelSpec, ...]:
    """The models a plan sends to: its `models`, or the one `model` with its inputs."""
    if plan.models:
        return plan.models
    return (
        ModelSpec(
            name=plan.model,
            version=plan.model_version,
            weight=1.0,
            inputs=plan.inputs,
            outputs=plan.outputs,
            max_batch_size=plan.max_batch_size,
        ),
    )


def plan_from_dict(data: object) -> Plan:
    """Validate a plan document (from YAML/JSON) into a Plan; PlanError names the bad field."""
    d = _dict(data, "plan")
    allowed = {f.name for f in fields(Plan)}
    _check_keys(d, allowed, "plan")
    target = _str(d, "target", "plan", "")
    if not target:
        raise PlanError("plan.target: required (HOST:PORT of the inference server)")
    parse_address(target, "plan.target")
    model = _str(d, "model", "plan", "")
    models = tuple(_model(x, i) for i, x in enumerate(_list(d.get("models"), "plan.models")))
    if len(models) > 256:
        raise PlanError("plan.models: at most 256 models")
    if len({(m.name, m.version) for m in models}) != len(models):
        raise PlanError("plan.models: a model (name and version) is listed twice")
    if not model and models:
        model = models[0].name
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
        raise PlanError(f"plan.transport: {d.get('transport')!r} needs protocol grpc")
    name = _str(d, "name", "plan", "run")
    if len(name) > MAX_NAME_CHARS:
        raise PlanError(f"plan.name: longer than {MAX_NAME_CHARS} characters")
    inputs_raw = _list(d.get("inputs"), "plan.inputs")
    if len(inputs_raw) > MAX_INPUTS:
        raise PlanError(f"plan.inputs: more than {MAX_INPUTS} inputs")
    max_batch = _int(d, "max_batch_size", "plan", 0)
    if not 0 <= max_batch <= 2**31 - 1:
        raise PlanError("plan.max_batch_size: must be between 0 and 2^31-1")
    raw = d.get("raw_records", True)
    if not isinstance(raw, bool):
        raise PlanError("plan.raw_records: expected true or false")
    return Plan(
        target=target,
        model=model,
        name=name,
        model_version=_str(d, "model_version", "plan", ""),
        protocol=cast(Protocol, _choice(d, "protocol", "plan", "grpc", ("grpc", "http"))),
        seed=seed,
        load=_load(d.get("load")),
        inputs=_inputs(d.get("inputs")),
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
        tls=_tls(d.get("tls")),
        headers=tuple(_header(x, i) for i, x in enumerate(_list(d.get("headers"), "plan.headers"))),
        models=models,
    )


def load_plan_yaml(text: str) -> dict[str, Any]:
    """Parse YAML text to a plan mapping (not yet validated)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlanError(f"plan file is not valid YAML: {exc}".splitlines()[0]) from None
    except RecursionError:
        raise PlanError("plan file is nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PlanError("plan file: expected a mapping at the top level")
    return cast(dict[str, Any], data)
