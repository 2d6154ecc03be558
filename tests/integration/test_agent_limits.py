"""An agent's limits hold at send time, with real agent processes against the local Triton:
a closed loop at concurrency 8 under `--max-rate 10` sends at most 10 requests in any 1 s
window, and an open loop never has more requests in flight than `--max-in-flight`, whatever
the agent's worker count. Both are read from requests.parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
import pytest

from coordinator.run import RunOptions, execute
from tests.agent_thread import spawn_agent, stop_process
from tests.triton_fixture import TritonEndpoint
from volley import records as rc
from volley.plan import plan_from_dict

pytestmark = pytest.mark.triton

S = 1_000_000_000
LOOSE = {"min_duration_s": 1, "min_requests": 5}


def _doc(triton: TritonEndpoint, model: str, **load: object) -> dict[str, Any]:
    return {
        "target": triton.grpc_url,
        "model": model,
        "seed": 5,
        "name": "limits",
        "load": load,
        "validity": LOOSE,
    }


def _peak_in_window(times: npt.NDArray[np.int64], window: int) -> int:
    """The most of ``times`` in any half-open window [t, t + window)."""
    t = np.sort(times)
    return int((np.searchsorted(t, t + window, side="left") - np.arange(t.size)).max())


def _peak_in_flight(sent: npt.NDArray[np.int64], done: npt.NDArray[np.int64]) -> int:
    """The most requests in flight at once: +1 at each send, -1 at each completion (a
    completion before a send at the same instant)."""
    times = np.concatenate([sent, done])
    steps = np.concatenate([np.ones(sent.size, np.int64), -np.ones(done.size, np.int64)])
    order = np.lexsort((steps, times))
    return int(np.cumsum(steps[order]).max())


async def test_closed_loop_under_max_rate_sends_at_most_the_limit_in_any_window(
    triton_server: TritonEndpoint, tmp_path: Path
) -> None:
    proc, addr, log = spawn_agent(tmp_path, "paced", args=["--max-rate", "10"], workers=2)
    try:
        plan = plan_from_dict(
            _doc(triton_server, "add", mode="closed", concurrency=8, duration="3s")
        )
        result = await execute(plan, [addr], RunOptions(out_dir=tmp_path, start_lead_s=2.0))
    finally:
        stop_process(proc)
    raw = pq.read_table(result.run_dir / "requests.parquet")
    sent = raw.column("sent_ns").to_numpy()
    status = raw.column("status").to_numpy()
    peak = _peak_in_window(sent[sent >= 0], S)
    print(f"closed loop, 8 users, --max-rate 10: {sent.size} requests, peak {peak} in 1 s")
    assert peak <= 10, peak
    assert (status == rc.OK).sum() >= 20  # it did run: ~10 a second for 3 s
    assert not (status == rc.LIMITED).any()  # users wait their turn; nothing refused
    assert "closed loop: --max-rate 10/s (10 in any 1 s window) is enforced at send time" in (
        log.read_text()
    )


async def test_in_flight_never_exceeds_the_agents_limit(
    triton_server: TritonEndpoint, tmp_path: Path
) -> None:
    # 4 workers asked, in-flight limit 2: the agent runs 2 workers, one slot each (a cap
    # of "at least one per worker" would let 4 requests fly)
    proc, addr, _ = spawn_agent(tmp_path, "capped", args=["--max-in-flight", "2"], workers=4)
    try:
        doc = _doc(
            triton_server, "sleep", rate=10, duration="2s", max_in_flight=2, max_backlog=1000
        )
        doc["inputs"] = [{"name": "DELAY_MS", "source": "constant", "value": 150}]
        result = await execute(
            plan_from_dict(doc), [addr], RunOptions(out_dir=tmp_path, start_lead_s=2.0)
        )
    finally:
        stop_process(proc)
    raw = pq.read_table(result.run_dir / "requests.parquet")
    sent, done = raw.column("sent_ns").to_numpy(), raw.column("done_ns").to_numpy()
    went = sent >= 0
    peak = _peak_in_flight(sent[went], done[went])
    print(f"open loop, --max-in-flight 2, 4 workers asked: peak {peak} in flight")
    assert went.sum() >= 10
    assert peak <= 2, peak
