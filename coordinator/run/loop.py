"""The run's main loop: startup, one tick every 0.1 s, shutdown.

Each tick step is a method of `RunLoop` that takes the clock's reading, so a test
drives it with a fake clock: `seal_windows`, `check_refusal`, `check_liveness`,
`check_stop`, `check_deadline`, `report_progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from typing import Any

from coordinator.aggregate import Aggregator
from coordinator.run.options import Progress, RunOptions
from coordinator.run.stream import AgentStream, Clock
from coordinator.rundir import RequestWriter, timeseries_rows
from volley.arrivals import schedule_span_s
from volley.plan import Plan
from volley.records import RecordBlock

#: The main loop's period.
TICK_S = 0.1
#: How often finished windows are sealed (rows computed, histograms freed).
SEAL_EVERY_NS = 5_000_000_000
#: A window this many seconds past the request timeout gets no more records.
SEAL_AFTER_TIMEOUT_S = 10
#: Slack past the load's span and the request timeout before the run is overdue.
DEADLINE_SLACK_S = 15.0
#: Once overdue and told to stop, the agents have this long before their streams are cut.
DEADLINE_GRACE_NS = 5_000_000_000
#: What a stream declared missing is told (best effort).
MISSING_STOP = "declared missing"


class StopReason(enum.StrEnum):
    """Why a run stopped; the value is summary.json's `stopped` ("": it ran to its end)."""

    COMPLETED = ""
    INTERRUPTED = "interrupted by the user"
    DEADLINE = "run overran its deadline"
    #: An agent refused the run: the others are stopped, and execute() raises.
    REFUSED = "another agent refused the run"


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
        self.agg = Aggregator(len(streams), int(plan.load.warmup_s * 1e9))
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
        self._background: set[asyncio.Task[Any]] = set()

    # ---- records from the streams (RecordSink) ------------------------------
    def ingest(self, index: int, block: RecordBlock) -> None:
        self.agg.ingest(index, block)
        if self.writer is not None:
            self.writer.write(index, block)

    def agent_cpu(self, window: int, index: int, percent: float) -> None:
        self.cpu[(window, index)] = percent

    # ---- startup ------------------------------------------------------------
    def agree_start(self) -> int:
        """Fix the start instant (coordinator clock) and each agent's view of it."""
        clocks = [s.info.clock for s in self.streams]
        max_rtt = max((c.rtt_ns if c else 0) for c in clocks)
        self.start_ns = self.clock() + int(self.opts.start_lead_s * 1e9) + max_rtt
        for s in self.streams:
            assert s.info.clock is not None
            s.start_at_agent_ns = s.info.clock.to_agent(self.start_ns)
        deadline_s = self.span_s + self.plan.timeout_s + DEADLINE_SLACK_S
        self.deadline_ns = self.start_ns + int(deadline_s * 1e9)
        self.next_seal_ns = self.start_ns + SEAL_EVERY_NS
        return self.start_ns

    def startup(self) -> None:
        """Open every agent's Run stream, and its keepalive."""
        for s in self.streams:
            req = s.request(self.run_id, self.plan_json, self.opts.keepalive_s)
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
        while self.running:
            await asyncio.sleep(TICK_S)
            if not await self.on_tick(self.clock()):
                break

    async def on_tick(self, now: int) -> bool:
        """One tick; False when the run must end now (an agent refused it)."""
        self.seal_windows(now)
        if await self.check_refusal():
            return False
        self.check_liveness(now)
        await self.check_stop()
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
        """A stream silent past the heartbeat timeout is declared missing and cut."""
        for s in self.streams:
            if s.task is None or s.task.done():
                continue  # ended, or never started
            silent = (now - s.info.last_seen_ns) / 1e9
            if silent > self.opts.heartbeat_timeout_s:
                s.mark_lost(f"no heartbeat for {silent:.1f}s", now)
                s.task.cancel()
                # best effort: a merely stalled agent stops firing now (a cut-off one
                # stops by itself once our keepalives stop reaching it)
                t = asyncio.create_task(s.client.stop(self.run_id, MISSING_STOP, 1.0))
                self._background.add(t)
                t.add_done_callback(self._background.discard)

    async def check_stop(self) -> None:
        """The user asked to stop: tell every agent, once."""
        if self.stop_event.is_set() and self.stopped is None:
            self.stopped = StopReason.INTERRUPTED
            await self.stop_all(StopReason.INTERRUPTED)

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
        if self.writer is not None:
            self.writer.close()
        if failed or self.refusal() is not None:
            await self.close_clients()

    async def close_clients(self) -> None:
        for s in self.streams:
            with contextlib.suppress(Exception):
                await s.client.close()
