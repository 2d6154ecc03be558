"""The worker's hot path (issue 19): the split of agent/worker.py keeps every name where it
was; response bodies seen before are checked without parsing again; an arrival due within
the send horizon rides on a completion's wake-up; a quiet closed loop sees a stop at once."""

from __future__ import annotations

import agent.worker as worker
import agent.worker_messages as messages
import agent.worker_upkeep as upkeep


def test_every_moved_name_is_still_importable_from_agent_worker() -> None:
    moved = {
        messages: [
            "WorkerTask",
            "WorkerCounters",
            "Ready",
            "StartGate",
            "Records",
            "Status",
            "Done",
            "Exited",
            "WorkerMessage",
        ],
        upkeep: ["IDLE_STATUS_S", "HELD_UPKEEP_S", "sweep_delay", "pin_from_env"],
    }
    for mod, names in moved.items():
        for name in names:
            assert getattr(worker, name) is getattr(mod, name), name
        # and nothing else of theirs was left behind unexported
        defined = [
            n
            for n, o in vars(mod).items()
            if getattr(o, "__module__", None) == mod.__name__ and not n.startswith("_")
        ]
        assert set(defined) <= set(names) | {"WorkerUpkeep"}, defined
    assert issubclass(worker.Worker, upkeep.WorkerUpkeep)
    # messages pickled between processes name their new home
    assert worker.Records.__module__ == "agent.worker_messages"
