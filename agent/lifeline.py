"""Tie a child process's life to its parent's: a killed agent leaves no worker firing.

On Linux the kernel delivers a signal to the child when its parent dies
(prctl PR_SET_PDEATHSIG); elsewhere this is a no-op and workers notice the stop
event instead.

A worker forked by the agent's fork server (`agent.procs`) is the server's child, not
the agent's, and the server outlives the agent while any worker holds its end of the
server's pipe (each does): the parent's death signal would never come. Such a worker
watches the agent itself (`watch_agent`: a thread blocked on the agent's pidfd, which
turns readable when the agent exits), and exits the moment it does.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import threading
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

from volley.security import PARENT_ENV

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent exits; if the parent
    is already gone (it died before this ran), exit now. A process whose parent is not
    `parent_pid` (a worker forked by the agent's fork server) watches `parent_pid`."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:
        watch_agent(parent_pid)


#: Without pidfds, how often the watching thread looks whether the agent is alive.
POLL_S = 0.2


def watch_agent(pid: int) -> None:
    """Exit this process (at once, like SIGKILL) when process `pid` exits; exit now if
    it is already gone. A daemon thread waits, blocked: no cost while the agent lives."""
    fd = -1
    if hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            os._exit(1)
        except OSError:  # an old kernel: look every POLL_S instead
            pass
    elif not _alive(pid):
        os._exit(1)
    threading.Thread(target=_exit_after, args=(pid, fd), daemon=True, name="lifeline").start()


def _exit_after(pid: int, fd: int) -> None:
    if fd >= 0:
        select.select([fd], [], [])  # readable once the process has exited
    else:
        while _alive(pid):
            time.sleep(POLL_S)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (a reused pid)
        return True
    return True


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
