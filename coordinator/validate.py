"""What an agent sends is checked before any of it touches a figure (pure, vectorised).

An agent is not trusted: a buggy or rogue one may send NaN or infinite CPU figures,
absurd clocks, indices of another agent's slice, the same record twice, status codes
nobody defined. One `AgentCheck` per agent and run, built from the `RunRequest` that
agent was sent, vets each event: a heartbeat (or a Finished's final status) with a
bad number is ignored whole; a timing batch keeps only its valid records. What was
dropped is counted by kind (`Fault`) in the agent's `AgentInfo` (`invalid_records`,
`faults`), which summary.json reports (`agents[]`, the verdict).

What a record must be (`AgentCheck.records`):
- fields: `worker` < the agent's workers (when known), `model_id` < the plan's models,
  `shape_id` < the batch's shape table (when it has one); sequences: `seq_id` inside the
  agent's correlation ID range (0 only on a step never sent);
- status: a volley code (`volley.records.known_status`);
- times, ns from the start: 0 <= intended <= the load's span; sent is -1 (never sent:
  then done is -1 and the status one of `records.NEVER_SENT`, and only then) or
  intended - 1 ms <= sent <= done <= the horizon (span + timeout + `HORIZON_SLACK_S`);
  closed loop: intended == sent (the worker sets it so);
- counts (`_implausible_counts`): tokens only with responses; a successful record's
  responses and tokens at most its `resp_bytes` (each came in at least one byte of the
  answer), and those bytes at most `MAX_BYTES_PER_NS` over the request's time plus
  `BURST_BYTES` (a rogue agent's counts would inflate the run's token rate);
- sequences: a step's index is its sequence start's, and only the starts (`seq_flags`
  FIRST) are seen once; later steps and ENDs may come `drain_s` + the timeout after the
  load's span;
- index: open loop, inside this agent's slice of the one global schedule (`index <
  scheduled` and `pattern[index % P] == agent`), and seen once per run: a bitmap of
  one bit per arrival of the slice, addressed by the arrival's local ordinal
  (`volley.schedule.local_ordinal`, computed here from a rank table); closed loop:
  -1 (workers number their requests only to pick payloads, and do not send that).
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from volley import records as rc
from volley.arrivals import global_schedule, schedule_span_s
from volley.plan import Plan, plan_models
from volley.records import RecordBlock, concat
from volley.schedule import ArrivalSchedule, weighted_pattern
from volley.sequence import agent_range
from volley.v1 import control_pb2 as pb

#: Records may complete this long after the load's span plus the request timeout (the
#: run's deadline is span + timeout + 15 s, then 5 s of grace).
HORIZON_SLACK_S = 30.0
#: A send may be stamped this much before its intended time (the same clock: exact).
SEND_TOLERANCE_NS = 1_000_000
#: Closed loop: the last send may be stamped this long after the load's end.
CLOSED_END_TOLERANCE_NS = 1_000_000_000
#: A heartbeat's CPU may exceed the agent's cores (or workers) this many times over.
CPU_SLACK = 2.0
#: Seconds of CPU a worker may have spent before the start (the start lead, at most).
CPU_BEFORE_START_S = 600.0
#: A batch's shape table: at most this many names (shape ids are uint16), each this long.
MAX_SHAPES = 1 << 16
MAX_SHAPE_TEXT = 256
#: An agent's error text is cut to this many characters.
MAX_ERROR_TEXT = 500
#: A successful record's answer arrives at most this fast (bytes per ns of its service
#: time: 800 Gbit/s, beyond any one connection) plus this much at once.
MAX_BYTES_PER_NS = 100
BURST_BYTES = 1 << 16
#: The verdict calls an agent's records garbage above this share of invalid ones.
GARBAGE_SHARE = 0.5

I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]


class Fault(enum.StrEnum):
    """Kinds of what an agent got wrong; the values are summary.json's `faults` keys."""

    # whole events (counted in events)
    MALFORMED_BATCH = "malformed batch"
    BAD_STATUS = "bad status message"
    BAD_START = "start disagrees with the run"
    BAD_GAPS = "stream gaps disagree with the responses"
    # records (counted in records; a record is counted under its first fault, this order)
    BAD_FIELD = "bad worker, model or shape id"
    BAD_SEQ_ID = "correlation id outside its range"
    UNKNOWN_STATUS = "unknown status code"
    BAD_TIMES = "bad clock"
    BAD_COUNTS = "implausible responses, tokens or bytes"
    OUTSIDE_SLICE = "index outside its slice"
    DUPLICATE = "duplicate index"


RECORD_FAULTS = (
    Fault.BAD_FIELD,
    Fault.BAD_SEQ_ID,
    Fault.UNKNOWN_STATUS,
    Fault.BAD_TIMES,
    Fault.BAD_COUNTS,
    Fault.OUTSIDE_SLICE,
    Fault.DUPLICATE,
)


@dataclass(frozen=True)
class RunShape:
    """What the checks need of a run's plan (one per run, shared by its agents)."""

    open_loop: bool
    weights: tuple[int, ...]
    #: arrivals in the global schedule (open loop; 0 closed loop)
    scheduled: int
    span_ns: int
    horizon_ns: int
    models: int
    #: sequences: later steps and ENDs come after the span (drain + a step's timeout)
    sequences: bool = False
    sequence_tail_ns: int = 0
    #: sequences: each agent's correlation IDs [lo, hi) (volley.sequence.agent_range)
    seq_ranges: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, plan: Plan) -> RunShape:
        open_loop = plan.load.mode == "open"
        span_s = schedule_span_s(plan)
        tail_s = 0.0
        if plan.sequence is not None:
            tail_s = plan.sequence.drain_s + plan.timeout_s + 1.0
        scheduled = 0
        if open_loop:
            sched = global_schedule(plan)
            if isinstance(sched, ArrivalSchedule) and sched.process == "constant":
                scheduled = sched.constant_count()
            else:
                scheduled = sum(int(idx.size) for idx, _ in sched.chunks())
        return cls(
            open_loop=open_loop,
            weights=tuple(plan.agent_weights),
            scheduled=scheduled,
            span_ns=math.ceil(span_s * 1e9),
            horizon_ns=math.ceil((span_s + tail_s + plan.timeout_s + HORIZON_SLACK_S) * 1e9),
            models=len(plan_models(plan)),
            sequences=plan.sequence is not None,
            sequence_tail_ns=math.ceil(tail_s * 1e9),
            seq_ranges=tuple(agent_range(plan, k) for k in range(len(plan.agent_weights)))
            if plan.sequence is not None
            else (),
        )


@lru_cache(maxsize=4)
def run_shape(plan_json: str) -> RunShape:
    """The run's shape from the plan JSON its agents were sent (parsed once per run)."""
    return RunShape.of(Plan.from_json(plan_json))


def _stream_times_ok(block: RecordBlock, sent: I64, done: I64) -> Mask:
    """Streaming columns: responses in order inside the request's span (sent <= first
    <= last <= done) when there were any (without responses they are not read)."""
    first, last = block.col("first_ns"), block.col("last_ns")
    some = block.col("responses") > 0
    ok: Mask = ~some | ((first >= sent) & (first <= last) & (last <= done) & (sent >= 0))
    return ok


def _implausible_counts(block: RecordBlock, ok: Mask, sent: I64, done: I64) -> Mask:
    """Records whose counts cannot be: tokens without a response; a successful one with
    more responses or tokens than bytes of answer, or more bytes than could arrive in
    its time (MAX_BYTES_PER_NS, BURST_BYTES)."""
    resp = block.col("responses")
    tokens = block.col("tokens")
    nbytes = block.col("resp_bytes")
    most = np.maximum(done - sent, 0) * MAX_BYTES_PER_NS + BURST_BYTES
    bad: Mask = (tokens > 0) & (resp == 0)
    bad |= ok & ((resp > nbytes) | (tokens > nbytes) | (nbytes > most))
    return bad


def _finite_in(x: float, lo: float, hi: float) -> bool:
    return math.isfinite(x) and lo <= x <= hi


def clean_text(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """An agent's free text for our files and terminal: printable, one line, bounded."""
    out = "".join(c if c.isprintable() else " " for c in text[: limit + 1])
    return out if len(out) <= limit else out[: limit - 1] + "…"


class AgentCheck:
    """Vets one agent's events in one run; counts what it drops into `faults`."""

    def __init__(
        self,
        shape: RunShape,
        agent_index: int,
        workers: int = 0,
        cores: int = 0,
        faults: Counter[str] | None = None,
    ) -> None:
        self.shape = shape
        self.agent_index = agent_index
        self.workers = workers
        self.faults: Counter[str] = Counter() if faults is None else faults
        #: records dropped / kept
        self.invalid = 0
        self.valid = 0
        cores_cap = max(cores, workers, 1) * CPU_SLACK
        self.max_cpu_percent = 100.0 * cores_cap
        self.max_cpu_seconds = (shape.horizon_ns / 1e9 + CPU_BEFORE_START_S) * cores_cap
        self.max_intended_ns = (
            shape.span_ns
            + (0 if shape.open_loop else CLOSED_END_TOLERANCE_NS)
            + shape.sequence_tail_ns
        )
        # open loop: slot of the round-robin pattern -> rank among this agent's slots (-1:
        # another agent's), the agent's slice size, and one bit per arrival of it
        pattern = weighted_pattern(shape.weights) if shape.open_loop else np.zeros(1, np.int64)
        self.period = int(pattern.size)
        mine = np.flatnonzero(pattern == agent_index) if shape.open_loop else np.zeros(0, np.intp)
        self.rank: I64 = np.full(self.period, -1, np.int64)
        self.rank[mine] = np.arange(mine.size, dtype=np.int64)
        self.per_period = int(mine.size)
        n, p = shape.scheduled, self.period
        self.slice_size = (n // p) * self.per_period + int((self.rank[: n % p] >= 0).sum())
        self.seen: npt.NDArray[np.uint8] = np.zeros((self.slice_size + 7) // 8, np.uint8)
        lo, hi = (
            shape.seq_ranges[agent_index] if 0 <= agent_index < len(shape.seq_ranges) else (0, 0)
        )
        self.seq_lo, self.seq_hi = np.uint64(lo), np.uint64(hi)

    @classmethod
    def for_run(
        cls,
        plan_json: str,
        agent_index: int,
        workers: int = 0,
        cores: int = 0,
        faults: Counter[str] | None = None,
    ) -> AgentCheck:
        return cls(run_shape(plan_json), agent_index, workers, cores, faults)

    def reset(self) -> None:
        """Forget every index seen (a new run with the same shape: benchmarks, tests)."""
        self.seen[:] = 0
        self.invalid = self.valid = 0
        self.faults.clear()

    # ---- whole events ----------------------------------------------------------
    def fault(self, kind: Fault, n: int = 1) -> None:
        self.faults[kind.value] += n

    def started(self, st: pb.Started) -> bool:
        """The agent's Started agrees with what it was asked: its slot, and its slice's
        size where it says one (0: it does not)."""
        ok = st.agent_index == self.agent_index and (
            not self.shape.open_loop or st.scheduled in (0, self.slice_size)
        )
        if not ok:
            self.fault(Fault.BAD_START)
        return ok

    def status(self, st: pb.AgentStatus) -> bool:
        """A heartbeat (or a final status) whose numbers are all sane; counted otherwise."""
        ok = (
            _finite_in(st.cpu_percent, 0.0, self.max_cpu_percent)
            and _finite_in(st.cpu_seconds, 0.0, self.max_cpu_seconds)
            and min(st.sent, st.completed, st.errors, st.dropped, st.in_flight) >= 0
            and min(st.retried, st.reconnects, st.connect_errors) >= 0
            and (not st.HasField("host_cpu_percent") or _finite_in(st.host_cpu_percent, 0.0, 100.0))
        )
        if not ok:
            self.fault(Fault.BAD_STATUS)
        return ok

    def cpu_window(self, agent_ns: int, start_at_agent_ns: int) -> int | None:
        """The 1 s window of a heartbeat sent at `agent_ns` (its clock), if in the run."""
        rel = agent_ns - start_at_agent_ns
        return rel // 1_000_000_000 if 0 <= rel <= self.shape.horizon_ns else None

    # ---- records ---------------------------------------------------------------
    def batch_shapes_ok(self, block: RecordBlock) -> bool:
        shapes = block.input_shapes
        return len(shapes) <= MAX_SHAPES and all(len(s) <= MAX_SHAPE_TEXT for s in shapes)

    def records(self, block: RecordBlock) -> RecordBlock:
        """The block's valid records (the block itself when all are); the others counted."""
        n = len(block)
        if n == 0:
            return block
        shape = self.shape
        idx = block.col("index")
        intended, sent, done = block.col("intended_ns"), block.col("sent_ns"), block.col("done_ns")
        status = block.columns["status"]
        # fields
        bad_field = block.col("model_id") >= shape.models
        if self.workers > 0:
            bad_field |= block.col("worker") >= self.workers
        if block.input_shapes:
            bad_field |= block.col("shape_id") >= len(block.input_shapes)
        never = sent == -1
        bad_seq: Mask | None = None
        if shape.sequences:
            # its own correlation IDs; 0 only on a step never sent (no slot was free)
            ids = block.columns["seq_id"]
            bad_seq = ~(((ids >= self.seq_lo) & (ids < self.seq_hi)) | ((ids == 0) & never))
        unknown = ~rc.known_status(status)  # type: ignore[arg-type]
        # times (and the status they imply)
        unsent_code = rc.never_sent(status)  # type: ignore[arg-type]
        times_ok = (intended >= 0) & (intended <= self.max_intended_ns) & (never == unsent_code)
        times_ok &= np.where(
            never,
            done == -1,
            (sent >= intended - SEND_TOLERANCE_NS) & (done >= sent) & (done <= shape.horizon_ns),
        )
        if not shape.open_loop:
            times_ok &= never | (intended == sent)
        times_ok &= _stream_times_ok(block, sent, done)
        bad_times = ~times_ok
        bad_counts = _implausible_counts(block, status == rc.OK, sent, done)
        # index: inside this agent's slice
        if shape.open_loop:
            slot = self.rank[idx % self.period]
            outside = (idx < 0) | (idx >= shape.scheduled) | (slot < 0)
        else:
            slot = None
            outside = idx != -1
        bad = bad_field | unknown | bad_times | bad_counts | outside
        if bad_seq is not None:
            bad |= bad_seq
        any_bad = bool(bad.any())
        # sequences: every step carries its start's index; a start is seen once
        skip = (
            (bad | ((block.col("seq_flags") & rc.SEQ_FIRST) == 0))
            if shape.sequences
            else (bad if any_bad else None)
        )
        dup = self._duplicates(idx, slot, skip) if slot is not None else None
        if dup is not None:
            bad |= dup
            any_bad = any_bad or bool(dup.any())
        if block.gaps.size and not (block.gaps_complete() and bool((block.gaps >= 0).all())):
            # gaps that do not add up to the records' responses: the ITL of this batch is
            # not kept (its records are, with their first/last times)
            self.fault(Fault.BAD_GAPS)
            block = RecordBlock(block.columns, block.input_shapes)
        if not any_bad:
            self.valid += n
            return block
        self._count(bad, (bad_field, bad_seq, unknown, bad_times, bad_counts, outside, dup))
        keep = ~bad
        self.valid += int(keep.sum())
        return block.select(keep)

    def _duplicates(self, idx: I64, slot: I64, bad: Mask | None) -> Mask:
        """Which in-slice records repeat an index seen before (this run, or earlier in
        this block); marks the others seen. `bad`: records already refused (not looked at)."""
        cand = np.arange(idx.size) if bad is None else np.flatnonzero(~bad)
        dup = np.zeros(idx.size, np.bool_)
        if cand.size == 0:
            return dup
        ci = idx[cand]
        ords = (ci // self.period) * self.per_period + slot[cand]
        # in ordinal order (the common case: already), so that repeats are neighbours
        # and each byte of the bitmap is written once
        order: npt.NDArray[np.intp] | None = None
        repeat = np.zeros(ords.size, np.bool_)
        if ords.size > 1 and not bool((ords[1:] > ords[:-1]).all()):
            order = np.argsort(ords, kind="stable")  # stable: the first one is kept
            ords = ords[order]
            repeat[1:] = ords[1:] == ords[:-1]
        byte = ords >> 3
        bit = np.left_shift(np.uint8(1), (ords & 7).astype(np.uint8))
        again = repeat | ((self.seen[byte] & bit) != 0)
        fresh = ~again
        fb, fbit = byte[fresh], bit[fresh]
        if fb.size:
            first = np.flatnonzero(np.concatenate(([True], fb[1:] != fb[:-1])))
            self.seen[fb[first]] |= np.bitwise_or.reduceat(fbit, first)
        if order is None:
            dup[cand] = again
        else:
            dup[cand[order]] = again
        return dup

    def _count(self, bad: Mask, masks: tuple[Mask | None, ...]) -> None:
        """Count the dropped records, each under its first fault (RECORD_FAULTS' order)."""
        self.invalid += int(bad.sum())
        counted = np.zeros(bad.size, np.bool_)
        for kind, m in zip(RECORD_FAULTS, masks, strict=True):
            if m is None:
                continue
            new = int((m & ~counted).sum())
            if new:
                self.fault(kind, new)
                counted |= m


def record_keys(block: RecordBlock) -> npt.NDArray[np.void]:
    """One key per record (schedule index, worker, sent, intended): what tells one
    record from another when the same agent's records come from two places."""
    key = np.empty(len(block), dtype=[("i", "<i8"), ("w", "<u2"), ("s", "<i8"), ("t", "<i8")])
    key["i"] = block.columns["index"]
    key["w"] = block.columns["worker"]
    key["s"] = block.columns["sent_ns"]
    key["t"] = block.columns["intended_ns"]
    return key


def vet_recovered(
    check: AgentCheck, stored: RecordBlock | None, spooled: list[RecordBlock]
) -> RecordBlock | None:
    """`volley collect`: one agent's records from its spool (as the agent sent them, batch
    by batch) and from the run directory (`stored`, vetted when the run wrote them),
    through the same checks as a live run: a spooled duplicate, a bad clock, an unknown
    code or an index of another slice is dropped and counted in `check.faults`. A stored
    record that is an exact copy of a kept spooled one (`record_keys`) is that record,
    counted once; the other stored ones are vetted after the spool's (a full spool lacks
    the end of the run). None: no record at all."""
    kept: list[RecordBlock] = []
    for blk in spooled:
        if not check.batch_shapes_ok(blk):
            check.fault(Fault.MALFORMED_BATCH)
            continue
        good = check.records(blk)
        if len(good):
            kept.append(good)
    spool = concat(kept) if kept else None
    if stored is not None and len(stored):
        if spool is not None:
            both = np.concatenate([record_keys(spool), record_keys(stored)])
            _, inverse = np.unique(both, return_inverse=True)
            inverse = inverse.reshape(-1)
            new = ~np.isin(inverse[len(spool) :], inverse[: len(spool)])
            stored = stored.select(new) if not bool(new.all()) else stored
        rest = check.records(stored)
        if len(rest):
            kept.append(rest)
    return concat(kept) if kept else None
