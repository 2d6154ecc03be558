"""The run's typed inputs and outputs: options, live progress, result."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.aggregate import Aggregator
from coordinator.documents import AffinityDoc, Summary
from coordinator.run.autostop import AutoDuration
from coordinator.summary import AgentInfo
from volley.plan import Plan, PlanError
from volley.security import ClientSecurity

#: The longest start lead (agents refuse a start instant more than 600 s ahead).
MAX_START_LEAD_S = 590.0
#: Workers per agent a run may ask for (RunRequest.workers; each agent caps it anyway).
MAX_WORKERS = 4096


@dataclass
class RunOptions:
    out_dir: Path = Path("runs")
    #: At least this many seconds between opening the agents' Run streams and the agreed
    #: start instant (0: only the lead measured once every agent is prepared).
    start_lead_s: float = 0.0
    #: Two-phase start: every agent must be prepared (workers spawned, pools built,
    #: connections open) within this many seconds, or the run stops naming the slow ones.
    prepare_timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    #: An agent silent for this long is declared missing (agents send a heartbeat
    #: every 0.25 s and the check runs every 0.1 s: detection within 3 s).
    heartbeat_timeout_s: float = 2.5
    #: The coordinator's keepalive to each agent during a run (agents stop a run whose
    #: coordinator stays silent past their grace period, at least 4 keepalives: 5 s by
    #: default). Every 1.25 s, the longest period that keeps that grace at 5 s: each ping
    #: costs both sides a gRPC call (the idle cost).
    keepalive_s: float = 1.25
    #: Token / TLS for the control plane.
    security: ClientSecurity | None = None
    clock_samples: int = 16
    #: Workers per agent for this run (0 = each agent's own default).
    workers: int = 0
    #: Weigh each agent's slice by its worker count (else equal).
    weight_by_workers: bool = True
    progress: Callable[[Progress], None] | None = None
    #: Triton's Prometheus metrics: URL or HOST:PORT, "off", None = find it.
    server_metrics: str | None = None
    #: Sample the server's statistics and metrics (server.json).
    server_stats: bool = True
    stop_event: asyncio.Event | None = None
    #: The run directory, made by the caller (local agents spool inside it); None: a new
    #: one under out_dir.
    run_dir: Path | None = None
    #: Called once every agent has its start instant (local agents: the coordinator
    #: lowers its priority below their workers', `coordinator.local.protect_workers`).
    at_start: Callable[[], None] | None = None
    #: Agent address -> its spool folder on this host (local agents), for run.json.
    local_spools: dict[str, Path] = field(default_factory=dict)
    #: `--duration auto`: stop once the figures are decided (the plan's duration is the
    #: maximum); None: run the plan's duration.
    auto: AutoDuration | None = None
    #: Local agents: which cores the workers and the rest were pinned to (summary.json's
    #: `affinity`; coordinator/affinity.py); None: not local agents.
    affinity: AffinityDoc | None = None
    #: Where a one-line note for the user goes (the CLI prints it; None: logged).
    note: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        """What the CLI passes through unchecked (--start-lead, --workers): a NaN lead
        was a ValueError once the agents were running; PlanError (one line) instead."""
        if not (math.isfinite(self.start_lead_s) and 0.0 <= self.start_lead_s <= MAX_START_LEAD_S):
            raise PlanError(
                f"--start-lead: expected seconds from 0 to {MAX_START_LEAD_S:g} "
                f"(an agent takes a start at most that far ahead), got {self.start_lead_s:g}"
            )
        if not 0 <= self.workers <= MAX_WORKERS:
            raise PlanError(
                f"--workers: expected 0 (each agent's default) to {MAX_WORKERS}, got {self.workers}"
            )


@dataclass
class Progress:
    elapsed_s: float
    total_s: float
    agents: list[AgentInfo]
    agg: Aggregator
    window: int


@dataclass
class RunResult:
    run_dir: Path
    summary: Summary
    plan: Plan
    agents: list[AgentInfo] = field(default_factory=list)
