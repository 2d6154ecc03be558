"""Clock-offset estimation from ping exchanges (pure).

Each sample is (t0, agent_ns, t1): coordinator send time, agent clock when it
answered, coordinator receive time. Assuming the answer was taken half-way, the
offset is agent_ns - (t0 + t1) / 2, wrong by at most RTT/2. We keep the
lowest-RTT quarter of the samples (least queueing) and take their median.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median


@dataclass(frozen=True)
class ClockEstimate:
    offset_ns: int  #: agent clock minus coordinator clock
    uncertainty_ns: int  #: half the best RTT: the offset is within +/- this
    rtt_ns: int  #: best round trip seen
    samples: int

    def to_agent(self, coordinator_ns: int) -> int:
        return coordinator_ns + self.offset_ns


def estimate_offset(samples: list[tuple[int, int, int]], keep: float = 0.25) -> ClockEstimate:
    if not samples:
        raise ValueError("no clock samples")
    by_rtt = sorted(samples, key=lambda s: s[2] - s[0])
    n = max(1, int(len(by_rtt) * keep))
    best = by_rtt[:n]
    offsets = [a - (t0 + t1) // 2 for t0, a, t1 in best]
    rtt = best[0][2] - best[0][0]
    return ClockEstimate(
        offset_ns=int(median(offsets)),
        uncertainty_ns=max(rtt // 2, 1),
        rtt_ns=rtt,
        samples=len(samples),
    )
