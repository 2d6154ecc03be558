"""Synthetic agents for `bench/scale.py`: real control-plane servers that fake the load.

Each one answers Hello, Ping, Run (two-phase: Started, Prepared, then after Start a
TimingBatch every 100 ms with every arrival of its slice due by then, and a heartbeat
every 250 ms), Start, Stop and Collect, like an agent; nothing is sent to any target.
Its records are valid for the coordinator (its own slice's indices, sane clocks), so the
coordinator does all its real work: vetting, histograms, windows, the summary. Intended
times are those of a constant rate (the coordinator checks indices and clock bounds,
not each intended time against the schedule).

    python bench/synthetic_agents.py --count 25 --port-file ports.txt
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from volley.plan import Plan  # noqa: E402
from volley.records import COLUMNS, RecordBlock  # noqa: E402
from volley.schedule import weighted_pattern  # noqa: E402
from volley.v1 import control_pb2 as pb  # noqa: E402
from volley.v1 import control_pb2_grpc as pb_grpc  # noqa: E402
from volley.version import PROTOCOL_VERSION, __version__  # noqa: E402

FLUSH_S = 0.1
BEAT_S = 0.25


class SyntheticAgent(pb_grpc.AgentControlServicer):
    def __init__(self, name: str) -> None:
        self.name = name
        self.go: asyncio.Event = asyncio.Event()
        self.start_at = 0
        self.stopped = False

    async def Hello(self, request: Any, context: Any) -> pb.HelloReply:
        return pb.HelloReply(
            protocol_version=PROTOCOL_VERSION,
            agent_version=__version__,
            agent_id=self.name,
            host="synthetic",
            cores=1,
            workers=1,
            pid=os.getpid(),
        )

    async def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingReply:
        return pb.PingReply(
            coordinator_send_ns=request.coordinator_send_ns, agent_ns=time.monotonic_ns()
        )

    async def Start(self, request: pb.StartRequest, context: Any) -> pb.StartReply:
        self.start_at = request.start_at_agent_ns
        self.go.set()
        return pb.StartReply(accepted=True, agent_ns=time.monotonic_ns())

    async def Stop(self, request: Any, context: Any) -> pb.StopReply:
        self.stopped = True
        return pb.StopReply(stopped=True)

    async def Collect(self, request: Any, context: Any) -> AsyncIterator[pb.RunEvent]:
        for _ in ():
            yield pb.RunEvent()

    async def Run(self, request: pb.RunRequest, context: Any) -> AsyncIterator[pb.RunEvent]:
        plan = Plan.from_json(request.plan_json)
        k = request.agent_index
        pattern = weighted_pattern(plan.agent_weights)
        period = len(pattern)
        slots = np.flatnonzero(pattern == k).astype(np.int64)
        rate = plan.load.rate
        total = round(rate * plan.load.duration_s)
        yield pb.RunEvent(started=pb.Started(run_id=request.run_id, workers=1, agent_index=k))
        if request.prepare_first:
            yield pb.RunEvent(prepared=pb.Prepared(run_id=request.run_id, workers=1))
            await self.go.wait()
        else:
            self.start_at = request.start_at_agent_ns
        # this agent's slice of a constant-rate schedule, in periods
        per = slots.size
        ords_total = (total // period) * per + int((slots < total % period).sum())
        done_ord = 0
        sent = 0
        cpu0 = time.process_time()
        last_beat = 0.0
        while done_ord < ords_total and not self.stopped:
            await asyncio.sleep(FLUSH_S)
            now = time.monotonic_ns() - self.start_at
            if now < 0:
                continue
            due = min(int(now * rate / 1e9) + 1, total)
            upto = (due // period) * per + int((slots < due % period).sum())
            if upto > done_ord:
                o = np.arange(done_ord, upto, dtype=np.int64)
                idx = (o // per) * period + slots[o % per]
                t = (idx * 1_000_000_000 // int(rate)).astype(np.int64)
                cols = {c: np.zeros(o.size, dt) for c, dt in COLUMNS.items()}
                cols["index"][:] = idx
                cols["intended_ns"][:] = t
                cols["sent_ns"][:] = t + 50_000
                cols["done_ns"][:] = t + 1_050_000 + (idx % 997) * 1000
                cols["req_bytes"][:] = 16
                cols["resp_bytes"][:] = 16
                cols["batch_size"][:] = 1
                yield pb.RunEvent(timings=RecordBlock(cols, ["1x4"]).to_proto())
                sent += o.size
                done_ord = upto
            if time.monotonic() - last_beat >= BEAT_S:
                last_beat = time.monotonic()
                yield pb.RunEvent(status=self._status(sent, cpu0))
        yield pb.RunEvent(
            finished=pb.Finished(
                run_id=request.run_id, ok=True, final_status=self._status(sent, cpu0)
            )
        )

    def _status(self, sent: int, cpu0: float) -> pb.AgentStatus:
        return pb.AgentStatus(
            state="running",
            sent=sent,
            completed=sent,
            cpu_seconds=time.process_time() - cpu0,
            agent_ns=time.monotonic_ns(),
        )


async def serve(count: int, port_file: Path) -> None:
    servers = []
    ports = []
    for i in range(count):
        server = grpc.aio.server()
        pb_grpc.add_AgentControlServicer_to_server(SyntheticAgent(f"syn-{os.getpid()}-{i}"), server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
    port_file.write_text("\n".join(map(str, ports)) + "\n")
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=25)
    ap.add_argument("--port-file", type=Path, required=True)
    a = ap.parse_args()
    try:
        import uvloop

        uvloop.run(serve(a.count, a.port_file))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
