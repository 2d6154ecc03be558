"""summary.steady_state from per-window rows: a slow start is found, a level run is not."""

from __future__ import annotations

from typing import Any

import numpy as np

from coordinator.steady import steady_state


def _rows(latency: list[float], rps: list[float], first: int = 0) -> list[dict[str, Any]]:
    rows = []
    for i, (lat, r) in enumerate(zip(latency, rps, strict=True)):
        w = first + i
        rows.append({"window": w, "agent": "all", "latency_p50_ms": lat, "achieved_rps": r})
        rows.append({"window": w, "agent": "a0", "latency_p50_ms": 999.0, "achieved_rps": 1.0})
    return rows


def test_a_slow_start_is_found_and_named() -> None:
    rng = np.random.default_rng(1)
    lat = [*np.linspace(40, 12, 8).tolist(), *(10 + rng.normal(0, 0.3, 32)).tolist()]
    rps = (100 + rng.normal(0, 2, 40)).tolist()
    doc = steady_state(_rows(lat, rps, first=2), warmup_s=2.0, measured_s=40.0)
    assert doc is not None
    assert 5 <= doc["unsettled_windows"] <= 15 and doc["by"] == "latency"
    assert (
        doc["action"] == "reported"
        and f"warm-up of {2 + doc['unsettled_windows']:g}s" in doc["note"]
    )


def test_a_level_run_is_settled_and_short_runs_are_not_judged() -> None:
    rng = np.random.default_rng(2)
    lat = (10 + rng.normal(0, 0.3, 30)).tolist()
    rps = (100 + rng.normal(0, 2, 30)).tolist()
    doc = steady_state(_rows(lat, rps), warmup_s=0.0, measured_s=30.0)
    assert doc is not None and doc["unsettled_windows"] == 0 and doc["by"] == ""
    assert steady_state(_rows(lat[:10], rps[:10]), 0.0, 10.0) is None
