"""Sequence figures from the records (summary.json `sequences`): pure, no I/O.

A sequence's records carry its correlation ID, step and flags (volley/records.py SEQ_*).
From them: sequences started (a FIRST record that was sent), refused (SEQ_NO_SLOT),
completed (their planned last step answered OK), failed (a step with FAILED: error,
timeout or a wrong state), cut (still live when the load and its drain ended: volley
sent their END), and how many got their END answered. Latency (done - intended) by
step position: first, middle, last; each sequence's duration (its first step's
intended time to its final response); live sequences over time (each one live from its
first send to its final response, time-weighted per 1 s); the IDs each agent used
(lowest, highest, count), which shows the agents' ranges did not overlap.

Only starts and final records are looked at one by one (a dict of the live sequences,
bounded by the live count); steps are counted vectorised.
"""

from __future__ import annotations

from collections import Counter
from typing import TypedDict

import numpy as np

from volley import records as rc
from volley.histogram import LogHistogram
from volley.plan import Plan
from volley.records import RecordBlock

#: at most this many points of the live-sequences series (1 s each)
MAX_LIVE_POINTS = 3600


class SeqPercentiles(TypedDict):
    count: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float


class StepPosition(TypedDict):
    position: str  #: first | middle | last
    latency_ms: SeqPercentiles


class LivePoint(TypedDict):
    t_s: float  #: start of the second, from the run's start
    live: float  #: live sequences on average over that second (time-weighted)


class AgentIds(TypedDict):
    agent: int
    range: list[int]  #: [lo, hi) planned
    lowest: int
    highest: int
    sequences: int  #: sequences this agent started


class SequencesBlock(TypedDict):
    id_type: str
    length: str
    think_ms: str
    started: int
    refused: int  #: starts that found no free live slot (SEQ_NO_SLOT)
    completed: int
    failed: int
    cut: int
    #: started sequences whose END was answered (planned last step, or volley's END)
    ended: int
    #: started sequences with no final record (an agent lost, a drain that ran out)
    unfinished: int
    mismatches: int  #: responses whose state was wrong (SEQ_MISMATCH)
    steps_ok: int
    duration_ms: SeqPercentiles
    by_position: list[StepPosition]
    #: the highest 1 s average of live sequences
    live_max: float
    live: list[LivePoint]
    agents: list[AgentIds]


def _pct(h: LogHistogram) -> SeqPercentiles:
    if h.count == 0:
        return {"count": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    return {
        "count": h.count,
        "p50": round(h.percentile(50) / 1e6, 4),
        "p90": round(h.percentile(90) / 1e6, 4),
        "p99": round(h.percentile(99) / 1e6, 4),
        "max": round(h.max_ns / 1e6, 4),
        "mean": round(h.mean_ns / 1e6, 4),
    }


class SequenceStats:
    """Ingests record blocks (per agent) of a sequence run."""

    def __init__(self, n_agents: int, warmup_ns: int = 0) -> None:
        self.warmup_ns = warmup_ns
        self.started = self.refused = self.completed = self.failed = self.cut = 0
        self.ended = self.finals = self.mismatches = self.steps_ok = 0
        self.first = LogHistogram()
        self.middle = LogHistogram()
        self.last = LogHistogram()
        self.duration = LogHistogram()
        #: (agent, worker, id) -> the first step's intended and sent times
        self.open: dict[tuple[int, int, int], tuple[int, int]] = {}
        #: second -> ns of sequence life inside it (all sequences together)
        self.live_ns: Counter[int] = Counter()
        self.lowest = [0] * n_agents
        self.highest = [0] * n_agents
        self.count = [0] * n_agents

    def ingest(self, agent: int, block: RecordBlock) -> None:
        if len(block) == 0:
            return
        flags = block.col("seq_flags")
        status = block.col("status")
        intended, sent, done = block.col("intended_ns"), block.col("sent_ns"), block.col("done_ns")
        ids = block.col("seq_id")
        workers = block.col("worker")
        ok = status == rc.OK
        extra = (flags & (rc.SEQ_CLEANUP | rc.SEQ_CUT)) != 0
        first = (flags & rc.SEQ_FIRST) != 0
        last = (flags & rc.SEQ_LAST) != 0
        failed = (flags & rc.SEQ_FAILED) != 0
        refused = status == rc.SEQ_NO_SLOT
        started = first & ~refused
        final = (last & ~failed) | extra
        self.refused += int(refused.sum())
        self.started += int(started.sum())
        self.completed += int((last & ok & ~extra).sum())
        self.failed += int(failed.sum())
        self.cut += int(((flags & rc.SEQ_CUT) != 0).sum())
        self.ended += int((final & ok).sum())
        self.mismatches += int((status == rc.SEQ_MISMATCH).sum())
        step_ok = ok & ~extra & (intended >= self.warmup_ns)
        self.steps_ok += int(step_ok.sum())
        lat = done - intended
        self.first.record_many(lat[step_ok & first])
        self.middle.record_many(lat[step_ok & ~first & ~last])
        self.last.record_many(lat[step_ok & last & ~first])
        if started.any():
            sid = ids[started]
            lo, hi = int(sid.min()), int(sid.max())
            n = self.count[agent]
            self.lowest[agent] = lo if n == 0 else min(self.lowest[agent], lo)
            self.highest[agent] = max(self.highest[agent], hi)
            self.count[agent] = n + int(sid.size)
        for i in np.flatnonzero(started | final).tolist():
            key = (agent, int(workers[i]), int(ids[i]))
            if started[i]:
                self.open[key] = (int(intended[i]), int(sent[i]))
            if final[i]:
                t0 = self.open.pop(key, None)
                self.finals += 1
                if t0 is None:
                    continue
                self._lived(t0[1], int(done[i]))
                if ok[i] and not extra[i]:
                    self.duration.record(int(done[i]) - t0[0])

    def _lived(self, t0: int, t1: int) -> None:
        """A sequence was live over [t0, t1): its share of each second."""
        sec = 1_000_000_000
        w = t0 // sec
        while w * sec < t1 and w < MAX_LIVE_POINTS:
            lo, hi = max(t0, w * sec), min(t1, (w + 1) * sec)
            if hi > lo:
                self.live_ns[w] += hi - lo
            w += 1

    def live_series(self) -> tuple[float, list[LivePoint]]:
        """Live sequences per second (time-weighted mean), and the highest of them."""
        if not self.live_ns:
            return 0.0, []
        out: list[LivePoint] = [
            {"t_s": float(w), "live": round(self.live_ns.get(w, 0) / 1e9, 3)}
            for w in range(max(min(self.live_ns), 0), max(self.live_ns) + 1)
        ]
        return max(p["live"] for p in out), out

    def block(self, plan: Plan) -> SequencesBlock:
        spec = plan.sequence
        assert spec is not None
        live_max, live = self.live_series()
        ranges = list(spec.agent_ranges)
        return {
            "id_type": spec.id_type,
            "length": spec.length,
            "think_ms": spec.think_ms,
            "started": self.started,
            "refused": self.refused,
            "completed": self.completed,
            "failed": self.failed,
            "cut": self.cut,
            "ended": self.ended,
            "unfinished": max(self.started - self.finals, 0),
            "mismatches": self.mismatches,
            "steps_ok": self.steps_ok,
            "duration_ms": _pct(self.duration),
            "by_position": [
                {"position": "first", "latency_ms": _pct(self.first)},
                {"position": "middle", "latency_ms": _pct(self.middle)},
                {"position": "last", "latency_ms": _pct(self.last)},
            ],
            "live_max": live_max,
            "live": live,
            "agents": [
                {
                    "agent": k,
                    "range": list(ranges[k]) if k < len(ranges) else [],
                    "lowest": self.lowest[k],
                    "highest": self.highest[k],
                    "sequences": self.count[k],
                }
                for k in range(len(self.count))
            ],
        }


def failed_reasons(block: SequencesBlock) -> list[str]:
    """Verdict lines of a sequence run."""
    out: list[str] = []
    if block["mismatches"]:
        out.append(
            f"{block['mismatches']} sequence responses had the wrong state (sequence.check): "
            "IDs collided or steps were reordered"
        )
    if block["unfinished"]:
        out.append(f"{block['unfinished']} started sequences have no END on record")
    return out
