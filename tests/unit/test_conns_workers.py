"""`--connections N` below the agents' worker counts: without `--workers` the workers
are capped at the agents' shares (every worker holds one) with a one-line note; with
`--workers` the run fails in one line before any agent is asked to run it."""

from __future__ import annotations

import pytest

from coordinator.agents import AgentError
from coordinator.run import RunOptions, fit_to_connections
from coordinator.summary import AgentInfo
from volley.conns import fit_workers
from volley.plan import plan_from_dict
from volley.schedule import split_count


def test_connections_below_the_workers_cap_the_workers_not_the_run() -> None:
    assert fit_workers(4, [8, 8]) == [2, 2]
    assert fit_workers(3, [4, 4]) == [2, 1]  # shares of the capped weights: 2 + 1
    assert fit_workers(10, [3, 2]) == [3, 2]  # enough: unchanged
    assert fit_workers(5, [8, 1]) == [4, 1]
    assert fit_workers(1, [4, 4]) == [1, 1]  # agent 1 gets none: the agent refuses it
    assert fit_workers(6, [4, 4, 4], by_workers=False) == [2, 2, 2]
    for total, ws in ((7, [8, 3, 5]), (13, [16, 16, 2, 1]), (2, [3])):
        got = fit_workers(total, ws)
        shares = split_count(total, got)
        assert all(1 <= g <= w for g, w in zip(got, ws, strict=True))
        assert all(s >= g for s, g in zip(shares, got, strict=True))  # one each, at least


def _infos(*workers: int) -> list[AgentInfo]:
    return [AgentInfo(index=i, address=f"a{i}:1", workers=w) for i, w in enumerate(workers)]


def test_without_workers_the_run_caps_them_with_a_note_and_with_workers_it_fails() -> None:
    doc = {"target": "127.0.0.1:1", "model": "m", "load": {"rate": 10}}
    plan = plan_from_dict({**doc, "connections_total": 4})
    infos = _infos(8, 8)
    note = fit_to_connections(plan, infos, RunOptions())
    assert [i.workers for i in infos] == [2, 2]
    assert note == (
        "--connections 4: workers capped to one per connection (2 agents 8 -> 2 workers); "
        "--workers sets them"
    )
    assert fit_to_connections(plan, _infos(2, 2), RunOptions()) == ""
    assert fit_to_connections(plan_from_dict(doc), _infos(8), RunOptions()) == ""
    explicit = _infos(3, 3)  # --workers 3: the agents' min(3, their own)
    with pytest.raises(AgentError) as err:
        fit_to_connections(plan, explicit, RunOptions(workers=3))
    assert str(err.value) == (
        "--connections 4 gives agent a0:1 2, fewer than its 3 workers (--workers 3): every "
        "worker needs one (more --connections, or fewer --workers)"
    )
    assert [i.workers for i in explicit] == [3, 3]
