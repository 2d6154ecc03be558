"""Agent CPU per request for ~200 KB image payloads (and for a tiny payload, to compare).

    python bench/images.py [--target HOST:PORT] [--rate 100] [--duration 10s] [--out FILE]

Without --target it starts its own CPU Triton with triton_models/ on free loopback ports
(needs VOLLEY_TRITON_HOME or a .venv-triton, like the tests). It then runs volley with
one local agent of one worker, open loop, against:

* `image` with IMAGE 256x256x3 UINT8 (196,608 bytes of pixels, ~197 KB per request),
  random data, 64 distinct pre-serialized payloads;
* `image` with mixed sizes, 128x128 .. 480x640 (weighted mean request ~215 KB);
* `add` (two FP32[16] inputs, ~200 B per request): the same agent's per-request floor.

It prints, per case, the agent's CPU microseconds per request (`cpu_us_per_request` of
summary.json: the worker processes' CPU time during the load, pool building excluded),
the payload size and the latency, and the ratio to k6, which spends about 7.7 ms of
generator CPU per 220 KB image request on this machine kind. The machine has 2 cores
shared by Triton, the agent and the coordinator: the figures are for comparison on the
same machine, not absolute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator.local import LocalAgents  # noqa: E402
from coordinator.run import RunOptions, execute  # noqa: E402
from coordinator.triton import TritonConfig, TritonServer, locate_triton_home  # noqa: E402
from volley.plan import plan_from_dict  # noqa: E402

K6_US_PER_IMAGE_REQUEST = 7700.0

CASES: dict[str, dict[str, Any]] = {
    "image 256x256x3 (197 KB)": {
        "model": "image",
        "inputs": [{"name": "IMAGE", "shape": [256, 256, 3]}],
    },
    "image mixed 128x128..480x640 (mean ~215 KB)": {
        "model": "image",
        "inputs": [
            {
                "name": "IMAGE",
                "shapes": ["128x128x3:2", "224x224x3:4", "256x320x3:2", "480x640x3:0.75"],
            }
        ],
    },
    "add (200 B)": {"model": "add", "inputs": []},
}


async def _one(target: str, case: dict[str, Any], rate: float, duration: str, out: Path) -> Any:
    plan = plan_from_dict(
        {
            "target": target,
            "model": case["model"],
            "name": "bench-images",
            "seed": 1,
            "inputs": case["inputs"],
            "raw_records": False,
            "load": {
                "mode": "open",
                "arrival": "constant",
                "rate": rate,
                "duration": duration,
                "warmup": "1s",
            },
            "validity": {"min_duration_s": 1, "min_requests": 10},
        }
    )
    local = LocalAgents(1, workers=1)
    with local as addrs:
        opts = RunOptions(out_dir=out, start_lead_s=1.5, security=local.security)
        return await execute(plan, addrs, opts)


def run(target: str, rate: float, duration: str) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="volley-bench-") as tmp:
        for name, case in CASES.items():
            result = asyncio.run(_one(target, case, rate, duration, Path(tmp)))
            s = result.summary
            agent = s["agents"][0]
            pool = s.get("input_pool", {})
            cpu = agent["cpu_us_per_request"]
            rows.append(
                {
                    "case": name,
                    "rate": rate,
                    "sent": s["requests"]["sent"],
                    "errors": s["requests"]["errors"],
                    "request_bytes_mean": pool.get("request_bytes", {}).get("mean"),
                    "agent_cpu_us_per_request": cpu,
                    "k6_cpu_ratio": round(K6_US_PER_IMAGE_REQUEST / cpu, 1) if cpu else None,
                    "latency_p50_ms": s["latency_ms"]["p50"],
                    "latency_p99_ms": s["latency_ms"]["p99"],
                    "send_late_fraction": s["send_lateness_ms"]["late_fraction"],
                    "pool_bytes_per_worker": pool.get("bytes_per_worker"),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", default="", help="a running Triton's gRPC HOST:PORT")
    ap.add_argument("--rate", type=float, default=100.0, help="requests per second")
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--out", default="", help="write the rows as JSON here")
    args = ap.parse_args()
    server = None
    target = args.target
    if not target:
        state = Path(tempfile.mkdtemp(prefix="volley-bench-triton-"))
        cfg = TritonConfig(
            model_repository=ROOT / "triton_models",
            http_port=0,
            grpc_port=0,
            metrics_port=0,
            models=["image", "add"],
            state_dir=state,
            triton_home=locate_triton_home(None),
        )
        server = TritonServer(cfg)
        server.start(timeout_s=90)
        target = server.grpc_url
    try:
        rows = run(target, args.rate, args.duration)
    finally:
        if server is not None:
            server.stop()
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
