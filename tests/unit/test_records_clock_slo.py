from __future__ import annotations

import numpy as np
import pytest

from coordinator.clock import estimate_offset
from coordinator.slo import parse_slo
from volley.plan import PlanError
from volley.records import RecordBlock, RecordBuffer, concat


def test_buffer_block_proto_round_trip() -> None:
    buf = RecordBuffer(4)
    buf.worker = 3
    assert not buf.append(7, 100, 110, 500, 0, 64, 32, 1, 0)
    buf.append(8, 200, 205, 900, 14, 64, 0, 1, 1)
    block = buf.take(["16;16", "32;32"])
    assert block is not None and len(block) == 2
    back = RecordBlock.from_proto(block.to_proto())
    for k in block.columns:
        assert np.array_equal(back.columns[k], block.columns[k]), k
    assert list(back.columns["worker"]) == [3, 3]
    assert buf.take([]) is None


def test_concat_remaps_shapes() -> None:
    a = RecordBuffer(2)
    a.append(0, 0, 0, 1, 0, 1, 1, 1, 0)
    b = RecordBuffer(2)
    b.append(1, 0, 0, 1, 0, 1, 1, 1, 1)
    blk = concat([a.take(["x"]), b.take(["y", "x"])])  # type: ignore[list-item]
    assert blk.input_shapes == ["x", "y"]
    assert list(blk.columns["shape_id"]) == [0, 0]


def test_bad_batch_is_rejected() -> None:
    msg = RecordBlock.empty().to_proto()
    msg.count = 3
    with pytest.raises(ValueError, match="column"):
        RecordBlock.from_proto(msg)


def test_clock_offset_uses_lowest_rtt() -> None:
    true_offset = 5_000_000
    samples = []
    for i in range(20):
        t0 = i * 1_000_000
        rtt = 100_000 if i % 4 == 0 else 3_000_000  # a few clean, many queued
        skew = 0 if i % 4 == 0 else 1_400_000  # queued samples are asymmetric
        samples.append((t0, t0 + rtt // 2 + skew + true_offset, t0 + rtt))
    est = estimate_offset(samples)
    assert abs(est.offset_ns - true_offset) <= est.uncertainty_ns
    assert est.uncertainty_ns == 50_000
    assert est.to_agent(1000) == 1000 + est.offset_ns


def test_slo_parse_and_evaluate() -> None:
    summary = {
        "latency_ms": {"p99": 40.0},
        "error_rate": 0.002,
        "throughput_rps": 99.0,
        "offered_rps": 100.0,
        "service_time_ms": {"p50": 1.0},
    }
    assert parse_slo("p99<50ms").evaluate(summary)["passed"]
    assert not parse_slo("p99<0.03s").evaluate(summary)["passed"]
    assert not parse_slo("errors<0.1%").evaluate(summary)["passed"]
    assert parse_slo("throughput>=0.98*offered").evaluate(summary)["passed"]
    assert not parse_slo("throughput>=0.995*offered").evaluate(summary)["passed"]
    assert parse_slo("service.p50<=1ms").evaluate(summary)["passed"]
    for bad in ("p99<50", "latency", "p42<1ms", "foo>1"):
        with pytest.raises(PlanError):
            parse_slo(bad)
