"""Reference generator: a plain tritonclient grpc.aio loop (what most users would write).

Open loop (Poisson arrivals, one task per request) or closed loop (C coroutines),
against the same server and model as volley. Prints one JSON line: CPU per request
of this process during the load, counts and latency. Used by bench/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

import numpy as np
import tritonclient.grpc.aio as grpcclient


def _inputs(model: str, shape: list[int]) -> list[grpcclient.InferInput]:
    rng = np.random.default_rng(1)
    if model == "image":
        x = grpcclient.InferInput("IMAGE", shape, "UINT8")
        x.set_data_from_numpy(rng.integers(0, 255, size=shape, dtype=np.uint8))
        return [x]
    out = []
    for name in ("INPUT0", "INPUT1"):
        x = grpcclient.InferInput(name, [16], "FP32")
        x.set_data_from_numpy(rng.standard_normal(16).astype(np.float32))
        out.append(x)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="add")
    ap.add_argument("--shape", default="")
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--concurrency", type=int, default=0)
    ap.add_argument("--duration", type=float, default=5.0)
    a = ap.parse_args()
    shape = [int(d) for d in a.shape.split("x")] if a.shape else []
    client = grpcclient.InferenceServerClient(a.url)
    inputs = _inputs(a.model, shape)
    await client.infer(a.model, inputs)  # connect and warm up
    lat: list[float] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        t0 = time.perf_counter()
        try:
            r = await client.infer(a.model, inputs)
            if not r.get_response().outputs:
                errors += 1
        except Exception:
            errors += 1
        lat.append(time.perf_counter() - t0)

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t_start = time.perf_counter()
    end = t_start + a.duration
    if a.concurrency:

        async def user() -> None:
            while time.perf_counter() < end:
                await one()

        await asyncio.gather(*(user() for _ in range(a.concurrency)))
    else:
        rng = np.random.default_rng(7)
        tasks = set()
        t = t_start
        while True:
            t += rng.exponential(1.0 / a.rate)
            if t >= end:
                break
            delay = t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    wall = time.perf_counter() - t_start
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    n = len(lat)
    await client.close()
    print(
        json.dumps(
            {
                "requests": n,
                "errors": errors,
                "cpu_us_per_request": cpu / max(n, 1) * 1e6,
                "throughput_rps": n / wall,
                "latency_p50_ms": float(np.percentile(lat, 50) * 1e3) if lat else None,
                "latency_p99_ms": float(np.percentile(lat, 99) * 1e3) if lat else None,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
