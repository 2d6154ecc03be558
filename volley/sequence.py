"""Stateful sequences, the pure part: ID ranges, live-sequence shares, lengths, think times.

Invariant 8 (one owner per sequence): every sequence lives on one agent and worker, and
its correlation ID comes from that worker's range. The coordinator splits the plan's
`sequence.id_range` [lo, hi) into one range per agent (`resolve_ranges`, by the agents'
weights, recorded in plan.yaml as `sequence.agent_ranges`); each agent splits its range
evenly among its workers (`worker_range`). Ranges are disjoint by construction, so no
two live sequences anywhere share an ID. The first ID of the plan's range is kept for the
preflight's probe sequence. A range too small for the live sequences asked for is
refused (PlanError) before any load.

Within a worker, an ID is used by one live sequence at a time and may be used again
after that sequence ended (its END answered): `IdPool`.

Lengths and think times are drawn from the plan's distributions by a hash of (seed, the
sequence's key, the step), so they do not depend on timing or on the split.
"""

from __future__ import annotations

import collections
import dataclasses
import math

from volley.dist import Dist, parse_dist
from volley.plan import Plan, PlanError, SequenceSpec
from volley.schedule import split_count

#: Open loop: live sequences at most when the plan gives no `sequence.max_live`.
DEFAULT_MAX_LIVE = 1024
_M64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64's finaliser."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def unit(seed: int, key: int, salt: int) -> float:
    """A uniform [0, 1) number from (seed, key, salt)."""
    h = _mix((key & _M64) ^ _mix((seed & _M64) ^ _mix(salt)))
    return (h >> 11) * (1.0 / (1 << 53))


def live_sequences(plan: Plan) -> int:
    """Live sequences at most, all agents together: open loop `max_live` (or the
    default), closed loop the highest concurrency (one sequence per user)."""
    spec = plan.sequence
    assert spec is not None
    load = plan.load
    if load.mode == "closed":
        top = max([load.concurrency, *(math.ceil(s.target) for s in load.stages)])
        return max(top, 1)
    return spec.max_live or DEFAULT_MAX_LIVE


def split_range(lo: int, hi: int, weights: list[int]) -> list[tuple[int, int]]:
    """[lo, hi) cut into consecutive, disjoint ranges sized by the weights (largest
    remainder); their union is [lo, hi)."""
    sizes = split_count(hi - lo, weights)
    out: list[tuple[int, int]] = []
    at = lo
    for n in sizes:
        out.append((at, at + n))
        at += n
    return out


def resolve_ranges(plan: Plan) -> Plan:
    """The plan with one ID range per agent (`sequence.agent_ranges`), disjoint, from
    `sequence.id_range` minus its first ID (the preflight's). PlanError when a range
    cannot hold its agent's share of the live sequences."""
    spec = plan.sequence
    if spec is None:
        return plan
    lo, hi = spec.id_range
    weights = plan.agent_weights
    ranges = split_range(lo + 1, hi, weights)
    live = split_count(live_sequences(plan), weights)
    for k, ((a, b), need) in enumerate(zip(ranges, live, strict=True)):
        if b - a < need:
            raise PlanError(
                f"--sequence-id-range [{lo}, {hi}) is too small: agent {k + 1} of "
                f"{len(weights)} gets {b - a} IDs for {need} live sequences (the range needs "
                f"at least {live_sequences(plan) + 1} IDs; its first is the preflight's)"
            )
    return dataclasses.replace(plan, sequence=dataclasses.replace(spec, agent_ranges=tuple(ranges)))


def agent_range(plan: Plan, agent: int) -> tuple[int, int]:
    spec = plan.sequence
    assert spec is not None
    if spec.agent_ranges:
        if not 0 <= agent < len(spec.agent_ranges):
            raise PlanError(f"plan.sequence.agent_ranges: no range for agent {agent}")
        return spec.agent_ranges[agent]
    return split_range(spec.id_range[0] + 1, spec.id_range[1], plan.agent_weights)[agent]


def worker_range(plan: Plan, agent: int, workers: int, worker: int) -> tuple[int, int]:
    """The correlation IDs of one worker: its share of its agent's range."""
    a, b = agent_range(plan, agent)
    return split_range(a, b, [1] * workers)[worker]


def worker_live(plan: Plan, agent: int, workers: int, worker: int) -> int:
    """Live sequences at most on one worker (its share of its agent's share)."""
    share = split_count(live_sequences(plan), plan.agent_weights)[agent]
    return split_count(share, [1] * workers)[worker]


def probe_id(spec: SequenceSpec) -> int:
    """The preflight's correlation ID: the range's first, which no agent gets."""
    return spec.id_range[0]


def id_text(spec: SequenceSpec, number: int) -> str:
    """A string correlation ID: the prefix and the number."""
    return f"{spec.id_prefix}{number}"


@dataclasses.dataclass(frozen=True)
class Draws:
    """A plan's sequence distributions, parsed once."""

    seed: int
    length: Dist
    think_ms: Dist

    @classmethod
    def of(cls, plan: Plan) -> Draws:
        spec = plan.sequence
        assert spec is not None
        return cls(plan.seed, parse_dist(spec.length), parse_dist(spec.think_ms))

    def steps(self, key: int) -> int:
        """Steps of the sequence `key` (at least 1)."""
        v = self.length.quantile(unit(self.seed, key, 1))
        return max(1, round(v))

    def think_ns(self, key: int, step: int) -> int:
        """Think time before step `step` of sequence `key`, ns."""
        if self.think_ms.is_fixed:
            return int(self.think_ms.min() * 1e6)
        v = self.think_ms.quantile(unit(self.seed, key * 65_536 + step, 2))
        return max(0, int(v * 1e6))


class IdPool:
    """A worker's correlation IDs [lo, hi): fresh ones first, then those whose
    sequence ended (oldest first). Never gives an ID that is in use."""

    def __init__(self, lo: int, hi: int) -> None:
        self.next = lo
        self.hi = hi
        self.free: collections.deque[int] = collections.deque()

    def take(self) -> int:
        """An unused ID, or 0 when every ID of the range is in use."""
        if self.next < self.hi:
            n = self.next
            self.next += 1
            return n
        if self.free:
            return self.free.popleft()
        return 0

    def give(self, n: int) -> None:
        self.free.append(n)
