"""The two-phase start: prepare every agent, then agree the instant and tell them.

1. `prepare(run, timeout_s)`: every agent's Run stream opens with `prepare_first`; each
   agent spawns its workers, which build their payload pools and open their
   connections, and reports `Prepared` (how long it took). A refusal, a failure or an
   agent not ready in time is a `StartProblem` naming the agents (nothing was sent).
2. `ready_round(run)`: once every agent is prepared, one keepalive to each agent, all at
   once, as the Start messages will go: how long the whole round took (the last reply)
   is the fan-out to every agent on this host under its load right now.
   `start_lead_ns(streams, round_ns)`: the lead from "now" to the start instant, from
   what was measured: the worst control-plane round trip (handshake probes and the
   keepalives sent while the agents prepared, i.e. under the preparation's load), the
   clocks' uncertainty, the fan-out of one Start message per agent, and ROUND_FACTOR
   times the ready round (64 agents on 2 busy cores: the round takes ~0.5-1 s, which
   the per-agent fan-out estimate alone missed).
3. `send_start(run)`: one `Start` per agent, at once; each reply says when the agent
   took it (its margin to the instant: `AgentInfo.start_margin_ms`).

`start_block(run)` is summary.json's `start`: the lead, the slowest preparation, the
margins and the start skew across agents.
"""

from __future__ import annotations

import asyncio
import statistics

from coordinator.agents import AgentError
from coordinator.documents import StartBlock, Summary
from coordinator.run.loop import RunLoop, StopReason
from coordinator.run.stream import RECENT_RTTS, AgentStream
from coordinator.summary import AgentInfo

#: The lead is never shorter than this.
MIN_LEAD_NS = 20_000_000
#: ... nor than this many of the worst round trips (one to deliver Start, the rest slack
#: for a loaded host) ...
LEAD_RTTS = 4
#: ... plus, per agent, the coordinator's cost of one more Start message (measured on
#: a busy 2-core host: ~0.5-1 ms each; kept at twice that).
FANOUT_NS = 2_000_000
#: ... and it never exceeds this (a control plane this slow is reported, not waited on).
MAX_LEAD_NS = 5_000_000_000
#: ... nor than this many ready rounds (Start goes out as a round like it; the rest is
#: slack for a host whose load varies from one second to the next) ...
ROUND_FACTOR = 3
#: ... and it never exceeds this (a control plane this slow is reported, not waited on).
MAX_ROUND_LEAD_NS = 30_000_000_000
#: How often the coordinator looks at the agents' preparation (each look wakes it: on a
#: host busy preparing many agents, fewer looks leave it to them).
POLL_S = 0.05
#: A ready round waits this long for its slowest reply.
ROUND_TIMEOUT_S = 5.0


class StartProblem(AgentError):
    """The agents could not all be prepared or started; the message names them."""


def start_lead_ns(streams: list[AgentStream], round_ns: int = 0) -> int:
    """The lead from now to the start instant, from measured round trips and clocks, and
    the ready round (`ready_round`: 0 when there was none). After a ready round, an agent's
    round trip is the round's (measured once every agent is prepared), not the worst of
    its recent ones, which were measured while the agents were still spawning on a busy
    host (64 local agents: seconds, so the lead sat at MAX_LEAD_NS)."""
    rtt = max((s.lead_rtt_ns(round_ns > 0) for s in streams), default=0)
    unc = max(((s.info.clock.uncertainty_ns if s.info.clock else 0) for s in streams), default=0)
    lead = min(max(MIN_LEAD_NS, LEAD_RTTS * rtt + 2 * unc + FANOUT_NS * len(streams)), MAX_LEAD_NS)
    by_round = min(ROUND_FACTOR * round_ns + 2 * unc, MAX_ROUND_LEAD_NS) if round_ns > 0 else 0
    return max(lead, by_round)


async def ready_round(run: RunLoop, timeout_s: float = ROUND_TIMEOUT_S) -> int:
    """One unary Ping to every agent at once (the agents are prepared): ns until the last
    reply came (or the timeout), i.e. what a round of Start calls takes now. A unary call,
    not the run's keepalive call: a message on that open call is cheaper than a call of
    its own, and 64 local agents' Starts came up to 132 ms after an instant fixed from
    it. Each reply's round trip joins that agent's recent ones (`AgentStream.rtts`)."""
    t0 = run.clock()

    async def one(s: AgentStream) -> None:
        if await s.client.ping(run.run_id, timeout_s=timeout_s):
            s.round_rtt_ns = run.clock() - t0
            s.rtts = [*s.rtts[1 - RECENT_RTTS :], s.round_rtt_ns]

    await asyncio.gather(*(one(s) for s in run.streams), return_exceptions=True)
    run.round_ns = run.clock() - t0
    return run.round_ns


def _name(s: AgentStream) -> str:
    return f"agent {s.name}" if s.name == s.info.address else f"agent {s.name} ({s.info.address})"


def _problem(run: RunLoop, timeout_s: float, timed_out: bool) -> str:
    """What stops the start, naming the agents (empty: every agent is prepared)."""
    failed = [s for s in run.streams if not s.active and not s.refused]
    if failed:
        return "; ".join(
            f"{_name(s)} {'ended before the start' if s.prepared else 'failed to prepare'}: "
            f"{s.info.error or s.end_message or s.state.value}"
            for s in failed
        )
    slow = [s for s in run.streams if not s.prepared]
    if timed_out and slow:
        names = ", ".join(s.name for s in slow)
        return (
            f"{len(slow)} of {len(run.streams)} agents not prepared after {timeout_s:g}s "
            f"(spawning workers, building payload pools, opening connections): {names}"
        )
    return ""


async def prepare(run: RunLoop, timeout_s: float) -> None:
    """Open every Run stream with prepare_first and wait until each agent is prepared.
    StartProblem when one failed or was not ready in time (the others are stopped); a
    refusal is left to the caller (`run.refusal()`), as before."""
    run.startup(prepare_first=True)
    deadline = run.clock() + int(timeout_s * 1e9)
    while True:
        if run.refusal() is not None:
            run.stopped = StopReason.REFUSED
            await run.stop_all(StopReason.REFUSED)
            return
        timed_out = run.clock() > deadline
        why = _problem(run, timeout_s, timed_out)
        if why:
            await run.stop_all(StopReason.REFUSED)
            await run.shutdown(failed=True)
            raise StartProblem(why)
        if all(s.prepared for s in run.streams):
            return
        await asyncio.sleep(POLL_S)


async def send_start(run: RunLoop, timeout_s: float = 2.0) -> None:
    """Tell every agent its start instant (`run.agree_start` fixed it), all at once."""
    replies = await asyncio.gather(
        *(s.client.start(run.run_id, s.start_at_agent_ns, timeout_s) for s in run.streams),
        return_exceptions=True,
    )
    bad: list[str] = []
    for s, r in zip(run.streams, replies, strict=True):
        if isinstance(r, BaseException):
            bad.append(str(r))
        elif not r.accepted:
            bad.append(f"{_name(s)} did not take the start instant: {r.error or 'no reason'}")
        else:
            s.info.start_margin_ms = round((s.start_at_agent_ns - r.agent_ns) / 1e6, 3)
    if bad:
        await run.stop_all(StopReason.REFUSED)
        await run.shutdown(failed=True)
        raise StartProblem("; ".join(bad))


def start_block(
    infos: list[AgentInfo], lead_ns: int, summary: Summary, round_ns: int = 0
) -> StartBlock:
    """summary.json's `start`: how the agents were prepared and started (two-phase)."""
    prep = [(i.prepare_s, i) for i in infos if i.prepare_s is not None]
    margins = [i.start_margin_ms for i in infos if i.start_margin_ms is not None]
    skews = [abs(k) for r in summary["agents"] if (k := r["start_skew_ms"]) is not None]
    slow = max(prep, key=lambda p: p[0], default=None)
    late = [i.id or i.address for i in infos if (i.start_margin_ms or 0.0) < 0]
    return {
        "two_phase": True,
        "lead_ms": round(lead_ns / 1e6, 3),
        "ready_round_ms": round(round_ns / 1e6, 3),
        "agents": len(infos),
        "prepare_s_max": slow[0] if slow else None,
        "prepare_s_median": round(statistics.median(p for p, _ in prep), 4) if prep else None,
        "slowest_agent": (slow[1].id or slow[1].address) if slow else "",
        "margin_ms_min": min(margins) if margins else None,
        "start_late_agents": late,
        "skew_ms_max": round(max(skews), 4) if skews else None,
        "skew_ms_median": round(statistics.median(skews), 4) if skews else None,
        "agents_within_5ms": sum(1 for k in skews if k <= 5.0),
    }


def start_lines(run: RunLoop) -> list[str]:
    """Verdict warnings: agents whose Start arrived after the instant had passed."""
    return [
        f"agent {s.name} got the start instant {-s.info.start_margin_ms:.1f} ms after it "
        f"passed (start-up: the Start message was late, lead {run.lead_ns / 1e6:.0f} ms); "
        "its first sends were late for that reason, not for lack of capacity"
        for s in run.streams
        if s.info.start_margin_ms is not None and s.info.start_margin_ms < 0
    ]
