"""Scale benchmarks (part of `make bench`; alone: `python bench/scale.py`).

1. `many_local`: N real local agents (default 64, one worker each, `--local-agents N`)
   at a low rate (default 2 req/s each, `--rate-each`) against Triton: the two-phase
   start's figures (slowest preparation, lead, Start margins, start skew per agent),
   coordinator CPU and memory.
2. `synthetic`: A synthetic agents (bench/synthetic_agents.py, default 100 in 4
   processes) driving the real coordinator over the real control plane at R records/s
   each (default 20,000): ingest rate, coordinator CPU per record and memory, whether
   every agent's records arrived (none dropped as invalid, none missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator.local import LocalAgents  # noqa: E402
from coordinator.run import RunOptions, execute  # noqa: E402
from coordinator.triton import TritonConfig, TritonServer, locate_triton_home  # noqa: E402
from volley.plan import plan_from_dict  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _doc(target: str, rate: float, duration_s: float, raw: bool) -> dict[str, Any]:
    return {
        "target": target,
        "model": "add",
        "seed": 5,
        "name": "scale",
        "raw_records": raw,
        "load": {"mode": "open", "arrival": "constant", "rate": rate, "duration": f"{duration_s}s"},
        "validity": {"min_duration_s": 1, "min_requests": 10},
    }


def many_local(target: str, out: Path, agents: int = 64, rate_each: float = 2.0) -> dict[str, Any]:
    """N real agent processes: how they were prepared and started."""
    plan = plan_from_dict(_doc(target, agents * rate_each, 3.0, raw=True))
    local = LocalAgents(agents, workers=1, startup_timeout_s=300)
    t0 = time.monotonic()
    with local as addrs:
        started = time.monotonic() - t0
        cpu0 = time.process_time()
        opts = RunOptions(out_dir=out, prepare_timeout_s=300, security=local.security)
        result = asyncio.run(execute(plan, addrs, opts))
        cpu = time.process_time() - cpu0
    s = result.summary
    skews = [abs(a["start_skew_ms"] or 0.0) for a in s["agents"]]
    margins = [a.get("start_margin_ms") or 0.0 for a in s["agents"]]
    return {
        "agents": agents,
        "rate_total": agents * rate_each,
        "agent_processes_up_s": round(started, 2),
        "start": s.get("start"),
        "start_skew_ms_median": round(statistics.median(skews), 3),
        "start_skew_ms_max": round(max(skews), 3),
        "within_5ms": sum(1 for k in skews if k <= 5.0),
        "start_margin_ms_min": round(min(margins), 1),
        "ok": s["requests"]["ok"],
        "scheduled": s["requests"].get("schedule_total"),
        "all_done": all(a["state"] == "done" for a in s["agents"]),
        "coordinator_cpu_s": round(cpu, 2),
        "coordinator_max_rss_mb": round(_rss_mb(), 1),
        "valid": s["verdict"]["valid"],
        "reasons": s["verdict"]["reasons"][:5],
    }


def synthetic(
    target: str,
    out: Path,
    agents: int = 100,
    rate_each: float = 20_000.0,
    duration_s: float = 5.0,
    procs: int = 4,
) -> dict[str, Any]:
    """Synthetic agents at rate_each records/s each into the real coordinator."""
    tmp = Path(tempfile.mkdtemp(prefix="volley-synthetic-"))
    per = [agents // procs + (1 if i < agents % procs else 0) for i in range(procs)]
    children = []
    files = []
    for i, n in enumerate(per):
        f = tmp / f"ports{i}.txt"
        files.append(f)
        children.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "bench" / "synthetic_agents.py"),
                    *("--count", str(n), "--port-file", str(f)),
                ]
            )
        )
    try:
        deadline = time.monotonic() + 120
        while not all(f.exists() and f.read_text().endswith("\n") for f in files):
            if time.monotonic() > deadline:
                raise RuntimeError("synthetic agents did not start")
            time.sleep(0.1)
        addrs = [f"127.0.0.1:{p}" for f in files for p in f.read_text().split()]
        plan = plan_from_dict(_doc(target, agents * rate_each, duration_s, raw=False))
        cpu0 = time.process_time()
        t0 = time.monotonic()
        result = asyncio.run(execute(plan, addrs, RunOptions(out_dir=out, prepare_timeout_s=120)))
        wall = time.monotonic() - t0
        cpu = time.process_time() - cpu0
    finally:
        for c in children:
            c.terminate()
        for c in children:
            c.wait(timeout=10)
    s = result.summary
    ok = s["requests"]["ok"] + s["warmup_requests"]["ok"]
    return {
        "agents": agents,
        "records_per_s_each": rate_each,
        "offered_records_per_s": agents * rate_each,
        "duration_s": duration_s,
        "records": ok,
        "scheduled": s["requests"].get("schedule_total"),
        #: records per second of coordinator CPU (all its work: vetting, histograms, the
        #: control plane); below the offered rate the coordinator fell behind (the agents'
        #: batches waited in their streams) and its wall time exceeds the duration
        "records_per_coordinator_cpu_s": round(ok / max(cpu, 1e-9)),
        "coordinator_cpu_s": round(cpu, 2),
        "coordinator_wall_s": round(wall, 2),
        "coordinator_us_per_record": round(cpu / max(ok, 1) * 1e6, 3),
        "coordinator_max_rss_mb": round(_rss_mb(), 1),
        "agents_done": sum(1 for a in s["agents"] if a["state"] == "done"),
        "invalid_records": sum(a["invalid_records"] for a in s["agents"]),
        "lead_ms": (s.get("start") or {}).get("lead_ms"),
        "reasons": s["verdict"]["reasons"][:5],
    }


def bench_triton(tmp: Path) -> TritonServer:
    """The benches' own CPU Triton (triton_models/, free ports, state under `tmp`), up."""
    server = TritonServer(
        TritonConfig(
            model_repository=ROOT / "triton_models",
            http_port=0,
            grpc_port=0,
            metrics_port=0,
            device="cpu",
            state_dir=tmp / "triton",
            triton_home=locate_triton_home(None),
        )
    )
    server.start(timeout_s=90)
    return server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=64, help="real local agents")
    ap.add_argument(
        "--rate-each",
        type=float,
        default=2.0,
        help="req/s per real agent (64 agents and Triton on 2 cores: 10/s each saturates them)",
    )
    ap.add_argument("--synthetic", type=int, default=100, help="synthetic agents")
    ap.add_argument("--records", type=float, default=20_000, help="records/s per synthetic")
    ap.add_argument("--duration", type=float, default=5.0, help="synthetic run, seconds")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="volley-scale-"))
    server = bench_triton(tmp)
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        results.update(
            run_all(server.grpc_url, tmp, a.agents, a.rate_each, a.synthetic, a.records, a.duration)
        )
    finally:
        server.stop()
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"scale-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {path}")


def run_all(
    target: str,
    tmp: Path,
    agents: int,
    rate_each: float,
    syn: int,
    records: float,
    duration_s: float,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if agents:
        out["many_local_agents"] = many_local(target, tmp / "runs", agents, rate_each)
        print("many local agents", json.dumps(out["many_local_agents"]), flush=True)
    if syn:
        out["synthetic_agents"] = synthetic(target, tmp / "runs", syn, records, duration_s)
        print("synthetic agents", json.dumps(out["synthetic_agents"]), flush=True)
    return out


if __name__ == "__main__":
    main()
