"""Streaming records: the columns and ragged gaps from worker to coordinator, the
figures built from them (TTFT, TTST, ITL, TPOT, counts), their checks and SLOs."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from coordinator.aggregate import Aggregator, GoodLimits, Stats
from coordinator.slo import goodput_limits, parse_slo
from coordinator.summary import goodput_block, stream_block
from coordinator.validate import AgentCheck, Fault, RunShape
from volley import records as rc
from volley.plan import PlanError, plan_from_dict
from volley.records import RecordBlock, RecordBuffer, concat
from volley.wire.stream import (
    EMPTY_FINAL_PARAM,
    SseReader,
    generate_body,
    generate_path,
    parse_sse_event,
    parse_stream_response,
    request_params,
    stream_request,
)

MS = 1_000_000


def _buffer() -> RecordBuffer:
    """Four requests, intended 0, 10, 20, 30 ms, sent on time: three streamed (3, 1 and
    2 responses, 2 ms to the first, gaps 1 and 3 ms), one unary; the last an error."""
    buf = RecordBuffer(16)
    rows = [
        # (intended, status, first, responses, gaps)
        (0, rc.OK, 2 * MS, 3, [1 * MS, 3 * MS]),
        (10 * MS, rc.OK, 12 * MS, 1, []),
        (20 * MS, rc.OK, -1, 0, None),  # unary: no note
        (30 * MS, rc.STREAM_ERROR, 32 * MS, 2, [5 * MS]),
    ]
    for i, (t, status, first, n, gaps) in enumerate(rows):
        if gaps is not None:
            last = first + sum(gaps)
            buf.note_stream(first, last, n, n, gaps)
        done = (first + sum(gaps or [])) + MS if first >= 0 else t + MS
        buf.append(i, t, t, done, status, 64, 32, 1, 0)
    return buf


def test_buffer_keeps_columns_and_gaps_per_record_and_resets() -> None:
    buf = _buffer()
    block = buf.take([])
    assert block is not None
    assert block.col("responses").tolist() == [3, 1, 0, 2]
    assert block.col("first_ns").tolist() == [2 * MS, 12 * MS, -1, 32 * MS]
    assert block.gaps.tolist() == [MS, 3 * MS, 5 * MS]
    assert block.gaps_complete()
    # the next block starts with unary defaults
    buf.append(9, 0, 0, MS, rc.OK, 1, 1, 1, 0)
    nxt = buf.take([])
    assert nxt is not None
    assert nxt.col("first_ns").tolist() == [-1] and nxt.col("responses").tolist() == [0]
    assert nxt.gaps.size == 0
    # through the wire and back
    back = RecordBlock.from_proto(block.to_proto())
    assert back.gaps.tolist() == block.gaps.tolist()
    assert back.col("last_ns").tolist() == block.col("last_ns").tolist()


def test_select_and_concat_carry_the_right_gaps() -> None:
    block = _buffer().take([])
    assert block is not None
    keep = np.array([False, True, True, True])
    assert block.select(keep).gaps.tolist() == [5 * MS]
    assert block.select(np.array([0, 3])).gaps.tolist() == [MS, 3 * MS, 5 * MS]
    assert block.select(np.array([3, 0])).gaps.size == 0  # out of order: not kept
    both = concat([block, block.select(np.array([True, False, False, False]))])
    assert both.gaps.tolist() == [MS, 3 * MS, 5 * MS, MS, 3 * MS]
    assert both.gaps_complete()


def test_aggregate_streaming_figures_are_exact() -> None:
    block = _buffer().take([])
    assert block is not None
    agg = Aggregator(1, warmup_ns=0)
    agg.ingest(0, block)
    st = agg.total()
    assert (st.streamed, st.responses, st.tokens) == (2, 4, 4)  # the error is not counted
    assert (st.responses_min, st.responses_max) == (1, 3)
    assert st.ttft.count == 2 and st.ttft.min_ns == 2 * MS
    assert st.itl.count == 2  # the OK requests' gaps only
    assert st.itl.percentile(100) == pytest.approx(3 * MS, rel=0.01)
    assert st.ttst.count == 1 and st.ttst.percentile(50) == pytest.approx(3 * MS, rel=0.01)
    assert st.tpot.count == 1 and st.tpot.percentile(50) == pytest.approx(2 * MS, rel=0.01)
    # windows split the same figures (10 ms windows: one request each)
    win = Aggregator(1, warmup_ns=0, window_ns=10 * MS)
    win.ingest(0, block)
    assert [win.windows[(w, 0)].itl.count for w in range(4)] == [2, 0, 0, 0]
    assert [win.windows[(w, 0)].ttft.count for w in range(4)] == [1, 1, 0, 0]
    # the warm-up (first 15 ms) takes the first two
    warm = Aggregator(1, warmup_ns=15 * MS)
    warm.ingest(0, block)
    assert warm.total().streamed == 0 and warm.total_warmup().itl.count == 2
    # gaps not kept (read back from requests.parquet): TTFT stays, ITL is not made up
    bare = Aggregator(1, warmup_ns=0)
    bare.ingest(0, RecordBlock(block.columns, []))
    assert bare.total().ttft.count == 2 and bare.total().itl.count == 0
    doc = stream_block(st, measured_s=2.0)
    assert doc["tokens_per_s"] == 2.0
    assert doc["responses_per_request"] == {"min": 1, "max": 3, "mean": 2.0}
    assert stream_block(Stats(), 1.0)["ttft_ms"]["p50"] == 0.0


def test_goodput_counts_requests_within_every_limit() -> None:
    block = _buffer().take([])
    assert block is not None
    # latencies 7, 3, 1 ms and an error; TTFT 2, 2, none
    assert goodput_limits(["p99<5ms"]) == GoodLimits(latency_ns=5 * MS)
    limits = goodput_limits(["p99<5ms", "ttft_p99<10ms", "ttft_p50<3ms", "itl_p99<1ms"])
    assert limits == GoodLimits(ttft_ns=3 * MS, latency_ns=5 * MS)  # the tightest, no ITL
    assert not goodput_limits(["p99>5ms", "errors<1%"]).any
    for lim, good in ((GoodLimits(latency_ns=5 * MS), 2), (limits, 1), (GoodLimits(tpot_ns=MS), 1)):
        agg = Aggregator(1, warmup_ns=0, good=lim)
        agg.ingest(0, block)
        assert agg.total().good == good, lim
    doc = goodput_block(agg.total(), GoodLimits(tpot_ns=MS), 2.0)
    assert doc["requests"] == 1 and doc["share"] == 0.25 and doc["tokens_per_s"] == 0.5
    assert doc["tpot_ms"] == 1.0 and doc["ttft_ms"] is None
    assert parse_slo("goodput>=90%").metric == "stream.goodput.share"


def test_bad_stream_records_and_gaps_are_refused() -> None:
    plan = plan_from_dict({"target": "127.0.0.1:1", "model": "m", "load": {"rate": 100}})
    block = _buffer().take([])
    assert block is not None
    check = AgentCheck(RunShape.of(plan), 0, workers=1, cores=4)
    cols = {k: v.copy() for k, v in block.columns.items()}
    cols["first_ns"][1] = -5  # before its send
    kept = check.records(RecordBlock(cols, [], block.gaps))
    assert len(kept) == 3 and kept.gaps.tolist() == [MS, 3 * MS, 5 * MS]
    assert check.faults[Fault.BAD_TIMES.value] == 1
    short = check.records(RecordBlock(block.columns, [], block.gaps[:2]))
    assert short.gaps.size == 0 and check.faults[Fault.BAD_GAPS.value] == 1


def test_token_slos_parse_and_judge() -> None:
    slo = parse_slo("ttft_p99<200ms")
    assert slo.metric == "stream.ttft_ms.p99" and slo.value == 200.0
    assert parse_slo("itl.p50 < 30ms").metric == "stream.itl_ms.p50"
    assert parse_slo("tpot_p90<1s").value == 1000.0
    assert parse_slo("tokens_per_s>=100").metric == "stream.tokens_per_s"
    for bad in ("ttft_p99<200", "itl_p42<3ms", "tokens_per_s>3ms"):
        with pytest.raises(PlanError):
            parse_slo(bad)
    summary = {"requests": {"ok": 5}, "stream": {"itl_ms": {"p99": 31.0}}}
    assert not parse_slo("itl_p99<30ms").evaluate(summary, {"itl_ms": 40})["passed"]
    assert parse_slo("itl_p99<32ms").evaluate(summary, {"itl_ms": 40})["passed"]
    none = parse_slo("itl_p99<32ms").evaluate(summary, {"itl_ms": 0})
    assert not none["passed"] and none["reason"]
    # a run that was not streamed has no such figure: failed, never passed
    unary = parse_slo("ttft_p99<1s").evaluate({"requests": {"ok": 5}})
    assert not unary["passed"] and "stream" in unary["reason"]


def test_stream_parameters_in_the_plan() -> None:
    base = {"target": "127.0.0.1:1", "model": "m", "load": {"rate": 1}}
    params = {"max_tokens": 64, "temperature": 0.7, "stop": "\n", "greedy": False}
    plan = plan_from_dict({**base, "stream": {"parameters": params}})
    assert dict(plan.stream.parameters) == params
    assert type(plan).from_json(plan.to_json()).stream == plan.stream  # round trip
    for bad in ({"t": [1]}, {"t": float("nan")}, {"triton_x": 1}, {"": 1}, [1, 2]):
        with pytest.raises(PlanError):
            plan_from_dict({**base, "stream": {"parameters": bad}})
    req = service_pb2.ModelInferRequest.FromString(
        stream_request(b"", 1, request_params(plan.stream.parameters))
    )
    p = req.parameters
    assert p["max_tokens"].int64_param == 64 and p["temperature"].double_param == 0.7
    assert p["stop"].string_param == "\n" and p["greedy"].bool_param is False
    assert p["triton_enable_empty_final_response"].bool_param


def test_generate_body_from_a_request() -> None:
    req = service_pb2.ModelInferRequest(model_name="m")
    for name, dt, shape, raw in (
        ("PROMPT", "BYTES", [1], struct.pack("<I", 5) + b"hello"),
        ("IDS", "INT32", [3], np.array([1, 2, 3], "<i4").tobytes()),
        ("T", "FP32", [1], np.array([0.5], "<f4").tobytes()),
    ):
        req.inputs.add(name=name, datatype=dt, shape=shape)
        req.raw_input_contents.append(raw)
    body = json.loads(generate_body(req.SerializeToString(), (("max_tokens", 8),)))
    assert body == {"PROMPT": "hello", "IDS": [1, 2, 3], "T": 0.5, "parameters": {"max_tokens": 8}}
    assert generate_path("m", "2") == "/v2/models/m/versions/2/generate_stream"


def test_stream_wire_request_and_responses() -> None:
    req = service_pb2.ModelInferRequest.FromString(stream_request(b"\x0a\x01m", 42))
    assert req.model_name == "m" and req.id == "42"
    assert req.parameters["triton_enable_empty_final_response"].bool_param
    assert EMPTY_FINAL_PARAM
    r = service_pb2.ModelStreamInferResponse()
    r.infer_response.id = "7"
    out = r.infer_response.outputs.add(name="TOKENS", shape=[1, 4])
    del out
    one = parse_stream_response(r.SerializeToString())
    assert one is not None and (one.rid, one.data, one.final, one.tokens) == (7, True, False, 1)
    counted = parse_stream_response(r.SerializeToString(), token_output="TOKENS")
    assert counted is not None and counted.tokens == 4
    fin = service_pb2.ModelStreamInferResponse()
    fin.infer_response.id = "7"
    fin.infer_response.parameters["triton_final_response"].bool_param = True
    end = parse_stream_response(fin.SerializeToString())
    assert end is not None and (end.final, end.data, end.tokens) == (True, False, 0)
    err = parse_stream_response(
        service_pb2.ModelStreamInferResponse(error_message="boom").SerializeToString()
    )
    assert err is not None and err.error == "boom" and err.final and err.rid == 0
    assert parse_stream_response(b"\xff\xff\xff") is None


def test_sse_reader_finds_events_however_the_body_is_cut() -> None:
    body = (
        b'data: {"TOKEN":0,"model_name":"t"}\n\n'
        b'data: {"TOKEN":[1,2],"model_name":"t"}\r\n\r\n'
        b": a comment\n\n"
        b'data: {"error":"boom"}\n\n'
    )
    rng = np.random.default_rng(5)
    for _ in range(100):
        cuts = np.sort(rng.choice(np.arange(1, len(body)), size=6, replace=False)).tolist()
        parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        reader, events = SseReader(), []
        at = 0
        while at < len(wire):
            step = int(rng.integers(1, 12))
            events += reader.feed(wire[at : at + step])
            at += step
        assert reader.done and not reader.bad
        got = [parse_sse_event(e, "TOKEN") for e in events]
        assert [(r.data, r.tokens, r.error) for r in got if r is not None] == [
            (True, 1, ""),
            (True, 2, ""),
            (False, 0, ""),
            (False, 0, "boom"),
        ]
    bad = SseReader()
    bad.feed(b"zz\r\n")
    assert bad.bad
    assert parse_sse_event(b"data: [1]") is None
