"""64 agents on one screen: the flagged and the latest listed, the rest one line."""

from __future__ import annotations

from rich.console import Console

from coordinator.many import MANY_AGENTS, TOP_N, AgentLine, choose
from coordinator.progress import AgentFigures, LiveFigures, render


def _lines(n: int) -> list[AgentLine]:
    return [
        AgentLine(
            "missing" if i == 40 else "running", 0.1 + (i % 7) * 0.01 + (5.0 if i == 3 else 0)
        )
        for i in range(n)
    ]


def test_few_agents_are_all_listed_in_order() -> None:
    shown = choose(_lines(MANY_AGENTS))
    assert shown.indices == list(range(MANY_AGENTS)) and shown.rest == ""


def test_many_agents_list_the_flagged_then_the_latest() -> None:
    lines = _lines(64)
    lines[40] = AgentLine("missing", None, flagged=True)
    shown = choose(lines)
    assert shown.indices[0] == 40  # flagged first
    assert shown.indices[1] == 3  # then the latest (5.1 ms)
    assert len(shown.indices) == 1 + TOP_N
    late = [lines[i].lateness_p99_ms or 0.0 for i in shown.indices[1:]]
    assert late == sorted(late, reverse=True)
    hidden_worst = max(lines[i].lateness_p99_ms or 0.0 for i in range(64) if i not in shown.indices)
    assert max(late[1:]) >= hidden_worst
    assert shown.rest == (
        f"... {64 - 1 - TOP_N} more agents ({64 - 1 - TOP_N} running), "
        f"send-lateness p99 at most {hidden_worst:.2f} ms"
    )
    assert shown.states == "64 agents: 63 running, 1 missing"


def test_the_live_view_stays_short_with_64_agents() -> None:
    agents = [
        AgentFigures(
            name=f"local-{i}",
            state="running",
            sent=100,
            ok=100,
            errors=0,
            dropped=0,
            cpu_percent=3.0,
            lateness_p99_ms=0.2 + i / 1000,
        )
        for i in range(64)
    ]
    f = LiveFigures(3.0, 10.0, 2, 640.0, 640.0, 1.0, 2.0, 6400, 6400, 0, 0, agents)
    con = Console(width=120, record=True)
    con.print(render(f))
    text = con.export_text()
    assert len(text.splitlines()) <= TOP_N + 5, text
    assert "local-63" in text and "local-0 " not in text  # the latest are listed
    assert "56 more agents" in text and "64 agents: 64 running" in text
