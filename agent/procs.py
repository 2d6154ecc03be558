"""How an agent starts its worker processes: forked from a warm server, not spawned.

A spawned worker is a fresh interpreter that imports numpy, uvloop, tritonclient and the
transports before it can prepare: about half a second of CPU and a second of wall time
per worker, paid again on every run (each step of a sweep), and by every worker of every
local agent at once on a small host. With the ``forkserver`` start method the agent keeps
one server process that has imported all of that once (`PRELOAD`); each worker is a fork
of it, ready in milliseconds.

The server is a fresh interpreter started by the agent (`warm()`, at its start-up), not
a fork of the agent: a fork would copy the agent's gRPC threads and their locks. It has
no channels and no threads of its own, so forking it is safe. It exits once the agent and
every worker it forked are gone (it reads the end of a pipe they all hold). A worker is
the server's child, not the agent's, so it watches the agent itself and exits the moment
the agent dies (`agent.lifeline.watch_agent`). Where forkserver is missing, workers are
spawned.

What a fork inherits that a spawn would not, and why it does not matter here: module
state set at import (no module draws unseeded random numbers; `random` reseeds itself in
a forked child), and the environment and CPU affinity the server had when it started,
which are the agent's (the coordinator pins a local agent before it has started).
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.forkserver
from multiprocessing.context import ForkServerContext, SpawnContext

#: Either makes processes, queues and events alike.
WorkerContext = SpawnContext | ForkServerContext

#: What the server imports once, for every worker it forks.
PRELOAD = ["agent.lifeline", "agent.worker"]


def forking() -> bool:
    """Whether workers are forked from the warm server on this platform."""
    return "forkserver" in mp.get_all_start_methods()


def worker_context() -> WorkerContext:
    """The multiprocessing context a session's workers, queue and events are made in."""
    if not forking():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def warm() -> None:
    """Start the server now, so the first run does not wait for its imports: they run in
    the server, in the background, while the agent serves. Idempotent."""
    if forking():
        worker_context()
        multiprocessing.forkserver.ensure_running()
