"""A bounded soak: a steady open-loop run with raw records on, the resident memory of the
coordinator, the agent and its workers sampled every second. Memory must stay flat
(histograms and bounded queues; raw records streamed to disk, never held).

Default: 30 s (keeps the suite short). Longer: VOLLEY_SOAK_S=300 pytest -m soak -s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.agent_thread import REPO, spawn_agent, stop_process
from tests.integration.test_reliability import _descendants, _wait_manifest
from tests.triton_fixture import TritonEndpoint

pytestmark = [pytest.mark.triton, pytest.mark.soak]

SOAK_S = float(os.environ.get("VOLLEY_SOAK_S", "30"))
RATE = float(os.environ.get("VOLLEY_SOAK_RATE", "300"))


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def test_soak_memory_is_flat(triton_server: TritonEndpoint, tmp_path: Path) -> None:
    agent, addr, _ = spawn_agent(tmp_path, "soak", workers=1)
    out = tmp_path / "runs"
    try:
        coord = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "volley",
                "run",
                "--target",
                triton_server.grpc_url,
                "--model",
                "add",
                "--rate",
                str(RATE),
                "--arrival",
                "poisson",
                "--duration",
                f"{SOAK_S:g}s",
                # a short request timeout: windows are sealed (histograms freed) from
                # timeout + 10 s on, so the coordinator's memory can be seen flat
                "--timeout",
                "2s",
                "--agent",
                addr,
                "--out",
                str(out),
                "--quiet",
                "--start-lead",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        _, manifest = _wait_manifest(out)
        start_ns = manifest["start_monotonic_ns"]
        samples: list[tuple[float, float, float, float]] = []
        while coord.poll() is None:
            t = (time.monotonic_ns() - start_ns) / 1e9
            workers = _descendants(agent.pid)  # its fork server's children too
            if 0 <= t <= SOAK_S:
                samples.append(
                    (t, _rss_mb(coord.pid), _rss_mb(agent.pid), sum(map(_rss_mb, workers)))
                )
            time.sleep(1.0)
        stdout, stderr = coord.communicate()
        assert coord.returncode in (0, 1), stderr
        summary = json.loads((Path(stdout.strip()) / "summary.json").read_text())
    finally:
        stop_process(agent)
    assert summary["requests"]["ok"] > 0.9 * RATE * SOAK_S
    if os.environ.get("VOLLEY_SOAK_TRACE"):
        print([(round(x[0]), round(x[1], 1), round(x[2], 1), round(x[3], 1)) for x in samples])
    # from 1/3 of the run (past start-up allocations) to the end: least-squares slope
    settled = [x for x in samples if x[0] >= SOAK_S / 3]
    assert len(settled) >= 5
    t = np.array([x[0] for x in settled])
    span = float(t[-1] - t[0])
    names = ("coordinator", "agent", "workers")
    slopes = [float(np.polyfit(t, [x[i] for x in settled], 1)[0]) * 60 for i in (1, 2, 3)]
    peak = [max(x[i] for x in samples) for i in (1, 2, 3)]
    print(
        f"\nsoak {SOAK_S:g}s at {RATE:g}/s ({summary['requests']['ok']} ok), RSS over the "
        f"last {span:.0f}s: "
        + ", ".join(
            f"{n} {sl:+.2f} MB/min (peak {pk:.0f} MB)"
            for n, sl, pk in zip(names, slopes, peak, strict=True)
        )
    )
    # flat: well under what holding records would cost (~60 B x 300/s = ~1 MB/min); the
    # per-window histograms behind timeseries.parquet are a few KB per second of run
    assert all(sl * span / 60 < 8.0 for sl in slopes), slopes
