"""A run session's spec (what the Run asked of this agent) and its states."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from agent.config import AgentLimits
from volley.plan import Plan
from volley.target import TargetAccess


class SessionState(enum.StrEnum):
    """A session's state (the value goes to AgentStatus.state)."""

    READY = "ready"  #: created, no worker yet
    WAITING = "waiting"  #: workers started, before the start instant
    #: two-phase start: workers spawning, building pools, opening connections
    PREPARING = "preparing"
    #: two-phase start: every worker ready, waiting for the start instant (Start)
    PREPARED = "prepared"
    RUNNING = "running"  #: past the start instant
    DONE = "done"  #: every worker finished without error
    FAILED = "failed"  #: a worker reported an error or exited unexpectedly


@dataclass(frozen=True)
class SessionSpec:
    run_id: str
    plan: Plan
    plan_json: str
    agent_index: int
    #: the start instant (agent clock); 0: prepare first, the instant comes by `set_start`
    start_at_ns: int
    workers: int
    expected_outputs: int
    flush_s: float = 0.1
    heartbeat_s: float = 0.25
    agent_id: str = ""
    #: The coordinator pings this often (0: it does not; only the stream tells).
    keepalive_s: float = 0.0
    #: Stop the workers once the coordinator has been silent (or the stream gone) this long.
    grace_s: float = 5.0
    #: The agent's own duration limit (0 = none): a hard stop past it, whatever happens.
    max_duration_s: float = 0.0
    #: The agent's own limits, which its workers hold at send time.
    limits: AgentLimits = field(default_factory=AgentLimits)
    #: Header values and target TLS material for the workers (in memory only).
    access: TargetAccess = field(default_factory=TargetAccess)
