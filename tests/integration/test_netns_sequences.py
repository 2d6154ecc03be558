"""Issue 16's done-when: two agents on separate (namespaced) hosts run 200 concurrent
sequences of 5..20 steps against the accumulator; every response is the running sum,
every sequence that started ended, and the two agents' IDs are disjoint."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tests.netns import NetnsLab, netns_lab_fixture, wait_for_tcp
from tests.sequence_checks import check_sequence_run, raw_columns
from tests.triton_fixture import require_triton_home

lab = netns_lab_fixture(4)

TOKEN = "sequences-test-token"

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


def test_sequences_across_namespaced_hosts(lab: NetnsLab, tmp_path: Path) -> None:
    home = require_triton_home()
    triton_host, a1, a2, coord = lab.hosts
    env = dict(os.environ)
    env["VOLLEY_TOKEN"] = TOKEN
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env["HOME"] = str(tmp_path)
    env["VOLLEY_TRITON_HOME"] = str(home)
    py = sys.executable
    state = tmp_path / "triton"
    start = lab.run(
        triton_host,
        [
            py, "-m", "volley", "triton", "start", "--bind", "0.0.0.0",
            "--state-dir", str(state), "--http-port", "8000", "--grpc-port", "8001",
            "--metrics-port", "8002", "--model", "accumulator",
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
        out = tmp_path / "runs"
        target = f"{triton_host.ip}:8001"
        res = lab.run(
            coord,
            [
                py, "-m", "volley", "run", "--target", target, "--model", "accumulator",
                "--concurrency", "200", "--duration", "3s",
                "--sequence-length", "5..20", "--sequence-check", "INPUT:OUTPUT",
                "--agent", f"{a1.ip}:7070", "--agent", f"{a2.ip}:7070",
                "--out", str(out), "--quiet", "--seed", "16",
            ],
            timeout=120,
            env=env,
        )  # fmt: skip
        assert res.returncode in (0, 1), res.stdout + res.stderr
        run_dir = Path(res.stdout.strip().splitlines()[-1])
        summary = json.loads((run_dir / "summary.json").read_text())
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
            + ", ".join(
                f"{p['position']} p50 {p['latency_ms']['p50']} ms" for p in q["by_position"]
            )
        )
        c = raw_columns(run_dir)
        used = sorted({int(x) for x in c["seq_id"] if x})
        sample = used[:60] + used[-60:]
        chk = lab.run(
            coord, [py, "-c", NO_LIVE, target, ",".join(map(str, sample))], timeout=60, env=env
        )
        assert chk.returncode == 0, chk.stdout + chk.stderr
    finally:
        lab.run(
            triton_host,
            [py, "-m", "volley", "triton", "stop", "--state-dir", str(state)],
            timeout=60,
            env=env,
        )
        time.sleep(0.1)
