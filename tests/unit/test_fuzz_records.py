"""A rogue agent's timing batches with extreme values in the newer record columns
(streaming: first_ns, last_ns, responses, tokens and the ragged gaps; sequences:
seq_id, seq_step, seq_flags): vetted by the coordinator's AgentCheck, aggregated with an
honest agent's records, summarised. Nothing raises, the summary is finite and passes
`load_summary`, and the honest agent's own figures are exactly what it sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.aggregate import Aggregator
from coordinator.documents import load_summary
from coordinator.rundir import write_json
from coordinator.sequences import SequenceStats
from coordinator.summary import AgentInfo, build_summary
from coordinator.validate import BURST_BYTES, MAX_BYTES_PER_NS, AgentCheck, RunShape
from volley import records as rc
from volley.arrivals import global_schedule
from volley.plan import Plan, plan_from_dict
from volley.records import COLUMNS, GAP_DTYPE, RecordBlock
from volley.schedule import slice_for
from volley.sequence import agent_range

STREAM_COLS = ("first_ns", "last_ns", "responses", "tokens")
SEQ_COLS = ("seq_id", "seq_step", "seq_flags")


def _plan(kind: str) -> Plan:
    doc: dict[str, Any] = {
        "target": "127.0.0.1:8001",
        "model": "m",
        "seed": 1,
        "load": {"rate": 50, "duration": "2s"},
        "agents": [{"address": "a:1"}, {"address": "b:1"}],
    }
    if kind == "stream":
        doc.update(transport="stream", stream={"decoupled": True})
    else:
        doc["sequence"] = {"length": "3"}
    return plan_from_dict(doc)


PLANS = {k: _plan(k) for k in ("stream", "sequence")}


def _honest(plan: Plan, agent: int) -> RecordBlock:
    """The agent's slice, every request a good 3-response stream / sequence step."""
    idx, t = slice_for(*global_schedule(plan).all(), plan.agent_weights, agent)
    n = idx.size
    cols = {k: np.zeros(n, dt) for k, dt in COLUMNS.items()}
    cols["index"][:], cols["intended_ns"][:] = idx, t
    cols["sent_ns"][:] = t + 1000
    cols["done_ns"][:] = t + 3_000_000
    cols["first_ns"][:], cols["last_ns"][:] = t + 1_000_000, t + 3_000_000
    cols["responses"][:], cols["tokens"][:] = 3, 3
    cols["resp_bytes"][:] = 300  # three answers of 100 bytes
    cols["seq_flags"][:] = rc.SEQ_FIRST | rc.SEQ_LAST
    if plan.sequence is not None:  # its own correlation IDs
        cols["seq_id"][:] = agent_range(plan, agent)[0] + np.arange(n)
    return RecordBlock(cols, [], np.full(2 * n, 1_000_000, GAP_DTYPE))


def _honest_row(plan: Plan) -> Any:
    agg = Aggregator(2, 0)
    agg.ingest(1, _honest(plan, 1))
    infos = [AgentInfo(index=i, address=f"a{i}:1", workers=1) for i in range(2)]
    return build_summary(plan, "r", agg, infos, 2.0, None)["agents"][1]


HONEST_ROW = {k: _honest_row(p) for k, p in PLANS.items()}

EXTREMES = {
    np.dtype("<i8"): [0, -1, 2**63 - 1, -(2**63)],
    np.dtype("<u8"): [0, 2**64 - 1, 2**63],
    np.dtype("<u4"): [0, 1, 2**32 - 1],
    np.dtype("<u2"): [0, 2**16 - 1],
    np.dtype("<u1"): [0, 255, rc.SEQ_FIRST, rc.SEQ_CUT | rc.SEQ_FAILED],
}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.sampled_from(sorted(PLANS)), st.data())
def test_rogue_stream_and_sequence_columns(tmp_path: Path, kind: str, data: Any) -> None:
    plan = PLANS[kind]
    shape = RunShape.of(plan)
    rogue = _honest(plan, 0)
    n = len(rogue)
    for name in data.draw(st.lists(st.sampled_from(STREAM_COLS + SEQ_COLS), max_size=4)):
        col = rogue.columns[name]
        rows = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8))
        col[rows] = data.draw(st.sampled_from(EXTREMES[col.dtype]))
    gaps = rogue.gaps.copy()
    if data.draw(st.booleans()):
        spots = data.draw(st.lists(st.integers(0, gaps.size - 1), min_size=1, max_size=5))
        gaps[spots] = data.draw(st.sampled_from([-1, 0, 2**62, -(2**63)]))
    if data.draw(st.booleans()):
        gaps = gaps[: data.draw(st.integers(0, gaps.size))]
    rogue = RecordBlock(rogue.columns, [], gaps)
    honest = _honest(plan, 1)
    agg = Aggregator(2, 0)
    if plan.sequence is not None:
        agg.sequences = SequenceStats(2, 0)
    infos = [AgentInfo(index=i, address=f"a{i}:1", workers=1) for i in range(2)]
    for i, block in ((0, rogue), (1, honest)):
        check = AgentCheck(shape, i, 1, 1, infos[i].faults)
        with np.errstate(all="ignore"):
            kept = check.records(block)
            infos[i].invalid_records = check.invalid
            agg.ingest(i, kept)
    assert infos[1].invalid_records == 0 and not infos[1].faults
    summary = build_summary(plan, "r", agg, infos, 2.0, None)
    json.dumps(summary, allow_nan=False)  # finite
    write_json(tmp_path / "summary.json", summary)
    load_summary(tmp_path / "summary.json")
    # the honest agent's figures: every one of its requests, as sent
    row = summary["agents"][1]
    assert row["ok"] == len(honest) and row["errors"] == 0, row
    assert row["latency_ms"] == HONEST_ROW[kind]["latency_ms"]
    assert row["service_time_ms"] == HONEST_ROW[kind]["service_time_ms"]


def test_a_correlation_id_outside_the_agents_range_is_dropped() -> None:
    plan = PLANS["sequence"]
    block = _honest(plan, 0)
    lo, hi = agent_range(plan, 0)
    ids = block.columns["seq_id"]
    ids[0], ids[1], ids[2] = hi, 2**64 - 1, 0  # agent 1's first ID, garbage, 0 on a sent step
    check = AgentCheck(RunShape.of(plan), 0, 1, 1)
    kept = check.records(block)
    assert check.invalid == 3 and dict(check.faults) == {"correlation id outside its range": 3}
    assert len(kept) == len(block) - 3 and int(kept.columns["seq_id"].min()) >= lo


def test_rogue_token_and_response_counts_are_dropped_not_summed() -> None:
    """A rogue agent claiming 4e9 tokens (or responses) per request: such records are
    dropped as invalid and counted; the run's token figures are the honest agent's."""
    plan = PLANS["stream"]
    shape = RunShape.of(plan)
    rogue = _honest(plan, 0)
    cols = rogue.columns
    cols["tokens"][0] = 2**32 - 1  # more tokens than bytes of answer
    cols["responses"][1] = 301  # more responses than its 300 bytes
    cols["tokens"][2], cols["resp_bytes"][2] = 2**32 - 1, 2**32 - 1  # bytes faster than light
    cols["tokens"][3], cols["responses"][3] = 5, 0  # tokens without a response
    cols["status"][4], cols["tokens"][4] = rc.DEADLINE_EXCEEDED, 7  # not OK: not bounded
    gaps = np.full(int(rc.gap_counts(cols["responses"]).sum()), 1_000, GAP_DTYPE)
    rogue = RecordBlock(cols, [], gaps)
    honest = _honest(plan, 1)
    agg = Aggregator(2, 0)
    checks = [AgentCheck(shape, i, 1, 1) for i in range(2)]
    for i, block in ((0, rogue), (1, honest)):
        agg.ingest(i, checks[i].records(block))
    assert checks[0].invalid == 4
    assert dict(checks[0].faults) == {"implausible responses, tokens or bytes": 4}
    assert checks[1].invalid == 0
    honest_tokens = 3 * (len(rogue) - 5) + 3 * len(honest)  # record 4 failed: not counted
    assert agg.total().tokens == honest_tokens
    # the plausible bound itself: 100 bytes per ns of service time, plus 64 KiB
    fast = _honest(plan, 0)
    service = int(fast.columns["done_ns"][0] - fast.columns["sent_ns"][0])
    fast.columns["resp_bytes"][0] = service * MAX_BYTES_PER_NS + BURST_BYTES
    fast.columns["resp_bytes"][1] = service * MAX_BYTES_PER_NS + BURST_BYTES + 1
    check = AgentCheck(shape, 0, 1, 1)
    check.records(fast)
    assert check.invalid == 1
