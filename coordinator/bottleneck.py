"""Which part of the generator lacked capacity, and how the verdict says so (pure).

An agent that fell behind its schedule lacked capacity somewhere: in its own workers
(more workers, or another agent, fix it), or in the host under it, when every core of
that host was busy (other agents on it, the server itself when it runs there, anything
else). Adding workers to a host with no idle core makes it worse, so the two get
different advice. The agents say how busy their host was (`AgentStatus.host_cpu_percent`,
every process counted, while the run ran); a host at HOST_BUSY_PERCENT or more on
average is the bottleneck of the agents on it that fell behind.

With many agents the verdict stays readable: the agents a busy host held back are one
reason for that host, and past MAX_LISTED agents short of workers, the worst MAX_LISTED
(by send-lateness p99) are listed and the rest are one line.
"""

from __future__ import annotations

import ipaddress
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

#: A host whose cores were on average at least this busy while the run ran had no room.
HOST_BUSY_PERCENT = 90.0
#: Past this many agents with the same kind of reason, the rest are one line.
MAX_LISTED = 3


class Shortfall(StrEnum):
    """What an agent that fell behind was short of (`agents[].bottleneck`)."""

    WORKERS = "workers"  #: its own workers: give it more, or add an agent
    HOST = "host"  #: its host's cores: spread the agents over more hosts


def host_cpu(
    samples: Sequence[float], spans: Sequence[float] = ()
) -> tuple[float | None, float | None]:
    """(mean, peak) of the host's busy % over the run; (None, None) when it never said.

    Each sample covers the time since the agent's previous status (0.25 s while the run
    moves, 0.8 s idle): `spans` (seconds, one per sample) weigh them, so that a few fast
    beats do not outweigh long idle ones; without spans (or with none positive) every
    sample counts the same."""
    if not samples:
        return None, None
    peak = round(max(samples), 1)
    if len(spans) == len(samples) and sum(spans) > 0:
        mean = sum(x * w for x, w in zip(samples, spans, strict=True)) / sum(spans)
        return round(mean, 1), peak
    return round(statistics.fmean(samples), 1), peak


def host_is_busy(mean_percent: float | None) -> bool:
    return mean_percent is not None and mean_percent >= HOST_BUSY_PERCENT


def target_is_loopback(target: str) -> bool:
    """The target ("host:port", "[v6]:port", with or without "scheme://" and a path)
    names the agent's own host: a literal loopback address or localhost (no DNS)."""
    hostport = target.strip().split("://", 1)[-1].split("/", 1)[0]
    if hostport.startswith("["):
        host = hostport[1:].partition("]")[0]
    else:
        host = hostport.rpartition(":")[0] or hostport
    return is_loopback_literal(host)


def is_loopback_literal(host: str) -> bool:
    """A literal loopback address or localhost (no DNS)."""
    h = host.strip().strip("[]").lower()
    if h in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def host_key(host: str, address: str) -> str:
    """Which machine an agent ran on: its host name and the address it was reached at
    (two machines from one image may both call themselves "ubuntu")."""
    at = address.strip()
    at = at[1:].partition("]")[0] if at.startswith("[") else (at.rpartition(":")[0] or at)
    return f"{host}@{at}"


def host_phrase(host: str, cores: int, mean_percent: float, server_here: bool) -> str:
    """ "host h's 2 cores were 97% busy (every process on it, the server's too)"."""
    name = f"host {host}" if host else "its host"
    where = "every process on it, the server's too" if server_here else "every process on it"
    return f"{name}'s {cores or '?'} cores were {mean_percent:.0f}% busy ({where})"


HOST_ADVICE = (
    "the host was the bottleneck, not the agents' workers, and more workers there would "
    "not help: spread the agents over more hosts, or run fewer per host"
)


def host_reason(agent: str, why: str, host: str) -> str:
    """The reason of one agent its busy host held back (`host`: `host_phrase`)."""
    return f"agent {agent} fell behind ({why}) while {host}: {HOST_ADVICE}"


@dataclass(frozen=True)
class Behind:
    """One agent that fell behind: what the verdict groups."""

    agent: str
    shortfall: Shortfall
    reason: str  #: its own reason (one agent's line)
    lateness_p99_ms: float
    host: str = ""  #: `host_key`: which machine it ran on
    host_line: str = ""  #: `host_phrase` (host shortfall only)


def grouped_reasons(behind: Sequence[Behind]) -> list[str]:
    """The verdict's reasons for the agents that fell behind: one per busy host (its
    agents named, the worst first), then the agents short of workers (the worst
    MAX_LISTED listed, the rest one line)."""
    out: list[str] = []
    by_host: dict[str, list[Behind]] = {}
    for b in behind:
        if b.shortfall is Shortfall.HOST:
            by_host.setdefault(b.host, []).append(b)
    for group in by_host.values():
        if len(group) == 1:
            out.append(group[0].reason)
            continue
        worst = sorted(group, key=lambda b: -b.lateness_p99_ms)
        out.append(
            f"{len(group)} agents fell behind ({_names(worst)}; send lateness p99 up to "
            f"{worst[0].lateness_p99_ms:.1f} ms, {worst[0].agent}) while "
            f"{worst[0].host_line}: {HOST_ADVICE}"
        )
    short = sorted(
        (b for b in behind if b.shortfall is Shortfall.WORKERS), key=lambda b: -b.lateness_p99_ms
    )
    out += [b.reason for b in short[:MAX_LISTED]]
    rest = short[MAX_LISTED:]
    if rest:
        out.append(
            f"and {len(rest)} more agents were short of workers ({_names(rest)}; send "
            f"lateness p99 up to {rest[0].lateness_p99_ms:.1f} ms): summary.json's agents "
            "say what each needs"
        )
    return out


def _names(group: Sequence[Behind]) -> str:
    names = [b.agent for b in group[:MAX_LISTED]]
    more = len(group) - len(names)
    return ", ".join(names) + (f" and {more} more" if more else "")


def grouped_lines(lines: Sequence[tuple[float, str]], what: str, fmt: str) -> list[str]:
    """Per-agent lines of one kind, each with its figure ((figure, line)): every line when
    there are up to MAX_LISTED, else the worst MAX_LISTED (highest figure) and one line
    for the rest: `what` names the figure, `fmt` formats it ("{:.1%}")."""
    if len(lines) <= MAX_LISTED:
        return [line for _, line in lines]
    worst = sorted(lines, key=lambda x: -x[0])
    rest = worst[MAX_LISTED:]
    return [line for _, line in worst[:MAX_LISTED]] + [
        f"and {len(rest)} more agents the same ({what} up to {fmt.format(rest[0][0])})"
    ]
