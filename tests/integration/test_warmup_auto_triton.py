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

DISTURB_S = 4.0  #: seconds of slow requests from the other client, once the run's load began


def _served(client: grpcclient.InferenceServerClient) -> int:
    stats = client.get_inference_statistics("sleep", as_json=True)
    return int(stats["model_stats"][0].get("inference_count", 0))


def _disturb(url: str, stop: threading.Event) -> None:
    """Waits (at most 60 s) until the run's load has begun (the sleep model served 20 more
    requests), then three threads send 30 ms requests back to back for DISTURB_S (or
    until `stop`): the run's one user waits behind them."""
    client = grpcclient.InferenceServerClient(url)
    base = _served(client)
    give_up = time.monotonic() + 60
    while not stop.is_set() and _served(client) < base + 20 and time.monotonic() < give_up:
        stop.wait(0.02)
    until = time.monotonic() + DISTURB_S

    def send() -> None:
        c = grpcclient.InferenceServerClient(url)
        inp = grpcclient.InferInput("DELAY_MS", [1], "FP32")
        inp.set_data_from_numpy(np.array([30.0], np.float32))
        while not stop.is_set() and time.monotonic() < until:
            c.infer("sleep", [inp])
        c.close()

    senders = [threading.Thread(target=send) for _ in range(3)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
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
    disturber = threading.Thread(target=_disturb, args=(triton_server.grpc_url, stop))
    disturber.start()
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
        disturber.join()
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
    true_p99 = float(np.percentile(lat[kept], 99, method="inverted_cdf")) / 1e6
    whole_p99 = float(np.percentile(lat[ok], 99, method="inverted_cdf")) / 1e6
    assert s["latency_ms"]["p99"] == pytest.approx(true_p99, rel=0.03)
    assert whole_p99 > 2 * s["latency_ms"]["p99"]  # the slow start would have dominated
    assert "steady state" in (run_dir / "report.html").read_text()
    print(
        f"excluded {cut_s:g} s ({st['excluded_requests']} requests); p99 {true_p99:.2f} ms "
        f"settled vs {whole_p99:.2f} ms whole run; {s['requests']['ok']} ok kept"
    )
