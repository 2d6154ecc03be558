"""Pure parts of the send path: HPACK helpers, gRPC framing, HTTP bodies, model mix, plan."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hpack import Decoder, Encoder
from hpack.hpack import decode_integer
from tritonclient.grpc import service_pb2

from volley.mix import ModelMix
from volley.plan import PlanError, plan_from_dict
from volley.request import check_http_response, http_infer_body
from volley.schedule import worker_slice
from volley.wire import h2, h2frames
from volley.wire.grpc import grpc_frame, grpc_timeout_header, grpc_unframe
from volley.wire.http1 import dechunk
from volley.wire.payloads import build_payloads


def test_request_header_block_decodes_and_hides_secrets() -> None:
    block = h2.encode_headers(
        "https",
        "triton:8001",
        "/inference.GRPCInferenceService/ModelInfer",
        [("content-type", "application/grpc"), ("te", "trailers"), ("authorization", "Bearer x")],
        {"authorization"},
    )
    fields = Decoder().decode(block)
    assert fields == [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", "/inference.GRPCInferenceService/ModelInfer"),
        (":authority", "triton:8001"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("authorization", "Bearer x"),
    ]
    assert not h2frames._hpack_mutates(block)  # literals without indexing only
    assert b"\x10\x0dauthorization" in block  # never-indexed representation


def test_hpack_mutation_scan_matches_a_real_encoder() -> None:
    enc = Encoder()
    first = enc.encode([(":status", "200"), ("content-type", "application/grpc")])
    again = enc.encode([(":status", "200"), ("content-type", "application/grpc")])
    assert h2frames._hpack_mutates(first)  # adds content-type to the dynamic table
    assert not h2frames._hpack_mutates(again)  # indexed references only
    for n in (1, 14, 15, 127, 128, 300, 70000):
        encoded = h2frames._hpack_int(n, 4, 0)
        assert decode_integer(encoded, 4) == (n, len(encoded))


def test_header_info_and_status_mappings() -> None:
    info = h2.HeaderInfo([(b"grpc-status", b"3"), (b"grpc-message", b"bad%20input")])
    assert info.grpc_status == 3 and info.grpc_message == "bad input"
    assert h2.http_to_grpc_status(503) == 14 and h2.http_to_grpc_status(418) == 2
    assert h2.rst_to_grpc_status(h2.REFUSED_STREAM) == 14


def test_grpc_framing_round_trip() -> None:
    msg = b"hello" * 100
    assert grpc_unframe(grpc_frame(msg, "none"), "") == msg
    assert grpc_unframe(grpc_frame(msg, "gzip"), "gzip") == msg
    assert grpc_unframe(grpc_frame(msg, "deflate"), "deflate") == msg
    assert grpc_unframe(grpc_frame(msg, "none")[:-1], "") is None
    assert grpc_timeout_header(30) == "30000m"
    assert grpc_timeout_header(0.0001) == "1m"


def _plan(**extra: object) -> object:
    doc = {
        "target": "127.0.0.1:8001",
        "model": "m",
        "load": {"rate": 10, "duration": "1s"},
        "inputs": [
            {"name": "A", "datatype": "FP32", "shape": [4]},
            {"name": "S", "datatype": "BYTES", "shape": [2]},
        ],
        "outputs": ["Y"],
    }
    doc.update(extra)
    return plan_from_dict(doc)


def test_http_body_carries_the_grpc_tensors() -> None:
    plan = _plan()
    wire = build_payloads(plan, 3).wires[0]  # type: ignore[arg-type]
    body, json_len = http_infer_body(wire.msg)
    req = service_pb2.ModelInferRequest.FromString(wire.msg)
    assert body[json_len:] == b"".join(req.raw_input_contents)
    assert check_http_response(b'{"outputs":[{"name":"Y"}]}', None, 1)
    assert not check_http_response(b'{"outputs":[]}', None, 1)
    assert not check_http_response(b"{nope", None, 0)
    http = build_payloads(_plan(protocol="http", compression="gzip"), 3).wires[0]  # type: ignore[arg-type]
    assert gzip.decompress(http.body) == body
    assert http.head.startswith(b"POST /v2/models/m/infer HTTP/1.1\r\n")
    assert f"Inference-Header-Content-Length: {json_len}".encode() in http.head
    assert http.head.endswith(b"Content-Length: %d\r\n\r\n" % len(http.body))


def test_dechunk() -> None:
    raw = b"4\r\nWiki\r\n5;x=1\r\npedia\r\n0\r\n\r\n"
    assert dechunk(raw, 0) == b"Wikipedia"
    assert dechunk(raw[:-3], 0) is None
    assert dechunk(b"zz\r\n", 0) is False


def test_model_mix_is_seeded_weighted_and_split_independent() -> None:
    mix = ModelMix([3.0, 1.0], seed=9)
    idx = np.arange(200_000, dtype=np.int64)
    picks = mix.pick(idx)
    assert np.array_equal(picks, ModelMix([3.0, 1.0], seed=9).pick(idx))  # deterministic
    assert abs(np.mean(picks == 0) - 0.75) < 0.01
    assert not np.array_equal(picks, ModelMix([3.0, 1.0], seed=10).pick(idx))
    # every agent of a round-robin split still gets both models in proportion
    t = idx * 1000
    for agent in range(2):
        own, _ = worker_slice(idx, t, [1, 1], agent, [1], 0)
        share = np.mean(mix.pick(own) == 0)
        assert abs(share - 0.75) < 0.01
    assert mix.pick_one(5) == int(picks[5])


def test_plan_transport_fields() -> None:
    p = plan_from_dict(
        {
            "target": "h:1",
            "models": [{"name": "a", "weight": 2}, "b"],
            "load": {"rate": 1},
            "protocol": "http",
            "connections": 4,
            "compression": "gzip",
            "tls": {"ca": "/x.pem"},
            "headers": [{"name": "Authorization", "file": "/tok"}],
            "timeout_s": "250ms",
        }
    )
    assert p.model == "a" and [m.weight for m in p.models] == [2.0, 1.0]
    assert p.tls is not None and p.tls.ca == "/x.pem" and p.timeout_s == 0.25
    assert plan_from_dict(p.to_dict()) == p
    bad = [
        ({"transport": "stream", "protocol": "http"}, "stream"),
        ({"transport": "stream", "compression": "gzip"}, "compression"),
        ({"connections": 0}, "connections"),
        ({"headers": [{"name": "te", "value": "x"}]}, "set by volley"),
        ({"headers": [{"name": "x-a", "value": "1", "env": "E"}]}, "exactly one"),
        ({"headers": [{"name": "bad name", "value": "1"}]}, "header name"),
        ({"tls": {"cert": "/c.pem"}}, "key"),
        ({"models": [{"name": "a", "weight": 0}]}, "weight"),
        ({"models": ["a", "a"]}, "twice"),
        ({"compression": "brotli"}, "compression"),
    ]
    for extra, needle in bad:
        with pytest.raises(PlanError, match=needle):
            plan_from_dict({"target": "h:1", "model": "m", "load": {"rate": 1}, **extra})
