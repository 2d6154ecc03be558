"""Simultaneous connections as a load dimension (pure: no I/O).

`plan.connections_total` (`volley run --connections N`) is N connections to the target
in all, split over the agents by their weights and inside an agent over its workers,
exactly as the schedule's arrivals are (`split_count`, largest remainder): the shares
sum to N. Without it, `plan.connections` is every worker's own count (the old meaning).

Each transport tallies what happened to its connections in a `ConnFigures`: wanted,
opened (attempts that succeeded, first ones and replacements), held (open at the end),
the connect time distribution (a mergeable `LogHistogram`), connection errors by kind
(`ConnErrorKind`: refused, reset, TLS, timeout, other), counted apart from request
errors, the resets and GOAWAYs received on open connections, the idle connections a
server closed at its keep-alive timeout (`idle_closed`: a figure, not an error), and the
requests that waited because every connection of a capped pool was busy. Figures merge exactly
(workers -> agent -> run).
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NotRequired, TypedDict, cast

from volley.histogram import LogHistogram
from volley.schedule import split_count
from volley.v1 import control_pb2 as pb

#: File descriptors a worker keeps besides its target connections (loop, queues, pipes,
#: timerfd, libraries): a plan needing more than the limit minus this is refused.
FD_RESERVE = 64


class ConnErrorKind(enum.Enum):
    """Why a connection attempt failed."""

    REFUSED = "refused"  #: nothing listens (RST to the SYN)
    RESET = "reset"  #: accepted, then reset or closed before the protocol was up
    TLS = "tls"  #: the TLS handshake failed
    TIMEOUT = "timeout"  #: no answer (SYN, TLS or HTTP/2 SETTINGS) in time
    OTHER = "other"  #: anything else (unreachable, no route, out of descriptors...)


KINDS: tuple[ConnErrorKind, ...] = tuple(ConnErrorKind)


def classify(exc: BaseException) -> ConnErrorKind:
    """The kind of a failed connection attempt. A transport's ConnectionError raised
    `from None` still carries the original exception in `__context__`."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError):
            return ConnErrorKind.REFUSED
        if isinstance(cur, ssl.SSLError | ssl.CertificateError):
            return ConnErrorKind.TLS
        if isinstance(cur, TimeoutError):
            return ConnErrorKind.TIMEOUT
        if isinstance(cur, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
            return ConnErrorKind.RESET
        nxt = cur.__cause__ or cur.__context__
        if nxt is None and type(cur) is ConnectionError:
            # our own: the peer closed (or reset) before the handshake was done
            return ConnErrorKind.RESET
        cur = nxt
    return ConnErrorKind.OTHER


def connection_share(
    total: int, agent_weights: Sequence[int], agent: int, workers: int, worker: int
) -> int:
    """Worker `worker` of agent `agent`'s share of `total` connections (shares sum to it)."""
    mine = split_count(total, list(agent_weights))[agent]
    return split_count(mine, [1] * workers)[worker]


def agent_connections(total: int, agent_weights: Sequence[int], agent: int) -> int:
    return split_count(total, list(agent_weights))[agent]


def fit_workers(total: int, workers: Sequence[int], by_workers: bool = True) -> list[int]:
    """Each agent's workers capped at its share of `total` connections (every worker
    holds at least one, so an agent with 2 connections runs 2 workers), the shares
    recomputed with the capped weights (`by_workers`: slices weighed by worker counts)
    until none needs capping. At least 1 each: an agent left without a connection is
    refused by the agent itself."""
    w = [max(1, int(x)) for x in workers]
    for _ in range(sum(w)):  # every pass that changes lowers the sum: bounded
        shares = split_count(total, w if by_workers else [1] * len(w))
        capped = [max(1, min(x, s)) for x, s in zip(w, shares, strict=True)]
        if capped == w:
            break
        w = capped
    return w


def fd_refusal(share: int, workers: int, soft: int, hard: int) -> str | None:
    """One line when a worker's share of connections needs more descriptors than the
    process may have (its hard limit: workers raise the soft one to it)."""
    need = share + FD_RESERVE
    limit = max(soft, hard)
    if need > limit:
        return (
            f"{share} connections per worker need about {need} file descriptors, above "
            f"this agent's limit of {limit} (RLIMIT_NOFILE): raise it (ulimit -n) or "
            f"spread the connections over more workers or agents"
        )
    return None


def pool_limit(connections: int, fixed: bool, in_flight_cap: int, hard_max: int) -> int:
    """How many HTTP/1.1 connections a worker's pool may hold.

    fixed (`--connections` given): exactly its share, however large (the descriptor
    check bounds it; the pool opens them all): requests beyond it wait for a free
    connection (counted in `waited`). Otherwise: as many as the worker may have
    requests in flight (its share of the in-flight cap; 0: no cap), at least
    `connections`, at most `hard_max`."""
    if fixed:
        return max(1, connections)
    cap = in_flight_cap if in_flight_cap > 0 else hard_max
    return max(1, min(hard_max, max(connections, cap)))


class ConnBlock(TypedDict):
    """summary.json's `connections` (and each `agents[].connections`)."""

    wanted: int
    opened: int
    held: int
    connect_ms: dict[str, float]
    errors: dict[str, int]
    errors_total: int
    resets_received: int
    goaways_received: int
    waited: int
    #: idle connections the server closed at its keep-alive timeout (absent before s5)
    idle_closed: NotRequired[int]


class RunConnBlock(ConnBlock, total=False):
    """summary.json's run-wide `connections`."""

    #: `--connections N` held them (else each worker opened its own as it needed them)
    fixed: bool


@dataclass
class ConnFigures:
    """What happened to a set of connections (one worker's, an agent's, the run's)."""

    wanted: int = 0
    opened: int = 0
    held: int = 0
    errors: dict[ConnErrorKind, int] = field(default_factory=dict)
    resets_received: int = 0
    goaways_received: int = 0
    #: idle connections the server closed at its keep-alive timeout: reopened on demand
    idle_closed: int = 0
    #: requests that found every connection of a capped pool busy and waited for one
    waited: int = 0
    connect_ns: LogHistogram = field(default_factory=LogHistogram)

    def connected(self, ns: int) -> None:
        self.opened += 1
        self.connect_ns.record(max(0, ns))

    def failed(self, exc: BaseException) -> ConnErrorKind:
        kind = classify(exc)
        self.count(kind)
        return kind

    def count(self, kind: ConnErrorKind) -> None:
        """One connection error of `kind` (a held connection found silent: TIMEOUT)."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def errors_total(self) -> int:
        return sum(self.errors.values())

    def merge(self, other: ConnFigures) -> None:
        self.wanted += other.wanted
        self.opened += other.opened
        self.held += other.held
        for k, v in other.errors.items():
            self.errors[k] = self.errors.get(k, 0) + v
        self.resets_received += other.resets_received
        self.goaways_received += other.goaways_received
        self.idle_closed += other.idle_closed
        self.waited += other.waited
        self.connect_ns.merge(other.connect_ns)

    def copy(self) -> ConnFigures:
        out = ConnFigures()
        out.merge(self)
        return out

    def first_failure(self) -> str:
        """What failed, most frequent kind first ("" when nothing did)."""
        ranked = sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0].value))
        return ranked[0][0].value if ranked else ""

    def block(self) -> ConnBlock:
        h = self.connect_ns
        ms: dict[str, float] = {}
        if h.count:
            q = h.percentiles([50.0, 99.0])
            ms = {
                "p50": round(q[50.0] / 1e6, 3),
                "p99": round(q[99.0] / 1e6, 3),
                "max": round(h.max_ns / 1e6, 3),
            }
        return {
            "wanted": self.wanted,
            "opened": self.opened,
            "held": self.held,
            "connect_ms": ms,
            "errors": {k.value: self.errors.get(k, 0) for k in KINDS},
            "errors_total": self.errors_total,
            "resets_received": self.resets_received,
            "goaways_received": self.goaways_received,
            "waited": self.waited,
            "idle_closed": self.idle_closed,
        }


def run_connections(
    figures: Sequence[ConnFigures | None], fixed: bool = False
) -> RunConnBlock | None:
    """The run's `connections` block: every agent's figures merged (None: none came);
    `fixed`: the plan held them (`--connections N`)."""
    got = [f for f in figures if f is not None]
    if not got or not any(f.wanted or f.opened or f.errors for f in got):
        return None
    total = ConnFigures()
    for f in got:
        total.merge(f)
    block = cast(RunConnBlock, total.block())
    block["fixed"] = fixed
    return block


def to_proto(fig: ConnFigures) -> pb.ConnectionFigures:
    h = fig.connect_ns.to_dict()
    e = fig.errors
    return pb.ConnectionFigures(
        wanted=fig.wanted,
        opened=fig.opened,
        held=fig.held,
        refused=e.get(ConnErrorKind.REFUSED, 0),
        reset=e.get(ConnErrorKind.RESET, 0),
        tls=e.get(ConnErrorKind.TLS, 0),
        timeout=e.get(ConnErrorKind.TIMEOUT, 0),
        other=e.get(ConnErrorKind.OTHER, 0),
        resets_received=fig.resets_received,
        goaways_received=fig.goaways_received,
        waited=fig.waited,
        idle_closed=fig.idle_closed,
        connect_offset=int(cast(int, h["offset"])),
        connect_counts=cast(list[int], h["counts"]),
        connect_total_ns=int(cast(int, h["total_ns"])),
        connect_min_ns=int(cast(int, h["min_ns"])),
        connect_max_ns=int(cast(int, h["max_ns"])),
    )


def from_proto(m: pb.ConnectionFigures) -> ConnFigures:
    """An agent's figures (ValueError when they do not hold together)."""
    counts = list(m.connect_counts)
    if len(counts) > 100_000:
        raise ValueError("connect-time histogram too large")
    values = (m.wanted, m.opened, m.held, m.refused, m.reset, m.tls, m.timeout, m.other)
    received = (m.resets_received, m.goaways_received, m.waited, m.idle_closed)
    if min(values, default=0) < 0 or min(received) < 0:
        raise ValueError("negative connection figures")
    hist = LogHistogram.from_dict(
        {
            "scheme": LogHistogram().to_dict()["scheme"],
            "offset": m.connect_offset,
            "counts": counts,
            "count": sum(counts),
            "total_ns": m.connect_total_ns,
            "min_ns": m.connect_min_ns,
            "max_ns": m.connect_max_ns,
        }
    )
    kinds = zip(KINDS, (m.refused, m.reset, m.tls, m.timeout, m.other), strict=True)
    return ConnFigures(
        wanted=m.wanted,
        opened=m.opened,
        held=m.held,
        errors={k: int(v) for k, v in kinds if v},
        resets_received=m.resets_received,
        goaways_received=m.goaways_received,
        waited=m.waited,
        idle_closed=m.idle_closed,
        connect_ns=hist,
    )


def describe(fig: ConnBlock) -> str:
    """One line: `60/60 held, connect p50 0.3 ms p99 2.1 ms, errors: 3 reset`."""
    held, wanted = fig["held"], fig["wanted"]
    # an on-demand pool (HTTP/1.1 without --connections) may grow past what was asked
    parts = [
        f"{held}/{wanted} held" if held <= wanted else f"{held} held (pool grew from {wanted})"
    ]
    parts.append(f"{fig['opened']} opened")
    ms = fig["connect_ms"]
    if ms:
        parts.append(f"connect p50 {ms['p50']:g} ms p99 {ms['p99']:g} ms")
    errs = [f"{v} {k}" for k, v in fig["errors"].items() if v]
    if errs:
        parts.append("connection errors: " + ", ".join(errs))
    if fig["resets_received"] or fig["goaways_received"]:
        parts.append(f"{fig['resets_received']} resets, {fig['goaways_received']} GOAWAYs received")
    if fig["waited"]:
        parts.append(f"{fig['waited']} requests waited for a connection")
    if fig.get("idle_closed"):
        parts.append(f"{fig.get('idle_closed')} idle closed by the server (reopened)")
    return "; ".join(parts)


def status_figures(status: pb.AgentStatus, old: ConnFigures | None) -> ConnFigures | None:
    """An agent's figures from its status (cumulative: the latest holds them all);
    `old` when the status has none or they do not hold together."""
    if not status.HasField("connections"):
        return old
    try:
        return from_proto(status.connections)
    except ValueError:
        return old
