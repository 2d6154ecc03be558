"""A worker's connections to the target: its share, its descriptors, idle keep-alive.

- `worker_plan`: the plan as a worker's transport sees it: `connections` is this
  worker's share of `connections_total` (volley/conns.py) when the plan gives one.
- `fit_pool`: an HTTP/1.1 pool's cap (volley/conns.py `pool_limit`): the share when
  connections are fixed, else the worker's share of the in-flight cap.
- `raise_nofile`: a worker raises its soft RLIMIT_NOFILE to the hard limit (each
  connection is a descriptor); `check_fds` refuses a share that cannot fit.
- `ping_idle`: HTTP/2 PING on a connection with no stream open, so that a connection a
  proxy dropped is found while it is held idle: a reset meets the write, and a PING
  left unanswered for `PING_TIMEOUT_S` (a proxy or NAT dropping it silently, a frozen
  server) closes the connection as silent (counted as a `timeout` connection error).
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from volley.conns import (
    ConnErrorKind,
    ConnFigures,
    agent_connections,
    connection_share,
    fd_refusal,
    to_proto,
)
from volley.plan import Plan
from volley.schedule import split_count
from volley.v1 import control_pb2 as pb
from volley.wire import h2

if TYPE_CHECKING:
    from agent.transports.base import Transport

#: An idle HTTP/2 connection is pinged this often (gRPC's keepalive, client side).
PING_INTERVAL_S = 5.0
#: A PING unanswered this long means the peer went silent (gRPC's keepalive timeout,
#: here the interval: one unanswered PING, not several, is enough to stop holding it).
PING_TIMEOUT_S = 5.0


def worker_plan(plan: Plan, agent: int, workers: int, worker: int) -> Plan:
    """The plan with `connections` = this worker's share of `connections_total`."""
    if plan.connections_total <= 0:
        return plan
    share = connection_share(plan.connections_total, plan.agent_weights, agent, workers, worker)
    return replace(plan, connections=max(1, share))


def fit_pool(tp: Transport, plan: Plan, workers: int, worker: int) -> None:
    """Caps an HTTP/1.1 pool at its share (see volley/conns.py `pool_limit`)."""
    cap = plan.load.max_in_flight if plan.load.mode == "open" else 0
    share = split_count(cap, [1] * workers)[worker] if cap > 0 else 0
    tp.cap_pool(max(1, share) if cap > 0 else 0)


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE raised to the hard limit (where allowed); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft, hard


def check_fds(plan: Plan, agent: int, workers: int) -> str | None:
    """A refusal when one of this agent's workers would need more descriptors than a
    process may have, else None."""
    if plan.connections_total > 0:
        mine = agent_connections(plan.connections_total, plan.agent_weights, agent)
        if mine < workers:
            return (
                f"--connections {plan.connections_total} gives this agent {mine}, fewer "
                f"than its {workers} workers: every worker needs one (more connections, "
                f"or fewer workers)"
            )
        share = -(-mine // workers)
    else:
        share = plan.connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = soft if hard == resource.RLIM_INFINITY else hard
    return fd_refusal(share, workers, soft, limit)


def ping_idle(conns: Sequence[h2.Connection[Any] | None], now: float, last: list[float]) -> None:
    """PING every open connection without streams once per PING_INTERVAL_S (`last`:
    when each slot was last pinged). A dropped connection's reset then arrives as
    `connection_lost` (counted in `resets_received`) instead of at the next request;
    one that leaves a PING unanswered for PING_TIMEOUT_S (busy or idle) is closed as
    silent (`Connection.close_silent`: its sink hears `connection_lost`)."""
    for i, c in enumerate(conns):
        if c is None:
            continue
        if c.ping_overdue(now, PING_TIMEOUT_S):
            c.close_silent(
                f"connection went silent: no PING ACK within {PING_TIMEOUT_S:g}s "
                f"(dropped by a proxy or NAT, or the server is frozen)"
            )
            continue
        if c.open or not c.usable or now - last[i] < PING_INTERVAL_S:
            continue
        last[i] = now
        c.ping(now)


def lost_silent(tp: Transport, slot: int) -> None:
    """A held connection of `slot` went silent: a `timeout` connection error (also in
    `connect_errors`), and the slot's next connection waits its back-off, as after a
    failed attempt (a frozen server's next handshake times out, and the back-off doubles
    to 1 s)."""
    tp.connect_errors += 1
    tp.figures.count(ConnErrorKind.TIMEOUT)
    tp.note_backoff(slot)


def merged_figures(figures: Iterable[ConnFigures | None]) -> pb.ConnectionFigures:
    """The agent's workers' figures together, for its AgentStatus."""
    total = ConnFigures()
    for f in figures:
        if f is not None:
            total.merge(f)
    return to_proto(total)
