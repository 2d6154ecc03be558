"""Typed agent configuration (built by the CLI, consumed by serve())."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field

from agent.spool import DEFAULT_MAX_BYTES, default_spool_dir
from volley.security import ServerTLS

_NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class AgentLimits:
    """Limits the agent enforces on every plan, whatever the coordinator asks."""

    max_rate: float = 0.0  #: requests/s for this agent's share; 0 = unlimited
    max_in_flight: int = 0  #: 0 = unlimited
    max_duration_s: float = 0.0  #: 0 = unlimited
    allowed_targets: tuple[str, ...] = ()  #: empty = any

    @property
    def window_ns(self) -> int:
        """The rate limit's window: 1 s, or 1/max_rate s below 1/s (one request each)."""
        if self.max_rate >= 1.0 or self.max_rate <= 0:
            return _NS_PER_S
        return round(_NS_PER_S / self.max_rate)

    @property
    def window_quota(self) -> int:
        """Requests allowed in any window: floor(max_rate x window), at least 1 (0: no limit)."""
        if self.max_rate <= 0:
            return 0
        return max(1, math.floor(self.max_rate * self.window_ns / _NS_PER_S + 1e-9))

    def worker_cap(self) -> int:
        """The most workers these limits can feed (0 = any): each worker holds a whole
        share of the window quota and of the in-flight limit, at least one of each."""
        caps = [c for c in (self.window_quota, self.max_in_flight) if c > 0]
        return min(caps) if caps else 0


@dataclass(frozen=True)
class AgentConfig:
    listen: str = "127.0.0.1:7070"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    agent_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    limits: AgentLimits = AgentLimits()
    #: Where the bound port is written once listening (for port 0 and tests).
    port_file: str = ""
    #: Seconds between heartbeats / batch flushes on the Run stream.
    heartbeat_s: float = 0.25
    #: Shared token every control-plane call must carry ("" = none; loopback only).
    token: str = field(default="", repr=False)
    #: TLS identity (and client CA for mutual TLS); None = plaintext.
    tls: ServerTLS | None = None
    #: Where runs' records are spooled until the coordinator has them.
    spool_dir: str = field(default_factory=lambda: str(default_spool_dir()))
    spool_max_bytes: int = DEFAULT_MAX_BYTES
    #: A run whose coordinator is silent (no keepalive, or stream gone) this long stops.
    coordinator_grace_s: float = 5.0

    def __post_init__(self) -> None:
        # Limits are split among the workers in whole shares: never more workers than
        # the limits can feed (e.g. --max-rate 4 runs at most 4 workers).
        cap = self.limits.worker_cap()
        if cap and self.workers > cap:
            object.__setattr__(self, "workers", cap)

    #: The operator's header secrets (--header-secret NAME=env:VAR|file:PATH), read at
    #: start: (name, value); a plan names one (`secret: NAME`) and never sees its value.
    header_secrets: tuple[tuple[str, str], ...] = field(default=(), repr=False)
