"""The worker's task and the messages it puts on the agent's queue (agent/worker.py).

Small frozen dataclasses, picklable (`WorkerMessage`):
  Ready(worker, prepare_ns)            pool built, connections open
  Records(worker, columns, shapes, gaps)  a RecordBlock's columns (and stream gaps)
  Status(worker, WorkerCounters)       counters and CPU
  Done(worker, error)                  the slice is finished ("" when it went well)
The agent's pump adds `Exited()` when every worker process is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from typing import Any

import numpy as np

from agent.config import AgentLimits
from volley.conns import ConnFigures
from volley.target import TargetAccess


@dataclass(frozen=True)
class WorkerTask:
    plan_json: str
    run_id: str
    agent_index: int
    worker_index: int
    workers: int
    start_at_ns: int
    flush_s: float = 0.1
    expected_outputs: int = 0
    #: The agent's own limits: this worker holds its share of them at send time.
    limits: AgentLimits = field(default_factory=AgentLimits)
    #: Header values and target TLS material, in memory (pickled to the worker process
    #: with the task: never in its environment or argv).
    access: TargetAccess = field(default_factory=TargetAccess)


@dataclass
class WorkerCounters:
    sent: int = 0
    completed: int = 0
    errors: int = 0
    dropped: int = 0
    in_flight: int = 0
    cpu_s: float = 0.0
    #: the transport's transparent retries and replacement connections (cumulative)
    retried: int = 0
    reconnects: int = 0
    connect_errors: int = 0
    first_send_lateness_ns: int | None = None
    #: what happened to the connections (volley/conns.py)
    conns: ConnFigures | None = None


@dataclass(frozen=True, slots=True)
class Ready:
    worker: int
    #: from the worker's entry to pool built and connections open, ns
    prepare_ns: int = 0


@dataclass(frozen=True)
class StartGate:
    """The start instant of a two-phase start, shared by the agent with its workers:
    `at` (a shared int64, monotonic ns) is valid once `go` is set."""

    go: Event
    at: Any  #: multiprocessing RawValue("q")

    def wait(self, stop: Event, poll_s: float = 0.05) -> int:
        """Block until the gate opens (its instant) or `stop` is set (0)."""
        while not self.go.wait(poll_s):
            if stop.is_set():
                return 0
        return int(self.at.value)


@dataclass(frozen=True, slots=True)
class Records:
    worker: int
    columns: dict[str, np.ndarray[Any, Any]]
    shapes: list[str]
    #: the ragged gaps column of streaming records (volley/records.py)
    gaps: np.ndarray[Any, Any] = field(default_factory=lambda: np.empty(0, np.int64))


@dataclass(frozen=True, slots=True)
class Status:
    worker: int
    counters: WorkerCounters


@dataclass(frozen=True, slots=True)
class Done:
    worker: int
    error: str


@dataclass(frozen=True, slots=True)
class Exited:
    """Every worker process is gone (put by the agent's pump, not by a worker)."""


WorkerMessage = Ready | Records | Status | Done | Exited
