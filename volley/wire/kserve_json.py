"""KServe v2 HTTP request bodies in plain JSON (no binary tensor extension).

Servers other than Triton (MLServer, KServe's own runtimes) take tensors only as JSON
`data` arrays. `json_infer_body` derives that body from the serialized gRPC request the
pool already built, so the JSON body, the binary body and the gRPC message all carry the
very same tensors. Per the KServe v2 protocol: BOOL as true/false, integers as numbers,
FP16/BF16/FP32/FP64 as numbers (FP16/BF16/FP32 as the shortest decimal that reads
back as the same value at their precision), BYTES as
strings (UTF-8; bytes that are not UTF-8 cannot be sent as JSON and are refused),
`data` flattened in row-major order. Outputs are asked for by name, without
`binary_data`, so the response is JSON too.
"""

from __future__ import annotations

import json
import struct

import numpy as np
from tritonclient.grpc import service_pb2

from volley.inputs.shapes import DTYPES
from volley.plan import PlanError

#: Little-endian dtypes of KServe v2 numeric datatypes (BF16: its raw 16 bits).
_NUMERIC: dict[str, np.dtype[np.generic]] = {**DTYPES, "BF16": np.dtype("<u2")}
_LEN = struct.Struct("<I")


def bytes_elements(raw: bytes, name: str) -> list[bytes]:
    """The elements of a BYTES tensor's raw contents (each a 4-byte little-endian length,
    then its bytes)."""
    out: list[bytes] = []
    pos, n = 0, len(raw)
    while pos < n:
        if n - pos < 4:
            raise PlanError(f"input {name!r}: BYTES contents end inside a length prefix")
        (ln,) = _LEN.unpack_from(raw, pos)
        pos += 4
        if n - pos < ln:
            raise PlanError(f"input {name!r}: BYTES element runs past the contents")
        out.append(raw[pos : pos + ln])
        pos += ln
    return out


def tensor_data(datatype: str, raw: bytes, name: str) -> list[object]:
    """A tensor's raw contents as the flat JSON `data` list of its datatype."""
    if datatype == "BYTES":
        try:
            return [e.decode("utf-8") for e in bytes_elements(raw, name)]
        except UnicodeDecodeError:
            raise PlanError(
                f"input {name!r}: BYTES that are not UTF-8 cannot be sent as KServe v2 JSON "
                "(use --http-body binary against Triton, or gRPC)"
            ) from None
    dt = _NUMERIC.get(datatype)
    if dt is None:
        raise PlanError(f"input {name!r}: datatype {datatype!r} has no KServe v2 JSON form")
    if len(raw) % dt.itemsize:
        raise PlanError(f"input {name!r}: {len(raw)} bytes is not a whole number of {datatype}")
    arr = np.frombuffer(raw, dt)
    if datatype == "BF16":  # the top half of a float32: widened exactly
        arr = (arr.astype("<u4") << 16).view("<f4")
    if arr.dtype.kind != "f":
        ints: list[object] = arr.tolist()
        return ints
    if not np.isfinite(arr).all():
        raise PlanError(f"input {name!r}: NaN or infinity has no JSON form")
    if arr.dtype.itemsize < 8:  # the shortest decimal that reads back as the same value
        return [float(str(x)) for x in arr]
    floats: list[object] = arr.tolist()
    return floats


def json_infer_body(grpc_body: bytes) -> bytes:
    """The KServe v2 JSON inference request of a serialized ModelInferRequest."""
    req = service_pb2.ModelInferRequest.FromString(grpc_body)
    if len(req.raw_input_contents) != len(req.inputs):
        raise PlanError("HTTP JSON body: every input must carry raw contents")
    doc: dict[str, object] = {
        "inputs": [
            {
                "name": t.name,
                "shape": [int(d) for d in t.shape],
                "datatype": t.datatype,
                "data": tensor_data(t.datatype, raw, t.name),
            }
            for t, raw in zip(req.inputs, req.raw_input_contents, strict=True)
        ]
    }
    if req.outputs:
        doc["outputs"] = [{"name": o.name} for o in req.outputs]
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
