"""KServe v2 JSON request bodies (volley/wire/kserve_json.py) for every datatype, from
the same serialized gRPC request the binary body is built from."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from volley.plan import PlanError, plan_from_dict
from volley.wire.kserve_json import json_infer_body, tensor_data
from volley.wire.payloads import build_payloads


def _req(*tensors: tuple[str, str, list[int], bytes]) -> bytes:
    req = service_pb2.ModelInferRequest(model_name="m")
    for name, dt, shape, raw in tensors:
        req.inputs.append(
            service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=dt, shape=shape)
        )
        req.raw_input_contents.append(raw)
    req.outputs.append(service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="OUT"))
    return req.SerializeToString()


NUMERIC = [
    ("BOOL", np.array([True, False, True]), [True, False, True]),
    ("UINT8", np.array([0, 255], "<u1"), [0, 255]),
    ("UINT16", np.array([0, 65535], "<u2"), [0, 65535]),
    ("UINT32", np.array([0, 2**32 - 1], "<u4"), [0, 2**32 - 1]),
    ("UINT64", np.array([0, 2**64 - 1], "<u8"), [0, 2**64 - 1]),
    ("INT8", np.array([-128, 127], "<i1"), [-128, 127]),
    ("INT16", np.array([-32768, 7], "<i2"), [-32768, 7]),
    ("INT32", np.array([-(2**31), 5], "<i4"), [-(2**31), 5]),
    ("INT64", np.array([-(2**63), 2**63 - 1], "<i8"), [-(2**63), 2**63 - 1]),
    # the shortest decimal that reads back as the same FP16: 65500 is FP16's 65504
    ("FP16", np.array([0.5, -1.25, 65504.0], "<f2"), [0.5, -1.25, 65500.0]),
    ("FP32", np.array([0.1, -3.5], "<f4"), [0.1, -3.5]),
    ("FP64", np.array([0.1, 1e300], "<f8"), [0.1, 1e300]),
    # BF16: the top 16 bits of a float32 (1.0 = 0x3F80, -2.5 = 0xC020)
    ("BF16", np.array([0x3F80, 0xC020], "<u2"), [1.0, -2.5]),
]


@pytest.mark.parametrize(("datatype", "values", "expected"), NUMERIC)
def test_every_numeric_datatype_is_json_numbers(
    datatype: str, values: np.ndarray, expected: list[object]
) -> None:
    body = json_infer_body(_req(("X", datatype, [len(values)], values.tobytes())))
    doc = json.loads(body)
    assert doc == {
        "inputs": [{"name": "X", "shape": [len(values)], "datatype": datatype, "data": expected}],
        "outputs": [{"name": "OUT"}],
    }
    data = doc["inputs"][0]["data"]
    assert all(type(v) is type(e) for v, e in zip(data, expected, strict=True))
    if datatype not in ("BF16", "BOOL"):  # read back: the very same tensor
        assert np.asarray(data, values.dtype).tobytes() == values.tobytes()


def test_bytes_are_strings_and_shapes_stay() -> None:
    raw = b"".join(struct.pack("<I", len(s)) + s for s in (b"ab", b"", "é".encode()))
    body = json.loads(json_infer_body(_req(("S", "BYTES", [1, 3], raw))))
    assert body["inputs"][0]["data"] == ["ab", "", "é"] and body["inputs"][0]["shape"] == [1, 3]


@pytest.mark.parametrize(
    ("datatype", "raw", "fragment"),
    [
        ("BYTES", struct.pack("<I", 2) + b"\xff\xfe", "not UTF-8"),
        ("BYTES", struct.pack("<I", 9) + b"ab", "runs past"),
        ("BYTES", b"\x01\x00", "length prefix"),
        ("FP32", np.array([np.nan], "<f4").tobytes(), "NaN"),
        ("INT32", b"\x00\x00\x00", "whole number"),
        ("COMPLEX", b"", "no KServe v2 JSON form"),
    ],
)
def test_what_json_cannot_carry_is_a_clear_error(datatype: str, raw: bytes, fragment: str) -> None:
    with pytest.raises(PlanError, match=fragment):
        tensor_data(datatype, raw, "X")


def test_plan_http_body_json_frames_json_requests() -> None:
    doc = {
        "target": "127.0.0.1:8000",
        "model": "add",
        "protocol": "http",
        "http_body": "json",
        "load": {"rate": 1},
        "inputs": [{"name": "A", "datatype": "FP32", "shape": [4]}],
        "outputs": ["Y"],
    }
    wire = build_payloads(plan_from_dict(doc)).wires[0]
    assert b"Content-Type: application/json\r\n" in wire.head
    assert b"Inference-Header-Content-Length" not in wire.head
    assert wire.head.endswith(b"Content-Length: %d\r\n\r\n" % len(wire.body))
    got = json.loads(wire.body)
    sent = service_pb2.ModelInferRequest.FromString(wire.msg)
    data = np.asarray(got["inputs"][0]["data"], "<f4")  # the same float32 values, exactly
    assert data.tobytes() == sent.raw_input_contents[0]
    binary = build_payloads(plan_from_dict({**doc, "http_body": "binary"})).wires[0]
    assert b"Inference-Header-Content-Length" in binary.head
    with pytest.raises(PlanError, match="http_body"):
        plan_from_dict({**doc, "http_body": "xml"})
