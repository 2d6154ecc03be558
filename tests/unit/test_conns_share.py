"""Connections as a load dimension, the pure parts (volley/conns.py, agent/conns.py):
the exact split of `--connections N` over agents and workers, the HTTP/1.1 pool's cap,
connection errors by kind, figures that merge and cross the control plane intact, and
the descriptor check."""

from __future__ import annotations

import errno
import ssl

import pytest

from agent.conns import check_fds, worker_plan
from volley.conns import (
    FD_RESERVE,
    ConnErrorKind,
    ConnFigures,
    classify,
    connection_share,
    describe,
    fd_refusal,
    from_proto,
    pool_limit,
    run_connections,
    to_proto,
)
from volley.plan import AgentSpec, PlanError, plan_from_dict


@pytest.mark.parametrize(
    ("total", "weights", "workers"),
    [(63, [2, 1], [2, 1]), (7, [1, 1, 1], [1, 1, 1]), (1000, [3, 5], [3, 5]), (5, [1], [5])],
)
def test_the_shares_sum_exactly_to_the_total(
    total: int, weights: list[int], workers: list[int]
) -> None:
    shares = [
        connection_share(total, weights, a, workers[a], w)
        for a in range(len(weights))
        for w in range(workers[a])
    ]
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1  # weights follow the workers: as even as can be


def test_a_worker_plan_carries_its_share_and_the_old_key_keeps_its_meaning() -> None:
    doc = {"target": "127.0.0.1:1", "model": "m", "load": {"rate": 10}}
    per_worker = plan_from_dict({**doc, "connections": 3})
    assert worker_plan(per_worker, 0, 4, 2).connections == 3  # per worker, as before
    total = plan_from_dict({**doc, "connections_total": 10}).with_agents(
        [AgentSpec("a:1", 3), AgentSpec("b:1", 2)]
    )
    got = [worker_plan(total, 0, 3, w).connections for w in range(3)]
    got += [worker_plan(total, 1, 2, w).connections for w in range(2)]
    assert got == [2, 2, 2, 2, 2]
    with pytest.raises(PlanError, match="connections_total"):
        plan_from_dict({**doc, "connections_total": -1})


def test_an_agent_refuses_fewer_connections_than_workers_or_more_than_its_descriptors() -> None:
    doc = {"target": "127.0.0.1:1", "model": "m", "load": {"rate": 10}}
    few = plan_from_dict({**doc, "connections_total": 3})
    refusal = check_fds(few, 0, 4)
    assert refusal is not None and "fewer than its 4 workers" in refusal
    assert check_fds(few, 0, 3) is None
    assert fd_refusal(1000, 1, 1024, 1024) is not None
    assert fd_refusal(1024 - FD_RESERVE, 1, 1024, 1024) is None
    assert fd_refusal(5000, 1, 1024, 1 << 20) is None  # the soft limit is raised to the hard


def test_the_pool_is_capped_at_the_share_or_the_in_flight_cap() -> None:
    assert pool_limit(6, True, 500, 1024) == 6  # --connections: exactly the share
    assert pool_limit(3000, True, 500, 1024) == 3000  # all of it: they are all opened
    assert pool_limit(1, False, 256, 1024) == 256  # the worker's in-flight share
    assert pool_limit(1, False, 0, 1024) == 1024  # no cap: the hard bound
    assert pool_limit(8, False, 4, 1024) == 8  # never below `connections`


def _refused() -> BaseException:
    try:
        raise ConnectionError("127.0.0.1:1: Connection refused") from None
    except ConnectionError as outer:
        outer.__context__ = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
        return outer


def test_connection_errors_are_classified_by_kind() -> None:
    assert classify(_refused()) is ConnErrorKind.REFUSED
    assert classify(ConnectionResetError()) is ConnErrorKind.RESET
    assert classify(ConnectionError("closed by the server")) is ConnErrorKind.RESET
    assert classify(ssl.SSLError(1, "bad")) is ConnErrorKind.TLS
    assert classify(TimeoutError()) is ConnErrorKind.TIMEOUT
    assert classify(OSError(errno.EHOSTUNREACH, "unreachable")) is ConnErrorKind.OTHER


def test_figures_merge_and_cross_the_control_plane_intact() -> None:
    a, b = ConnFigures(wanted=3, held=3), ConnFigures(wanted=2, held=1)
    for ns in (200_000, 300_000, 250_000):
        a.connected(ns)
    b.connected(40_000_000)
    b.failed(_refused())
    b.failed(ConnectionResetError())
    b.resets_received, b.goaways_received, b.waited = 1, 2, 7
    back = [from_proto(to_proto(f)) for f in (a, b)]
    block = run_connections(back)
    assert block is not None
    assert (block["wanted"], block["opened"], block["held"]) == (5, 4, 4)
    assert block["errors"] == {"refused": 1, "reset": 1, "tls": 0, "timeout": 0, "other": 0}
    assert block["errors_total"] == 2 and block["waited"] == 7
    assert block["resets_received"] == 1 and block["goaways_received"] == 2
    assert 0.24 <= block["connect_ms"]["p50"] <= 0.26  # percentiles of the merged histogram
    assert 39.5 <= block["connect_ms"]["p99"] <= 40.5
    assert run_connections([None, None]) is None


def test_the_line_says_when_an_on_demand_pool_grew_past_what_was_asked() -> None:
    held = ConnFigures(wanted=4, opened=4, held=4).block()
    grown = ConnFigures(wanted=1, opened=922, held=922).block()  # HTTP/1.1 on demand
    assert describe(held).startswith("4/4 held; 4 opened")
    assert describe(grown).startswith("922 held (pool grew from 1); 922 opened")


def test_the_console_shows_connections_only_when_held_or_failing() -> None:
    """An ordinary run (each worker's own connection) prints no connections line; a run
    with `--connections N`, or with connection errors or resets, does."""
    import io
    from typing import Any, cast

    from rich.console import Console

    from volley.cli.console import _print_connections

    def shown(**over: Any) -> str:
        block = {**ConnFigures(wanted=4, opened=4, held=4).block(), **over}
        out = io.StringIO()
        summary = cast(Any, {"connections": block, "agents": [{}, {}]})
        _print_connections(Console(file=out, width=100), summary)
        return out.getvalue()

    assert shown() == ""  # 2 agents x 2 workers, one connection each: nothing to say
    assert shown(fixed=True).startswith("connections: 4/4 held")
    assert "1 reset" in shown(errors_total=1, errors={"reset": 1})
