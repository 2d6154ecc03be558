"""The plan's types and hard limits: pure data, validated by `volley.plan.validate`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import yaml

Mode = Literal["open", "closed"]
Arrival = Literal["constant", "poisson", "trace"]
#: grpc / http: KServe v2 (gRPC, REST); json: a plain JSON prediction service (POST a
#: JSON document to a path, 2xx is success; see JsonServiceSpec)
Protocol = Literal["grpc", "http", "json"]
Transport = Literal["unary", "stream", "grpcio"]
Compression = Literal["none", "gzip", "deflate"]
#: KServe v2 HTTP request bodies: Triton's binary tensor extension or plain JSON; "auto"
#: is resolved in preflight from the server metadata's extensions.
HttpBody = Literal["auto", "binary", "json"]

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
#: An arrival is sent at most this early (one wake-up for those due close together); the
#: coordinator takes sends up to 1 ms before their time (coordinator/validate.py).
MAX_SEND_HORIZON_US = 1000.0
MAX_STAGES = 10_000
MAX_TIMEOUT_S = 3600.0
MAX_INPUTS = 256
MAX_DIMS = 16
MAX_NAMES = 1024  #: outputs, SLOs
MAX_NAME_CHARS = 200
#: `connections_total`: all agents together.
MAX_CONNECTIONS_TOTAL = 1_000_000


class PlanError(ValueError):
    """A plan (or a command-line option that feeds it) is invalid; the message names what."""


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
    #: `warmup: auto`: the warm-up is detected after the run (MSER-5 on the 1 s windows,
    #: coordinator/steady.py) and its unsettled windows are left out of the figures.
    warmup_auto: bool = False
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
    #: Open loop: one wake-up also sends the arrivals due within this many microseconds
    #: after the first (each stamped with its true send time: up to this much early),
    #: their requests written to a connection at once. 0 = one arrival per wake-up.
    send_horizon_us: float = 200.0

    @property
    def total_s(self) -> float:
        if self.stages:
            return sum(s.duration_s for s in self.stages)
        return self.duration_s


Source = Literal["random", "zeros", "constant", "files", "json", "prompts"]
SOURCES: tuple[str, ...] = ("random", "zeros", "constant", "files", "json", "prompts")
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
    `aspect`, `layout`) -- see volley/inputs/ and volley/dist.py for the syntax.
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
    #: files: a directory (or one file); json: a perf_analyzer --input-data JSON file;
    #: prompts: a JSONL ("text" or "prompt" per line) or text file (one prompt a line),
    #: for a BYTES input (name "": the model's only BYTES input, named in preflight).
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
class JsonServiceSpec:
    """protocol json: what is POSTed, where, and what counts as a good answer.

    Bodies come from `template` (a JSON document in which a string "$NAME" stands for
    input NAME's value, drawn like any input: a scalar for shape [], else nested lists)
    or from `bodies` (whole JSON documents, e.g. the lines of a JSONL file, picked
    uniformly by the seed; the coordinator reads `bodies_file` into them)."""

    path: str = "/"
    template: str = ""
    bodies: tuple[str, ...] = ()
    bodies_file: str = ""
    #: the status a good answer has (0: any 2xx)
    expect_status: int = 0
    #: a dotted path that must be present in the JSON answer ("" = not checked), e.g.
    #: "predictions" or "result.0.label"
    expect_field: str = ""


@dataclass(frozen=True)
class TlsSpec:
    """TLS to the target. Paths are read by the coordinator (where `volley run` runs);
    agents get the files' contents in memory and never open a path a plan names."""

    enabled: bool = False
    ca: str = ""  #: PEM bundle to verify the server (default: the system's)
    cert: str = ""  #: client certificate (PEM), for mutual TLS
    key: str = ""  #: its private key (PEM)
    server_name: str = ""  #: name to verify instead of the target's host
    verify: bool = True  #: False: encrypt but do not verify the server (testing only)


@dataclass(frozen=True)
class HeaderSpec:
    """One request header / gRPC metadata entry. Secrets come from `env` or `file` (read
    by the coordinator, sent to agents in memory) or `secret` (an agent's own, given to it
    at start), never from the command line; `value` is for plain values. A `secret` may
    come with `env` or `file`: what the coordinator itself sends (preflight, monitor)."""

    name: str
    value: str = ""
    env: str = ""
    file: str = ""
    secret: str = ""


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


SeqIdType = Literal["uint64", "string"]
#: Correlation IDs are sent as int64 parameters: at most 2^63 - 1.
MAX_SEQUENCE_ID = 2**63 - 1
MAX_SEQUENCE_LENGTH = 65_535
MAX_LIVE_SEQUENCES = 100_000


@dataclass(frozen=True)
class SequenceControls:
    """The control tensors a sequence-batched model declares (from its config)."""

    start: str = ""
    end: str = ""
    ready: str = ""
    corrid: str = ""


@dataclass(frozen=True)
class SequenceSpec:
    """Stateful sequences (Triton's sequence batcher): every request carries a
    correlation ID and START/END flags; steps of a sequence go one after another.

    Open loop: the schedule's arrivals are sequence *starts*; closed loop: each user
    runs one sequence after another. IDs come from `id_range` [lo, hi), split into
    disjoint `agent_ranges` by the coordinator (recorded in plan.yaml); an agent splits
    its range evenly among its workers. The range's first ID is the preflight's."""

    #: steps per sequence, a distribution (volley/dist.py): "10", "uniform(5,20)", ...
    length: str = "10"
    #: think time between a response and the next step, in ms (a distribution)
    think_ms: str = "0"
    id_type: SeqIdType = "uint64"
    #: string IDs: this prefix, then the number
    id_prefix: str = "seq-"
    #: [lo, hi): the correlation IDs this run may use (0 is never one)
    id_range: tuple[int, int] = (1, MAX_SEQUENCE_ID)
    #: open loop: live sequences at most, all agents together (0: 1024)
    max_live: int = 0
    #: after the load's end: live sequences get this long to finish, then their END
    drain_s: float = 5.0
    #: "INPUT:OUTPUT": every response's OUTPUT must be the running sum of INPUT over
    #: the sequence's steps so far (a stateful accumulator), else SEQ_MISMATCH
    check: str = ""
    #: filled by the coordinator: one [lo, hi) per agent (plan.agents' order)
    agent_ranges: tuple[tuple[int, int], ...] = ()
    #: filled in preflight from the model config's sequence_batching
    controls: SequenceControls = field(default_factory=SequenceControls)


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
    #: Confidence level of every interval in the summary (volley/confidence.py).
    confidence: float = 0.95


@dataclass(frozen=True)
class StreamSpec:
    """Streaming (decoupled) models: one request, a stream of responses."""

    #: Resolved from the model config in preflight (`model_transaction_policy
    #: { decoupled: true }`); a plan may say so itself for a server without model config.
    decoupled: bool = False
    #: Output whose element count is a response's token count ("" = one per response).
    token_output: str = ""
    #: Request parameters sent with every request (sampling parameters, max_tokens...):
    #: (name, value) pairs; gRPC InferParameter by the value's type, HTTP "parameters".
    parameters: tuple[tuple[str, bool | int | float | str], ...] = ()
    #: Request parameters drawn per payload of the pool from a distribution (volley/dist.py),
    #: e.g. ("max_tokens", "16..64"): (name, distribution text); integer values (int64).
    drawn: tuple[tuple[str, str], ...] = ()


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
    #: Connections to the target in all (`--connections N`), split over agents and
    #: workers like the schedule (volley/conns.py), opened before the start and held
    #: for the run; HTTP/1.1 pools are capped at their share. 0: `connections` per worker.
    connections_total: int = 0
    compression: Compression = "none"
    #: HTTP: binary tensor extension (Triton's `binary_tensor_data`) or KServe v2 JSON
    http_body: HttpBody = "auto"
    #: protocol json: the plain JSON service's bodies and checks
    json_service: JsonServiceSpec | None = None
    tls: TlsSpec | None = None
    headers: tuple[HeaderSpec, ...] = ()
    #: Mixed traffic: several models sharing the one arrival process by weight. Empty:
    #: the plan's `model` with its `inputs` is the only one.
    models: tuple[ModelSpec, ...] = ()
    #: Stateful sequences (None: independent requests).
    sequence: SequenceSpec | None = None
    #: Models whose server statistics belong to this one (a BLS model's callees; an
    #: ensemble's steps are found from its config).
    composing_models: tuple[str, ...] = ()
    #: Filled in preflight: the steps of an ensemble plan model (in composing_models too).
    ensemble_steps: tuple[str, ...] = ()
    stream: StreamSpec = field(default_factory=StreamSpec)

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
        service = data.get("json_service")
        if service and service.get("bodies") and service.get("bodies_file"):
            service["bodies"] = []  # re-read from the bodies file, like the trace
        return yaml.safe_dump(data, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        from volley.plan.validate import plan_from_dict  # validate imports this module

        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan JSON: {exc}") from None
        except RecursionError:
            raise PlanError("plan JSON is nested too deeply") from None
        except ValueError:  # json.JSONDecodeError is one, handled above
            raise PlanError("plan JSON: a number has too many digits") from None
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
