"""The distributed path across real (namespaced) hosts: Triton, two agents and the
coordinator each in its own network namespace, talking over a bridge.

One lab, one Triton (`add` and issue 16's `accumulator`) and two agents serve both
tests of this module (module scope: the namespaces, Triton's start and the agents'
imports are paid once): a plain open-loop run, then 200 concurrent sequences of 5..20
steps (every response is the running sum, every sequence that started ended, and the
two agents' IDs are disjoint)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.netns import Host, NetnsLab, netns_lab_fixture, wait_for_tcp
from tests.sequence_checks import check_sequence_run, raw_columns
from tests.triton_fixture import require_triton_home

lab = netns_lab_fixture(4, scope="module")

TOKEN = "multihost-test-token"

#: After the run, from the coordinator's host: a START on each ID used is accepted, so
#: the model holds none of them live (an open one would be 'START while it is live').
NO_LIVE = """
import sys, numpy as np, tritonclient.grpc as g
c = g.InferenceServerClient(sys.argv[1])
for n in [int(x) for x in sys.argv[2].split(",")]:
    x = g.InferInput("INPUT", [1, 1], "INT32"); x.set_data_from_numpy(np.array([[2]], np.int32))
    r = c.infer("accumulator", [x], sequence_id=n, sequence_start=True, sequence_end=True)
    assert int(r.as_numpy("OUTPUT")[0][0]) == 2, n
print("no live sequence")
"""


@dataclass
class Hosts:
    """The module's lab: Triton on one host, an agent on each of two, the coordinator's."""

    lab: NetnsLab
    triton: Host
    agents: tuple[Host, Host]
    coord: Host
    env: dict[str, str]

    @property
    def target(self) -> str:
        return f"{self.triton.ip}:8001"

    def volley_run(self, out: Path, *args: str) -> tuple[Path, dict[str, Any]]:
        """`volley run` on the coordinator's host with both agents: (run dir, summary)."""
        agents = [a for h in self.agents for a in ("--agent", f"{h.ip}:7070")]
        argv = [sys.executable, "-m", "volley", "run", "--target", self.target, *args]
        res = self.lab.run(
            self.coord,
            [*argv, *agents, "--out", str(out), "--quiet"],
            timeout=120,
            env=self.env,
        )
        assert res.returncode in (0, 1), res.stdout + res.stderr
        run_dir = Path(res.stdout.strip().splitlines()[-1])
        return run_dir, json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def hosts(lab: NetnsLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    home = require_triton_home()
    tmp = tmp_path_factory.mktemp("multihost")
    triton_host, a1, a2, coord = lab.hosts
    env = dict(os.environ)
    env["VOLLEY_TOKEN"] = TOKEN
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env["HOME"] = str(tmp)
    env["VOLLEY_TRITON_HOME"] = str(home)
    py = sys.executable
    state = tmp / "triton"
    start = lab.run(
        triton_host,
        [
            py, "-m", "volley", "triton", "start", "--bind", "0.0.0.0",
            "--state-dir", str(state), "--http-port", "8000", "--grpc-port", "8001",
            "--metrics-port", "8002", "--model", "add", "--model", "accumulator",
        ],
        timeout=120,
        env=env,
    )  # fmt: skip
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        for h in (a1, a2):
            lab.popen(
                h,
                [py, "-m", "volley", "agent", "--listen", f"{h.ip}:7070", "--workers", "1",
                 "--agent-id", h.name],
                env=env,
            )  # fmt: skip
        for h in (a1, a2):
            wait_for_tcp(h.ip, 7070, timeout=30)
        yield Hosts(lab, triton_host, (a1, a2), coord, env)
    finally:
        lab.run(
            triton_host,
            [py, "-m", "volley", "triton", "stop", "--state-dir", str(state)],
            timeout=60,
            env=env,
        )
        time.sleep(0.1)


def test_run_across_namespaced_hosts(hosts: Hosts, tmp_path: Path) -> None:
    a1, a2 = hosts.agents
    run_dir, summary = hosts.volley_run(
        tmp_path / "runs",
        *("--model", "add", "--rate", "100", "--arrival", "poisson", "--duration", "4s"),
        *("--seed", "5"),
    )
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


def test_sequences_across_namespaced_hosts(hosts: Hosts, tmp_path: Path) -> None:
    a1, a2 = hosts.agents
    run_dir, summary = hosts.volley_run(
        tmp_path / "runs",
        *("--model", "accumulator", "--concurrency", "200", "--duration", "3s"),
        *("--sequence-length", "5..20", "--sequence-check", "INPUT:OUTPUT", "--seed", "16"),
    )
    q = check_sequence_run(run_dir, summary, agents=2)
    assert summary["requests"]["errors"] == 0 and q["failed"] == 0, summary["requests"]
    assert {a["id"] for a in summary["agents"]} == {a1.name, a2.name}
    assert all(a["sequences"] >= 100 for a in q["agents"]), q["agents"]
    # 200 users, each running one sequence after another
    assert 150 <= q["live_max"] <= 200, q["live"]
    steps = summary["requests"]["ok"]
    print(
        f"{q['started']} sequences ({steps} steps) over two hosts: {q['completed']} "
        f"completed, {q['cut']} cut at the end; live {q['live_max']}; step latency "
        + ", ".join(f"{p['position']} p50 {p['latency_ms']['p50']} ms" for p in q["by_position"])
    )
    c = raw_columns(run_dir)
    used = sorted({int(x) for x in c["seq_id"] if x})
    sample = used[:60] + used[-60:]
    chk = hosts.lab.run(
        hosts.coord,
        [sys.executable, "-c", NO_LIVE, hosts.target, ",".join(map(str, sample))],
        timeout=60,
        env=hosts.env,
    )
    assert chk.returncode == 0, chk.stdout + chk.stderr
