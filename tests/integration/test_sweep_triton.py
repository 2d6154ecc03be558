"""`volley sweep` against the real CPU Triton: the knee of a model of known cost.

The `sleep` model with one instance and no batching serves one request at a time, so
its maximum rate is 1000 / (delay + the server's per-request overhead) req/s. The
overhead is measured here, not assumed: a closed-loop tritonclient burst keeps the
server busy while Triton's own statistics give the per-request compute time.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
from typer.testing import CliRunner

from coordinator.sweep.capacity import CapacityInputs
from coordinator.sweep.runner import (
    REPORT_FILE,
    SWEEP_FILE,
    SweepSpec,
    SweepTarget,
    real_measure,
    run_sweep,
)
from coordinator.sweep.search import Measure, SweepSettings
from coordinator.triton import TritonServer
from tests.triton_fixture import TritonEndpoint
from volley.cli import app
from volley.plan import plan_from_dict

pytestmark = pytest.mark.triton

DELAY_MS = 20.0


def _compute_ns(http_url: str) -> tuple[int, int]:
    url = f"http://{http_url}/v2/models/sleep/stats"
    with urllib.request.urlopen(url, timeout=5) as resp:
        stats = json.load(resp)["model_stats"][0]["inference_stats"]
    ns = sum(stats[k]["ns"] for k in ("compute_input", "compute_infer", "compute_output"))
    return int(stats["success"]["count"]), int(ns)


def reference_capacity(grpc_url: str, http_url: str, seconds: float = 3.0) -> tuple[float, float]:
    """(req/s of a saturating closed loop, mean per-request server compute ms) measured
    with tritonclient's own sync client and Triton's statistics, not with volley."""
    stop = threading.Event()
    counts: list[int] = []

    def loop() -> None:
        client = tg.InferenceServerClient(grpc_url)
        x = tg.InferInput("DELAY_MS", [1], "FP32")
        x.set_data_from_numpy(np.array([DELAY_MS], np.float32))
        n = 0
        deadline = time.monotonic() + seconds + 5
        while not stop.is_set() and time.monotonic() < deadline:
            client.infer("sleep", [x])
            n += 1
        counts.append(n)
        client.close()

    c0, ns0 = _compute_ns(http_url)
    threads = [threading.Thread(target=loop) for _ in range(3)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    c1, ns1 = _compute_ns(http_url)
    return sum(counts) / elapsed, (ns1 - ns0) / max(c1 - c0, 1) / 1e6


async def test_sweep_finds_the_sleep_knee_and_plans_capacity(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path
) -> None:
    ref_rps, per_request_ms = reference_capacity(triton_server.grpc_url, triton_server.http_url)
    expected = 1000.0 / per_request_ms
    print(
        f"\nsleep {DELAY_MS:g} ms, 1 instance: server compute {per_request_ms:.2f} ms/request "
        f"(overhead {per_request_ms - DELAY_MS:.2f} ms) -> expected max {expected:.1f} req/s; "
        f"saturating tritonclient loop {ref_rps:.1f} req/s"
    )
    plan = plan_from_dict(
        {
            "target": triton_server.grpc_url,
            "model": "sleep",
            "seed": 7,
            "load": {"rate": 1, "arrival": "constant"},
            "inputs": [{"name": "DELAY_MS", "source": "constant", "value": DELAY_MS}],
            # a p50: 3 s steps of 75-150 requests cannot bound a p99 (368 at 95%): such
            # a step would be inconclusive, measured longer, then failed (issue 18)
            "slos": ["p50<100ms"],
            "validity": {"min_requests": 50},
        }
    )
    # the search starts just under the capacity the reference measured in the same
    # minutes (constant arrivals at 85% of it do not queue), and steps up 20% at a time:
    # 2 steps bracket the limit and 3-4 halvings narrow it to 5%, 5-6 steps in all where
    # a start at 25/s with 1.5x growth took 7 (a step here is ~6 s: worker spawn, lead,
    # 1 s warm-up, 3 s); a wrong limit fails the 10% check below as it did before
    settings = SweepSettings(
        start=round(0.85 * expected, 1),
        growth=1.2,
        tolerance=0.05,
        max_steps=9,
        step_duration_s=3,
        warmup_s=1,
        # a shared 2-core CI host can stall the worker for 25 ms at a time (CI, session
        # 5): a step that says "volley's" is measured again, twice here, before it counts
        retries=2,
    )
    spec = SweepSpec(
        name="sleep",
        plan=plan,
        settings=settings,
        targets=[SweepTarget("one", triton_server.grpc_url, cost_per_hour=0.1)],
        capacity=CapacityInputs(12_000, headroom=0.3, cpus_per_replica=1),
        agents=agent_pair[:1],
    )
    spec.validate()
    sweep_dir = tmp_path / "sweep"

    def factory(t: SweepTarget, s: SweepSettings) -> Measure:
        return real_measure(spec, t, s, sweep_dir, agent_pair[:1], None)

    t0 = time.monotonic()
    doc = await run_sweep(spec, sweep_dir, factory)
    took = time.monotonic() - t0
    target = doc["targets"][0]
    out = target["outcome"]
    for s in target["steps"]:
        print(
            f"  step {s['index'] + 1}: {s['load']:g} req/s -> {s['throughput_rps']:.1f}/s "
            f"p99 {s['latency_ms']['p99']:.1f} ms {s['kind']} {'; '.join(s['reasons'])[:90]}"
        )
    print(f"  {out['message']}; knee {out['knee']}; sweep took {took:.0f} s")
    assert out["limited_by"] == "server", out
    found = target["max_rps"]
    assert abs(found - expected) <= 0.10 * expected, (found, expected)
    assert out["fail_load"] > found
    assert out["knee"] is not None and out["knee"]["load"] <= out["fail_load"]
    # every step is a normal run directory, judged like `volley run` judges it
    for s in target["steps"]:
        run = sweep_dir / s["run_dir"]
        assert (run / "summary.json").is_file() and (run / "plan.yaml").is_file()
        summary = json.loads((run / "summary.json").read_text())
        assert summary["model"] == "sleep" and summary["offered_rps"] == pytest.approx(
            s["load"], rel=0.05
        )
    assert [p.name[:3] for p in sorted((sweep_dir / "steps").iterdir())] == [
        f"{i + 1:02d}-" for i in range(len(target["steps"]))
    ]
    # the capacity plan follows from the measured maximum
    cap = doc["capacity"]["one"]
    assert cap["replicas"] == math.ceil(12_000 * 1.3 / found - 1e-9)
    assert cap["cpus"] == cap["replicas"]
    print(
        f"  capacity: {cap['replicas']} replicas for 12000 req/s + 30% "
        f"(per replica {found:g} req/s)"
    )
    saved = json.loads((sweep_dir / SWEEP_FILE).read_text())
    assert saved["state"] == "done" and saved["targets"][0]["max_rps"] == found
    assert "<svg" in (sweep_dir / REPORT_FILE).read_text()


async def test_scaling_check_against_two_instances(
    triton_server: TritonEndpoint,
    triton_sleep_x2: TritonServer,
    agent_pair: list[str],
    tmp_path: Path,
) -> None:
    """The same sweep against a second Triton serving the sleep model with 2 instances:
    the sleep model does not use CPU, so 2 instances should scale about linearly."""
    two = triton_sleep_x2  # the session's (shared with the compare test)
    plan = plan_from_dict(
        {
            "target": triton_server.grpc_url,
            "model": "sleep",
            "seed": 3,
            "load": {"rate": 1},
            "inputs": [{"name": "DELAY_MS", "source": "constant", "value": DELAY_MS}],
            # a p50: 2 s steps cannot bound a p99 (368 requests at 95%), see above
            "slos": ["p50<100ms"],
            "validity": {"min_requests": 50},
        }
    )
    spec = SweepSpec(
        name="scale",
        plan=plan,
        # coarse on purpose: this checks the scaling, the other test the precision
        settings=SweepSettings(
            start=40, growth=1.3, tolerance=0.15, max_steps=7, step_duration_s=2, warmup_s=1
        ),
        targets=[
            SweepTarget("one", triton_server.grpc_url),
            SweepTarget("one-x2", two.grpc_url, replicas=2, scale_of="one"),
        ],
        capacity=CapacityInputs(1000, headroom=0.0),
        agents=agent_pair[:1],
    )
    spec.validate()

    def factory(t: SweepTarget, s: SweepSettings) -> Measure:
        return real_measure(spec, t, s, tmp_path / "sweep", agent_pair[:1], None)

    doc = await run_sweep(spec, tmp_path / "sweep", factory)
    sc = doc["scaling"]["one-x2"]
    print(f"\nscaling check: {sc}")
    assert "error" not in sc, sc
    assert 0.75 <= sc["efficiency"] <= 1.25, sc  # both maxima known to within 15%
    cap = doc["capacity"]["one"]
    assert cap["scaling_efficiency"] == pytest.approx(min(sc["efficiency"], 1.0), abs=1e-3)
    assert any("efficiency" in a for a in cap["assumptions"])
    assert (tmp_path / "sweep" / "steps" / "one-x2").is_dir()


def test_cli_sweep_and_resume(triton_server: TritonEndpoint, tmp_path: Path) -> None:
    """The command line end to end (local agent process), then --resume of the finished
    sweep measures nothing again."""
    args = [
        "sweep",
        "--target",
        triton_server.grpc_url,
        "--model",
        "sleep",
        "--input",
        f"DELAY_MS={DELAY_MS:g}",
        "--start",
        "10",
        "--growth",
        "2",
        "--max-steps",
        "2",
        "--step-duration",
        "2s",
        "--warmup",
        "0.5s",
        "--min-requests",
        "15",
        "--workers",
        "1",
        "--production-rate",
        "100",
        "--headroom",
        "20%",
        "--out",
        str(tmp_path),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "max sustainable 20.0 req/s" in res.output, res.output
    assert "capacity plan (sleep)" in res.output
    (sweep_dir,) = list(tmp_path.iterdir())
    assert sweep_dir.name.endswith("-sweep-sleep")
    assert sorted(p.name for p in (sweep_dir / "steps").iterdir()) == ["01-10rps", "02-20rps"]
    doc = json.loads((sweep_dir / SWEEP_FILE).read_text())
    assert doc["targets"][0]["outcome"]["limited_by"] == "max-steps"  # both steps passed
    assert doc["capacity"]["sleep"]["replicas"] == math.ceil(120 / 20)
    again = CliRunner().invoke(app, ["sweep", "--resume", str(sweep_dir), "--workers", "1"])
    assert again.exit_code == 0, again.output
    assert again.output.count("(from the earlier run)") == 2
    assert sorted(p.name for p in (sweep_dir / "steps").iterdir()) == ["01-10rps", "02-20rps"]
