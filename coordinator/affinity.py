"""CPU affinity for `--local-agents`: each worker on a core of its own, the rest elsewhere.

With local agents the coordinator's bursts (ingest, histograms, Parquet, the terminal)
and the agents' own processes (merging, streaming) share the cores with the workers,
and a worker whose core is busy sends late. Where the host has enough cores (one per
worker and at least one more), `plan_affinity` gives every worker its own core (the
highest of the allowed ones) and leaves the others to the coordinator and the agents'
main processes:
- the coordinator pins every one of its threads (`pin_threads`) at the start instant;
- each agent process is pinned right after it is spawned (threads and workers it starts
  later inherit that), and is told its workers' cores in `WORKER_CPUS_ENV`: a worker
  pins itself to its core first thing (`agent.worker.pin_from_env`).
With too few cores nothing is pinned and `AffinityPlan.note` says why in one line.
`--no-pin` turns it off. summary.json records what was done (`affinity`).

Pure but for `allowed_cores`, `pin_threads` and `pin_pid`, which call the OS
(`os.sched_getaffinity` / `os.sched_setaffinity`; absent off Linux: nothing pinned).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from coordinator.documents import AffinityDoc
from volley.security import WORKER_CPUS_ENV


@dataclass(frozen=True)
class AffinityPlan:
    """Which cores go where; `pinned` False (with a `note`) when nothing is pinned."""

    pinned: bool
    #: the cores the coordinator and the agents' main processes run on
    rest: tuple[int, ...] = ()
    #: per local agent, its workers' cores (one each)
    workers: tuple[tuple[int, ...], ...] = ()
    note: str = ""
    #: the cores this process was allowed to use
    allowed: tuple[int, ...] = field(default=())

    def env(self, agent: int) -> dict[str, str]:
        """The environment that tells local agent `agent` its workers' cores."""
        if not self.pinned:
            return {}
        return {WORKER_CPUS_ENV: ",".join(str(c) for c in self.workers[agent])}

    def doc(self) -> AffinityDoc:
        """summary.json's `affinity`."""
        return {
            "pinned": self.pinned,
            "allowed_cores": list(self.allowed),
            "coordinator_cores": list(self.rest),
            "worker_cores": [list(w) for w in self.workers],
            "note": self.note,
        }


def plan_affinity(
    allowed: list[int], agents: int, workers: int, enabled: bool = True
) -> AffinityPlan:
    """Each of `agents` x `workers` workers on its own core, the highest of `allowed`;
    the lower ones (at least one) for everything else."""
    cores = tuple(sorted(set(allowed)))
    if not enabled:
        return AffinityPlan(False, note="worker pinning turned off (--no-pin)", allowed=cores)
    if not cores:
        return AffinityPlan(False, note="worker pinning unavailable on this platform")
    need = agents * workers
    if need + 1 > len(cores):
        return AffinityPlan(
            False,
            note=(
                f"workers not pinned: {need} worker(s) need {need + 1} cores (one each and "
                f"one for the coordinator), {len(cores)} allowed"
            ),
            allowed=cores,
        )
    rest, mine = cores[: len(cores) - need], cores[len(cores) - need :]
    split = tuple(mine[a * workers : (a + 1) * workers] for a in range(agents))
    return AffinityPlan(True, rest, split, allowed=cores)


def allowed_cores() -> list[int]:
    """The cores this process may run on (empty where the platform cannot say)."""
    if not hasattr(os, "sched_getaffinity"):
        return []
    return sorted(os.sched_getaffinity(0))


def pin_pid(pid: int, cores: tuple[int, ...]) -> bool:
    """Pin one process (its main thread; later threads and children inherit it)."""
    if not cores or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(pid, cores)
    except OSError:
        return False
    return True


def _threads() -> list[int]:
    tids = [0]
    with contextlib.suppress(OSError):
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    return tids


def pin_threads(cores: tuple[int, ...]) -> dict[int, tuple[int, ...]]:
    """Pin every thread of this process (Linux affinity is per thread; threads started
    later inherit the main thread's): each pinned thread's cores before, for `unpin`."""
    if not cores or not hasattr(os, "sched_getaffinity"):
        return {}
    before: dict[int, tuple[int, ...]] = {}
    for t in _threads():
        with contextlib.suppress(OSError):
            was = tuple(sorted(os.sched_getaffinity(t)))
            if pin_pid(t, cores):
                before[t] = was
    return before


def unpin(before: dict[int, tuple[int, ...]]) -> None:
    """Give the threads `pin_threads` pinned their cores back (those still alive)."""
    alive = set(_threads())
    for t, cores in before.items():
        if t in alive:
            pin_pid(t, cores)
