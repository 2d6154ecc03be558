"""An in-process agent server on its own thread and event loop (for sync tests and
hypothesis), plus a helper that starts `volley agent` as a real process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.config import AgentConfig
from agent.server import AgentServer

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def agent_in_thread(cfg: AgentConfig) -> Iterator[AgentServer]:
    """Serve `cfg` (e.g. listen on port 0) on a background thread; yields the started server."""
    started = threading.Event()
    state: dict[str, object] = {}

    async def main() -> None:
        server = AgentServer(cfg)
        await server.start()
        stop = asyncio.Event()
        state.update(server=server, stop=stop, loop=asyncio.get_running_loop())
        started.set()
        await stop.wait()
        await server.stop(0.5)

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test
            state["error"] = exc
            started.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    started.wait(30)
    if "error" in state:
        raise state["error"]  # type: ignore[misc]
    server = state["server"]
    assert isinstance(server, AgentServer)
    try:
        yield server
    finally:
        loop = state["loop"]
        stop = state["stop"]
        assert isinstance(loop, asyncio.AbstractEventLoop) and isinstance(stop, asyncio.Event)
        loop.call_soon_threadsafe(stop.set)
        t.join(15)


def spawn_agent(
    tmp: Path,
    name: str,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    listen: str = "127.0.0.1:0",
    workers: int = 1,
    prefix: Sequence[str] = (),
    timeout_s: float = 30.0,
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start `python -m volley agent` (optionally under `prefix`, e.g. ip netns exec);
    returns (process, HOST:PORT, log path) once it listens."""
    return wait_agent(start_agent(tmp, name, args, env, listen, workers, prefix), timeout_s)


@dataclass
class StartingAgent:
    """An agent process started, not yet known to listen (`wait_agent`)."""

    proc: subprocess.Popen[bytes]
    name: str
    host: str
    port_file: Path
    log_path: Path


def start_agent(
    tmp: Path,
    name: str,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    listen: str = "127.0.0.1:0",
    workers: int = 1,
    prefix: Sequence[str] = (),
) -> StartingAgent:
    """`spawn_agent` without the wait: several agents import and start side by side."""
    port_file = tmp / f"{name}.port"
    log_path = tmp / f"{name}.log"
    argv = [
        *prefix,
        sys.executable,
        "-m",
        "volley",
        "agent",
        "--listen",
        listen,
        "--workers",
        str(workers),
        "--agent-id",
        name,
        "--port-file",
        str(port_file),
        "--spool-dir",
        str(tmp / f"{name}-spool"),
        *args,
    ]
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO)
    return StartingAgent(proc, name, listen.rsplit(":", 1)[0], port_file, log_path)


def wait_agent(
    a: StartingAgent, timeout_s: float = 30.0
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """(process, HOST:PORT, log path) once the started agent listens."""
    deadline = time.monotonic() + timeout_s
    while not (a.port_file.exists() and a.port_file.read_text().strip()):
        if a.proc.poll() is not None:
            raise RuntimeError(f"agent {a.name} exited: {a.log_path.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            a.proc.kill()
            raise RuntimeError(f"agent {a.name} did not start: {a.log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    return a.proc, f"{a.host}:{a.port_file.read_text().strip()}", a.log_path


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
