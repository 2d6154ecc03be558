"""What an agent refuses, and the per-worker pacer that holds its limits at send time (pure).

The rate rule: this agent sends at most ``AgentLimits.window_quota`` (floor(max_rate x
1 s)) requests in ANY window of ``AgentLimits.window_ns`` (1 s; 1/max_rate for a limit
below 1/s, one request per window). It is checked twice:

* at plan time (`check_plan`), open loop, on this agent's own slice of the global
  schedule, regenerated exactly as its workers will (constant, Poisson, stages, trace):
  a plan is refused when k + 1 of its arrivals fall within less than the window
  (t[i + k] - t[i] < W). No tolerance for Poisson bursts: the schedule is deterministic
  from the seed, so the agent counts the very arrivals it would send. Schedules too
  long to count in a bounded time (over `MAX_CHECKED_ARRIVALS`) are checked on the
  rate curve's peak instead. Closed loop has no schedule: the plan is accepted.
* at send time (`Pacer`, one per worker, in agent/worker.py): each worker gets its
  share of the window quota (the shares sum to the agent's) and keeps the times of its
  last sends; a send is allowed only when its quota-th previous send is at least a
  window old. This holds whatever the plan, lateness, backlog or closed loop do.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from agent.config import AgentLimits
from volley.arrivals import concurrency_profile, global_schedule, rate_profile, schedule_span_s
from volley.plan import Plan
from volley.schedule import slice_for, split_count

I64 = npt.NDArray[np.int64]

_NS_PER_S = 1_000_000_000
#: Global arrivals counted exactly at plan time (~0.1 s per million); past it, the rate
#: curve's peak is checked and the send-time pacer does the rest.
MAX_CHECKED_ARRIVALS = 50_000_000
#: A send time no earlier than every initial entry of a pacer's history.
_LONG_AGO = -(1 << 62)
_NEVER = 1 << 62


def _window_text(limits: AgentLimits) -> str:
    return f"{limits.window_quota} in any {limits.window_ns / _NS_PER_S:g} s window"


def agent_share(plan: Plan, agent_index: int) -> float:
    weights = plan.agent_weights
    return weights[agent_index] / sum(weights)


# ---------------------------------------------------------------- plan time
def agent_times(plan: Plan, agent_index: int) -> Iterator[I64]:
    """This agent's arrival times (ns, non-decreasing), chunk by chunk (bounded memory)."""
    alone = len(plan.agent_weights) == 1
    for idx, t in global_schedule(plan).chunks():
        mine = t if alone else slice_for(idx, t, plan.agent_weights, agent_index)[1]
        if mine.size:
            yield mine


def first_crowded_window(times: Iterator[I64], k: int, window: int) -> tuple[int, int] | None:
    """The first window of ``window`` ns holding more than ``k`` of ``times``: (its start,
    how many it holds), or None. Vectorised: k + 1 arrivals within less than the window
    is t[i + k] - t[i] < window; a tail of k times carries over between chunks."""
    tail: I64 = np.zeros(0, dtype=np.int64)
    pending: list[I64] = []
    size = 0
    step = max(2 * k, 1 << 16)  # amortises the carried tail: O(n) over the schedule
    it = iter(times)
    done = False
    while not done:
        chunk = next(it, None)
        if chunk is not None:
            pending.append(chunk)
            size += chunk.size
            if size < step:
                continue
        else:
            done = True
            if not pending:
                break
        buf = np.concatenate([tail, *pending])
        pending, size = [], 0
        if buf.size > k:
            crowded = np.flatnonzero(buf[k:] - buf[: buf.size - k] < window)
            if crowded.size:
                i = int(crowded[0])
                start = int(buf[i])
                parts = [buf]
                while int(parts[-1][-1]) < start + window:  # read on to the window's end
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    parts.append(nxt)
                whole = np.concatenate(parts) if len(parts) > 1 else buf
                return start, int(np.searchsorted(whole, start + window, side="left")) - i
        tail = buf[buf.size - k :] if k else buf[:0]
    return None


def _rate_refusal(plan: Plan, agent_index: int, limits: AgentLimits) -> str | None:
    share = agent_share(plan, agent_index)
    max_rate, k, w = limits.max_rate, limits.window_quota, limits.window_ns
    limit = f"above its limit of {max_rate:g}/s ({_window_text(limits)})"
    load = plan.load
    if load.arrival != "trace":
        peak = max(s.target for s in load.stages) if load.stages else load.rate
        if peak * share > max_rate:  # the curve alone is over: no need to count
            return f"this agent's share of the rate ({peak * share:.0f}/s) is {limit}"
        if rate_profile(plan).expected_count() > MAX_CHECKED_ARRIVALS:
            return None  # too long to count; the curve is within, the pacer does the rest
    found = first_crowded_window(agent_times(plan, agent_index), k, w)
    if found is None:
        return None
    start, count = found
    return (
        f"this agent's slice has {count} arrivals in the {w / _NS_PER_S:g} s window from "
        f"{start / _NS_PER_S:.3f}s, {limit}"
    )


def check_plan(plan: Plan, agent_index: int, limits: AgentLimits) -> str | None:
    """Return why the agent refuses this plan slice, or None when it accepts it."""
    if agent_index >= len(plan.agent_weights):
        return f"agent index {agent_index} is outside the plan's {len(plan.agent_weights)} agents"
    if limits.allowed_targets and plan.target not in limits.allowed_targets:
        return (
            f"target {plan.target} is not on this agent's allowlist "
            f"({', '.join(limits.allowed_targets)})"
        )
    load = plan.load
    if limits.max_rate and load.mode == "open":
        refusal = _rate_refusal(plan, agent_index, limits)
        if refusal:
            return refusal
    if limits.max_in_flight:
        if load.mode == "open" and (
            load.max_in_flight == 0 or load.max_in_flight > limits.max_in_flight
        ):
            return (
                f"in-flight cap {load.max_in_flight or 'unlimited'} is above this agent's "
                f"limit of {limits.max_in_flight}"
            )
        if load.mode == "closed":
            users = concurrency_profile(plan).max_level
            mine = split_count(users, plan.agent_weights)[agent_index]
            if mine > limits.max_in_flight:
                return (
                    f"this agent's share of the concurrency ({mine}) is above "
                    f"its in-flight limit of {limits.max_in_flight}"
                )
    if limits.max_duration_s and schedule_span_s(plan) > limits.max_duration_s:
        return (
            f"run duration {schedule_span_s(plan):g}s is above this agent's limit of "
            f"{limits.max_duration_s:g}s"
        )
    return None


def send_time_note(plan: Plan, limits: AgentLimits) -> str:
    """What an accepted plan leaves to the send-time pacer (for the agent's log), or ""."""
    if not limits.max_rate:
        return ""
    rule = f"--max-rate {limits.max_rate:g}/s ({_window_text(limits)})"
    if plan.load.mode == "closed":
        return f"closed loop: {rule} is enforced at send time (users wait for their turn)"
    return f"{rule} is also enforced at send time (an arrival past it is recorded LIMITED)"


# ---------------------------------------------------------------- send time
def worker_quotas(limits: AgentLimits, workers: int, worker: int) -> tuple[int, int]:
    """Worker ``worker`` of ``workers``' share of the agent's limits: (sends per window,
    requests in flight); -1 where the agent has no such limit. The shares sum to the
    agent's limit (largest remainder), so the workers together never exceed it."""
    rate = split_count(limits.window_quota, [1] * workers)[worker] if limits.max_rate else -1
    in_flight = (
        split_count(limits.max_in_flight, [1] * workers)[worker] if limits.max_in_flight else -1
    )
    return rate, in_flight


class Pacer:
    """At most ``quota`` sends in any window of ``window`` ns (an exact sliding count).

    ``history`` holds the last ``quota`` send times, oldest at ``pos``: a send at ``now``
    is allowed when ``now >= history[pos] + window``. Recording each send's time taken
    after it was handed over (its wire time stamp lies in between) keeps any quota + 1
    recorded sends at least a window apart. O(1) per send."""

    __slots__ = ("history", "pos", "quota", "window")

    def __init__(self, quota: int, window: int) -> None:
        self.quota = quota
        self.window = window
        # quota 0: one entry that never gets old enough (no send is ever allowed)
        self.history = [_LONG_AGO] * quota if quota > 0 else [_NEVER]
        self.pos = 0

    def free_at(self) -> int:
        """The earliest time the next send may go (about 2^62 when the quota is 0)."""
        return self.history[self.pos] + self.window

    def took(self, now: int) -> None:
        """A send went out at ``now`` (or earlier)."""
        pos = self.pos
        self.history[pos] = now
        pos += 1
        self.pos = pos if pos < self.quota else 0
