"""`volley collect` pieces: duplicate records count once, outages, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from coordinator.aggregate import Aggregator
from coordinator.collect import _dedupe
from coordinator.recovery import find_outages
from volley import records as rc
from volley.cli import app
from volley.records import RecordBuffer, concat


def _block(indices: list[int], status: int = 0, worker: int = 0) -> object:
    buf = RecordBuffer(max(len(indices), 1))
    buf.worker = worker
    for i in indices:
        t = i * 10_000_000
        buf.append(i, t, t + 1000, t + 2_000_000, status, 10, 10, 1, 0)
    return buf.take(["1"])


def test_same_record_from_run_dir_and_spool_counts_once() -> None:
    a, b = _block([0, 1, 2, 3]), _block([2, 3, 4, 5])
    merged = _dedupe(concat([a, b]))  # type: ignore[list-item]
    assert sorted(merged.columns["index"].tolist()) == [0, 1, 2, 3, 4, 5]
    # closed loop: index -1 for all, told apart by worker and clocks
    c = _block([7, 8], worker=1)
    c.columns["index"][:] = -1  # type: ignore[attr-defined]
    d = _block([8, 9], worker=1)
    d.columns["index"][:] = -1  # type: ignore[attr-defined]
    assert len(_dedupe(concat([c, d]))) == 3  # type: ignore[list-item]


def test_outages_from_windows() -> None:
    agg = Aggregator(1, 0)
    ok = _block(list(range(0, 100)))  # windows 0 (intended 0..0.99 s)
    down = _block(list(range(100, 250)), status=rc.UNAVAILABLE)  # 1.0..2.49 s
    back = _block(list(range(250, 400)))
    for b in (ok, down, back):
        agg.ingest(0, b)  # type: ignore[arg-type]
    out = find_outages(agg)
    assert len(out) == 1
    assert out[0]["start_s"] == 1.0 and out[0]["end_s"] == 3.0
    assert out[0]["error_codes"] == {"UNAVAILABLE": 150}
    assert np.isclose(out[0]["errors"] / out[0]["records"], 150 / 200)


def test_collect_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["collect", str(tmp_path)])
    assert res.exit_code == 2 and "no run.json" in res.output
    (tmp_path / "run.json").write_text("{not json")
    res = runner.invoke(app, ["collect", str(tmp_path)])
    assert res.exit_code == 2 and "run.json" in res.output
    manifest = {
        "run_id": "abc123",
        "span_s": 2,
        "scheduled_total": 10,
        "agents": [{"index": 0, "address": "127.0.0.1:1", "id": "x", "workers": 1}],
    }
    (tmp_path / "run.json").write_text(json.dumps(manifest))
    (tmp_path / "plan.yaml").write_text("target: 127.0.0.1:8001\nmodel: add\nload: {rate: 5}\n")
    res = runner.invoke(app, ["collect", str(tmp_path), "--agent", "nonsense"])
    assert res.exit_code == 2 and "HOST:PORT" in res.output
    res = runner.invoke(app, ["collect", str(tmp_path)], env={"VOLLEY_TOKEN": ""})
    assert res.exit_code == 2 and "127.0.0.1:1" in res.output
    for r in (res,):
        assert r.output.strip().count("\n") == 0, r.output
        assert "Traceback" not in r.output
