"""`--warmup auto` on the real CPU Triton's `sleep` model: another client queues slow
requests on its one instance for the first seconds of a 20 s run, so the run starts slow;
the detected start is left out of the figures, which then match the records of the
settled part (read back from requests.parquet)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as grpcclient
import yaml
from typer.testing import CliRunner

from tests.triton_fixture import TritonEndpoint
from volley.cli import app

pytestmark = pytest.mark.triton

DISTURB_S = 6.0  #: seconds of slow requests from the other client (from the run's start)


def _disturb(url: str, stop: threading.Event) -> None:
    """One of three threads sending 30 ms requests back to back until `stop` (bounded)."""
    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("DELAY_MS", [1], "FP32")
    inp.set_data_from_numpy(np.array([30.0], np.float32))
    deadline = time.monotonic() + DISTURB_S + 5
    while not stop.is_set() and time.monotonic() < deadline:
        client.infer("sleep", [inp])
    client.close()


def test_a_slow_start_is_detected_and_left_out(
    triton_server: TritonEndpoint, tmp_path: Path
) -> None:
    plan = tmp_path / "plan.yaml"
    doc = {
        "target": triton_server.grpc_url,
        "model": "sleep",
        "seed": 4,
        "name": "warm",
        "load": {"mode": "closed", "concurrency": 1, "duration": "20s", "warmup": "auto"},
        "inputs": [{"name": "DELAY_MS", "source": "constant", "value": 3.0}],
        "raw_records": True,
        "validity": {"min_duration_s": 1, "min_requests": 10, "max_late_fraction": 1.0},
    }
    plan.write_text(yaml.safe_dump(doc))
    stop = threading.Event()
    threads = [
        threading.Thread(target=_disturb, args=(triton_server.grpc_url, stop)) for _ in range(3)
    ]
    for t in threads:
        t.start()
    timer = threading.Timer(DISTURB_S + 1.0, stop.set)  # + the 1 s start lead
    timer.start()
    try:
        result = CliRunner().invoke(
            app,
            [
                "run", str(plan), "--local-agents", "1", "--workers", "1", "--start-lead", "1",
                "--out", str(tmp_path / "runs"), "--server-metrics", "off",
            ],
        )  # fmt: skip
    finally:
        stop.set()
        timer.cancel()
        for t in threads:
            t.join()
    assert result.exit_code in (0, 1), result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    s = json.loads((run_dir / "summary.json").read_text())
    st = s["steady_state"]
    assert st["action"] == "excluded" and 5 <= st["excluded_s"] <= 10, st
    assert (
        st["excluded_requests"] > 0 and f"excluded the first {st['excluded_s']:g} s" in st["note"]
    )
    assert "steady state" in result.output and "excluded the first" in result.output
    cut_s = st["excluded_s"]
    assert s["warmup_s"] == cut_s and s["duration_s"] == pytest.approx(20.0 - cut_s)
    table = pq.read_table(
        run_dir / "requests.parquet", columns=["intended_ns", "done_ns", "status"]
    )
    intended = table["intended_ns"].to_numpy().astype(np.int64)
    lat = table["done_ns"].to_numpy().astype(np.int64) - intended
    ok = table["status"].to_numpy() == 0
    kept = ok & (intended >= int(cut_s * 1e9))
    assert s["requests"]["ok"] == int(kept.sum())
    assert s["requests"]["scheduled"] + st["excluded_requests"] == len(intended)
    true_p99 = float(np.percentile(lat[kept], 99)) / 1e6
    whole_p99 = float(np.percentile(lat[ok], 99)) / 1e6
    assert s["latency_ms"]["p99"] == pytest.approx(true_p99, rel=0.03)
    assert whole_p99 > 2 * s["latency_ms"]["p99"]  # the slow start would have dominated
    assert "steady state" in (run_dir / "report.html").read_text()
    print(
        f"excluded {cut_s:g} s ({st['excluded_requests']} requests); p99 {true_p99:.2f} ms "
        f"settled vs {whole_p99:.2f} ms whole run; {s['requests']['ok']} ok kept"
    )
