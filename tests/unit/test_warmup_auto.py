"""`--warmup auto` (coordinator/steady.py): a synthetic run whose first windows are slow;
the detected start is excluded, and the rebuilt figures are the steady part's own (the
same as a planned warm-up of that length, and the exact percentiles of its latencies)."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.aggregate import Aggregator
from coordinator.rundir import timeseries_rows
from coordinator.steady import detect, exclude_start
from coordinator.summary import AgentInfo, build_summary
from volley import records as rc
from volley.arrivals import global_schedule
from volley.plan import Plan, PlanError, plan_from_dict
from volley.records import COLUMNS, RecordBlock

SLOW_S = 6


def _plan(**load: object) -> Plan:
    return plan_from_dict(
        {
            "target": "127.0.0.1:8001",
            "model": "sleep",
            "load": {"rate": 100, "duration": "30s", "warmup": "auto", **load},
            "slos": ["p99<20ms"],
        }
    )


def _blocks(plan: Plan, slow_s: int, seed: int = 3) -> tuple[list[RecordBlock], np.ndarray]:
    """Two agents' records (one block per agent and second): 40 ms latency in the first
    `slow_s` seconds, ~5 ms after; and every latency (ns) by intended time."""
    rng = np.random.default_rng(seed)
    idx, t = global_schedule(plan).all()
    lat = np.where(
        t < slow_s * 1_000_000_000,
        rng.lognormal(np.log(40e6), 0.2, t.size),
        rng.lognormal(np.log(5e6), 0.2, t.size),
    ).astype(np.int64)
    blocks = []
    for sec in range(int(t.max() // 1_000_000_000) + 1):
        for agent in (0, 1):
            m = (t // 1_000_000_000 == sec) & (idx % 2 == agent)
            cols = {k: np.zeros(int(m.sum()), dt) for k, dt in COLUMNS.items()}
            cols["index"][:] = idx[m]
            cols["intended_ns"][:] = t[m]
            cols["sent_ns"][:] = t[m] + 50_000
            cols["done_ns"][:] = t[m] + lat[m]
            cols["status"][:] = rc.OK
            blocks.append(RecordBlock(cols, []))
    return blocks, np.column_stack([t, lat])


def _ingest(blocks: list[RecordBlock], warmup_ns: int) -> Aggregator:
    agg = Aggregator(2, warmup_ns)
    for i, b in enumerate(blocks):
        agg.ingest(i % 2, b)
    return agg


INFOS = [
    AgentInfo(index=0, address="a0:1", workers=1),
    AgentInfo(index=1, address="a1:1", workers=1),
]


def test_a_slow_start_is_excluded_and_the_figures_are_the_steady_parts() -> None:
    plan = _plan()
    assert plan.load.warmup_auto and plan.load.warmup_s == 0.0
    blocks, lat = _blocks(plan, SLOW_S)
    agg = _ingest(blocks, 0)
    d, by, rule, judged = detect(timeseries_rows(agg, ["a0", "a1"]), 0.0, 30.0)
    # MSER-5 cuts in batches of 5 windows
    assert SLOW_S <= d <= SLOW_S + 5 and by == "latency" and judged == 30 and "MSER-5" in rule
    cut = exclude_start(agg, d)
    truth = _ingest(blocks, d * 1_000_000_000)  # a planned warm-up of d seconds
    for got, want in ((cut.total(), truth.total()), (cut.total_warmup(), truth.total_warmup())):
        assert (got.records, got.ok, got.sent) == (want.records, want.ok, want.sent)
        assert got.latency.count == want.latency.count
        for q in (50.0, 90.0, 99.0):
            assert got.latency.percentile(q) == want.latency.percentile(q)
    steady_lat = lat[lat[:, 0] >= d * 1_000_000_000, 1]
    assert cut.total().ok == steady_lat.size == 100 * (30 - d)
    built = plan_from_dict({**plan.to_dict(), "load": {**plan.to_dict()["load"], "warmup_s": d}})
    s = build_summary(built, "r", cut, INFOS, 30.0 - d, None)
    whole = build_summary(plan, "r", agg, INFOS, 30.0, None)
    true_p99 = float(np.percentile(steady_lat, 99)) / 1e6
    assert s["latency_ms"]["p99"] == pytest.approx(true_p99, rel=0.02)
    assert whole["latency_ms"]["p99"] > 30.0  # the slow start dominates the whole run's tail
    assert s["throughput_rps"] == pytest.approx(100.0, rel=0.01)
    assert s["verdict"]["slo"][0]["passed"] and not whole["verdict"]["slo"][0]["passed"]
    ci = s["confidence"]["latency_ms"]["p99"]  # type: ignore[index]
    assert ci["low"] <= true_p99 <= ci["high"]


def test_the_cut_is_at_most_half_the_run_and_a_level_run_keeps_everything() -> None:
    plan = _plan()
    agg = _ingest(_blocks(plan, 13)[0], 0)  # slow for 13 of 30 s: cut at 15, the bound
    assert detect(timeseries_rows(agg, ["a0", "a1"]), 0.0, 30.0)[0] == 15
    # slow for most of the run: no settled part to keep (MSER looks at most half way)
    slow = _ingest(_blocks(plan, 22)[0], 0)
    assert detect(timeseries_rows(slow, ["a0", "a1"]), 0.0, 30.0)[0] <= 15
    level = _ingest(_blocks(plan, 0)[0], 0)
    assert detect(timeseries_rows(level, ["a0", "a1"]), 0.0, 30.0)[0] == 0


def test_warmup_auto_is_refused_with_stages_and_a_typo_is_an_error() -> None:
    with pytest.raises(PlanError, match=r"load\.warmup"):
        _plan(stages=[{"duration": "10s", "rate": 10}])
    with pytest.raises(PlanError, match=r"load\.warmup"):
        plan_from_dict({"target": "x:1", "model": "m", "load": {"warmup": "autox"}})
