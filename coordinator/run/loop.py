"""The run's main loop: startup, one tick every 0.1 s, shutdown.

Each tick step is a method of `RunLoop` that takes the clock's reading, so a test
drives it with a fake clock: `seal_windows`, `check_refusal`, `check_liveness`,
`check_stop`, `check_auto`, `check_deadline`, `report_progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from coordinator.agents import AgentState
from coordinator.aggregate import Aggregator
from coordinator.documents import AutoStopDoc
from coordinator.run.autostop import LOOKS_IN_A_ROW, look
from coordinator.run.options import Progress, RunOptions
from coordinator.run.stream import AgentStream, Clock
from coordinator.rundir import RequestWriter, timeseries_rows
from coordinator.sequences import SequenceStats
from coordinator.slo import goodput_limits
from volley.arrivals import schedule_span_s
from volley.liveness import SilenceClock, silence_limit_s
from volley.plan import Plan
from volley.records import RecordBlock

#: The main loop's period (the live view redraws at most 4 times a second; a stop asked
#: for, or the last stream ending, wakes it at once). Each wake-up costs ~0.1-0.2 ms of
#: CPU on a busy VM: the idle cost counts them.
TICK_S = 0.25
#: With no records arriving (an idle or very slow run) the loop ticks this often instead,
#: or sooner when an agent's silence would pass the heartbeat timeout (`tick_period`).
IDLE_TICK_S = 1.0
#: Records "arrive" (fast ticks) while timing batches come at this rate or more over the
#: last IDLE_TICK_S of ticks (`records_flow`): a run at 1-2 req/s sends a batch per
#: record, and ticking 4 times a second for each would be most of its idle cost.
FLOW_BLOCKS_PER_S = 2.0
#: How often finished windows are sealed (rows computed, histograms freed).
SEAL_EVERY_NS = 5_000_000_000
#: A window this many seconds past the request timeout gets no more records.
SEAL_AFTER_TIMEOUT_S = 10
#: Slack past the load's span and the request timeout before the run is overdue.
DEADLINE_SLACK_S = 15.0
#: `--duration auto`: records are held back this long past the end of the window they
#: were intended in before the figures get them, so a look judges whole windows whose
#: records have arrived (they are flushed every 0.1-0.25 s), and its stop instant is the
#: end of what it judged (`RunLoop.release`).
HOLD_S = 1
#: Once overdue and told to stop, the agents have this long before their streams are cut.
DEADLINE_GRACE_NS = 5_000_000_000
#: What a stream cut after it went missing is told (best effort).
MISSING_STOP = "declared missing"
#: A gap between two ticks longer than this is the coordinator's own absence (the process
#: was stopped, SIGSTOP, or its event loop starved), not the agents' silence: what they
#: sent meanwhile waits in the sockets. Only this much of such a gap is counted.
MAX_TICK_GAP_NS = 500_000_000
#: A missing agent whose stream is still open is waited for this much longer (silence
#: counted the same way) before its stream is cut and it is told to stop; events arriving
#: meanwhile take it back.
MISSING_WAIT_S = 7.5


def tick_period(records_arrived: bool, due_s: float) -> float:
    """The main loop's next wait: TICK_S while records arrive, else IDLE_TICK_S, but never
    past `due_s` (the earliest an open stream's silence passes its limit) by more than a
    tick, so an agent is declared missing as promptly as at TICK_S."""
    if records_arrived:
        return TICK_S
    return max(TICK_S, min(IDLE_TICK_S, due_s))


def records_flow(ticks: Sequence[tuple[float, int]]) -> bool:
    """`ticks`: (wait s, batches ingested during it) of the recent ticks, about the last
    IDLE_TICK_S of them: batches came at FLOW_BLOCKS_PER_S or more (one empty tick in a
    fast run does not make the loop slow)."""
    span = sum(wait for wait, _ in ticks)
    return span > 0 and sum(n for _, n in ticks) >= FLOW_BLOCKS_PER_S * span


class StopReason(enum.StrEnum):
    """Why a run stopped; the value is summary.json's `stopped` ("": it ran to its end)."""

    COMPLETED = ""
    INTERRUPTED = "interrupted by the user"
    DEADLINE = "run overran its deadline"
    #: An agent refused the run: the others are stopped, and execute() raises.
    REFUSED = "another agent refused the run"
    #: `--duration auto` decided the run had measured enough (not an early stop: the
    #: measured period ends at the stop instant, `RunLoop.cut_ns`, the end of what the
    #: deciding look judged).
    AUTO = "measured enough (--duration auto)"


class RunLoop:
    """One run's streams, merged records and clocks: `agree_start()`, `startup()`,
    `main_loop()` (ticks until every stream ends), `shutdown()`."""

    def __init__(
        self,
        plan: Plan,
        streams: list[AgentStream],
        opts: RunOptions,
        *,
        run_id: str,
        writer: RequestWriter | None = None,
        clock: Clock = time.monotonic_ns,
    ) -> None:
        self.plan = plan
        self.streams = streams
        self.opts = opts
        self.run_id = run_id
        self.writer = writer
        self.clock = clock
        self.plan_json = plan.to_json()
        self.span_s = schedule_span_s(plan)
        self.agg = Aggregator(
            len(streams), int(plan.load.warmup_s * 1e9), good=goodput_limits(plan.slos)
        )
        if plan.sequence is not None:
            self.agg.sequences = SequenceStats(len(streams), int(plan.load.warmup_s * 1e9))
        self.names = [s.name for s in streams]
        #: (window, agent index) -> the agent's CPU percent then
        self.cpu: dict[tuple[int, int], float] = {}
        self.stop_event = opts.stop_event or asyncio.Event()
        self.stopped: StopReason | None = None
        self.start_ns = 0
        self.deadline_ns = 0
        self.next_seal_ns = 0
        #: Windows whose rows are computed and histograms freed (memory stays flat).
        self.sealed: set[int] = set()
        self.sealed_rows: list[dict[str, Any]] = []
        self._pingers: list[asyncio.Task[None]] = []
        #: Per agent index: its silence, over the coordinator's own running time.
        self._silence: dict[int, SilenceClock] = {}
        #: blocks ingested so far, and at the last tick (`tick_period`); the time until
        #: the first open stream's silence passes its limit, s (`check_liveness`)
        self._blocks = 0
        self._blocks_seen = 0
        #: (wait s, blocks ingested) of the recent ticks (`records_flow`)
        self._flow: deque[tuple[float, int]] = deque()
        self._due_s = IDLE_TICK_S
        #: the wait the main loop chose last: the silence clocks credit that much + slack
        self._period_s = TICK_S
        self._background: set[asyncio.Task[Any]] = set()
        #: `--duration auto`: the stop instant (ns from the start, a whole second: the end
        #: of the windows the deciding look judged) once decided; records intended from
        #: then on are left out.
        self.cut_ns: int | None = None
        self.after_cut = 0
        #: `--duration auto`: blocks (agent index, block) whose records the figures do not
        #: have yet; records intended before `released_ns` (from the start) are in them.
        self.hold = opts.auto is not None
        self.held: list[tuple[int, RecordBlock]] = []
        self.released_ns = 0
        self.auto_doc: AutoStopDoc | None = None
        self._good_looks = 0
        self._next_look_ns = 0
        self.last_look: list[str] = []
        #: Two-phase start (coordinator/run/start.py): the streams opened with
        #: prepare_first at `opened_ns`; the lead the start instant got, ns.
        self.two_phase = False
        self.opened_ns = 0
        self.lead_ns = 0
        #: the ready round before the instant was fixed (start.ready_round), ns
        self.round_ns = 0

    # ---- records from the streams (RecordSink) ------------------------------
    def ingest(self, index: int, block: RecordBlock) -> None:
        self._blocks += 1
        if not self.hold:
            self._take(index, block)
            return
        # records of windows already released (stragglers) go in now, the rest waits
        rest = self._take_before(index, block, self.released_ns)
        if rest is not None:
            self.held.append((index, rest))

    def _take(self, index: int, block: RecordBlock) -> None:
        """Into the figures and the records file (records from the stop instant on: out)."""
        if self.cut_ns is not None:
            block = self._keep(block, block.col("intended_ns") < self.cut_ns, count=True)
        if len(block) == 0:
            return
        self.agg.ingest(index, block)
        if self.writer is not None:
            self.writer.write(index, block)

    def _keep(self, block: RecordBlock, keep: np.ndarray, count: bool = False) -> RecordBlock:
        if keep.all():
            return block
        if count:
            self.after_cut += int(np.count_nonzero(~keep))
        return block.select(keep)

    def _take_before(self, index: int, block: RecordBlock, until_ns: int) -> RecordBlock | None:
        """Take the block's records intended before `until_ns`; the rest (None: none)."""
        early = block.col("intended_ns") < until_ns
        if early.any():
            self._take(index, self._keep(block, early))
        return None if early.all() else self._keep(block, ~early)

    def release(self, until_ns: int | None = None) -> None:
        """`--duration auto`: the held records intended before `until_ns` (None: every
        one) go into the figures."""
        self.released_ns = max(self.released_ns, until_ns or 0)
        rest: list[tuple[int, RecordBlock]] = []
        for index, block in self.held:
            if until_ns is None:
                self._take(index, block)
                continue
            left = self._take_before(index, block, until_ns)
            if left is not None:
                rest.append((index, left))
        self.held = rest
        if until_ns is None:
            self.hold = False

    def agent_cpu(self, window: int, index: int, percent: float) -> None:
        self.cpu[(window, index)] = percent

    # ---- startup ------------------------------------------------------------
    def agree_start(self, lead_ns: int | None = None) -> int:
        """Fix the start instant (coordinator clock) and each agent's view of it.

        One-phase (lead_ns None): the start lead plus the worst RTT from now. Two-phase
        (the agents are prepared; lead_ns from `start.start_lead_ns`): now plus that
        lead, and no earlier than `start_lead_s` after the streams were opened."""
        now = self.clock()
        if lead_ns is None:
            clocks = [s.info.clock for s in self.streams]
            max_rtt = max((c.rtt_ns if c else 0) for c in clocks)
            self.start_ns = now + int(self.opts.start_lead_s * 1e9) + max_rtt
        else:
            floor = self.opened_ns + int(self.opts.start_lead_s * 1e9)
            self.start_ns = max(now + lead_ns, floor)
        self.lead_ns = self.start_ns - now
        for s in self.streams:
            assert s.info.clock is not None
            s.start_at_agent_ns = s.info.clock.to_agent(self.start_ns)
        deadline_s = self.span_s + self.plan.timeout_s + DEADLINE_SLACK_S
        self.deadline_ns = self.start_ns + int(deadline_s * 1e9)
        self.next_seal_ns = self.start_ns + SEAL_EVERY_NS
        return self.start_ns

    def startup(self, prepare_first: bool = False) -> None:
        """Open every agent's Run stream, and its keepalive (`prepare_first`: the
        two-phase start, the instant comes later by Start)."""
        self.two_phase = prepare_first
        self.opened_ns = self.clock()
        for s in self.streams:
            req = s.request(self.run_id, self.plan_json, self.opts.keepalive_s, prepare_first)
            s.task = asyncio.create_task(s.consume(req, self))
        if self.opts.keepalive_s > 0:
            self._pingers = [
                asyncio.create_task(s.keepalive(self.run_id, self.opts.keepalive_s))
                for s in self.streams
            ]

    # ---- main loop ------------------------------------------------------------
    @property
    def running(self) -> bool:
        return any(s.active for s in self.streams)

    async def main_loop(self) -> None:
        stopper = asyncio.ensure_future(self.stop_event.wait())
        try:
            while self.running:
                # a tick every TICK_S, or at once on a stop or when the last stream ends
                last = [s.task for s in self.streams if s.task is not None and not s.task.done()]
                wake: list[asyncio.Future[Any]] = [] if stopper.done() else [stopper]
                if len(last) == 1:  # the last stream: its end wakes the loop too
                    wake.append(last[0])
                self._flow.append((self._period_s, self._blocks - self._blocks_seen))
                while sum(w for w, _ in self._flow) - self._flow[0][0] >= IDLE_TICK_S:
                    self._flow.popleft()  # keep about the last IDLE_TICK_S of ticks
                self._period_s = tick_period(records_flow(self._flow), self._due_s)
                self._blocks_seen = self._blocks
                if wake:
                    await asyncio.wait(
                        wake, timeout=self._period_s, return_when=asyncio.FIRST_COMPLETED
                    )
                else:
                    await asyncio.sleep(self._period_s)
                if not await self.on_tick(self.clock()):
                    break
        finally:
            stopper.cancel()

    async def on_tick(self, now: int) -> bool:
        """One tick; False when the run must end now (an agent refused it)."""
        if self.hold and now > self.start_ns:
            self.release(self.judged_s(now) * 1_000_000_000)
        self.seal_windows(now)
        if await self.check_refusal():
            return False
        self.check_liveness(now)
        await self.check_stop()
        await self.check_auto(now)
        await self.check_deadline(now)
        self.report_progress(now)
        return True

    def seal_horizon(self, now: int) -> int:
        """Windows before this one get no more records (the request timeout has passed)."""
        elapsed_s = (now - self.start_ns) // 1_000_000_000
        return elapsed_s - int(self.plan.timeout_s) - SEAL_AFTER_TIMEOUT_S

    def seal_windows(self, now: int) -> list[int]:
        """Every SEAL_EVERY_NS: compute the rows of finished windows, free their histograms."""
        if now < self.next_seal_ns:
            return []
        self.next_seal_ns = now + SEAL_EVERY_NS
        horizon = self.seal_horizon(now)
        old = [w for w in self.agg.window_keys() if w < horizon and w not in self.sealed]
        if old:
            self.sealed_rows += timeseries_rows(self.agg, self.names, self.cpu, old)
            self.sealed.update(old)
            if not self.plan.load.warmup_auto:  # an auto warm-up re-merges them at the end
                self.agg.release_windows(set(old))
        return old

    def refusal(self) -> AgentStream | None:
        """The first agent that refused the run, if one did."""
        return next((s for s in self.streams if s.refused), None)

    async def check_refusal(self) -> bool:
        """An agent refused the run: stop the others; True then."""
        if self.refusal() is None:
            return False
        self.stopped = StopReason.REFUSED
        await self.stop_all(StopReason.REFUSED)
        return True

    def check_liveness(self, now: int) -> None:
        """Judge each open stream's silence, counted over the coordinator's running time
        only (`SilenceClock`: a tick gap past MAX_TICK_GAP_NS is its own pause). Silent past
        the heartbeat timeout: declared missing, its stream kept open (events resuming take
        it back: `AgentStream.heard`). Missing and silent MISSING_WAIT_S longer, or the run
        is over without it: its stream is cut and it is told to stop (best effort)."""
        timeout_s = self.opts.heartbeat_timeout_s
        # a longer wait chosen on purpose (IDLE_TICK_S) is running time too
        max_gap = MAX_TICK_GAP_NS + int(max(self._period_s - TICK_S, 0.0) * 1e9)
        due_s = IDLE_TICK_S
        for s in self.streams:
            if s.task is None or s.task.done():
                continue  # ended, or never started
            watch = self._silence.setdefault(s.index, SilenceClock(MAX_TICK_GAP_NS))
            watch.max_gap = max_gap
            silent = watch.check(now, s.info.last_seen_ns) / 1e9
            # never under MISSED_BEATS of the agent's announced idle beats
            limit_s = silence_limit_s(timeout_s, s.idle_beat_s)
            if s.state is AgentState.MISSING:
                if silent > limit_s + MISSING_WAIT_S or self.over_without(s, now):
                    self.cut(s)
                due_s = min(due_s, limit_s + MISSING_WAIT_S - silent)
            elif silent > limit_s:
                s.mark_lost(f"no heartbeat for {silent:.1f}s", now)
            else:
                due_s = min(due_s, limit_s - silent)
        self._due_s = due_s

    def over_without(self, missing: AgentStream, now: int) -> bool:
        """The run is over but for missing agents: every other stream has ended (or is
        missing too), and the schedule and the request timeout have passed or the run
        was stopped."""
        end_ns = self.start_ns + int((self.span_s + self.plan.timeout_s) * 1e9)
        others = (s for s in self.streams if s is not missing and s.state is not AgentState.MISSING)
        over = now >= end_ns or self.stopped is not None
        return over and not any(s.active for s in others)

    def cut(self, s: AgentStream) -> None:
        """Give up on a missing stream: cancel it, tell the agent to stop (best effort: a
        stalled agent stops firing; a cut-off one stops once our keepalives stop reaching
        it)."""
        assert s.task is not None
        s.task.cancel()
        t = asyncio.create_task(s.client.stop(self.run_id, MISSING_STOP, 1.0))
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    async def check_stop(self) -> None:
        """The user asked to stop: tell every agent, once."""
        if self.stop_event.is_set() and self.stopped is None:
            self.stopped = StopReason.INTERRUPTED
            await self.stop_all(StopReason.INTERRUPTED)

    def judged_s(self, now: int) -> int:
        """`--duration auto`: the windows before this second (of the run) are whole: their
        records have had HOLD_S to arrive (`release`)."""
        return max(int((now - self.start_ns) // 1_000_000_000) - HOLD_S, 0)

    def pending(self) -> int:
        """Requests the agents' last statuses had in flight (an upper bound on those of
        the judged windows whose records are still to come)."""
        return sum(max(s.info.in_flight, 0) for s in self.streams)

    async def check_auto(self, now: int) -> None:
        """`--duration auto`: once a second, look at the whole windows so far (their
        records released, the requests still in flight counted as unknown); when they
        have been enough LOOKS_IN_A_ROW times, the stop instant is the end of the windows
        this look judged: records intended from then on are left out (the held ones
        dropped, later ones too), so the figures are the ones judged plus the judged
        windows' stragglers, and every agent is told to stop now."""
        auto = self.opts.auto
        if auto is None or self.stopped is not None:
            return
        if now < self._next_look_ns:
            return
        self._next_look_ns = now + 1_000_000_000
        judged = self.judged_s(now)
        self.release(judged * 1_000_000_000)
        seen = look(self.plan, self.agg, judged, auto, self.pending())
        self.last_look = seen.checks
        self._good_looks = self._good_looks + 1 if seen.done else 0
        if self._good_looks < LOOKS_IN_A_ROW or judged >= self.span_s:
            return
        cut_s = judged
        self.cut_ns = cut_s * 1_000_000_000
        self.release(None)  # the held records are all from the stop instant on: dropped
        self.auto_doc = {
            "reason": "decided",
            "stopped_at_s": round(cut_s - self.plan.load.warmup_s, 3),
            "max_duration_s": round(self.span_s - self.plan.load.warmup_s, 3),
            "target_width": auto.target_width,
            "checks": seen.checks,
        }
        self.stopped = StopReason.AUTO
        await self.stop_all(StopReason.AUTO)

    async def check_deadline(self, now: int) -> None:
        """Overdue: tell every agent to stop; still going DEADLINE_GRACE_NS later (or
        already stopped for another reason): cut every stream."""
        if now <= self.deadline_ns:
            return
        if self.stopped is None:
            self.stopped = StopReason.DEADLINE
            await self.stop_all(StopReason.DEADLINE)
            self.deadline_ns = now + DEADLINE_GRACE_NS
        else:
            for s in self.streams:
                if s.task is not None:
                    s.task.cancel()

    def report_progress(self, now: int) -> None:
        if self.opts.progress is None:
            return
        elapsed_ns = now - self.start_ns
        self.opts.progress(
            Progress(
                elapsed_ns / 1e9,
                self.span_s,
                [s.info for s in self.streams],
                self.agg,
                int(elapsed_ns // 1_000_000_000),
            )
        )

    async def stop_all(self, reason: StopReason) -> None:
        await asyncio.gather(*(s.client.stop(self.run_id, reason.value) for s in self.streams))

    # ---- shutdown -------------------------------------------------------------
    @property
    def stop_reason(self) -> StopReason:
        return StopReason.COMPLETED if self.stopped is None else self.stopped

    async def shutdown(self, failed: bool = False) -> None:
        """Cut what still runs, wait for every task, close the records file; on a
        refusal or a failure (`failed`) close the agents' channels too."""
        for s in self.streams:
            if s.task is not None and not s.task.done():
                s.task.cancel()
        await asyncio.gather(
            *(s.task for s in self.streams if s.task is not None),
            *self._pingers,
            *self._background,
            return_exceptions=True,
        )
        self.release(None)  # --duration auto: what is still held (nothing recorded is lost)
        if self.writer is not None:
            self.writer.close()
        if failed or self.refusal() is not None:
            await self.close_clients()

    async def close_clients(self) -> None:
        for s in self.streams:
            with contextlib.suppress(Exception):
                await s.client.close()
