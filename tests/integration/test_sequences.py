"""Stateful sequences against the real accumulator (Triton's sequence batcher): open and
closed loop over two agents, every response checked against the running sum, every
sequence ended; a check that catches a wrong state; the server holds no sequence after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from coordinator.preflight import PreflightError
from coordinator.run import RunOptions, execute
from tests.sequence_checks import check_sequence_run, raw_columns
from tests.triton_fixture import TritonEndpoint
from volley import records as rc
from volley.plan import PlanError, plan_from_dict


def _doc(triton: TritonEndpoint, load: dict[str, Any], **seq: Any) -> dict[str, Any]:
    return {
        "target": triton.grpc_url,
        "model": "accumulator",
        "seed": 16,
        "name": "seq",
        "load": {"duration": "2s", **load},
        "sequence": {"length": "5..20", "check": "INPUT:OUTPUT", **seq},
        "validity": {"min_duration_s": 1, "min_requests": 10},
    }


def _no_live_sequences(triton: TritonEndpoint, ids: list[int]) -> None:
    """A START on each ID is accepted: the model holds none of them live (a sequence
    left open would be answered 'START while it is live')."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        for n in ids:
            x = grpcclient.InferInput("INPUT", [1, 1], "INT32")
            x.set_data_from_numpy(np.array([[1]], np.int32))
            r = client.infer(
                "accumulator", [x], sequence_id=n, sequence_start=True, sequence_end=True
            )
            assert int(r.as_numpy("OUTPUT")[0][0]) == 1
    finally:
        client.close()


async def test_open_loop_sequences_two_agents(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path
) -> None:
    doc = _doc(
        triton_server,
        {"mode": "open", "arrival": "poisson", "rate": 60},
        id_range=[1_000_000, 2_000_000],
        max_live=200,
    )
    result = await execute(
        plan_from_dict(doc), agent_pair, RunOptions(out_dir=tmp_path, start_lead_s=1.0)
    )
    s = result.summary
    q = check_sequence_run(result.run_dir, dict(s), agents=2)
    assert s["requests"]["errors"] == 0 and q["failed"] == 0 and q["refused"] == 0
    assert q["started"] >= 60  # ~120 starts scheduled
    assert all(a["sequences"] > 0 for a in q["agents"])
    pos = {p["position"]: p["latency_ms"]["count"] for p in q["by_position"]}
    assert pos["first"] == q["started"] and pos["last"] == q["completed"]
    assert pos["middle"] > 2 * pos["first"]
    assert q["duration_ms"]["count"] == q["completed"] and q["live_max"] > 0.5
    # the IDs were planned: plan.yaml records the agents' ranges
    assert "agent_ranges" in (result.run_dir / "plan.yaml").read_text()
    ids = np.unique(raw_columns(result.run_dir)["seq_id"]).tolist()
    _no_live_sequences(triton_server, [int(i) for i in ids[:40] if i])
    print(
        f"open loop sequences: {q['started']} started, {q['completed']} completed, "
        f"{q['cut']} cut; step latency {q['by_position']}"
    )


async def test_closed_loop_sequences_with_think_time(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path
) -> None:
    doc = _doc(
        triton_server,
        {"mode": "closed", "concurrency": 40},
        id_range=[3_000_000, 4_000_000],
        think_ms="0..3",
        id_type="uint64",
    )
    result = await execute(
        plan_from_dict(doc), agent_pair, RunOptions(out_dir=tmp_path, start_lead_s=1.0)
    )
    s = result.summary
    q = check_sequence_run(result.run_dir, dict(s), agents=2)
    assert s["requests"]["errors"] == 0 and q["failed"] == 0
    assert 30 <= q["live_max"] <= 40  # 40 users, each one sequence after another
    assert q["cut"] <= 40  # at most one live sequence per user at the end
    # think time: a step is sent >= its think time after the previous response
    c = raw_columns(result.run_dir)
    assert (c["status"] == rc.OK).all()


async def test_wrong_state_is_caught_and_ended(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path
) -> None:
    """COUNT is not the running sum of INPUT: the check fails the sequences (SEQ_MISMATCH),
    and volley ends each one at once, so the server keeps no slot."""
    doc = _doc(
        triton_server,
        {"mode": "open", "rate": 30, "duration": "1s"},
        id_range=[5_000_000, 5_100_000],
        check="INPUT:COUNT",
    )
    result = await execute(
        plan_from_dict(doc), agent_pair, RunOptions(out_dir=tmp_path, start_lead_s=1.0)
    )
    s = result.summary
    q = s["sequences"]
    assert q["mismatches"] > 0 and q["failed"] == q["mismatches"]
    assert q["ended"] == q["started"] and not s["verdict"]["valid"]
    assert any("wrong state" in r for r in s["verdict"]["reasons"])
    c = raw_columns(result.run_dir)
    failed = (c["seq_flags"] & rc.SEQ_FAILED) != 0
    cleanup = (c["seq_flags"] & rc.SEQ_CLEANUP) != 0
    assert set(c["seq_id"][failed].tolist()) == set(c["seq_id"][cleanup].tolist())
    _no_live_sequences(triton_server, sorted({int(i) for i in c["seq_id"][failed]})[:40])


async def test_sequence_plans_refused_clearly(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path
) -> None:
    plain = _doc(triton_server, {"mode": "open", "rate": 10})
    del plain["sequence"]
    with pytest.raises(PreflightError, match="stateful"):
        await execute(plan_from_dict(plain), agent_pair, RunOptions(out_dir=tmp_path))
    small = _doc(triton_server, {"mode": "closed", "concurrency": 30}, id_range=[10, 30])
    with pytest.raises(PlanError, match="too small"):
        await execute(plan_from_dict(small), agent_pair, RunOptions(out_dir=tmp_path))
    stateless = _doc(triton_server, {"mode": "open", "rate": 10})
    stateless["model"] = "add"
    with pytest.raises(PreflightError, match="no sequence_batching"):
        await execute(plan_from_dict(stateless), agent_pair, RunOptions(out_dir=tmp_path))


async def test_string_ids(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path
) -> None:
    """String correlation IDs (the prefix and the planned number)."""
    doc = _doc(
        triton_server,
        {"mode": "closed", "concurrency": 10, "duration": "1500ms"},
        id_type="string",
        id_prefix="s16-",
        length="3..6",
    )
    doc["model"] = "accumulator_str"
    result = await execute(
        plan_from_dict(doc), agent_pair, RunOptions(out_dir=tmp_path, start_lead_s=1.0)
    )
    s = result.summary
    q = check_sequence_run(result.run_dir, dict(s), agents=2)
    assert q["id_type"] == "string" and s["requests"]["errors"] == 0 and q["failed"] == 0
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        for n in sorted({int(i) for i in raw_columns(result.run_dir)["seq_id"] if i})[:20]:
            x = grpcclient.InferInput("INPUT", [1, 1], "INT32")
            x.set_data_from_numpy(np.array([[1]], np.int32))
            r = client.infer(
                "accumulator_str", [x], sequence_id=f"s16-{n}", sequence_start=True,
                sequence_end=True,
            )  # fmt: skip
            assert int(r.as_numpy("OUTPUT")[0][0]) == 1
    finally:
        client.close()


async def test_http_sequences(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path
) -> None:
    """Over KServe v2 REST: the flags and ID in the JSON header's parameters (a step the
    server took for another sequence, or without START, would be an error)."""
    doc = _doc(triton_server, {"mode": "open", "rate": 40, "duration": "1500ms"}, length="3..8")
    doc.update(target=triton_server.http_url, protocol="http")
    del doc["sequence"]["check"]
    result = await execute(
        plan_from_dict(doc), agent_pair, RunOptions(out_dir=tmp_path, start_lead_s=1.0)
    )
    s = result.summary
    q = check_sequence_run(result.run_dir, dict(s), agents=2)
    assert s["requests"]["errors"] == 0 and q["failed"] == 0 and q["completed"] > 20


async def test_stopped_run_ends_its_live_sequences(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path
) -> None:
    """A run stopped mid-way (Ctrl-C): every live sequence gets its END (CUT), so the
    server holds none of them."""
    import asyncio

    doc = _doc(
        triton_server,
        {"mode": "closed", "concurrency": 30, "duration": "20s"},
        id_range=[7_000_000, 8_000_000],
        length="50..80",
        think_ms="2",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def at_start() -> None:
        # Ctrl-C 1-2 s into the load (the start is told up to the 1 s lead before the
        # instant), however long the agents took to prepare
        loop.call_later(2.0, stop.set)

    result = await execute(
        plan_from_dict(doc),
        agent_pair,
        RunOptions(
            out_dir=tmp_path,
            start_lead_s=1.0,
            stop_event=stop,
            at_start=at_start,
        ),
    )
    s = result.summary
    q = check_sequence_run(result.run_dir, dict(s), agents=2)
    assert any("stopped early" in r for r in s["verdict"]["reasons"])
    assert q["cut"] >= 25, q  # ~30 were live when it stopped
    ids = sorted({int(i) for i in raw_columns(result.run_dir)["seq_id"] if i})
    _no_live_sequences(triton_server, ids)


async def test_agents_max_rate_paces_sequence_steps(
    triton_server: TritonEndpoint, tmp_path: Path
) -> None:
    """An agent's --max-rate holds for sequence steps too: they wait for their turn."""
    from agent.config import AgentConfig, AgentLimits
    from agent.server import AgentServer

    # the agent in this process (its worker a real process), as agent_pair's are: no
    # second interpreter to import and stop
    server = AgentServer(
        AgentConfig(
            listen="127.0.0.1:0",
            workers=1,
            agent_id="paced",
            limits=AgentLimits(max_rate=20),
            spool_dir=str(tmp_path / "spool"),
        )
    )
    await server.start()
    addr = f"127.0.0.1:{server.port}"
    try:
        doc = _doc(
            triton_server,
            {"mode": "closed", "concurrency": 8, "duration": "3s"},
            id_range=[9_000_000, 9_100_000],
            length="3..6",
        )
        result = await execute(
            plan_from_dict(doc), [addr], RunOptions(out_dir=tmp_path, start_lead_s=2.0)
        )
    finally:
        await server.stop(0.5)
    s = result.summary
    check_sequence_run(result.run_dir, dict(s), agents=1)
    sent = np.sort(raw_columns(result.run_dir)["sent_ns"])
    sent = sent[sent >= 0]
    s1 = 1_000_000_000
    peak = int((np.searchsorted(sent, sent + s1, side="left") - np.arange(sent.size)).max())
    assert peak <= 20 and s["requests"]["ok"] >= 40, (peak, s["requests"])
