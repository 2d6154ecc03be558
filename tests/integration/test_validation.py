"""A coordinator against agents it must not trust, and an SLO with nothing to judge.

- A rogue agent (a small grpc.aio AgentControl server here) sends NaN/inf heartbeats,
  its own records twice, the honest agent's indices, garbage, a wrong Started, next to
  one honest in-process agent: the run completes, summary.json is written, the honest
  agent's counts are exact, requests.parquet holds no invalid row, nothing over-counts.
- Every request times out (the sleep model's delay far above --timeout): a latency SLO
  fails (exit code 1) and says why ("no successful request").

Each prints what it measures (pytest -s)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from agent.config import AgentConfig
from agent.server import AgentServer
from coordinator.run import RunOptions, execute
from tests.triton_fixture import TritonEndpoint
from volley.arrivals import global_schedule
from volley.cli import app
from volley.plan import Plan, plan_from_dict
from volley.records import COLUMNS, RecordBlock
from volley.schedule import slice_for
from volley.v1 import control_pb2 as pb
from volley.v1 import control_pb2_grpc as pb_grpc
from volley.version import PROTOCOL_VERSION

pytestmark = pytest.mark.triton


def _block(idx: np.ndarray, t: np.ndarray) -> RecordBlock:
    cols = {k: np.zeros(idx.size, dt) for k, dt in COLUMNS.items()}
    cols["index"][:] = idx
    cols["intended_ns"][:] = t
    cols["sent_ns"][:] = t + 200_000
    cols["done_ns"][:] = t + 1_200_000
    cols["req_bytes"][:] = 16
    cols["batch_size"][:] = 1
    return RecordBlock(cols, ["1x4"])


def _garbage(n: int) -> RecordBlock:
    rng = np.random.default_rng(3)
    cols = {k: rng.integers(0, 60000, n).astype(dt) for k, dt in COLUMNS.items()}
    for name in ("index", "intended_ns", "sent_ns", "done_ns"):
        cols[name] = rng.integers(-(2**62), 2**62, n).astype(np.int64)
    cols["status"] = rng.integers(0, 2**16, n).astype(np.uint16)
    return RecordBlock(cols, ["x"])


class _RogueAgent(pb_grpc.AgentControlServicer):
    """Answers the handshake like an agent, then sends what a buggy one might."""

    def __init__(self) -> None:
        #: records of its own slice it sent once, validly
        self.valid = 0
        #: the two-phase start: its Start came
        self.go = asyncio.Event()

    async def Hello(self, request: Any, context: Any) -> pb.HelloReply:
        return pb.HelloReply(
            protocol_version=PROTOCOL_VERSION, agent_id="rogue", workers=1, cores=1
        )

    async def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingReply:
        return pb.PingReply(
            coordinator_send_ns=request.coordinator_send_ns, agent_ns=time.monotonic_ns()
        )

    async def Run(self, request: pb.RunRequest, context: Any) -> AsyncIterator[pb.RunEvent]:
        plan = Plan.from_json(request.plan_json)
        k = request.agent_index
        idx, t = global_schedule(plan).all()
        mine_i, mine_t = slice_for(idx, t, plan.agent_weights, k)
        other_i, other_t = slice_for(idx, t, plan.agent_weights, 1 - k)
        half = mine_i.size // 2
        self.valid = half
        yield pb.RunEvent(started=pb.Started(run_id=request.run_id, agent_index=k, scheduled=7))
        if request.prepare_first:
            yield pb.RunEvent(prepared=pb.Prepared(run_id=request.run_id, workers=1))
            await self.go.wait()
        for st in (
            pb.AgentStatus(cpu_percent=math.nan, cpu_seconds=1.0),
            pb.AgentStatus(cpu_percent=5.0, cpu_seconds=math.inf),
            pb.AgentStatus(cpu_percent=-1e308, agent_ns=2**62),
        ):
            yield pb.RunEvent(status=st)
        for block in (
            _block(mine_i[:half], mine_t[:half]),
            _block(mine_i[:half], mine_t[:half]),  # the same records again
            _block(other_i, other_t),  # the honest agent's arrivals
            _garbage(1000),
        ):
            yield pb.RunEvent(timings=block.to_proto())
        final = pb.AgentStatus(cpu_seconds=math.inf, cpu_percent=math.nan)
        yield pb.RunEvent(finished=pb.Finished(run_id=request.run_id, ok=True, final_status=final))

    async def Stop(self, request: Any, context: Any) -> pb.StopReply:
        return pb.StopReply(stopped=True)

    async def Start(self, request: Any, context: Any) -> pb.StartReply:
        self.go.set()
        return pb.StartReply(accepted=True, agent_ns=time.monotonic_ns())

    async def Collect(self, request: Any, context: Any) -> AsyncIterator[pb.RunEvent]:
        for _ in ():
            yield pb.RunEvent()


async def test_a_rogue_agent_next_to_an_honest_one(
    triton_server: TritonEndpoint, tmp_path: Path
) -> None:
    rogue = _RogueAgent()
    server = grpc.aio.server()
    pb_grpc.add_AgentControlServicer_to_server(rogue, server)
    port = server.add_insecure_port("127.0.0.1:0")
    honest = AgentServer(AgentConfig(listen="127.0.0.1:0", workers=1, agent_id="honest"))
    await server.start()
    await honest.start()
    try:
        doc = {
            "target": triton_server.grpc_url,
            "model": "add",
            "load": {"rate": 20, "duration": "2s", "arrival": "constant"},
            "validity": {"min_duration_s": 1, "min_requests": 5},
        }
        opts = RunOptions(out_dir=tmp_path, start_lead_s=1.0)
        addresses = [f"127.0.0.1:{honest.port}", f"127.0.0.1:{port}"]
        result = await asyncio.wait_for(execute(plan_from_dict(doc), addresses, opts), 60)
    finally:
        await honest.stop(0.5)
        await server.stop(0)
    s = json.loads((result.run_dir / "summary.json").read_text(), parse_constant=float)
    print("verdict:", json.dumps(s["verdict"], indent=1))
    print("rogue:", s["agents"][1]["invalid_records"], s["agents"][1]["faults"])
    good, bad = s["agents"]
    total = s["requests"]["schedule_total"]
    assert total == 40 and good["state"] == "done"
    # the honest agent's counts are exact: its whole slice, once, all OK
    assert good["scheduled"] == good["sent"] == good["ok"] == 20
    assert good["invalid_records"] == 0 and good["faults"] == {}
    assert good["cpu_percent_peak"] >= 0 and math.isfinite(good["cpu_seconds"])
    # the rogue one: its valid half kept, everything else dropped and named
    assert bad["scheduled"] == 20  # its slice of the schedule
    assert bad["recorded"] == rogue.valid == 10 and bad["no_record"] == 10
    assert bad["invalid_records"] == 10 + 20 + 1000
    assert bad["faults"]["duplicate index"] == 10
    assert bad["faults"]["index outside its slice"] >= 20
    assert bad["faults"]["bad status message"] == 4
    assert bad["faults"]["start disagrees with the run"] == 1
    assert bad["cpu_seconds"] == 0.0 and bad["cpu_percent_peak"] == 0.0
    # the schedule is never over-counted; the run is invalid, and says why
    assert s["requests"]["scheduled"] + s["warmup_requests"]["scheduled"] == total
    got = s["requests"]["recorded"] + s["warmup_requests"]["recorded"]
    assert total - got == 10
    assert s["requests"]["no_record"] + s["warmup_requests"]["no_record"] == 10
    reasons = s["verdict"]["reasons"]
    garbage = "agent rogue sent mostly invalid records (1030 of 1040 dropped"
    assert any(r.startswith(garbage) for r in reasons)
    assert any("10 of 40 scheduled requests have no record" in r for r in reasons)
    assert not s["verdict"]["valid"]
    # requests.parquet: no invalid row, the honest agent's slice exactly
    raw = pq.read_table(result.run_dir / "requests.parquet")
    agent = raw.column("agent").to_numpy()
    index = raw.column("index").to_numpy()
    assert len(np.unique(index)) == len(index) == 30
    plan = result.plan
    idx, t = global_schedule(plan).all()
    assert np.array_equal(np.sort(index[agent == 0]), slice_for(idx, t, plan.agent_weights, 0)[0])


def test_all_timeouts_fail_a_latency_slo(triton_server: TritonEndpoint, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    doc = {
        "target": triton_server.grpc_url,
        "model": "sleep",
        "name": "timeouts",
        "load": {"mode": "open", "arrival": "constant", "rate": 4, "duration": "1s"},
        "inputs": [{"name": "DELAY_MS", "source": "constant", "value": 300.0}],
        "validity": {"min_duration_s": 0.5, "min_requests": 0, "max_error_rate": 1.0},
    }
    plan.write_text(yaml.safe_dump(doc))
    res = CliRunner().invoke(
        app,
        [
            "run",
            str(plan),
            "--local-agents",
            "1",
            "--workers",
            "1",
            "--start-lead",
            "1",
            "--timeout",
            "20ms",
            "--slo",
            "p99<10s",
            "--out",
            str(tmp_path / "runs"),
            "--quiet",
        ],
    )
    assert res.exit_code == 1, res.output
    run_dir = Path(res.output.strip().splitlines()[-1])
    s = json.loads((run_dir / "summary.json").read_text())
    v = s["verdict"]
    print("requests:", s["requests"], "verdict:", v)
    assert s["requests"]["ok"] == 0 and s["requests"]["error_codes"] == {"DEADLINE_EXCEEDED": 4}
    assert v["valid"], v["reasons"]  # the run itself is fine: the SLO alone fails it
    (r,) = v["slo"]
    assert r["passed"] is False and r["actual"] is None
    assert r["reason"] == "no successful request"
    assert v["slo_passed"] is False
