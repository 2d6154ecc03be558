"""Micro-benchmark: the worker's per-request send path with and without the agent's limits.

In process, no socket: a fake transport that only counts, the real monotonic clock, the
real record buffer. Open loop: `_issue` per arrival (plain `_send`, or the pacer with a
quota it never reaches, or the pacer refusing: LIMITED records). Closed loop: one
completion -> the user's next request (plain, or through the pacer and in-flight share).

    PYTHONPATH=. .venv/bin/python scripts/bench_pacer.py
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agent.config import AgentLimits
from agent.worker import Worker, WorkerTask
from volley.plan import plan_from_dict

N = 200_000


class _Out:
    def put(self, _msg: Any) -> None:
        pass


class _Payloads:
    def __init__(self) -> None:
        self.shapes: list[str] = []

    def pick_one(self, _key: int) -> int:
        return 0


class _Wire:
    shape_id = 0
    model_id = 0
    req_bytes = 10
    batch_size = 1


class _Transport:
    def __init__(self) -> None:
        self.in_flight = 0
        self.last = (0, 0, 0)

    def send(self, key: int, intended: int, pidx: int) -> None:
        self.in_flight += 1
        self.last = (key, intended, pidx)


def _worker(limits: AgentLimits, mode: str) -> tuple[Worker, _Transport]:
    load: dict[str, Any] = (
        {"rate": 100, "duration": "5s"}
        if mode == "open"
        else {"mode": "closed", "concurrency": 1, "duration": "5s"}
    )
    plan = plan_from_dict({"target": "127.0.0.1:8001", "model": "add", "load": load})
    extra: dict[str, Any] = {"limits": limits} if limits != AgentLimits() else {}
    task = WorkerTask(plan.to_json(), "bench", 0, 0, 1, time.monotonic_ns(), **extra)
    w = Worker(task, _Out(), None)  # type: ignore[arg-type]
    tp = _Transport()
    w.tp = tp  # type: ignore[assignment]
    w.payloads = _Payloads()  # type: ignore[assignment]
    w.wires = [_Wire()]  # type: ignore[list-item]
    return w, tp


def open_loop(limits: AgentLimits) -> float:
    w, _ = _worker(limits, "open")
    issue = getattr(w, "_issue", w._send)  # the code before limits had only `_send`
    t0 = time.process_time()
    for i in range(N):
        issue(i, i, 0)
    return (time.process_time() - t0) / N * 1e6


def closed_loop(limits: AgentLimits) -> float:
    w, tp = _worker(limits, "closed")
    w.level, w.active, w.end_ns = 1, [False], 1 << 62
    w._user_next(0)
    complete = w._complete
    t0 = time.process_time()
    for _ in range(N):
        key, intended, _p = tp.last
        tp.in_flight -= 1
        complete(key, intended, intended, intended + 1, 0, 0, 10)  # -> the next request
    return (time.process_time() - t0) / N * 1e6


async def main() -> None:
    none = AgentLimits()
    roomy = AgentLimits(max_rate=5_000_000, max_in_flight=100_000)
    tight = AgentLimits(max_rate=1)
    import sys

    rows = [
        ("open loop, no limits", open_loop, none),
        ("open loop, --max-rate/--max-in-flight (never reached)", open_loop, roomy),
        ("open loop, --max-rate 1 (arrivals recorded LIMITED)", open_loop, tight),
        ("closed loop, no limits", closed_loop, none),
        ("closed loop, --max-rate/--max-in-flight (never reached)", closed_loop, roomy),
    ]
    if "--no-limits" in sys.argv:  # rows that run on the code before limits too
        rows = [r for r in rows if r[2] == none]
    best = {name: min(fn(lim) for _ in range(3)) for name, fn, lim in rows}
    for _ in range(4):  # interleaved, against a loaded machine's drift
        for name, fn, lim in rows:
            best[name] = min(best[name], fn(lim))
    for name, us in best.items():
        print(f"{name:58s} {us:6.3f} us/request (CPU, best of 7 x {N:,})")


if __name__ == "__main__":
    asyncio.run(main())
