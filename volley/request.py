"""The one request builder: resolved input specs -> a pool of pre-serialized requests.

Every path that sends inference requests (agents' hot loop, preflight's probe
request, benchmarks) builds its payloads here, so they stay identical. Payloads
are built and serialized once, before the load starts; the hot path only picks
one and hands its bytes to gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import service_pb2

from volley.plan import MAX_INPUT_BYTES, MAX_POOL_BYTES, InputSpec, PlanError

#: KServe v2 datatype -> numpy dtype (little-endian on the wire).
DTYPES: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


@dataclass(frozen=True)
class Payload:
    """One pre-serialized request body and what the records say about it."""

    body: bytes
    req_bytes: int
    shape_id: int
    batch_size: int


@dataclass
class RequestPool:
    """Pre-built payloads; `shapes[p.shape_id]` is the text shape of a payload."""

    payloads: list[Payload]
    shapes: list[str]

    @property
    def total_bytes(self) -> int:
        return sum(len(p.body) for p in self.payloads)


def element_count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def make_tensor(spec: InputSpec, rng: np.random.Generator) -> npt.NDArray[np.generic] | list[bytes]:
    """Build one input tensor (numpy array, or a list of byte strings for BYTES)."""
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
    inputs: list[tuple[InputSpec, npt.NDArray[np.generic] | list[bytes]]],
    outputs: tuple[str, ...] = (),
) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for spec, tensor in inputs:
        t = req.inputs.add()
        t.name = spec.name
        t.datatype = spec.datatype
        t.shape.extend(spec.shape)
        req.raw_input_contents.append(tensor_bytes(tensor))
    for name in outputs:
        req.outputs.add().name = name
    return req


def build_pool(
    model: str,
    version: str,
    inputs: tuple[InputSpec, ...],
    outputs: tuple[str, ...],
    seed: int,
    variants: int = 8,
    batched: bool = False,
) -> RequestPool:
    """Serialize `variants` distinct requests (1 when no input is random)."""
    for spec in inputs:
        if not spec.datatype:
            raise PlanError(f"input {spec.name}: datatype not resolved (run preflight first)")
    rng = np.random.default_rng(seed)
    n = variants if any(s.source == "random" for s in inputs) else 1
    shapes: list[str] = []
    payloads: list[Payload] = []
    total = 0
    for _ in range(n):
        built = [(s, make_tensor(s, rng)) for s in inputs]
        req = build_infer_request(model, version, built, outputs)
        body = req.SerializeToString()
        total += len(body)
        if total > MAX_POOL_BYTES:
            raise PlanError(f"request pool would exceed {MAX_POOL_BYTES} bytes; use smaller inputs")
        text = ";".join(shape_text(s.shape) for s in inputs)
        if text not in shapes:
            shapes.append(text)
        batch = inputs[0].shape[0] if batched and inputs and inputs[0].shape else 1
        payloads.append(Payload(body, len(body), shapes.index(text), max(1, batch)))
    return RequestPool(payloads, shapes)


def check_response(body: bytes, expected_outputs: int) -> bool:
    """A response is good when it parses and carries the outputs the model declares."""
    try:
        resp = service_pb2.ModelInferResponse.FromString(body)
    except Exception:
        return False
    return len(resp.outputs) >= expected_outputs
