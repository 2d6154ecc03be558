"""Workers forked from the agent's warm server (agent.procs), and their lifeline."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from agent import procs

pytestmark = pytest.mark.skipif(not procs.forking(), reason="no forkserver here")


def _report(out: object) -> None:
    """Runs in a forked worker: what it inherited from the server."""
    out.put((os.getpid(), os.getppid(), "agent.worker" in sys.modules))  # type: ignore[attr-defined]


def test_workers_are_forked_with_the_hot_path_already_imported() -> None:
    procs.warm()
    ctx = procs.worker_context()
    assert ctx.get_start_method() == "forkserver"
    q = ctx.Queue()
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        p = ctx.Process(target=_report, args=(q,), daemon=True)
        p.start()
        pid, ppid, preloaded = q.get(timeout=60)
        p.join(10)
        times.append(time.monotonic() - t0)
        # a child of the fork server, not of this process; the worker's modules are in
        assert pid == p.pid and ppid != os.getpid() and preloaded
        assert p.exitcode == 0
    print(f"forked worker ready in {[round(t * 1000) for t in times]} ms")


def _lifeline(parent_pid: int, then: str = "pass") -> subprocess.Popen[bytes]:
    code = (
        "import sys, time; from agent.lifeline import die_with_parent; "
        f"die_with_parent({parent_pid}); {then}; sys.exit(0)"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_worker_whose_agent_is_gone_exits_at_once() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert _lifeline(gone.pid).wait(60) == 1


def test_a_worker_of_a_live_agent_through_the_fork_server_stays() -> None:
    # the agent (here: this process's parent) is alive but is not the worker's parent
    assert _lifeline(os.getppid()).wait(60) == 0
    assert _lifeline(os.getpid()).wait(60) == 0  # its own parent: the spawned case


def test_a_forked_worker_exits_the_moment_its_agent_is_killed() -> None:
    # the fork server outlives the agent while its workers hold its pipe: the parent's
    # death signal never comes, so the worker watches the agent itself
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    worker = _lifeline(agent.pid, "time.sleep(60)")
    try:
        time.sleep(1.0)  # the worker is watching
        assert worker.poll() is None
        agent.kill()
        t0 = time.monotonic()
        assert worker.wait(10) == 1
        print(f"worker gone {1000 * (time.monotonic() - t0):.0f} ms after its agent")
        assert time.monotonic() - t0 < 2.0
    finally:
        for p in (agent, worker):
            if p.poll() is None:
                p.kill()
                p.wait()
