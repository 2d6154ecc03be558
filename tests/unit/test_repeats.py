"""--repeat: the spread between runs beside each run's own intervals (repeats.json)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from coordinator.repeats import write_repeats
from tests.unit.test_summary_document import _summary


def test_spread_beside_within_run_intervals(tmp_path: Path) -> None:
    base = _summary()
    runs = []
    for i, p99 in enumerate((10.0, 10.2, 30.0)):
        s = copy.deepcopy(base)
        s["seed"] = 100 + i
        s["latency_ms"]["p99"] = p99
        s["confidence"]["latency_ms"]["p99"] = {"low": p99 * 0.95, "high": p99 * 1.05}
        d = tmp_path / f"20260101T00000{i}Z-r"
        d.mkdir()
        runs.append((d, s))
    doc = write_repeats(tmp_path, runs)
    f = doc["figures"]["latency_ms.p99"]
    assert f["values"] == [10.0, 10.2, 30.0] and f["min"] == 10.0 and f["max"] == 30.0
    assert abs(f["within_ratio"] - 0.1) < 1e-6  # type: ignore[operator]
    # 20 ms apart, intervals 10% wide: the runs differ more than their intervals say
    assert f["spread_exceeds_intervals"] and f["spread_ratio"] > 0.9
    assert doc["seeds"] == [100, 101, 102]
    stored = json.loads((tmp_path / "20260101T000000Z-r-repeats.json").read_text())
    assert stored == json.loads(json.dumps(doc))
    # one run: no spread to judge
    one = write_repeats(tmp_path, runs[:1])["figures"]["latency_ms.p99"]
    assert one["sd"] == 0.0 and not one["spread_exceeds_intervals"]
