"""Tie a child process's life to its parent's: a killed agent leaves no worker firing.

On Linux the kernel delivers a signal to the child when its parent dies
(prctl PR_SET_PDEATHSIG); elsewhere this is a no-op and workers notice the stop
event instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

from volley.security import PARENT_ENV

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent exits; if the parent
    is already gone (it died before this ran), exit now."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def exit_with_parent_from_env() -> None:
    """In a `volley agent` started with VOLLEY_EXIT_WITH_PARENT=<pid>: get SIGTERM (a clean
    shutdown) when that parent dies."""
    value = os.environ.pop(PARENT_ENV, "")
    if value.isdigit():
        die_with_parent(int(value), signal.SIGTERM)


def worker_entry(
    task: Any, out: Queue[Any], stop: Event, parent_pid: int, gate: Any = None
) -> None:
    """Entry point of an agent worker process: lifeline first, then the hot loop
    (`gate`: agent.worker.StartGate of a two-phase start)."""
    die_with_parent(parent_pid)
    from agent.worker import worker_main

    worker_main(task, out, stop, gate)
