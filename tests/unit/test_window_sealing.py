"""Sealing finished windows early (rows computed, histograms freed) changes nothing in
timeseries.parquet: the rows equal those computed at the end from full histograms."""

from __future__ import annotations

import numpy as np

from coordinator.aggregate import Aggregator
from coordinator.rundir import timeseries_rows
from volley.records import RecordBuffer


def _blocks(seed: int) -> list[tuple[int, RecordBuffer]]:
    rng = np.random.default_rng(seed)
    out = []
    for agent in range(2):
        buf = RecordBuffer(5000)
        for i in range(4000):
            intended = int(i * 2_500_000) + agent  # 10 s of arrivals
            sent = intended + int(rng.integers(0, 3_000_000))
            done = sent + int(rng.lognormal(14, 0.5))
            status = 14 if i % 97 == 0 else 0
            buf.append(i, intended, sent, done, status, 100, 50, 1, 0)
        out.append((agent, buf))
    return out


def _agg() -> Aggregator:
    agg = Aggregator(2, warmup_ns=1_000_000_000)
    for agent, buf in _blocks(7):
        block = buf.take(["16"])
        assert block is not None
        agg.ingest(agent, block)
    return agg


def test_sealed_rows_equal_rows_at_the_end() -> None:
    names = ["a0", "a1"]
    whole = timeseries_rows(_agg(), names)
    agg = _agg()
    early = [w for w in agg.window_keys() if w < 6]
    rows = timeseries_rows(agg, names, None, early)
    agg.release_windows(set(early))
    assert all(agg.windows[(w, a)].latency.count == 0 for w in early for a in (0, 1))
    rows += timeseries_rows(agg, names, None, [w for w in agg.window_keys() if w >= 6])
    assert rows == whole
    # counts and error codes survive the release (outage detection uses them)
    assert sum(st.errors for st in agg.windows.values()) == sum(
        r["errors"] for r in whole if r["agent"] == "all"
    )
