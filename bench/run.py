"""volley's generator benchmark (`make bench`): CPU per request, side by side, in one run.

Starts its own CPU Triton (triton_models/), then measures against it:
  1. agent CPU per request at 2,000 req/s Poisson on `add` for each transport (gRPC
     unary, gRPC stream, HTTP), and a plain tritonclient grpc.aio loop doing the same
     (bench/plain_aio.py): the ratio is the figure to trust on a shared machine;
  2. closed loop at concurrency 32, volley vs the plain loop;
  3. ~220 KB image requests (`image`, IMAGE 256x286x3 UINT8);
  4. send lateness vs rate (gRPC unary);
  5. coordinator ingest rate (records/s per core) and bytes per record on disk;
  6. the whole process tree (coordinator + agent + worker, as `volley run --local-agents
     1` runs it) per request at 2,000 req/s, split per process, and its idle cost at
     1 req/s (cores), beside the peers' figures;
  7. scale (bench/scale.py): 64 real local agents' two-phase start, and 100 synthetic
     agents at 20,000 records/s each into the real coordinator.
Results: bench/results/bench-<UTC time>.json and a printed table.

Caveat: on a small machine the server and the generator share the cores; timings are
noisy, CPU per request (and its ratio to the reference) is what to compare.
Run: `make bench` or `python bench/run.py [--duration 5] [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import uvloop  # noqa: E402

from coordinator.aggregate import Aggregator  # noqa: E402
from coordinator.local import LocalAgents, protect_workers  # noqa: E402
from coordinator.run import Progress, RunOptions, execute  # noqa: E402
from coordinator.rundir import RequestWriter  # noqa: E402
from volley.plan import plan_from_dict  # noqa: E402
from volley.records import COLUMNS, RecordBlock  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from scale import bench_triton  # noqa: E402

#: The brief's reference figures on this machine kind (µs of generator CPU per request).
REFERENCE_US = {
    "k6 (gRPC, add)": "300-390",
    "Locust + tritonclient": "~400",
    "MLPerf LoadGen + tritonclient SUT": "330-410",
    "tritonclient grpc.aio, concurrency 32": "130-160",
    "h2load (C HTTP/2 client)": "~22",
    "k6, ~220 KB image requests": "~7,700",
}
#: Whole process tree per request at 2,000 req/s Poisson, measured side by side against
#: one CPU Triton (issue 19): the peers' figures volley's targets are ratios of.
PEERS_WHOLE_TREE_US = {"k6": 328, "Locust": 233, "MLPerf LoadGen": 272, "h2load (C)": 19}
#: Targets (issue 19): whole tree <= 0.2x k6 (~60 µs), idle <= 0.01 cores at 1 req/s.
TARGET_RATIO_TO_K6 = 0.2
TARGET_IDLE_CORES = 0.01


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of one process (not its children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def volley_run(
    doc: dict[str, Any], out: Path, workers: int = 1, pin: bool = True
) -> dict[str, Any]:
    """One real run (a local agent process with `workers` worker processes), as `volley run
    --local-agents 1` runs it; CPU split per process over the load (start instant to the
    last tick): the coordinator (this process), the agent process, its workers."""
    plan = plan_from_dict(doc)
    local = LocalAgents(1, workers, pin=pin)
    with local as addrs:
        pid = local.procs[0].pid
        marks: dict[str, float] = {}

        def progress(p: Progress) -> None:
            # marks at whole seconds of the run only: reading /proc every tick is the
            # bench's own cost, not the coordinator's
            if p.elapsed_s < 0 or marks.get("window") == p.window:
                return
            marks["window"] = p.window
            if "start" not in marks:
                marks["start"] = _proc_cpu_s(pid)
                marks["coord_start"] = time.process_time()
                marks["t_start"] = time.monotonic()
            marks["coord_end"] = time.process_time()
            marks["end"] = _proc_cpu_s(pid)
            marks["t_end"] = time.monotonic()

        opts = RunOptions(
            out_dir=out,
            progress=progress,
            security=local.security,
            at_start=protect_workers,
            affinity=local.affinity.doc(),
        )
        t_end = time.process_time()
        result = uvloop.run(execute(plan, addrs, opts))  # as `volley run` runs it
        finish_cpu = time.process_time() - marks.get("coord_end", t_end)
        agent_cpu = marks.get("end", 0.0) - marks.get("start", 0.0)
        coord_cpu = marks.get("coord_end", 0.0) - marks.get("coord_start", 0.0)
    s = result.summary
    a = s["agents"][0]
    raw = result.run_dir / "requests.parquet"
    import pyarrow.parquet as pq

    rows = pq.read_metadata(raw).num_rows if raw.exists() else 0
    sent = max(s["requests"]["sent"] + s["warmup_requests"]["sent"], 1)
    worker_us = a["cpu_us_per_request"] or 0.0
    agent_us = round(agent_cpu / sent * 1e6, 1)
    coord_us = round(coord_cpu / sent * 1e6, 1)
    return {
        "transport": f"{plan.protocol}/{plan.transport if plan.protocol == 'grpc' else 'h1'}",
        "offered_rps": s["offered_rps"],
        "throughput_rps": s["throughput_rps"],
        "ok": s["requests"]["ok"],
        "errors": s["requests"]["errors"],
        "worker_cpu_us_per_request": a["cpu_us_per_request"],
        #: the agent's own process (merging worker blocks, streaming to the coordinator)
        "agent_process_us_per_request": agent_us,
        #: the coordinator (ingest, histograms, raw records, ticks) during the load
        "coordinator_us_per_request": coord_us,
        "whole_tree_us_per_request": round(worker_us + agent_us + coord_us, 1),
        #: the whole tree's CPU per second (the idle figure), cores: the workers' CPU over
        #: the run's span (both whole-run figures), the agent process and the coordinator
        #: between the marks (they fall on ticks, up to 1 s apart when idle)
        "whole_tree_cores": round(
            a["cpu_seconds"] / max(s["duration_s"] + s["warmup_s"], 1e-9)
            + (agent_cpu + coord_cpu)
            / max(marks.get("t_end", 0.0) - marks.get("t_start", 0.0), 1e-9),
            5,
        ),
        "coordinator_finish_cpu_s": round(finish_cpu, 3),
        "latency_p50_ms": s["latency_ms"]["p50"],
        "latency_p99_ms": s["latency_ms"]["p99"],
        "service_p50_ms": s["service_time_ms"]["p50"],
        "lateness_p50_ms": s["send_lateness_ms"]["p50"],
        "lateness_p99_ms": s["send_lateness_ms"]["p99"],
        "late_fraction": s["send_lateness_ms"]["late_fraction"],
        "bytes_per_record": raw.stat().st_size / rows if rows else None,
        "pinned": local.affinity.pinned,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "run_dir": str(result.run_dir),
    }


def plain_run(url: str, duration: float, **kw: Any) -> dict[str, Any]:
    args = [sys.executable, str(ROOT / "bench" / "plain_aio.py"), "--url", url]
    args += ["--duration", str(duration)]
    for k, v in kw.items():
        args += [f"--{k}", str(v)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1:]}
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def ingest_bench(n: int = 1_000_000) -> dict[str, Any]:
    """Coordinator ingest (decode + histograms) and raw-record writing, synthetic records."""
    rng = np.random.default_rng(1)
    intended = np.cumsum(rng.exponential(1e9 / 2000, n)).astype(np.int64)
    sent = intended + rng.exponential(2e5, n).astype(np.int64)
    done = sent + rng.lognormal(np.log(1.5e6), 0.5, n).astype(np.int64)
    cols = {k: np.zeros(n, dt) for k, dt in COLUMNS.items()}
    cols["index"][:] = np.arange(n)
    cols["intended_ns"][:] = intended
    cols["sent_ns"][:] = sent
    cols["done_ns"][:] = done
    cols["worker"][:] = np.arange(n) % 2
    cols["req_bytes"][:] = 150
    cols["resp_bytes"][:] = 94
    cols["batch_size"][:] = 1
    cols["status"][rng.random(n) < 0.001] = 14
    blocks = [
        RecordBlock({k: v[i : i + 8192] for k, v in cols.items()}, ["16;16"])
        for i in range(0, n, 8192)
    ]
    protos = [b.to_proto() for b in blocks]
    agg = Aggregator(1, 0)
    t0 = time.process_time()
    for p in protos:
        agg.ingest(0, RecordBlock.from_proto(p))
    ingest_s = time.process_time() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "requests.parquet"
        w = RequestWriter(path)
        t0 = time.process_time()
        for b in blocks:
            w.write(0, b)
        w.close()
        write_s = time.process_time() - t0
        size = path.stat().st_size
    return {
        "records": n,
        "ingest_records_per_s_per_core": round(n / ingest_s),
        "write_records_per_s_per_core": round(n / write_s),
        "bytes_per_record_synthetic": round(size / n, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("--quick", action="store_true", help="fewer scenarios (CI smoke)")
    ap.add_argument(
        "--only",
        choices=["cost"],
        help="cost: only the whole tree at 2,000 req/s and the idle cost at 1 req/s",
    )
    a = ap.parse_args()
    if a.only == "cost":
        print(json.dumps(cost_only(a.duration), indent=2))
        return
    dur = a.duration
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "note": "server and generator share the cores"},
        "reference_us_per_request": REFERENCE_US,
    }
    tmp = Path(tempfile.mkdtemp(prefix="volley-bench-"))
    server = bench_triton(tmp)
    g, h = server.grpc_url, server.http_url
    print(f"triton up: grpc {g}, http {h}", flush=True)

    def doc(**kw: Any) -> dict[str, Any]:
        d: dict[str, Any] = {
            "target": g,
            "model": "add",
            "seed": 1,
            "name": "bench",
            "load": {"mode": "open", "arrival": "poisson", "rate": 2000, "duration": f"{dur}s"},
            "validity": {"min_duration_s": 1, "min_requests": 10},
        }
        d.update(kw)
        return d

    try:
        rate: dict[str, Any] = {}
        for name, kw in [
            ("grpc_unary", {}),
            ("grpc_stream", {"transport": "stream"}),
            ("grpcio", {"transport": "grpcio"}),
            ("http", {"protocol": "http", "target": h}),
        ]:
            rate[name] = volley_run(doc(**kw), tmp / "runs")
            print(name, rate[name], flush=True)
        rate["plain_tritonclient_aio"] = plain_run(g, dur, rate=2000)
        print("plain", rate["plain_tritonclient_aio"], flush=True)
        plain_us = rate["plain_tritonclient_aio"].get("cpu_us_per_request")
        for name in ("grpc_unary", "grpc_stream", "grpcio", "http"):
            v = rate[name]["worker_cpu_us_per_request"]
            rate[name]["ratio_to_plain_aio"] = round(v / plain_us, 3) if plain_us and v else None
        results["add_2000rps_poisson"] = rate
        u = rate["grpc_unary"]
        results["whole_tree_2000rps"] = {
            "worker_us": u["worker_cpu_us_per_request"],
            "agent_us": u["agent_process_us_per_request"],
            "coordinator_us": u["coordinator_us_per_request"],
            "whole_tree_us": u["whole_tree_us_per_request"],
            "ratio_to_k6": round(u["whole_tree_us_per_request"] / PEERS_WHOLE_TREE_US["k6"], 3),
            "target_ratio_to_k6": TARGET_RATIO_TO_K6,
            "lateness_p99_ms": u["lateness_p99_ms"],
            "peers_us": PEERS_WHOLE_TREE_US,
        }
        idle_doc = doc()
        idle_doc["load"].update(rate=1, duration=f"{max(dur * 2, 10)}s")
        idle = volley_run(idle_doc, tmp / "runs")
        idle["target_cores"] = TARGET_IDLE_CORES
        print("idle", idle, flush=True)
        results["idle_1rps"] = idle
        two = volley_run(doc(), tmp / "runs", workers=2)
        two["note"] = "2 worker processes on a 2-core machine shared with the server"
        print("two workers", two, flush=True)
        results["add_2000rps_2_workers"] = two

        if not a.quick:
            closed: dict[str, Any] = {}
            cdoc = doc()
            cdoc["load"] = {"mode": "closed", "concurrency": 32, "duration": f"{dur}s"}
            closed["grpc_unary"] = volley_run(cdoc, tmp / "runs")
            closed["plain_tritonclient_aio"] = plain_run(g, dur, concurrency=32)
            pu = closed["plain_tritonclient_aio"].get("cpu_us_per_request")
            v = closed["grpc_unary"]["worker_cpu_us_per_request"]
            closed["ratio_to_plain_aio"] = round(v / pu, 3) if pu and v else None
            print("closed", closed, flush=True)
            results["add_closed_c32"] = closed

            image: dict[str, Any] = {}
            idoc = doc(model="image", inputs=[{"name": "IMAGE", "shape": [256, 286, 3]}])
            idoc["load"]["rate"] = 100
            image["grpc_unary"] = volley_run(idoc, tmp / "runs")
            image["plain_tritonclient_aio"] = plain_run(
                g, dur, model="image", shape="256x286x3", rate=100
            )
            v = image["grpc_unary"]["worker_cpu_us_per_request"]
            image["ratio_to_k6_7700us"] = round(v / 7700, 3) if v else None
            print("image", image, flush=True)
            results["image_220KB_100rps"] = image

            late: list[dict[str, Any]] = []
            for r in (200, 1000, 2000, 3000):
                ldoc = doc()
                ldoc["load"]["rate"] = r
                ldoc["load"]["duration"] = f"{max(dur * 0.6, 3)}s"
                res = volley_run(ldoc, tmp / "runs")
                late.append(
                    {
                        "rate": r,
                        **{
                            k: res[k]
                            for k in (
                                "worker_cpu_us_per_request",
                                "lateness_p50_ms",
                                "lateness_p99_ms",
                                "late_fraction",
                                "throughput_rps",
                                "service_p50_ms",
                            )
                        },
                    }
                )
                print("lateness", late[-1], flush=True)
            results["lateness_vs_rate"] = late

        results["coordinator"] = ingest_bench()
        print("coordinator", results["coordinator"], flush=True)
        if not a.quick:
            import scale

            results["scale"] = scale.run_all(g, tmp, 64, 2.0, 100, 20_000, dur)
    finally:
        server.stop()

    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nresults: {path}")


def cost_only(dur: float) -> dict[str, Any]:
    """`--only cost`: the whole tree at 2,000 req/s and the idle cost at 1 req/s, alone
    (a before/after figure in the same minutes), with the host's load average."""
    tmp = Path(tempfile.mkdtemp(prefix="volley-bench-"))
    server = bench_triton(tmp)
    base: dict[str, Any] = {
        "target": server.grpc_url,
        "model": "add",
        "seed": 1,
        "name": "bench",
        "validity": {"min_duration_s": 1, "min_requests": 10},
    }
    out: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    try:
        tree = volley_run(
            {
                **base,
                "load": {"mode": "open", "arrival": "poisson", "rate": 2000, "duration": f"{dur}s"},
            },
            tmp / "runs",
        )
        idle = volley_run(
            {
                **base,
                "load": {
                    "mode": "open",
                    "arrival": "poisson",
                    "rate": 1,
                    "duration": f"{max(dur * 2, 10)}s",
                },
            },
            tmp / "runs",
        )
    finally:
        server.stop()
    out["whole_tree_2000rps"] = {k: tree[k] for k in tree if k != "run_dir"}
    out["idle_1rps"] = {k: idle[k] for k in idle if k != "run_dir"}
    out["loadavg_after"] = os.getloadavg()
    return out


def print_table(r: dict[str, Any]) -> None:
    print("\n== agent CPU per request (µs), add, 2,000 req/s Poisson ==")
    rate = r["add_2000rps_poisson"]
    plain = rate["plain_tritonclient_aio"].get("cpu_us_per_request")
    for name in ("grpc_unary", "grpc_stream", "grpcio", "http"):
        if name not in rate:
            continue
        x = rate[name]
        print(
            f"  volley {name:12s} {x['worker_cpu_us_per_request']:8.1f}   ratio to plain aio "
            f"{x.get('ratio_to_plain_aio')}   latency p50 {x['latency_p50_ms']} ms"
            f"   lateness p99 {x['lateness_p99_ms']} ms"
        )
    print(f"  plain tritonclient aio {plain if plain is None else round(plain, 1)}")
    two = r.get("add_2000rps_2_workers")
    if two:
        print(f"  volley grpc_unary, 2 workers: {two['worker_cpu_us_per_request']} µs per request")
    if "add_closed_c32" in r:
        c = r["add_closed_c32"]
        print(
            "\n== closed loop, concurrency 32: volley "
            f"{c['grpc_unary']['worker_cpu_us_per_request']}"
            f" µs, plain aio {round(c['plain_tritonclient_aio'].get('cpu_us_per_request', 0), 1)}"
            f" µs (ratio {c['ratio_to_plain_aio']})"
        )
    if "image_220KB_100rps" in r:
        im = r["image_220KB_100rps"]
        print(
            f"== image 256x286x3: volley {im['grpc_unary']['worker_cpu_us_per_request']} µs "
            f"(ratio to k6's ~7,700: {im['ratio_to_k6_7700us']}), plain aio "
            f"{round(im['plain_tritonclient_aio'].get('cpu_us_per_request', 0), 1)} µs"
        )
    if "lateness_vs_rate" in r:
        print("== send lateness vs rate (gRPC unary, 1 worker) ==")
        for x in r["lateness_vs_rate"]:
            print(
                f"  {x['rate']:5d}/s: p50 {x['lateness_p50_ms']} ms, p99 {x['lateness_p99_ms']}"
                f" ms, >1 ms {x['late_fraction']:.1%}, CPU {x['worker_cpu_us_per_request']} µs"
            )
    w = r.get("whole_tree_2000rps")
    if w:
        print(
            f"== whole tree per request, 2,000 req/s: {w['whole_tree_us']} µs = worker "
            f"{w['worker_us']} + agent {w['agent_us']} + coordinator {w['coordinator_us']} "
            f"(ratio to k6 {w['ratio_to_k6']}, target <= {w['target_ratio_to_k6']}); "
            f"lateness p99 {w['lateness_p99_ms']} ms"
        )
        peers = ", ".join(f"{k} {v} µs" for k, v in w["peers_us"].items())
        print(f"   peers, whole tree, same setup (issue 19): {peers}")
        print(f"   references (brief): {', '.join(f'{k} {v}' for k, v in REFERENCE_US.items())}")
    idle = r.get("idle_1rps")
    if idle:
        print(
            f"== idle cost at 1 req/s: {idle['whole_tree_cores']} cores "
            f"(target <= {idle['target_cores']})"
        )
    sc = r.get("scale", {})
    if "many_local_agents" in sc:
        m = sc["many_local_agents"]
        print(
            f"== {m['agents']} local agents: start skew median {m['start_skew_ms_median']} ms, "
            f"max {m['start_skew_ms_max']} ms, {m['within_5ms']} within 5 ms; "
            f"coordinator {m['coordinator_cpu_s']} s CPU, {m['coordinator_max_rss_mb']} MB"
        )
    if "synthetic_agents" in sc:
        y = sc["synthetic_agents"]
        print(
            f"== {y['agents']} synthetic agents x {y['records_per_s_each']:.0f} records/s: "
            f"{y['records']:,} of {y['scheduled']:,} records in, {y['invalid_records']} invalid, "
            f"{y['agents_done']} agents done; {y['records_per_coordinator_cpu_s']:,} records per "
            f"coordinator CPU-second ({y['coordinator_us_per_record']} µs/record), wall "
            f"{y['coordinator_wall_s']} s for {y['duration_s']} s of load, "
            f"{y['coordinator_max_rss_mb']} MB"
        )
    c = r["coordinator"]
    print(
        f"== coordinator: ingest {c['ingest_records_per_s_per_core'] / 1e6:.2f} M records/s/core,"
        f" parquet {c['bytes_per_record_synthetic']} bytes/record (synthetic), "
        f"{rate['grpc_unary']['bytes_per_record']:.1f} (the 2,000/s run)"
    )


if __name__ == "__main__":
    main()
