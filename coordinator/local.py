"""`--local-agents N`: agents spawned on this machine as separate processes.

Given the run directory, agent i spools in `<run dir>/spool/agent-<i>/` (recorded in
run.json), so a run whose coordinator died (its local agents die with it) is recovered
by `volley collect RUN_DIR` from those files alone.

They listen on loopback and require a token: the caller's, or a fresh random one per
`LocalAgents` (so no other local user can drive them while the run lasts), given to
them through the environment (never argv); `security` is what the coordinator uses."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from coordinator.affinity import (
    AffinityPlan,
    allowed_cores,
    pin_pid,
    pin_threads,
    plan_affinity,
    unpin,
)
from coordinator.agents import AgentError
from volley.security import PARENT_ENV, TOKEN_ENV, ClientSecurity

#: With local agents the coordinator lowers its own priority this much (nice), so that
#: its bursts (ingest, histograms, Parquet, the terminal) never delay a worker's send on
#: a shared core; the workers keep theirs (raising theirs would need privileges).
COORDINATOR_NICE = 5


def lower_own_priority(step: int = COORDINATOR_NICE) -> int:
    """Renice every thread of this process by `step` (Linux nice is per thread; threads
    started later inherit it from the main thread). Returns the main thread's new nice
    value, or -1 where the platform has no setpriority."""
    if not hasattr(os, "setpriority"):
        return -1
    tids = [0]
    with contextlib.suppress(OSError):
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    for tid in tids:
        with contextlib.suppress(OSError):
            now = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(now + step, 19))
    return os.getpriority(os.PRIO_PROCESS, 0)


def protect_workers() -> None:
    """`RunOptions.at_start` of a run on local agents: from the start instant on, the
    coordinator runs below its agents' workers (they keep the priority they started
    with). Not before: while the agents prepare (spawning, importing) the coordinator's
    keepalives must reach them, or they stop for want of a coordinator."""
    if hasattr(os, "getpriority") and os.getpriority(os.PRIO_PROCESS, 0) < COORDINATOR_NICE:
        lower_own_priority()


def fresh_token() -> str:
    """A random token for one run's local agents."""
    return secrets.token_urlsafe(32)


#: Local agents' spools inside the run directory: <run dir>/spool/agent-<i>/<run id>/.
SPOOL_FOLDER = "spool"


def local_spool_dir(run_dir: Path, i: int) -> Path:
    """Where local agent i spools a run of `run_dir`."""
    return run_dir / SPOOL_FOLDER / f"agent-{i}"


#: How long local agents get to start: this, plus STARTUP_PER_AGENT_S per agent.
STARTUP_TIMEOUT_S = 30.0
STARTUP_PER_AGENT_S = 5.0


class LocalAgents:
    """Context manager: starts N `volley agent` processes on loopback, yields their addresses."""

    def __init__(
        self,
        count: int,
        workers: int = 0,
        startup_timeout_s: float | None = None,
        token: str = "",
        run_dir: Path | None = None,
        pin: bool = True,
    ) -> None:
        self.count = count
        #: The agents' token: the caller's, else a fresh random one for this run.
        self.token = token or fresh_token()
        cores = os.cpu_count() or 1
        self.workers = workers or max(1, cores // max(count, 1))
        #: They all start at once: on a busy host N imports share its cores, so the
        #: wait grows with N (12 agents under a load of 12 on 2 cores took over 30 s).
        self.startup_timeout_s = (
            startup_timeout_s
            if startup_timeout_s is not None
            else STARTUP_TIMEOUT_S + STARTUP_PER_AGENT_S * count
        )
        self.procs: list[subprocess.Popen[bytes]] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="volley-agents-")
        self.addresses: list[str] = []
        #: None: spools in the temporary folder (gone at exit)
        self.run_dir = run_dir
        #: each worker on its own core, the rest (this process, the agents) on the others
        #: (coordinator/affinity.py; `pin` False: nothing pinned)
        self.affinity: AffinityPlan = plan_affinity(allowed_cores(), count, self.workers, pin)
        self._unpin: dict[int, tuple[int, ...]] = {}

    def spool_dir(self, i: int) -> Path:
        if self.run_dir is None:
            return Path(self._tmp.name) / f"spool{i}"
        return local_spool_dir(self.run_dir, i)

    @property
    def security(self) -> ClientSecurity:
        """How the coordinator talks to these agents (loopback, plaintext, the token)."""
        return ClientSecurity(token=self.token)

    def __enter__(self) -> list[str]:
        tmp = Path(self._tmp.name)
        files = []
        for i in range(self.count):
            port_file = tmp / f"agent{i}.port"
            log = open(tmp / f"agent{i}.log", "wb")
            argv = [
                sys.executable,
                "-m",
                "volley",
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                str(self.workers),
                "--port-file",
                str(port_file),
                "--agent-id",
                f"local-{i}",
                "--spool-dir",
                str(self.spool_dir(i)),
            ]
            env = dict(os.environ)
            env[TOKEN_ENV] = self.token  # through the environment, never argv
            env[PARENT_ENV] = str(os.getpid())  # a killed coordinator takes them with it
            env.update(self.affinity.env(i))  # its workers' cores
            self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env))
            if self.affinity.pinned:  # its main process off the workers' cores
                pin_pid(self.procs[-1].pid, self.affinity.rest)
            files.append(port_file)
        if self.affinity.pinned:  # and this one (given back at exit)
            self._unpin = pin_threads(self.affinity.rest)
        deadline = time.monotonic() + self.startup_timeout_s
        for i, f in enumerate(files):
            while not (f.exists() and f.read_text().strip()):
                if self.procs[i].poll() is not None:
                    log_text = (tmp / f"agent{i}.log").read_text(errors="replace")[-500:]
                    self.__exit__(None, None, None)
                    raise AgentError(f"local agent {i} exited at startup: {log_text.strip()}")
                if time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise AgentError(
                        f"local agent {i} did not start in {self.startup_timeout_s:g}s"
                    )
                time.sleep(0.05)
            self.addresses.append(f"127.0.0.1:{f.read_text().strip()}")
        return self.addresses

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self.procs = []
        unpin(self._unpin)
        self._unpin = {}
        self._tmp.cleanup()
        if self.run_dir is not None:
            _tidy(self.run_dir)


def _tidy(run_dir: Path) -> None:
    """Remove the empty folders of spools the agents discarded (the run is stored), and
    the run directory itself when nothing was written to it (the run never started)."""
    spool = run_dir / SPOOL_FOLDER
    if spool.is_dir():
        for d in sorted(spool.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if d.is_dir():
                with contextlib.suppress(OSError):
                    d.rmdir()  # only when empty
        with contextlib.suppress(OSError):
            spool.rmdir()
    with contextlib.suppress(OSError):
        run_dir.rmdir()
