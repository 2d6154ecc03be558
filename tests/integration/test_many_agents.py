"""24 real agent processes (`--local-agents`), one worker each, at a low rate against the
real Triton: the two-phase start puts every agent's first send on its intended time.

On a 2-core host the 24 agents and their 24 workers take most of the test's time to
spawn and import (they prepare in parallel); the load itself is 2 s at 240 req/s (10
per agent), constant arrivals, so agent k's first arrival is k * 4.2 ms after the start
and no two agents fire at once: each agent's start skew is its own start's."""

from __future__ import annotations

import statistics
from pathlib import Path

from coordinator.local import LocalAgents
from coordinator.run import RunOptions, execute
from tests.triton_fixture import TritonEndpoint
from volley.plan import plan_from_dict

AGENTS = 24
#: The issue's target: every agent starts within 5 ms of the agreed instant. On a busy
#: shared 2-core host a stall of tens of ms is the kernel's (48 processes, 2 cores; CI's
#: host has shown 25 ms send stalls), so the test holds the median to the target (or to
#: the run's own send lateness p99 on a host slower than that) and the worst to 50 ms (a
#: one-phase start misses by 70-4,000 ms).
TARGET_MS = 5.0
WORST_MS = 50.0


async def test_24_agents_start_together(triton_server: TritonEndpoint, tmp_path: Path) -> None:
    plan = plan_from_dict(
        {
            "target": triton_server.grpc_url,
            "model": "add",
            "seed": 3,
            "name": "many",
            "load": {"mode": "open", "arrival": "constant", "rate": 240, "duration": "2s"},
            # 48 processes on 2 cores wake late: what this test judges is the start, so
            # late timer wake-ups alone do not make an agent the bottleneck here
            "validity": {"min_duration_s": 1, "min_requests": 10, "max_late_fraction": 1.0},
        }
    )
    local = LocalAgents(AGENTS, workers=1, startup_timeout_s=120)
    with local as addresses:
        result = await execute(
            plan,
            addresses,
            RunOptions(out_dir=tmp_path, prepare_timeout_s=120, security=local.security),
        )
    s = result.summary
    agents = s["agents"]
    assert len(agents) == AGENTS
    assert all(a["state"] == "done" for a in agents), [a["error"] for a in agents]
    assert s["requests"]["ok"] == s["requests"]["schedule_total"] == 480
    start = s["start"]
    skews = [abs(a["start_skew_ms"] or 0.0) for a in agents]
    margins = [a["start_margin_ms"] for a in agents]
    print(
        f"\n24 agents: prepare max {start['prepare_s_max']:.2f}s (median "
        f"{start['prepare_s_median']:.2f}s, slowest {start['slowest_agent']}), lead "
        f"{start['lead_ms']:.1f} ms, Start margin min {start['margin_ms_min']:.1f} ms, "
        f"start skew median {statistics.median(skews):.3f} ms, max {max(skews):.3f} ms, "
        f"{start['agents_within_5ms']}/{AGENTS} within 5 ms"
    )
    # every agent had the instant before it passed, and was prepared
    assert all(m is not None and m > 0 for m in margins), margins
    assert all(a["prepare_s"] is not None for a in agents)
    assert start["start_late_agents"] == []
    # On a host too slow for its own steady sends to be on time (a clean clone here once
    # ran this test 2.5x slower: prepare 16 s, send lateness p99 22.8 ms over the run,
    # start skews median 9 ms), no start can be closer than the host wakes a timer: the
    # median is then held to the run's own p99 lateness (a start no worse than any
    # other moment of the run), never looser than the worst bound below.
    lateness_p99 = s["send_lateness_ms"]["p99"]
    assert statistics.median(skews) <= max(TARGET_MS, min(lateness_p99, WORST_MS)), (
        skews,
        lateness_p99,
    )
    assert max(skews) <= WORST_MS, skews
    # no agent is blamed, for capacity or start-up
    assert not any(a["saturated"] or a.get("startup") for a in agents), s["verdict"]
