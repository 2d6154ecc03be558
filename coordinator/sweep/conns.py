"""`volley sweep --mode connections`: how many simultaneous connections the target (or a
proxy in front of it) holds cleanly (pure; no I/O).

A step at N holds N connections (`plan.connections_total`, split over the agents and
workers, opened before the start) for the step, each carrying `rate_per_connection`
requests per second (an open-loop schedule of N x that rate, spread over the held
connections). The search is the sweep's own (search.py `next_step`: up by `growth`
until a step fails, then bisecting, on whole connections); a step fails, besides the
usual reasons (SLOs: 'slowed'; the server fell behind; request errors), when any
connection attempt failed, a held connection was reset or closed by the server, or
the server drained one (GOAWAY; HTTP/1.1: `Connection: close`: nginx does so to idle
connections when it runs out of `worker_connections`), or fewer than N were held at the
end. `failure_kind` names what failed first, the step's `failed_first`: refused, reset,
tls, timeout (a connection error of that kind; timeout also when a held connection left
a PING unanswered), other, goaway, not-held, connect-slow (a connect-time SLO such as
`connect_p99<50ms` failed), slowed (another SLO, or throughput), errors (request
errors), or "" (passed or not the server's). A held connection recycled by
`keepalive_requests` also counts: at a low rate per connection (1 req/s: 1,000 s for
nginx's default 1,000 requests) a step never reaches it. An idle HTTP/1.1 connection the
server closed at its keep-alive timeout (`idle_closed`: uvicorn after 5 s, at a low rate
per connection) is reopened and is not a failure.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection

from coordinator.documents import Summary
from volley.conns import KINDS, ConnBlock


class FailureKind(enum.StrEnum):
    """What failed first at a connections step (sweep.json `failed_first`: its value)."""

    NONE = ""  #: passed, or not the server's failure
    REFUSED = "refused"  #: connection errors by kind (volley.conns.ConnErrorKind)
    RESET = "reset"
    TLS = "tls"
    TIMEOUT = "timeout"
    OTHER = "other"
    GOAWAY = "goaway"
    NOT_HELD = "not-held"
    CONNECT_SLOW = "connect-slow"
    SLOWED = "slowed"
    ERRORS = "errors"


#: Failure kinds of a connections step, in the order they are blamed.
FAILURE_KINDS = (
    *(FailureKind(k.value) for k in KINDS),
    FailureKind.GOAWAY,
    FailureKind.NOT_HELD,
    FailureKind.CONNECT_SLOW,
    FailureKind.SLOWED,
    FailureKind.ERRORS,
)


def step_rate(connections: int, rate_per_connection: float) -> float:
    """The step's offered rate: every held connection at `rate_per_connection`."""
    return round(connections * rate_per_connection, 6)


def connection_reasons(block: ConnBlock | None, wanted: int) -> list[str]:
    """Why a step did not hold its connections cleanly ([] when it did)."""
    if block is None:
        return [f"no connection figures came back (wanted {wanted})"]
    out: list[str] = []
    errors = [(k, v) for k, v in block["errors"].items() if v]
    if errors:
        errors.sort(key=lambda kv: -kv[1])
        text = ", ".join(f"{v} {k}" for k, v in errors)
        out.append(f"connection errors: {text} (of {block['wanted']} wanted)")
    if block["resets_received"]:
        out.append(f"{block['resets_received']} held connections reset or closed by the server")
    if block["goaways_received"]:
        out.append(
            f"{block['goaways_received']} GOAWAYs (or Connection: close) on held connections: "
            "the server drained them"
        )
    if block["held"] < block["wanted"]:
        out.append(f"{block['held']} of {block['wanted']} connections held at the end")
    return out


def failure_kind(
    summary: Summary, passed: bool, server_failures: Collection[FailureKind]
) -> FailureKind:
    """What failed first at a step (see the module docstring); `server_failures`: what
    the step's judging found of the server's (search.py `judge_step`)."""
    if passed:
        return FailureKind.NONE
    block = summary.get("connections")
    if block is not None:
        errors = sorted(
            ((v, k) for k, v in block["errors"].items() if v), key=lambda vk: (-vk[0], vk[1])
        )
        if errors:
            try:
                return FailureKind(errors[0][1])
            except ValueError:
                return FailureKind.OTHER  # (a kind this volley does not know)
        if block["resets_received"]:
            return FailureKind.RESET
        if block["goaways_received"]:
            return FailureKind.GOAWAY
        if block["held"] < block["wanted"]:
            return FailureKind.NOT_HELD
    for kind in (FailureKind.CONNECT_SLOW, FailureKind.SLOWED, FailureKind.ERRORS):
        if kind in server_failures:
            return kind
    return FailureKind.NONE


def connect_p99_ms(summary: Summary) -> float | None:
    block = summary.get("connections")
    if block is None or not block["connect_ms"]:
        return None
    v = block["connect_ms"].get("p99")
    return float(v) if v is not None and math.isfinite(v) else None
