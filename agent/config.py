"""Typed agent configuration (built by the CLI, consumed by serve())."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from agent.spool import DEFAULT_MAX_BYTES, default_spool_dir
from volley.security import ServerTLS


@dataclass(frozen=True)
class AgentLimits:
    """Limits the agent enforces on every plan, whatever the coordinator asks."""

    max_rate: float = 0.0  #: requests/s for this agent's share; 0 = unlimited
    max_in_flight: int = 0  #: 0 = unlimited
    max_duration_s: float = 0.0  #: 0 = unlimited
    allowed_targets: tuple[str, ...] = ()  #: empty = any


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
    #: The operator's header secrets (--header-secret NAME=env:VAR|file:PATH), read at
    #: start: (name, value); a plan names one (`secret: NAME`) and never sees its value.
    header_secrets: tuple[tuple[str, str], ...] = field(default=(), repr=False)
