"""Merge agents' columnar timing batches into mergeable histograms (no I/O).

Kept per agent and per 1 s window (by intended time): latency (done - intended),
service time (done - sent) and send lateness (sent - intended) histograms, plus
counts and error codes. Streaming (decoupled) requests add, for successful requests:
TTFT (first response - intended), time to second token (second response - intended),
inter-token latency (every gap between consecutive responses, from the batch's ragged
gaps column: the distribution over all gaps, not a mean per request), time per output
token ((last - first) / (tokens - 1), one value per request) and response/token
counts. Percentiles always come from merged histograms, never from averaged
percentiles. Warm-up records are counted apart and excluded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from coordinator.sequences import SequenceStats
from volley import records as rc
from volley.histogram import LogHistogram
from volley.records import RecordBlock

WINDOW_NS = 1_000_000_000
#: The ragged gaps column of a block rides in `cols` under this key (Aggregator.ingest).
GAPS_KEY = "gaps_ns"
#: A bool column in `cols`: the record met every per-request goodput limit.
GOOD_KEY = "good"
#: The streaming histograms of Stats (merged and released with the others).
STREAM_HISTS = ("ttft", "ttst", "itl", "tpot")
LATE_NS = 1_000_000  #: a send more than 1 ms after its intended time is "late"
#: An agent whose first send was later than LATE_NS started late (start-up); its sends
#: up to this long after it started are its start-up's, not its steady state's.
STARTUP_SETTLE_NS = 100_000_000


@dataclass(frozen=True)
class GoodLimits:
    """Per-request limits of goodput (ns; -1: none), from the plan's SLOs on TTFT, time
    per output token and latency: a request is good when it succeeded within all."""

    ttft_ns: int = -1
    tpot_ns: int = -1
    latency_ns: int = -1

    @property
    def any(self) -> bool:
        return max(self.ttft_ns, self.tpot_ns, self.latency_ns) >= 0

    def good(self, cols: dict[str, npt.NDArray[np.generic]]) -> npt.NDArray[np.bool_]:
        """Which records are good (successful, and within every limit)."""
        intended: npt.NDArray[np.int64] = cols["intended_ns"].astype(np.int64)
        first = cols["first_ns"].astype(np.int64)
        resp = cols["responses"].astype(np.int64)
        tokens = cols["tokens"].astype(np.int64)
        ok: npt.NDArray[np.bool_] = cols["status"] == rc.OK
        if self.latency_ns >= 0:
            ok &= cols["done_ns"].astype(np.int64) - intended <= self.latency_ns
        if self.ttft_ns >= 0:
            ok &= (resp > 0) & (first - intended <= self.ttft_ns)
        if self.tpot_ns >= 0:
            last = cols["last_ns"].astype(np.int64)
            tpot = np.where(tokens >= 2, (last - first) // np.maximum(tokens - 1, 1), 0)
            ok &= (resp > 0) & (tpot <= self.tpot_ns)
        return ok


@dataclass
class Stats:
    """Counts and histograms for one slice of records (run, agent, window, bucket...)."""

    records: int = 0
    sent: int = 0
    ok: int = 0
    errors: int = 0
    dropped: int = 0
    not_sent: int = 0
    late: int = 0
    req_bytes: int = 0
    resp_bytes: int = 0
    latency: LogHistogram = field(default_factory=LogHistogram)
    service: LogHistogram = field(default_factory=LogHistogram)
    lateness: LogHistogram = field(default_factory=LogHistogram)
    error_codes: Counter[int] = field(default_factory=Counter)
    #: successful requests that had at least one response with data
    streamed: int = 0
    #: responses with data and output tokens of successful requests
    responses: int = 0
    tokens: int = 0
    #: fewest / most responses of a successful streaming request (-1: none yet)
    responses_min: int = -1
    responses_max: int = -1
    ttft: LogHistogram = field(default_factory=LogHistogram)
    ttst: LogHistogram = field(default_factory=LogHistogram)
    itl: LogHistogram = field(default_factory=LogHistogram)
    tpot: LogHistogram = field(default_factory=LogHistogram)
    #: requests that met every goodput limit (GoodLimits), and their tokens
    good: int = 0
    good_tokens: int = 0

    def add(
        self, cols: dict[str, npt.NDArray[np.generic]], mask: npt.NDArray[np.bool_] | None = None
    ) -> None:
        def sel(name: str) -> npt.NDArray[np.int64]:
            c: npt.NDArray[np.int64] = cols[name]  # type: ignore[assignment]
            return c if mask is None else c[mask]

        status = sel("status")
        n = int(status.size)
        if n == 0:
            return
        intended, sent, done = sel("intended_ns"), sel("sent_ns"), sel("done_ns")
        is_sent = sent >= 0
        ok = status == rc.OK
        n_sent = int(np.count_nonzero(is_sent))
        n_ok = int(np.count_nonzero(ok))
        self.records += n
        self.sent += n_sent
        self.ok += n_ok
        if n_ok < n:
            dropped = status == rc.DROPPED
            not_sent = status == rc.NOT_SENT
            err = ~ok & ~dropped & ~not_sent
            self.errors += int(np.count_nonzero(err))
            self.dropped += int(np.count_nonzero(dropped))
            self.not_sent += int(np.count_nonzero(not_sent))
            if err.any():
                codes, counts = np.unique(status[err], return_counts=True)
                for c, k in zip(codes.tolist(), counts.tolist(), strict=True):
                    self.error_codes[int(c)] += int(k)
        # whole columns where every record was sent / succeeded (the common case): no
        # masked copies
        lat = sent - intended if n_sent == n else sent[is_sent] - intended[is_sent]
        self.lateness.record_many(lat)
        self.late += int(np.count_nonzero(lat > LATE_NS))
        if n_ok == n:
            done_ok, intended_ok, sent_ok = done, intended, sent
        else:
            done_ok, intended_ok, sent_ok = done[ok], intended[ok], sent[ok]
        self.latency.record_many(done_ok - intended_ok)
        self.service.record_many(done_ok - sent_ok)
        req = sel("req_bytes")
        self.req_bytes += int((req if n_sent == n else req[is_sent]).sum(dtype=np.int64))
        resp = sel("resp_bytes")
        self.resp_bytes += int((resp if n_ok == n else resp[ok]).sum(dtype=np.int64))
        good = cols.get(GOOD_KEY)
        if good is not None:
            g = good if mask is None else good[mask]
            self.good += int(g.sum())
            self.good_tokens += int(sel("tokens")[g].sum(dtype=np.int64))
        resp_all = cols.get("responses")
        if resp_all is not None and resp_all.any():
            self._add_stream(cols, mask, ok, intended)

    def _add_stream(
        self,
        cols: dict[str, npt.NDArray[np.generic]],
        mask: npt.NDArray[np.bool_] | None,
        ok: npt.NDArray[np.bool_],
        intended: npt.NDArray[np.int64],
    ) -> None:
        """The streaming figures of the selected records (their successful ones)."""
        resp_all: npt.NDArray[np.int64] = cols["responses"].astype(np.int64)
        resp = resp_all if mask is None else resp_all[mask]
        tokens = cols["tokens"].astype(np.int64)
        tokens = tokens if mask is None else tokens[mask]
        first: npt.NDArray[np.int64] = cols["first_ns"]  # type: ignore[assignment]
        last: npt.NDArray[np.int64] = cols["last_ns"]  # type: ignore[assignment]
        if mask is not None:
            first, last = first[mask], last[mask]
        got = ok & (resp > 0)
        if not got.any():
            return
        r_ok = resp[got]
        self.streamed += int(got.sum())
        self.responses += int(r_ok.sum())
        self.tokens += int(tokens[got].sum())
        lo, hi = int(r_ok.min()), int(r_ok.max())
        self.responses_min = lo if self.responses_min < 0 else min(self.responses_min, lo)
        self.responses_max = max(self.responses_max, hi)
        self.ttft.record_many(first[got] - intended[got])
        multi = got & (tokens >= 2)
        if multi.any():
            self.tpot.record_many((last[multi] - first[multi]) // (tokens[multi] - 1))
        gaps: npt.NDArray[np.int64] | None = cols.get(GAPS_KEY)  # type: ignore[assignment]
        if gaps is None or gaps.size != int(rc.gap_counts(resp_all).sum()):
            return  # gaps not kept (a block read back from requests.parquet)
        # the selected successful records' gaps, and each one's first gap (for TTST)
        rows = got if mask is None else _expand(mask, got)
        counts = rc.gap_counts(resp_all)
        mine = np.repeat(rows, counts)
        self.itl.record_many(gaps[mine])
        two = rows & (resp_all >= 2)
        if two.any():
            starts = np.cumsum(counts) - counts
            ttst = cols["first_ns"][two].astype(np.int64) - cols["intended_ns"][two].astype(
                np.int64
            )
            self.ttst.record_many(ttst + gaps[starts[two]])

    def merge(self, other: Stats) -> None:
        # attribute by attribute (a getattr/setattr loop over the names cost ~2x as much;
        # a batch's figures are merged 5 times: agent, window, size, shape, model)
        self.records += other.records
        self.sent += other.sent
        self.ok += other.ok
        self.errors += other.errors
        self.dropped += other.dropped
        self.not_sent += other.not_sent
        self.late += other.late
        self.req_bytes += other.req_bytes
        self.resp_bytes += other.resp_bytes
        self.streamed += other.streamed
        self.responses += other.responses
        self.tokens += other.tokens
        self.good += other.good
        self.good_tokens += other.good_tokens
        self.latency.merge(other.latency)
        self.service.merge(other.service)
        self.lateness.merge(other.lateness)
        if other.error_codes:
            self.error_codes.update(other.error_codes)
        if other.streamed:
            if self.responses_min < 0 or 0 <= other.responses_min < self.responses_min:
                self.responses_min = other.responses_min
            self.responses_max = max(self.responses_max, other.responses_max)
            for name in STREAM_HISTS:
                getattr(self, name).merge(getattr(other, name))


def _same_size(lo: int, hi: int) -> bool:
    """Whether request sizes lo <= hi fall in one `size_bucket` (powers of two)."""
    return max(lo, 1).bit_length() == max(hi, 1).bit_length()


def _keys(values: npt.NDArray[np.int64], lo: int, hi: int) -> list[int]:
    """The distinct values in `values` (within [lo, hi]), in order: a few neighbours (a
    batch across a window's edge) without sorting the whole column."""
    if hi - lo <= 4:
        return [w for w in range(lo, hi + 1) if w in (lo, hi) or bool((values == w).any())]
    out: list[int] = np.unique(values).tolist()
    return out


def _expand(mask: npt.NDArray[np.bool_], sub: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """`sub` (a mask over the records `mask` selects) as a mask over all records."""
    out = np.zeros(mask.size, np.bool_)
    out[np.flatnonzero(mask)[sub]] = True
    return out


@dataclass
class AgentTally:
    measured: Stats = field(default_factory=Stats)
    warmup: Stats = field(default_factory=Stats)
    first_intended_ns: int = 2**62
    first_skew_ns: int = 0
    last_done_ns: int = 0
    #: measured sends of an agent that started late, until it caught up (start-up)
    startup: Stats = field(default_factory=Stats)


def size_bucket(req_bytes: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Payload-size bucket: powers of two of the request size (bucket b holds [2^b, 2^(b+1)))."""
    out: npt.NDArray[np.int64] = np.floor(np.log2(np.maximum(req_bytes, 1))).astype(np.int64)
    return out


class Aggregator:
    def __init__(
        self,
        n_agents: int,
        warmup_ns: int,
        window_ns: int = WINDOW_NS,
        good: GoodLimits | None = None,
    ) -> None:
        # numpy imports numpy.ma at the first np.unique without counts (30-100 ms of CPU):
        # here, as the run is set up, not in the middle of its load
        import numpy.ma  # noqa: F401

        #: goodput limits per request (None: goodput not measured)
        self.good = good if good is not None and good.any else None
        self.n_agents = n_agents
        self.warmup_ns = warmup_ns
        self.window_ns = window_ns
        self.agents = [AgentTally() for _ in range(n_agents)]
        #: (window, agent) -> Stats, windows by intended time
        self.windows: dict[tuple[int, int], Stats] = {}
        #: (window, agent) -> OK completions by done time (achieved throughput)
        self.completions: Counter[tuple[int, int]] = Counter()
        #: payload-size bucket -> Stats (measured records)
        self.by_size: dict[int, Stats] = {}
        #: model id -> Stats (measured records)
        self.by_model: dict[int, Stats] = {}
        #: input shape text -> Stats (measured, sent records)
        self.by_shape: dict[str, Stats] = {}
        self.shapes: set[str] = set()
        #: a sequence run's figures (coordinator/sequences.py), set by its owner
        self.sequences: SequenceStats | None = None

    def ingest(self, agent: int, block: RecordBlock) -> None:
        if len(block) == 0:
            return
        if self.sequences is not None:
            self.sequences.ingest(agent, block)
        cols = block.columns
        if block.gaps.size:
            cols = {**cols, GAPS_KEY: block.gaps}
        if self.good is not None:
            cols = {**cols, GOOD_KEY: self.good.good(cols)}
        self.shapes.update(block.input_shapes)
        tally = self.agents[agent]
        intended = block.col("intended_ns")
        sent = block.col("sent_ns")
        done = block.col("done_ns")
        all_measured = int(intended.min()) >= self.warmup_ns
        # a mask only for a block that straddles the warm-up's end
        measured = None if all_measured else intended >= self.warmup_ns
        # Histograms are built once per block and merged where a block's records all
        # share a key (the common case: one window, one payload size, one model);
        # merging costs O(buckets), bucketing O(records).
        block_stats = Stats()
        block_stats.add(cols, measured)
        tally.measured.merge(block_stats)
        if measured is not None:
            tally.warmup.add(cols, ~measured)
        # start skew: lateness of the agent's earliest sent arrival
        sent_mask = sent >= 0
        if sent_mask.any():
            i = int(np.argmin(np.where(sent_mask, intended, np.iinfo(np.int64).max)))
            if int(intended[i]) < tally.first_intended_ns:
                tally.first_intended_ns = int(intended[i])
                tally.first_skew_ns = int(sent[i] - intended[i])
            tally.last_done_ns = max(tally.last_done_ns, int(done.max()))
            if tally.first_skew_ns > LATE_NS:
                until = tally.first_intended_ns + tally.first_skew_ns + STARTUP_SETTLE_NS
                early = sent_mask & (intended < until)
                if measured is not None:
                    early &= measured
                if early.any():
                    tally.startup.add(cols, early)
        # windows, completions and payload sizes are monotone in their column: when the
        # smallest and largest records share a key, every record does (no per-record key)
        wmin, wmax = int(intended.min()) // self.window_ns, int(intended.max()) // self.window_ns
        win = None if wmin == wmax else intended // self.window_ns
        for w in [wmin] if win is None else _keys(win, wmin, wmax):
            key = (int(w), agent)
            st = self.windows.get(key)
            if st is None:
                st = self.windows[key] = Stats()
            if win is None and all_measured:
                st.merge(block_stats)
            else:
                st.add(cols, np.full(len(block), True) if win is None else win == w)
        status = block.col("status")
        n_ok = block_stats.ok if all_measured else int(np.count_nonzero(status == rc.OK))
        if n_ok:
            done_ok = done if n_ok == len(block) else done[status == rc.OK]
            dmin = int(done_ok.min()) // self.window_ns
            dmax = int(done_ok.max()) // self.window_ns
            if dmin == dmax:
                self.completions[(dmin, agent)] += n_ok
            else:
                dw, counts = np.unique(done_ok // self.window_ns, return_counts=True)
                for w, n in zip(dw.tolist(), counts.tolist(), strict=True):
                    self.completions[(int(w), agent)] += int(n)
        if measured is None or measured.any():
            # Per payload size and per input shape: requests that were sent (never-sent
            # ones carry no payload and are counted in the totals).
            n_sent = block_stats.sent if all_measured else -1
            uniform = all_measured and n_sent == len(block)
            was_sent = sent_mask if measured is None else measured & sent_mask
            req = block.col("req_bytes")
            ws_req = req if uniform else req[was_sent]
            one_size = ws_req.size > 0 and _same_size(int(ws_req.min()), int(ws_req.max()))
            if uniform and one_size:
                self.by_size.setdefault(int(size_bucket(ws_req[:1])[0]), Stats()).merge(block_stats)
            else:
                sizes = size_bucket(req)
                for b in np.unique(sizes[was_sent]).tolist():
                    st = self.by_size.setdefault(int(b), Stats())
                    st.add(cols, was_sent & (sizes == b))
            if block.input_shapes:
                sid = block.col("shape_id")
                sent_sid = sid if uniform else sid[was_sent]
                # one shape for every record (the common case): the block's figures merge
                one = uniform and sent_sid.size > 0 and int(sent_sid.min()) == int(sent_sid.max())
                for k in [int(sent_sid[0])] if one else np.unique(sent_sid).tolist():
                    name = block.input_shapes[k] if k < len(block.input_shapes) else f"#{k}"
                    st = self.by_shape.setdefault(name, Stats())
                    if one:
                        st.merge(block_stats)
                    else:
                        st.add(cols, was_sent & (sid == k))
            models = block.col("model_id")
            mm = models if measured is None else models[measured]
            if int(mm.min()) == int(mm.max()):
                self.by_model.setdefault(int(mm[0]), Stats()).merge(block_stats)
            else:
                for m in np.unique(mm).tolist():
                    st = self.by_model.setdefault(int(m), Stats())
                    st.add(cols, (models == m) if measured is None else measured & (models == m))

    def total(self) -> Stats:
        out = Stats()
        for a in self.agents:
            out.merge(a.measured)
        return out

    def total_warmup(self) -> Stats:
        out = Stats()
        for a in self.agents:
            out.merge(a.warmup)
        return out

    def release_windows(self, windows: set[int]) -> None:
        """Free the histograms of finished windows (their timeseries rows are already
        computed); counts and error codes stay, for outage detection. Keeps the
        coordinator's memory flat on long runs."""
        for (w, _a), st in self.windows.items():
            if w in windows and st.latency.count + st.service.count + st.lateness.count:
                st.latency = LogHistogram()
                st.service = LogHistogram()
                st.lateness = LogHistogram()
                for name in STREAM_HISTS:
                    if getattr(st, name).count:
                        setattr(st, name, LogHistogram())

    def window_keys(self) -> list[int]:
        return sorted({w for w, _ in self.windows} | {w for w, _ in self.completions})
