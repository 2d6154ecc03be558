"""Many agents on one screen: which agents to list, and a line for the rest (pure).

Up to MANY_AGENTS agents are all listed, in order. Past that the terminal view, the
console summary and the report list the agents that need a look (failed, missing,
saturated, started late: `flagged`) and then the TOP_N latest by send-lateness p99; the
others are one line: how many, by state, and the worst lateness among them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

#: Up to this many agents, every one is listed.
MANY_AGENTS = 12
#: Past it, the latest this many (by send-lateness p99) besides the flagged ones.
TOP_N = 8


@dataclass(frozen=True)
class AgentLine:
    """What the choice needs of one agent."""

    state: str
    lateness_p99_ms: float | None
    flagged: bool = False


@dataclass(frozen=True)
class Shown:
    """The agents to list (indices, in the order to list them) and the rest's line."""

    indices: list[int]
    rest: str  #: "" when every agent is listed
    states: str  #: "64 agents: 60 running, 3 done, 1 missing"


def states_line(states: Sequence[str]) -> str:
    counts = Counter(states)
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"{len(states)} agents: {parts}"


def choose(lines: Sequence[AgentLine], top: int = TOP_N, many: int = MANY_AGENTS) -> Shown:
    """Which agents to list (see the module's text)."""
    states = states_line([a.state for a in lines])
    if len(lines) <= many:
        return Shown(list(range(len(lines))), "", states)
    flagged = [i for i, a in enumerate(lines) if a.flagged]
    others = [i for i, a in enumerate(lines) if not a.flagged]
    others.sort(key=lambda i: -(lines[i].lateness_p99_ms or 0.0))
    shown = flagged + others[:top]
    hidden = others[top:]
    if not hidden:
        return Shown(shown, "", states)
    worst = max((lines[i].lateness_p99_ms or 0.0) for i in hidden)
    by_state = Counter(lines[i].state for i in hidden)
    kinds = ", ".join(f"{n} {s}" for s, n in sorted(by_state.items(), key=lambda kv: -kv[1]))
    rest = f"... {len(hidden)} more agents ({kinds}), send-lateness p99 at most {worst:.2f} ms"
    return Shown(shown, rest, states)
