"""The one request builder: resolved input specs -> a pool of pre-serialized requests.

Every path that sends inference requests (agents' hot loop, preflight's probe
request, benchmarks) builds its payloads here, so they stay identical. Payloads
are built and serialized once, before the load starts; the hot path only picks
one and hands its bytes to gRPC.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import service_pb2

from volley import inputs as vin
from volley.dist import fmt_bytes
from volley.inputs import DTYPES, Tensor, element_count, shape_text
from volley.plan import MAX_INPUT_BYTES, MAX_POOL_BYTES, InputSpec, Plan, PlanError, PoolSpec

__all__ = [
    "DTYPES",
    "Payload",
    "PoolDescription",
    "RequestPool",
    "build_infer_request",
    "build_plan_pool",
    "build_pool",
    "check_response",
    "element_count",
    "grpc_body",
    "make_tensor",
    "pick_index",
    "response_outputs",
    "shape_text",
    "tensor_bytes",
]

_M64 = (1 << 64) - 1


@dataclass(frozen=True)
class Payload:
    """One pre-serialized request body and what the records say about it."""

    body: bytes
    req_bytes: int
    shape_id: int
    batch_size: int


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of x."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _mix64_np(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    out: npt.NDArray[np.uint64] = x ^ (x >> np.uint64(31))
    return out


def pick_index(seed: int, index: int, cumulative: list[float]) -> int:
    """The payload of request `index`: a hash of (seed, index) placed on the cumulative
    weights. Pure; `RequestPool.pick_many` computes the same with numpy."""
    u = (_mix64((index & _M64) ^ _mix64(seed & _M64)) >> 11) * (1.0 / (1 << 53))
    lo, hi = 0, len(cumulative) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if u < cumulative[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


class ByteRange(TypedDict):
    min: int
    mean: float
    max: int


class PoolShape(TypedDict):
    shape: str
    share: float
    request_bytes: int


class PoolDescription(TypedDict):
    """RequestPool.describe(): summary.json's `input_pool` (coordinator/documents.py)."""

    payloads: int
    payloads_requested: int
    distinct_shapes: int
    bytes_per_worker: int
    max_bytes_per_worker: int
    exact_weights: bool
    request_bytes: ByteRange
    shapes: list[PoolShape]


@dataclass
class RequestPool:
    """Pre-built payloads; `shapes[p.shape_id]` is the text shape of a payload.

    Request `i` gets payload `pick(i)`: deterministic from the plan seed and the
    request's global index (so the same request carries the same payload whatever the
    number of agents and workers), chosen with the payloads' weights.
    """

    payloads: list[Payload]
    shapes: list[str]
    weights: list[float] = field(default_factory=list)
    seed: int = 0
    #: True when the weights reproduce the distributions exactly (discrete choices that
    #: fit in the pool); False when the pool is a stratified sample of them.
    exact: bool = True
    #: The configured number of payloads (the pool may hold fewer to fit max_bytes).
    requested: int = 0
    max_bytes: int = 0
    #: The draws behind the payloads (shapes per input), for preflight's checks.
    draws: list[vin.Draw] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        n = len(self.payloads)
        w = np.asarray(self.weights if len(self.weights) == n else [1.0] * n, dtype=np.float64)
        w = w / w.sum() if n and w.sum() > 0 else np.full(n, 1.0 / max(n, 1))
        self.weights = w.tolist()
        cum = np.cumsum(w)
        if n:
            cum[-1] = 1.0
        self._cum = cum
        self._cum_list: list[float] = cum.tolist()
        self._seed_mix = np.uint64(_mix64(self.seed & _M64))

    @property
    def total_bytes(self) -> int:
        return sum(len(p.body) for p in self.payloads)

    def pick(self, index: int) -> int:
        return pick_index(self.seed, index, self._cum_list)

    def pick_many(self, index: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
        h = _mix64_np(index.astype(np.int64).view(np.uint64) ^ self._seed_mix)
        u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        out: npt.NDArray[np.intp] = np.minimum(
            np.searchsorted(self._cum, u, side="right"), len(self.payloads) - 1
        )
        return out

    def describe(self) -> PoolDescription:
        """What summary.json says about the pool (per worker: every worker builds it)."""
        sizes = np.asarray([p.req_bytes for p in self.payloads], dtype=np.float64)
        w = np.asarray(self.weights)
        share: Counter[int] = Counter()
        size_by_shape: dict[int, list[int]] = {}
        for p, wt in zip(self.payloads, self.weights, strict=True):
            share[p.shape_id] += wt  # type: ignore[assignment]
            size_by_shape.setdefault(p.shape_id, []).append(p.req_bytes)
        top = sorted(share.items(), key=lambda kv: -kv[1])
        return {
            "payloads": len(self.payloads),
            "payloads_requested": self.requested or len(self.payloads),
            "distinct_shapes": len(self.shapes),
            "bytes_per_worker": self.total_bytes,
            "max_bytes_per_worker": self.max_bytes,
            "exact_weights": self.exact,
            "request_bytes": {
                "min": int(sizes.min()) if sizes.size else 0,
                "mean": round(float((sizes * w).sum()), 1) if sizes.size else 0.0,
                "max": int(sizes.max()) if sizes.size else 0,
            },
            "shapes": [
                {
                    "shape": self.shapes[sid],
                    "share": round(float(sh), 6),
                    "request_bytes": int(np.mean(size_by_shape[sid])),
                }
                for sid, sh in top[:50]
            ],
        }


def make_tensor(spec: InputSpec, rng: np.random.Generator) -> npt.NDArray[np.generic] | list[bytes]:
    """Build one input tensor of a fixed-shape spec (numpy array, or byte strings for BYTES)."""
    count = element_count(spec.shape)
    if spec.datatype == "BYTES":
        value = str(spec.value if spec.value is not None else "").encode()
        each = 4 + {"constant": len(value), "zeros": 0}.get(spec.source, 32)
        if count * each > MAX_INPUT_BYTES:
            raise PlanError(
                f"input {spec.name}: shape {shape_text(spec.shape)} is about "
                f"{count * each} bytes, over the {MAX_INPUT_BYTES}-byte limit"
            )
        if spec.source == "constant":
            return [value] * count
        if spec.source == "zeros":
            return [b""] * count
        return [rng.bytes(16).hex().encode() for _ in range(count)]
    dt = DTYPES.get(spec.datatype)
    if dt is None:
        raise PlanError(f"input {spec.name}: unsupported datatype {spec.datatype!r}")
    if count * dt.itemsize > MAX_INPUT_BYTES:
        raise PlanError(
            f"input {spec.name}: shape {shape_text(spec.shape)} is "
            f"{count * dt.itemsize} bytes, over the {MAX_INPUT_BYTES}-byte limit"
        )
    if spec.source == "zeros":
        return np.zeros(spec.shape, dt)
    if spec.source == "constant":
        try:
            return np.full(spec.shape, spec.value if spec.value is not None else 0, dtype=dt)
        except (TypeError, ValueError):
            raise PlanError(
                f"input {spec.name}: constant {spec.value!r} is not a valid {spec.datatype}"
            ) from None
    if dt.kind == "b":
        return rng.integers(0, 2, size=spec.shape).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt.type)  # type: ignore[type-var]
        lo, hi = max(int(info.min), -128), min(int(info.max), 255)
        return rng.integers(lo, hi, size=spec.shape, endpoint=True).astype(dt)
    return rng.standard_normal(size=spec.shape).astype(dt)


def tensor_bytes(tensor: npt.NDArray[np.generic] | list[bytes]) -> bytes:
    if isinstance(tensor, list):
        return b"".join(len(v).to_bytes(4, "little") + v for v in tensor)
    return np.ascontiguousarray(tensor).tobytes()


def build_infer_request(
    model: str,
    version: str,
    inputs: list[tuple[InputSpec, npt.NDArray[np.generic] | list[bytes]]] | list[Tensor],
    outputs: tuple[str, ...] = (),
) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest from (spec, tensor) pairs or from `volley.inputs.Tensor`s."""
    req = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for item in inputs:
        t = req.inputs.add()
        if isinstance(item, Tensor):
            t.name, t.datatype = item.name, item.datatype
            t.shape.extend(item.shape)
            req.raw_input_contents.append(item.data)
            continue
        spec, tensor = item
        t.name = spec.name
        t.datatype = spec.datatype
        t.shape.extend(spec.shape)
        req.raw_input_contents.append(tensor_bytes(tensor))
    for name in outputs:
        req.outputs.add().name = name
    return req


def _framing_bound(plan: Plan) -> int:
    """Upper bound of a request's bytes beyond its tensor data (gRPC protobuf framing, or
    an HTTP/JSON header with binary data: both stay well under this)."""
    n = 96 + len(plan.model) + len(plan.model_version)
    for s in plan.inputs:
        n += 128 + len(s.name) + len(s.datatype) + 21 * max(len(s.model_dims), len(s.shape), 4)
    return n + sum(48 + len(o) for o in plan.outputs)


def grpc_body(plan: Plan, tensors: list[Tensor]) -> bytes:
    """A serialized ModelInferRequest (the body gRPC sends as it is)."""
    req = build_infer_request(plan.model, plan.model_version, tensors, plan.outputs)
    body: bytes = req.SerializeToString()
    return body


def build_plan_pool(
    plan: Plan,
    limit: int | None = None,
    serialize: Callable[[Plan, list[Tensor]], bytes] = grpc_body,
) -> RequestPool:
    """Draw and serialize the plan's payload pool (every worker builds the same one).

    The pool holds `input_pool.payloads` draws (or the exact weighted combinations of
    discrete choices), shrunk to fit `input_pool.max_bytes`; `limit` builds only the
    first payloads (for probes). `serialize` turns one payload's tensors into the bytes
    a transport sends (gRPC by default). Raises PlanError naming the input when it
    cannot fit.
    """
    for spec in plan.inputs:
        if not spec.datatype:
            raise PlanError(f"input {spec.name}: datatype not resolved (run preflight first)")
    cfg = plan.input_pool
    cap = min(cfg.max_bytes, MAX_POOL_BYTES)
    caches = vin.make_caches(plan)
    framing = _framing_bound(plan)
    n = cfg.payloads
    copies_n = n
    while True:
        draws, exact = vin.draw_payloads(plan, n, caches, copies_n=copies_n)
        sizes = [vin.draw_nbytes(plan, d, caches) + framing for d in draws]
        total = sum(sizes)
        if total <= cap:
            break
        biggest = max(range(len(draws)), key=sizes.__getitem__)
        if exact:
            if copies_n <= 1:
                raise PlanError(
                    f"input pool: the {len(draws)} distinct shapes need {fmt_bytes(total)}, "
                    f"over input_pool.max_bytes {fmt_bytes(cap)} (largest request "
                    f"{draws[biggest].text()}, {fmt_bytes(sizes[biggest])}); raise it or "
                    "use fewer/smaller shapes"
                )
            copies_n = max(1, min(copies_n - 1, int(copies_n * cap / total)))
        else:
            if n <= 1:
                raise PlanError(
                    f"input pool: one request ({draws[0].text()}) is "
                    f"{fmt_bytes(total)}, over input_pool.max_bytes {fmt_bytes(cap)}"
                )
            n = max(1, min(n - 1, int(n * cap / total)))
    shapes: list[str] = []
    lookup: dict[str, int] = {}
    payloads: list[Payload] = []
    weights: list[float] = []
    draws = draws[:limit] if limit is not None else draws
    for p, d in enumerate(draws):
        raw = serialize(plan, vin.make_tensors(plan, d, p, caches))
        text = d.text()
        if text not in lookup:
            lookup[text] = len(shapes)
            shapes.append(text)
        payloads.append(Payload(raw, len(raw), lookup[text], max(1, d.batch)))
        weights.append(d.weight)
    return RequestPool(
        payloads,
        shapes,
        weights,
        seed=plan.seed,
        exact=exact,
        requested=cfg.payloads,
        max_bytes=cap,
        draws=draws,
    )


def build_pool(
    model: str,
    version: str,
    inputs: tuple[InputSpec, ...],
    outputs: tuple[str, ...],
    seed: int,
    variants: int = 8,
    batched: bool = False,
) -> RequestPool:
    """Serialize `variants` distinct requests of fixed-shape specs (1 when no input is
    random). Kept for callers without a plan; `build_plan_pool` is the full builder."""
    plan = Plan(
        target="-",
        model=model,
        model_version=version,
        seed=seed,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=1 if batched else 0,
        input_pool=PoolSpec(payloads=max(1, variants), max_bytes=MAX_POOL_BYTES),
    )
    return build_plan_pool(plan)


def check_response(body: bytes, expected_outputs: int) -> bool:
    """A response is good when it parses and carries the outputs the model declares."""
    return response_outputs(body) >= expected_outputs


def response_outputs(body: bytes) -> int:
    """How many outputs a serialized ModelInferResponse carries; -1 when it does not parse
    (`check_response`'s verdict is `response_outputs(body) >= expected`)."""
    try:
        resp = service_pb2.ModelInferResponse.FromString(body)
    except Exception:
        return -1
    return len(resp.outputs)


def http_infer_body(grpc_body: bytes) -> tuple[bytes, int]:
    """The KServe v2 HTTP body (binary tensor extension) of a serialized ModelInferRequest.

    Derived from the gRPC payload the pool already built, so both protocols send the very
    same tensors. Returns (body, JSON header length) — the length goes in the
    `Inference-Header-Content-Length` header; outputs are asked for as binary data."""
    import json

    req = service_pb2.ModelInferRequest.FromString(grpc_body)
    if len(req.raw_input_contents) != len(req.inputs):
        raise PlanError("HTTP body: every input must carry raw contents")
    header: dict[str, object] = {
        "inputs": [
            {
                "name": t.name,
                "shape": [int(d) for d in t.shape],
                "datatype": t.datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
            for t, raw in zip(req.inputs, req.raw_input_contents, strict=True)
        ],
    }
    if req.outputs:
        header["outputs"] = [
            {"name": o.name, "parameters": {"binary_data": True}} for o in req.outputs
        ]
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + b"".join(req.raw_input_contents), len(head)


def check_http_response(body: bytes, header_length: int | None, expected_outputs: int) -> bool:
    """A KServe v2 HTTP response is good when its JSON header parses and lists the outputs."""
    import json

    head = body if header_length is None else body[:header_length]
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    return isinstance(outputs, list) and len(outputs) >= expected_outputs
