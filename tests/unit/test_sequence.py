"""Sequences, the pure parts: ID ranges (disjoint, split, refused when too small), step
framing (parsed back by protobuf itself; its cost), lengths, the plan's checks, the
validator's rule for steps, and the coordinator's sequence figures."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from coordinator.sequences import SequenceStats
from coordinator.validate import AgentCheck
from volley import records as rc
from volley.plan import AgentSpec, Plan, PlanError, plan_from_dict
from volley.records import RecordBuffer
from volley.sequence import (
    Draws,
    IdPool,
    live_sequences,
    resolve_ranges,
    split_range,
    worker_live,
    worker_range,
)
from volley.wire.seqframe import step_body, step_message


def _plan(load: dict[str, Any] | None = None, agents: int = 2, **seq: Any) -> Plan:
    plan = plan_from_dict(
        {
            "target": "127.0.0.1:8001",
            "model": "acc",
            "seed": 3,
            "load": load or {"mode": "open", "rate": 100, "duration": "2s"},
            "sequence": {"length": "5..20", **seq},
        }
    )
    return plan.with_agents([AgentSpec(f"a{i}:1", 1 + i) for i in range(agents)])


def test_split_range_is_a_partition() -> None:
    parts = split_range(10, 110, [1, 3, 1])
    assert parts == [(10, 30), (30, 90), (90, 110)]
    big = split_range(1, 2**63 - 1, [1, 1])
    assert big[0][1] == big[1][0] and big[1][1] == 2**63 - 1


def test_agent_and_worker_ranges_disjoint_and_recorded() -> None:
    plan = resolve_ranges(_plan(id_range=[100, 1100], max_live=300))
    spec = plan.sequence
    assert spec is not None
    assert spec.agent_ranges == ((101, 434), (434, 1100))  # weights 1 and 2, first ID kept
    assert Plan.from_json(plan.to_json()) == plan  # in plan.yaml / the agents' plan
    seen: set[int] = set()
    for agent, workers in ((0, 3), (1, 4)):
        for w in range(workers):
            lo, hi = worker_range(plan, agent, workers, w)
            ids = set(range(lo, hi))
            assert not ids & seen and 100 not in ids
            seen |= ids
            assert hi - lo >= worker_live(plan, agent, workers, w)
    assert seen == set(range(101, 1100))


def test_too_small_a_range_is_refused() -> None:
    closed = {"mode": "closed", "concurrency": 50, "duration": "2s"}
    with pytest.raises(PlanError, match=r"too small.*needs at least 51 IDs"):
        resolve_ranges(_plan(closed, id_range=[1, 40]))
    assert live_sequences(_plan(closed, id_range=[1, 52])) == 50
    resolve_ranges(_plan(closed, agents=1, id_range=[1, 52]))


@pytest.mark.parametrize(
    ("seq", "message"),
    [
        ({"length": "0..3"}, "steps must be from 1"),
        ({"id_range": [5, 6]}, "at least 2 IDs"),
        ({"id_range": [0, 6]}, "1 <= lo < hi"),
        ({"check": "INPUT"}, "INPUT:OUTPUT"),
        ({"id_type": "uuid"}, "must be one of"),
        ({"agent_ranges": [[1, 10], [5, 20]]}, "overlap"),
    ],
)
def test_bad_sequence_plans(seq: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        _plan(**seq)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"transport": "stream"}, "gRPC unary or HTTP"),
        ({"protocol": "http", "sequence": {"check": "A:B"}}, "reads gRPC responses"),
        ({"compression": "gzip"}, "compression"),
        ({"models": ["a", "b"]}, "one model"),
    ],
)
def test_sequences_transport_limits(extra: dict[str, Any], message: str) -> None:
    doc: dict[str, Any] = {"target": "h:1", "model": "m", "load": {"rate": 1}, "sequence": {}}
    doc.update(extra)
    with pytest.raises(PlanError, match=message):
        plan_from_dict(doc)


def test_step_framing_parses_as_protobuf_and_is_cheap() -> None:
    req = service_pb2.ModelInferRequest(model_name="accumulator", id="x")
    req.parameters["other"].int64_param = 7
    inp = req.inputs.add(name="INPUT", datatype="INT32", shape=[1, 1])
    del inp
    req.raw_input_contents.append(np.int32(5).tobytes())
    msg = req.SerializeToString()
    for sid, start, end in ((1, True, False), (2**63 - 1, False, False), ("seq-9", False, True)):
        got = service_pb2.ModelInferRequest.FromString(step_message(msg, sid, start, end))
        p = got.parameters
        want = (
            p["sequence_id"].string_param if isinstance(sid, str) else p["sequence_id"].int64_param
        )
        assert want == sid
        assert p["sequence_start"].bool_param is start and p["sequence_end"].bool_param is end
        assert p["other"].int64_param == 7 and got.raw_input_contents == req.raw_input_contents
        body = step_body(msg, sid, start, end)
        assert int.from_bytes(body[1:5], "big") == len(body) - 5 and body[0] == 0
    n = 20_000
    t0 = time.perf_counter()
    for i in range(n):
        step_body(msg, 1_000_000 + i, False, False)
    per_step_us = (time.perf_counter() - t0) / n * 1e6
    print(f"step framing: {per_step_us:.2f} us per step ({len(msg)} B message)")
    assert per_step_us < 100  # a few us on an idle core; bounded loosely for a busy one


def test_lengths_and_think_times_are_drawn_deterministically() -> None:
    d = Draws.of(_plan(think_ms="1..3"))
    lengths = [d.steps(k) for k in range(2000)]
    assert min(lengths) == 5 and max(lengths) == 20
    assert lengths == [Draws.of(_plan(think_ms="1..3")).steps(k) for k in range(2000)]
    thinks = [d.think_ns(k, 1) for k in range(500)]
    assert min(thinks) >= 1_000_000 and max(thinks) <= 3_000_000


def test_id_pool_never_gives_an_id_in_use() -> None:
    pool = IdPool(10, 13)
    a, b, c = pool.take(), pool.take(), pool.take()
    assert (a, b, c) == (10, 11, 12) and pool.take() == 0
    pool.give(b)
    assert pool.take() == b and pool.take() == 0


def _block(rows: list[tuple[int, int, int, int, int, int, int]]) -> Any:
    """rows: (index, seq_id, step, flags, intended, sent, done), status OK."""
    buf = RecordBuffer(64)
    for index, sid, step, flags, t, s, d in rows:
        buf.append_seq(sid, step, flags, index, t, s, d, rc.OK, 10, 10, 1, 0)
    block = buf.take(["1x1"])
    assert block is not None
    return block


def test_validator_sees_each_start_once_and_lets_steps_share_its_index() -> None:
    plan = resolve_ranges(_plan({"mode": "open", "rate": 10, "duration": "1s"}, agents=1))
    check = AgentCheck.for_run(plan.to_json(), 0, workers=1)
    ms = 1_000_000
    # sequence started by arrival 0: three steps carry index 0; then START of arrival 0 again
    ok = _block(
        [
            (0, 7, 0, rc.SEQ_FIRST, 0, ms, 2 * ms),
            (0, 7, 1, 0, 2 * ms, 2 * ms, 3 * ms),
            (0, 7, 2, rc.SEQ_LAST, 3 * ms, 3 * ms, 4 * ms),
        ]
    )
    assert len(check.records(ok)) == 3
    again = _block([(0, 8, 0, rc.SEQ_FIRST, 0, 5 * ms, 6 * ms)])
    assert len(check.records(again)) == 0 and check.invalid == 1
    # a later step may come after the load's span (the drain), not past it and the timeout
    late = _block([(1, 9, 3, 0, 1500 * ms, 1500 * ms, 1501 * ms)])
    assert len(check.records(late)) == 1
    beyond = 1000 * ms + int((5.0 + plan.timeout_s + 2.0) * 1e9)
    assert len(check.records(_block([(1, 9, 4, 0, beyond, beyond, beyond + ms)]))) == 0


def test_sequence_figures_from_records() -> None:
    ms = 1_000_000
    stats = SequenceStats(1)
    stats.ingest(
        0,
        _block(
            [
                (0, 7, 0, rc.SEQ_FIRST, 0, 0, 2 * ms),
                (1, 8, 0, rc.SEQ_FIRST, 0, 0, 1 * ms),
                (0, 7, 1, 0, 2 * ms, 2 * ms, 3 * ms),
                (1, 8, 0, rc.SEQ_CUT, 1 * ms, 1 * ms, 2 * ms),
                (0, 7, 2, rc.SEQ_LAST, 3 * ms, 3 * ms, 500 * ms),
            ]
        ),
    )
    b = stats.block(resolve_ranges(_plan(agents=1)))
    assert (b["started"], b["completed"], b["cut"], b["ended"], b["unfinished"]) == (2, 1, 1, 2, 0)
    assert b["duration_ms"]["count"] == 1 and abs(b["duration_ms"]["max"] - 500) < 5
    pos = {p["position"]: p["latency_ms"]["count"] for p in b["by_position"]}
    assert pos == {"first": 2, "middle": 1, "last": 1}
    # 0.5 s + 2 ms of life in second 0
    assert b["live"] == [{"t_s": 0.0, "live": 0.502}] and b["agents"][0]["lowest"] == 7


def test_sequence_summary_matches_its_description(tmp_path: Any) -> None:
    """build_summary of a sequence run adds `sequences`; it conforms to SequencesBlock
    (every key set, every list with items) and load_summary reads it back."""
    import json

    from coordinator.aggregate import Aggregator
    from coordinator.documents import Summary, load_summary
    from coordinator.summary import AgentInfo, build_summary
    from tests.unit.test_summary_document import conform, schema_paths

    ms = 1_000_000
    plan = resolve_ranges(_plan(agents=1))
    agg = Aggregator(1, 0)
    agg.sequences = SequenceStats(1)
    block = _block(
        [
            (0, 7, 0, rc.SEQ_FIRST, 0, 0, 2 * ms),
            (0, 7, 1, 0, 2 * ms, 2 * ms, 3 * ms),
            (0, 7, 2, rc.SEQ_LAST, 3 * ms, 3 * ms, 4 * ms),
        ]
    )
    agg.ingest(0, block)
    info = AgentInfo(0, "a0:1", id="a0", host="h", workers=1)
    summary = build_summary(plan, "r", agg, [info], 2.0, None)
    seen: set[str] = set()
    assert conform(summary, Summary, "summary", seen) == []
    missed = {p for p in schema_paths(Summary, "summary") - seen if p.startswith("summary.seq")}
    assert missed == set()
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert load_summary(tmp_path / "summary.json")["sequences"] == summary["sequences"]


def test_preflight_reads_the_sequence_batcher() -> None:
    from coordinator.preflight import ModelInfo, PreflightError, check_sequences

    cfg = {
        "sequence_batching": {
            "control_input": [
                {"name": "S", "control": [{"kind": "CONTROL_SEQUENCE_START"}]},
                {"name": "E", "control": [{"kind": "CONTROL_SEQUENCE_END"}]},
                {
                    "name": "C",
                    "control": [{"kind": "CONTROL_SEQUENCE_CORRID", "data_type": "TYPE_STRING"}],
                },
            ]
        }
    }
    info = ModelInfo("m", ("1",), (), (), 0, cfg)
    plan = _plan(id_type="string")
    spec = check_sequences(plan, info).sequence
    assert spec is not None and (spec.controls.start, spec.controls.end) == ("S", "E")
    assert spec.controls.corrid == "C" and spec.controls.ready == ""
    with pytest.raises(PreflightError, match="string correlation IDs"):
        check_sequences(_plan(), info)
    with pytest.raises(PreflightError, match="no sequence_batching"):
        check_sequences(_plan(), ModelInfo("m", (), (), (), 0, {}))


def test_http_step_framing() -> None:
    import json

    from volley.request import http_infer_body
    from volley.wire.seqframe import HttpTemplate, http_step

    req = service_pb2.ModelInferRequest(model_name="acc")
    req.inputs.add(name="INPUT", datatype="INT32", shape=[1, 1])
    req.raw_input_contents.append(np.int32(5).tobytes())
    body, json_len = http_infer_body(req.SerializeToString())
    head = (
        b"POST /v2/models/acc/infer HTTP/1.1\r\nHost: h\r\n"
        b"Inference-Header-Content-Length: %d\r\nX-A: b\r\nContent-Length: %d\r\n\r\n"
        % (json_len, len(body))
    )
    h, b = http_step(HttpTemplate.of(head), body, "seq-3", True, False)
    lines = dict(x.split(b": ", 1) for x in h.split(b"\r\n")[1:] if b": " in x)
    n = int(lines[b"Inference-Header-Content-Length"])
    assert int(lines[b"Content-Length"]) == len(b) and lines[b"X-A"] == b"b"
    doc = json.loads(b[:n])
    assert doc["parameters"] == {
        "sequence_id": "seq-3",
        "sequence_start": True,
        "sequence_end": False,
    }
    assert doc["inputs"][0]["name"] == "INPUT" and b[n:] == np.int32(5).tobytes()
    assert h.endswith(b"\r\n\r\n") and h.startswith(b"POST ")
