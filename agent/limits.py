"""Plan checks an agent applies on its own, whatever the coordinator asks (pure)."""

from __future__ import annotations

from agent.config import AgentLimits
from volley.arrivals import schedule_span_s
from volley.plan import Plan


def agent_share(plan: Plan, agent_index: int) -> float:
    weights = plan.agent_weights
    return weights[agent_index] / sum(weights)


def check_plan(plan: Plan, agent_index: int, limits: AgentLimits) -> str | None:
    """Return why the agent refuses this plan slice, or None when it accepts it."""
    if agent_index >= len(plan.agent_weights):
        return f"agent index {agent_index} is outside the plan's {len(plan.agent_weights)} agents"
    if limits.allowed_targets and plan.target not in limits.allowed_targets:
        return (
            f"target {plan.target} is not on this agent's allowlist "
            f"({', '.join(limits.allowed_targets)})"
        )
    share = agent_share(plan, agent_index)
    load = plan.load
    if limits.max_rate and load.mode == "open":
        peak = max([load.rate, *(s.target for s in load.stages)])
        if load.arrival == "trace" and load.trace is not None and load.trace.times_ns:
            span = max(schedule_span_s(plan), 1e-9)
            peak = len(load.trace.times_ns) / span
        if peak * share > limits.max_rate:
            return (
                f"this agent's share of the rate ({peak * share:.0f}/s) is above its "
                f"limit of {limits.max_rate:g}/s"
            )
    if limits.max_in_flight:
        if load.mode == "open" and (
            load.max_in_flight == 0 or load.max_in_flight > limits.max_in_flight
        ):
            return (
                f"in-flight cap {load.max_in_flight or 'unlimited'} is above this agent's "
                f"limit of {limits.max_in_flight}"
            )
        if load.mode == "closed":
            peak_c = max([float(load.concurrency), *(s.target for s in load.stages)])
            if peak_c * share > limits.max_in_flight:
                return (
                    f"this agent's share of the concurrency ({peak_c * share:.0f}) is above "
                    f"its in-flight limit of {limits.max_in_flight}"
                )
    if limits.max_duration_s and schedule_span_s(plan) > limits.max_duration_s:
        return (
            f"run duration {schedule_span_s(plan):g}s is above this agent's limit of "
            f"{limits.max_duration_s:g}s"
        )
    return None
