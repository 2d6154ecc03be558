"""The distributed path across real (namespaced) hosts: Triton, two agents and the
coordinator each in its own network namespace, talking over a bridge."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tests.netns import NetnsLab, netns_lab_fixture, wait_for_tcp
from tests.triton_fixture import require_triton_home

lab = netns_lab_fixture(4)

TOKEN = "multihost-test-token"


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["VOLLEY_TOKEN"] = TOKEN
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env["HOME"] = str(tmp)
    return env


def test_run_across_namespaced_hosts(lab: NetnsLab, tmp_path: Path) -> None:
    home = require_triton_home()
    triton_host, a1, a2, coord = lab.hosts
    env = _env(tmp_path)
    env["VOLLEY_TRITON_HOME"] = str(home)
    py = sys.executable
    state = tmp_path / "triton"
    start = lab.run(
        triton_host,
        [
            py,
            "-m",
            "volley",
            "triton",
            "start",
            "--bind",
            "0.0.0.0",
            "--state-dir",
            str(state),
            "--http-port",
            "8000",
            "--grpc-port",
            "8001",
            "--metrics-port",
            "8002",
            "--model",
            "add",
            "--model",
            "sleep",
        ],
        timeout=120,
        env=env,
    )
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        agents = []
        for h in (a1, a2):
            agents.append(
                lab.popen(
                    h,
                    [
                        py,
                        "-m",
                        "volley",
                        "agent",
                        "--listen",
                        f"{h.ip}:7070",
                        "--workers",
                        "1",
                        "--agent-id",
                        h.name,
                    ],
                    env=env,
                )
            )
        for h in (a1, a2):
            wait_for_tcp(h.ip, 7070, timeout=30)
        out = tmp_path / "runs"
        res = lab.run(
            coord,
            [
                py,
                "-m",
                "volley",
                "run",
                "--target",
                f"{triton_host.ip}:8001",
                "--model",
                "add",
                "--rate",
                "100",
                "--arrival",
                "poisson",
                "--duration",
                "4s",
                "--agent",
                f"{a1.ip}:7070",
                "--agent",
                f"{a2.ip}:7070",
                "--out",
                str(out),
                "--quiet",
                "--seed",
                "5",
            ],
            timeout=120,
            env=env,
        )
        assert res.returncode in (0, 1), res.stdout + res.stderr
        run_dir = Path(res.stdout.strip().splitlines()[-1])
        summary = json.loads((run_dir / "summary.json").read_text())
        req = summary["requests"]
        assert req["errors"] == 0 and req["dropped"] == 0
        assert req["ok"] == req["scheduled"] == req["schedule_total"] > 300
        by_host = {a["id"]: a for a in summary["agents"]}
        assert set(by_host) == {a1.name, a2.name}
        for a in summary["agents"]:
            # each agent did its share of the one schedule (equal weights)
            assert abs(a["scheduled"] - req["scheduled"] / 2) <= 1, a
            assert a["state"] == "done"
            assert a["clock_offset_ms"] is not None and a["clock_uncertainty_ms"] is not None
            assert a["start_skew_ms"] is not None
            print(
                f"{a['id']}: offset {a['clock_offset_ms']:.3f} ± "
                f"{a['clock_uncertainty_ms']:.3f} ms, start skew {a['start_skew_ms']:.3f} ms, "
                f"latency p50 {a['latency_ms']['p50']:.3f} ms"
            )
            # same machine, same monotonic clock: the true offset is 0
            assert abs(a["clock_offset_ms"]) <= a["clock_uncertainty_ms"] + 0.5
            assert abs(a["start_skew_ms"]) < 50
        raw = pq.read_table(run_dir / "requests.parquet")
        idx = raw.column("index").to_numpy()
        assert np.array_equal(np.sort(idx), np.arange(req["schedule_total"]))
        agents_col = raw.column("agent").to_numpy()
        assert set(np.unique(agents_col).tolist()) == {0, 1}
    finally:
        lab.run(
            triton_host,
            [py, "-m", "volley", "triton", "stop", "--state-dir", str(state)],
            timeout=60,
            env=env,
        )
        time.sleep(0.1)
