"""Live figures of a running run, and their terminal view (rich Live).

`live_figures()` turns the coordinator's `Progress` (called every 100 ms from the main
loop) into plain figures: elapsed/remaining, offered vs achieved rate and latency
percentiles of the last complete 1 s window, totals, per-agent state. The terminal
view and the Prometheus exporter (`coordinator/metrics.py`) both read them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from coordinator.agents import AgentState
from coordinator.aggregate import Stats
from coordinator.many import AgentLine, choose

if TYPE_CHECKING:
    from coordinator.run import Progress


@dataclass
class AgentFigures:
    name: str
    state: str
    sent: int
    ok: int
    errors: int
    dropped: int
    cpu_percent: float
    lateness_p99_ms: float | None


@dataclass
class LiveFigures:
    elapsed_s: float
    total_s: float
    window: int  #: the last complete window shown (-1: none yet)
    offered_rps: float
    achieved_rps: float
    p50_ms: float | None
    p99_ms: float | None
    sent: int
    ok: int
    errors: int
    dropped: int
    agents: list[AgentFigures] = field(default_factory=list)

    @property
    def remaining_s(self) -> float:
        return max(self.total_s - self.elapsed_s, 0.0)


def live_figures(p: Progress) -> LiveFigures:
    agg = p.agg
    window_s = agg.window_ns / 1e9
    last = p.window - 1  # the window before the current one is (almost) complete
    merged = Stats()
    achieved = 0
    for a in range(agg.n_agents):
        st = agg.windows.get((last, a))
        if st is not None:
            merged.merge(st)
        achieved += agg.completions.get((last, a), 0)
    lat = merged.latency
    agents: list[AgentFigures] = []
    sent = ok = errors = dropped = 0
    for a, info in enumerate(p.agents):
        t = agg.agents[a] if a < len(agg.agents) else None
        st = Stats()
        if t is not None:
            st.merge(t.measured)
            st.merge(t.warmup)
        sent += st.sent
        ok += st.ok
        errors += st.errors
        dropped += st.dropped
        agents.append(
            AgentFigures(
                name=info.id or info.address,
                state=str(info.state),
                sent=st.sent,
                ok=st.ok,
                errors=st.errors,
                dropped=st.dropped,
                cpu_percent=info.cpu_percent,
                lateness_p99_ms=(st.lateness.percentile(99) / 1e6 if st.lateness.count else None),
            )
        )
    return LiveFigures(
        elapsed_s=max(p.elapsed_s, 0.0),
        total_s=p.total_s,
        window=last,
        offered_rps=merged.records / window_s if last >= 0 else 0.0,
        achieved_rps=achieved / window_s if last >= 0 else 0.0,
        p50_ms=lat.percentile(50) / 1e6 if lat.count else None,
        p99_ms=lat.percentile(99) / 1e6 if lat.count else None,
        sent=sent,
        ok=ok,
        errors=errors,
        dropped=dropped,
        agents=agents,
    )


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def render(f: LiveFigures, title: str = "") -> Group:
    """The terminal view of one set of live figures."""
    if f.elapsed_s <= 0:
        head = Text(f"{title}starting in {-f.elapsed_s:.1f}s", style="bold")
    else:
        head = Text.assemble(
            (title, "bold"),
            f"{min(f.elapsed_s, f.total_s):5.1f}s / {f.total_s:.0f}s  "
            f"(remaining {f.remaining_s:.0f}s)  ",
            ("offered ", "dim"),
            f"{f.offered_rps:,.0f}/s  ",
            ("achieved ", "dim"),
            f"{f.achieved_rps:,.0f}/s  ",
            ("p50 ", "dim"),
            _ms(f.p50_ms),
            ("  p99 ", "dim"),
            _ms(f.p99_ms),
            ("  errors ", "dim"),
            (str(f.errors), "red" if f.errors else ""),
        )
    table = Table(box=None, pad_edge=False, show_edge=False)
    for col in ("agent", "state", "sent", "ok", "errors", "dropped", "CPU", "late p99"):
        table.add_column(col, justify="left" if col in ("agent", "state") else "right")
    colors: dict[str, str] = {
        AgentState.RUNNING: "green",
        AgentState.DONE: "cyan",
        AgentState.FAILED: "red",
        AgentState.MISSING: "red",
    }
    shown = choose(
        [
            AgentLine(
                a.state, a.lateness_p99_ms, a.state in (AgentState.FAILED, AgentState.MISSING)
            )
            for a in f.agents
        ]
    )
    for a in (f.agents[i] for i in shown.indices):
        table.add_row(
            a.name,
            Text(a.state, style=colors.get(a.state, "")),
            f"{a.sent:,}",
            f"{a.ok:,}",
            f"{a.errors:,}",
            f"{a.dropped:,}",
            f"{a.cpu_percent:.0f}%",
            _ms(a.lateness_p99_ms),
        )
    if shown.rest:
        return Group(head, Text(shown.states, style="dim"), table, Text(shown.rest, style="dim"))
    return Group(head, table)


class LiveView:
    """A rich Live view fed by `Progress` callbacks; redraws at most `hz` times a second."""

    def __init__(self, console: Console, title: str = "", hz: float = 4.0) -> None:
        self.console = console
        self.title = title
        self.period_s = 1.0 / hz
        self._live: Live | None = None
        self._last = 0.0

    def __enter__(self) -> LiveView:
        self._live = Live(console=self.console, auto_refresh=False, transient=True)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def update(self, figures: LiveFigures) -> None:
        now = time.monotonic()
        if self._live is None or now - self._last < self.period_s:
            return
        self._last = now
        self._live.update(render(figures, self.title), refresh=True)


@contextmanager
def live_outputs(
    *,
    show: bool,
    console: Console | None = None,
    metrics_listen: str | None = None,
    labels: dict[str, str] | None = None,
) -> Iterator[Callable[[Progress], None] | None]:
    """The `RunOptions.progress` callback for `volley run`: the terminal view (only on
    a terminal) and/or the Prometheus exporter (when `metrics_listen` is given)."""
    from coordinator.metrics import MetricsExporter

    con = console or Console(stderr=True)
    sinks: list[Callable[[LiveFigures], None]] = []
    with ExitStack() as stack:
        if show and con.is_terminal:
            view = stack.enter_context(LiveView(con, title=(labels or {}).get("name", "") + " "))
            sinks.append(view.update)
        if metrics_listen is not None:
            exporter = stack.enter_context(MetricsExporter(metrics_listen, labels or {}))
            sinks.append(exporter.update)
        if not sinks:
            yield None
            return
        last = [0.0]

        def callback(p: Progress) -> None:
            now = time.monotonic()
            if now - last[0] < 0.25:
                return
            last[0] = now
            figures = live_figures(p)
            for sink in sinks:
                sink(figures)

        yield callback


def figures_dict(f: LiveFigures) -> dict[str, Any]:
    """Plain dict of the figures (tests, debugging)."""
    return {
        "elapsed_s": f.elapsed_s,
        "total_s": f.total_s,
        "offered_rps": f.offered_rps,
        "achieved_rps": f.achieved_rps,
        "p50_ms": f.p50_ms,
        "p99_ms": f.p99_ms,
        "sent": f.sent,
        "ok": f.ok,
        "errors": f.errors,
        "agents": [a.__dict__ for a in f.agents],
    }
