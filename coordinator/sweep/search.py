"""The sweep's search: find the highest load that meets the SLOs (pure; no I/O).

A sweep measures one step at a time. Each step is a full, validity-checked run at one
offered rate (open loop) or concurrency (closed loop); `judge()` turns its summary into
pass or fail with a reason and a *kind* of failure:

- ``server``    the server missed an SLO, fell behind the offered rate, or erred;
- ``generator`` volley itself could not keep up: never reported as the server's limit;
- ``invalid``   the measurement does not count (an agent was lost, too few requests);
- ``inconclusive`` an SLO's confidence interval straddles its threshold (or too few
  requests bound it): the step is measured again, longer (twice, then four times the
  step duration); still undecided, it counts as a failure, so a load passes only when
  the whole interval meets the SLO.

`next_step()` is the search, a deterministic function of the steps so far (which is
what makes a sweep resumable: replaying finished steps reproduces the same decisions).
Like MLPerf LoadGen's peak search it first steps the load up geometrically from
``start`` until a step fails (or down, if the first one fails), then bisects between the
highest passing and the lowest failing load until the bracket is within ``tolerance``.
`conclude()` reads the result: the maximum sustainable load, the bracket, what limited
it, and the knee of the latency–throughput curve. `search()` drives the loop with an
injected async ``measure`` function, so all of this is testable without a server.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, NamedTuple, Protocol, cast

from coordinator.documents import SloResult, Summary
from coordinator.sweep.conns import FailureKind, connection_reasons, step_rate
from volley.conns import ConnBlock
from volley.plan import (
    MAX_CONCURRENCY,
    MAX_CONNECTIONS_TOTAL,
    MAX_RATE,
    Plan,
    PlanError,
    plan_from_dict,
)

#: rate: req/s; concurrency: requests in flight; connections: connections held (each at
#: `rate_per_connection`; coordinator/sweep/conns.py)
SweepMode = Literal["rate", "concurrency", "connections"]
#: The modes whose loads are whole numbers.
WHOLE = ("concurrency", "connections")
#: Largest per-connection rate of a connections sweep.
MAX_RATE_PER_CONNECTION = 1000.0


def _hard(mode: SweepMode) -> float:
    if mode == "rate":
        return MAX_RATE
    return float(MAX_CONCURRENCY if mode == "concurrency" else MAX_CONNECTIONS_TOTAL)


StepKind = Literal["pass", "server", "generator", "invalid", "inconclusive"]
LimitedBy = Literal[
    "server", "generator", "invalid", "inconclusive", "max-load", "max-steps", "nothing-passed"
]

#: An agent above this share of its workers' CPU is short of CPU, whatever else is true.
GENERATOR_CPU_BUSY = 0.9


@dataclass(frozen=True)
class SweepSettings:
    """How to search. Loads are req/s (mode ``rate``) or requests in flight (``concurrency``)."""

    mode: SweepMode = "rate"
    start: float = 10.0
    #: Ramp factor between steps before the first failure (> 1).
    growth: float = 2.0
    #: Stop bisecting when (lowest failing - highest passing) <= tolerance * highest passing.
    tolerance: float = 0.05
    max_steps: int = 16
    #: Never offer more than this (0: the plan's hard limit).
    max_load: float = 0.0
    #: Measured seconds per step (after the warm-up); longer if needed for min requests.
    step_duration_s: float = 10.0
    warmup_s: float = 2.0
    #: Open loop: a step fails when completions/s in the measured window fall below this
    #: fraction of the offered rate (the server fell behind).
    min_throughput_ratio: float = 0.95
    #: Measure a step again (at most this often) when volley was the bottleneck or the
    #: step was invalid: both are often transient (a busy host), neither is the server's.
    retries: int = 1
    #: Measure an inconclusive step again this often, each time twice as long.
    longer_retries: int = 2
    #: Mode connections: requests per second each held connection carries.
    rate_per_connection: float = 1.0

    def validate(self) -> None:
        if self.mode not in ("rate", "concurrency", "connections"):
            raise PlanError(
                f"sweep mode must be rate, concurrency or connections, got {self.mode!r}"
            )
        hard = _hard(self.mode)
        if not 0 < self.start <= hard:
            raise PlanError(f"--start must be > 0 and at most {hard:g}, got {self.start:g}")
        if self.mode in WHOLE and self.start != int(self.start):
            raise PlanError(f"--start must be a whole {self.mode}, got {self.start:g}")
        if not 0 < self.rate_per_connection <= MAX_RATE_PER_CONNECTION:
            raise PlanError(
                f"--rate-per-connection must be > 0 and at most {MAX_RATE_PER_CONNECTION:g}, "
                f"got {self.rate_per_connection:g}"
            )
        if not 1.0 < self.growth <= 100.0:
            raise PlanError(f"--growth must be > 1 and <= 100, got {self.growth:g}")
        if not 0.0 < self.tolerance < 1.0:
            raise PlanError(f"--tolerance must be between 0 and 100%, got {self.tolerance:g}")
        if not 1 <= self.max_steps <= 200:
            raise PlanError(f"--max-steps must be between 1 and 200, got {self.max_steps}")
        if self.max_load < 0 or self.max_load > hard:
            raise PlanError(f"--max-load must be between 0 and {hard:g}, got {self.max_load:g}")
        if self.max_load and self.max_load < self.start:
            raise PlanError(f"--max-load {self.max_load:g} is below --start {self.start:g}")
        if not 0 < self.step_duration_s <= 3600:
            raise PlanError(
                f"--step-duration must be > 0 and at most 1h, got {self.step_duration_s:g}s"
            )
        if not 0 <= self.warmup_s <= 3600:
            raise PlanError(f"--warmup must be between 0 and 1h, got {self.warmup_s:g}s")
        if not 0 <= self.retries <= 5:
            raise PlanError(f"--retries must be between 0 and 5, got {self.retries}")
        if not 0.0 < self.min_throughput_ratio <= 1.0:
            raise PlanError(
                f"--min-throughput-ratio must be > 0 and <= 1, got {self.min_throughput_ratio:g}"
            )

    @property
    def ceiling(self) -> float:
        return self.max_load or _hard(self.mode)

    @property
    def floor(self) -> float:
        """Stepping down after a failing first step stops below this load."""
        return 1.0 if self.mode in WHOLE else self.start / self.growth**4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSettings:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        try:
            out = cls(**known)
        except TypeError as exc:  # pragma: no cover - keys are filtered above
            raise PlanError(f"sweep settings: {exc}") from None
        out.validate()
        return out


@dataclass
class StepResult:
    """One measured step: its load, the figures that matter, and the judgement."""

    index: int
    load: float
    passed: bool
    kind: StepKind
    reasons: list[str]
    offered_rps: float = 0.0
    #: OK completions per second inside the measured window (what the server delivered).
    throughput_rps: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    service_time_ms: dict[str, float] = field(default_factory=dict)
    error_rate: float = 0.0
    valid: bool = True
    slo: list[SloResult] = field(default_factory=list)
    duration_s: float = 0.0
    run_dir: str = ""
    #: Streamed (decoupled) models: output tokens/s of the step (None for unary models).
    tokens_per_s: float | None = None
    #: ... and its mean output tokens per successful request.
    tokens_per_request: float | None = None
    #: Mode connections: what the step's connections did (summary.json's `connections`)
    #: and what failed first (coordinator/sweep/conns.py `failure_kind`; NONE: passed).
    connections: ConnBlock | None = None
    failed_first: FailureKind = FailureKind.NONE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepResult:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        step = cls(**known)
        if step.kind not in ("pass", "server", "generator", "invalid", "inconclusive"):
            raise PlanError(f"sweep step {step.index}: unknown kind {step.kind!r}")
        try:  # sweep.json holds its value (the same strings as before the enum)
            step.failed_first = FailureKind(step.failed_first or "")
        except ValueError:
            raise PlanError(
                f"sweep step {step.index}: unknown failed_first {step.failed_first!r}"
            ) from None
        return step


# ---------------------------------------------------------------- judging one step


def completion_rate(rows: Sequence[dict[str, Any]], warmup_s: float, span_s: float) -> float | None:
    """OK completions per second in the measured window, from timeseries rows.

    Uses the ``all`` rows' ``achieved_rps`` (completions by done time) of the 1 s windows
    lying wholly inside [warmup, end of schedule). An overloaded open-loop server still
    completes every request eventually, so the summary's throughput (OK records of the
    measured arrivals / measured seconds) equals the offered rate; what it delivered
    *during* the window is this. None when no whole window fits.
    """
    first = math.ceil(warmup_s - 1e-9)
    last = math.floor(span_s + 1e-9)  # windows first .. last-1
    if last <= first:
        return None
    total = 0.0
    for r in rows:
        if r.get("agent") != "all":
            continue
        w = int(r.get("window", -1))
        if first <= w < last:
            total += float(r.get("achieved_rps") or 0.0)
    return total / (last - first)


class Judgement(NamedTuple):
    """One step judged: pass or fail, its kind, why (text), and which of the server's
    failures it showed (slowed: throughput or an SLO; connect-slow: a connect-time SLO;
    errors: the error rate), for the connections sweep's `failure_kind`."""

    passed: bool
    kind: StepKind
    reasons: list[str]
    server_failures: frozenset[FailureKind]


def judge(
    mode: SweepMode,
    summary: Summary,
    throughput_rps: float,
    min_throughput_ratio: float,
    max_error_rate: float,
) -> tuple[bool, StepKind, list[str]]:
    """Pass or fail one step from its summary.json; returns (passed, kind, reasons)."""
    j = judge_step(mode, summary, throughput_rps, min_throughput_ratio, max_error_rate)
    return j.passed, j.kind, j.reasons


def judge_step(
    mode: SweepMode,
    summary: Summary,
    throughput_rps: float,
    min_throughput_ratio: float,
    max_error_rate: float,
) -> Judgement:
    """Pass or fail one step from its summary.json.

    Precedence of the failure kinds: generator (volley could not keep up) over invalid
    (the measurement does not count) over server."""
    verdict = summary.get("verdict") or {}
    offered = float(summary.get("offered_rps") or 0.0)
    server: list[str] = []
    failures: set[FailureKind] = set()
    behind = False
    if mode != "concurrency" and offered > 0 and throughput_rps < min_throughput_ratio * offered:
        behind = True
        failures.add(FailureKind.SLOWED)
        server.append(
            f"throughput {throughput_rps:.1f}/s below {min_throughput_ratio:.0%} of the "
            f"offered {offered:.1f}/s (the server fell behind)"
        )
    error_rate = float(summary.get("error_rate") or 0.0)
    if error_rate > max_error_rate:
        failures.add(FailureKind.ERRORS)
        server.append(f"error rate {error_rate:.2%} above {max_error_rate:.2%}")
    held: list[str] = []
    if mode == "connections":  # any connection error, reset, drain or one not held fails
        block = summary.get("connections")
        held = connection_reasons(block, block["wanted"] if block else 0)
    undecided: list[str] = []
    for r in verdict.get("slo") or []:
        if r.get("outcome") == "inconclusive":
            iv = r.get("interval")
            span = "" if iv is None else f", interval {iv['low']:g}-{iv['high'] or '?'}"
            why = f": {r['reason']}" if r.get("reason") else ""
            undecided.append(f"SLO {r.get('slo')} inconclusive{span}{why}")
        elif not r.get("passed"):
            connect = str(r.get("metric", "")).startswith("connections.")
            failures.add(FailureKind.CONNECT_SLOW if connect else FailureKind.SLOWED)
            actual = r.get("actual")
            shown = "none" if actual is None else f"{float(actual):g}"
            server.append(f"SLO {r.get('slo')} failed (actual {shown})")

    generator: list[str] = []
    queued: list[str] = []
    for a in summary.get("agents") or []:
        if not a.get("saturated"):
            continue
        workers = max(int(a.get("workers") or 1), 1)
        cpu = float(a.get("cpu_percent_avg") or 0.0) / (100.0 * workers)
        if behind and cpu < GENERATOR_CPU_BUSY:
            # Late or dropped sends with CPU to spare: the in-flight cap filled up
            # because the server fell behind. That is the server's limit, not volley's.
            queued.append(
                f"agent {a.get('id')}: sends backed up behind the in-flight cap "
                f"(agent CPU {cpu:.0%}): a consequence of the slow server"
            )
        else:
            generator.append(str(a.get("saturation") or f"agent {a.get('id')} was the bottleneck"))

    invalid: list[str] = []
    if summary.get("partial"):
        invalid.append("an agent was lost: the step is partial")
    if not verdict.get("valid", True):
        for reason in verdict.get("reasons") or []:
            text = str(reason)
            if "was the bottleneck" in text or text.startswith("error rate"):
                continue  # counted above
            if "successful requests, fewer than" in text and server:
                continue  # a consequence of the server's errors
            if text not in invalid:
                invalid.append(text)

    seen = frozenset(failures)
    if held:  # the server did not hold the connections: what followed is its consequence
        return Judgement(False, "server", held + server + generator + invalid, seen)
    if generator:
        return Judgement(False, "generator", generator + server + invalid, seen)
    if summary.get("partial"):
        return Judgement(False, "invalid", invalid + server, seen)
    if server:
        return Judgement(False, "server", server + queued + invalid, seen)
    if invalid:
        return Judgement(False, "invalid", invalid, seen)
    if undecided:
        return Judgement(False, "inconclusive", undecided, seen)
    return Judgement(True, "pass", [], seen)


# ---------------------------------------------------------------- the search


@dataclass(frozen=True)
class Decision:
    """The next load to measure (None: the search is over) and why."""

    load: float | None
    phase: Literal["start", "ramp-up", "ramp-down", "bisect", "retry", "longer", "done"]
    why: str = ""
    #: "longer": the step is measured 2**longer times the step duration
    longer: int = 0


def _round(settings: SweepSettings, load: float) -> float:
    if settings.mode in WHOLE:
        return float(max(1, round(load)))
    # 4 significant digits: readable names, and replays compare equal
    digits = max(0, 3 - math.floor(math.log10(load))) if load > 0 else 0
    return round(load, digits)


def effective(steps: Sequence[StepResult]) -> list[StepResult]:
    """The steps that count: of several attempts at one load, the last."""
    last: dict[float, StepResult] = {}
    for s in steps:
        last[s.load] = s
    return sorted(last.values(), key=lambda s: s.index)


def superseded(steps: Sequence[StepResult]) -> set[int]:
    """Indexes of steps measured again later (at the same load)."""
    keep = {s.index for s in effective(steps)}
    return {s.index for s in steps} - keep


def bracket(steps: Sequence[StepResult]) -> tuple[StepResult | None, StepResult | None]:
    """(highest passing step below the lowest failure, lowest failing step).

    Only the last attempt at each load counts. Conservative with noise: a pass above
    a lower failure does not count."""
    steps = effective(steps)
    fails = [s for s in steps if not s.passed]
    hi = min(fails, key=lambda s: (s.load, s.index)) if fails else None
    passes = [s for s in steps if s.passed and (hi is None or s.load < hi.load)]
    lo = max(passes, key=lambda s: (s.load, -s.index)) if passes else None
    return lo, hi


def _close_enough(settings: SweepSettings, lo: float, hi: float) -> bool:
    if settings.mode == "concurrency":
        return hi - lo <= 1
    if settings.mode == "connections":  # whole connections, within the tolerance
        return hi - lo <= max(1.0, math.floor(settings.tolerance * lo))
    return hi - lo <= settings.tolerance * lo


def next_step(settings: SweepSettings, steps: Sequence[StepResult]) -> Decision:
    """The search: a deterministic function of the steps measured so far."""
    if not steps:
        return Decision(_round(settings, settings.start), "start")
    if len(steps) >= settings.max_steps:
        return Decision(None, "done", f"stopped after --max-steps {settings.max_steps}")
    last = steps[-1]
    if last.kind == "inconclusive":
        longer = sum(1 for s in steps if s.load == last.load and s.kind == "inconclusive")
        if longer <= settings.longer_retries:
            return Decision(last.load, "longer", "inconclusive step measured longer", longer)
    if last.kind in ("generator", "invalid"):
        # only the attempts volley could not judge count against the retries: an
        # inconclusive attempt before, measured longer, used none of them
        here = [s for s in steps if s.load == last.load]
        attempts = sum(1 for s in here if s.kind in ("generator", "invalid"))
        if attempts <= settings.retries:
            # as long as the attempt it repeats
            longer = sum(1 for s in here if s.kind == "inconclusive")
            return Decision(last.load, "retry", f"{last.kind} step measured again", longer)
    measured = {s.load for s in steps}
    lo, hi = bracket(steps)
    if hi is None:  # everything passed so far: step up
        top = max(s.load for s in steps)
        if top >= settings.ceiling:
            return Decision(None, "done", f"every step passed up to the ceiling {top:g}")
        nxt = _round(settings, min(top * settings.growth, settings.ceiling))
        if settings.mode in WHOLE:
            nxt = max(nxt, top + 1)
        return Decision(nxt, "ramp-up")
    if lo is None:  # nothing passed: step down
        nxt = _round(settings, hi.load / settings.growth)
        if settings.mode in WHOLE and nxt >= hi.load:
            nxt = hi.load - 1
        if nxt < settings.floor * 0.999 or nxt in measured:  # 0.999: rounding to 4 digits
            return Decision(None, "done", f"no step passed, down to {hi.load:g}")
        return Decision(nxt, "ramp-down")
    if _close_enough(settings, lo.load, hi.load):
        return Decision(None, "done", "bracket within tolerance")
    nxt = _round(settings, (lo.load + hi.load) / 2)
    if settings.mode in WHOLE:
        nxt = float(math.floor((lo.load + hi.load) / 2))
    if nxt in measured or not lo.load < nxt < hi.load:
        return Decision(None, "done", "bracket as narrow as the load's resolution")
    return Decision(nxt, "bisect")


@dataclass
class Knee:
    index: int
    load: float
    throughput_rps: float
    latency_ms: float
    power: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def knee(steps: Sequence[StepResult]) -> Knee | None:
    """The knee of the latency–throughput curve: the step of highest Kleinrock *power*
    (throughput / mean latency), the operating point past which added load buys more
    latency than throughput. Only steps that measured the server (pass or server fail)."""
    best: Knee | None = None
    for s in effective(steps):
        if s.kind not in ("pass", "server"):
            continue
        mean = float(s.latency_ms.get("mean") or 0.0)
        if mean <= 0 or s.throughput_rps <= 0:
            continue
        power = s.throughput_rps / mean
        if best is None or power > best.power:
            best = Knee(s.index, s.load, s.throughput_rps, mean, power)
    return best


@dataclass
class SweepOutcome:
    """What a finished search says."""

    mode: SweepMode
    #: The highest load that passed (below any failure), and what it delivered.
    max_load: float | None
    max_throughput_rps: float | None
    max_step: int | None
    #: The lowest failing load (the bracket's top), if any.
    fail_load: float | None
    limited_by: LimitedBy
    message: str
    stop: str
    knee: Knee | None
    steps: int
    #: Mode connections: what failed first at the lowest failing step (refused, reset,
    #: tls, timeout, other, goaway, not-held, connect-slow, slowed, errors;
    #: coordinator/sweep/conns.py)
    failed_first: FailureKind = FailureKind.NONE

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["knee"] = self.knee.to_dict() if self.knee else None
        return out


def conclude(settings: SweepSettings, steps: Sequence[StepResult], stop: str) -> SweepOutcome:
    lo, hi = bracket(steps)
    unit = {"rate": "req/s", "concurrency": "in flight", "connections": "connections"}[
        settings.mode
    ]
    k = knee(steps)
    limited: LimitedBy
    if lo is None:
        limited = "nothing-passed"
        low = hi.load if hi else settings.start
        why = "; ".join(hi.reasons[:2]) if hi else ""
        message = f"no step passed (lowest tried {low:g} {unit}: {why})"
    elif hi is None:
        capped = lo.load >= settings.ceiling
        limited = "max-load" if capped else "max-steps"
        message = (
            f"every step passed, up to {lo.load:g} {unit}: the server's limit is higher "
            f"(raise {'--max-load' if capped else '--max-steps'})"
        )
    else:
        bracket_text = f"between {lo.load:g} and {hi.load:g} {unit}"
        narrow = _close_enough(settings, lo.load, hi.load)
        if hi.kind == "generator":
            limited = "generator"
            message = (
                f"volley was the bottleneck at {hi.load:g} {unit}: the server sustained at "
                f"least {lo.load:g} {unit}, its own limit was not reached "
                "(add agents or workers and sweep again)"
            )
        elif hi.kind == "inconclusive":
            limited = "inconclusive"
            message = (
                f"at {hi.load:g} {unit} an SLO stayed inconclusive after measuring longer "
                f"({'; '.join(hi.reasons[:1])}); the server sustained at least {lo.load:g} "
                f"{unit} with the whole interval within the SLO"
            )
        elif hi.kind == "invalid":
            limited = "invalid"
            message = (
                f"the step at {hi.load:g} {unit} was not a valid measurement "
                f"({'; '.join(hi.reasons[:2])}); the server sustained at least {lo.load:g}"
            )
        elif not narrow:
            limited = "max-steps"
            message = f"the server's limit lies {bracket_text} (not narrowed further: {stop})"
        else:
            limited = "server"
            message = f"the server's limit lies {bracket_text}"
            if hi.failed_first:
                message += f" ({hi.failed_first} first at {hi.load:g})"
    return SweepOutcome(
        mode=settings.mode,
        max_load=lo.load if lo else None,
        max_throughput_rps=lo.throughput_rps if lo else None,
        max_step=lo.index if lo else None,
        fail_load=hi.load if hi else None,
        limited_by=limited,
        message=message,
        stop=stop,
        knee=k,
        steps=len(steps),
        failed_first=hi.failed_first if hi else FailureKind.NONE,
    )


class Measure(Protocol):
    """Measure step `index` at `load`; `longer`: 2**longer times the step duration."""

    def __call__(self, index: int, load: float, longer: int = 0) -> Awaitable[StepResult]: ...


async def search(
    settings: SweepSettings,
    measure: Measure,
    previous: Sequence[StepResult] = (),
    on_step: Callable[[StepResult, bool], None] | None = None,
) -> tuple[list[StepResult], SweepOutcome]:
    """Drive the search. ``previous`` holds steps of an interrupted sweep: each is reused
    (not measured again) as long as the search asks for the same load at the same index.
    ``on_step(step, reused)`` is called after every step (to persist it)."""
    steps: list[StepResult] = []
    while True:
        d = next_step(settings, steps)
        if d.load is None:
            return steps, conclude(settings, steps, d.why)
        i = len(steps)
        old = previous[i] if i < len(previous) else None
        reused = old is not None and math.isclose(old.load, d.load, rel_tol=1e-9)
        if reused:
            step = cast(StepResult, old)
        else:
            previous = ()  # the search diverged: nothing after this can be reused
            step = await measure(i, d.load, d.longer)
        steps.append(step)
        if on_step is not None:
            on_step(step, reused)


def load_label(mode: SweepMode, load: float) -> str:
    """A step's load as it appears in its directory name: ``40rps``, ``c8``."""
    if mode == "concurrency":
        return f"c{int(load)}"
    if mode == "connections":
        return f"n{int(load)}"
    return f"{load:g}rps"


# ---------------------------------------------------------------- one step's plan


def step_plan(
    base: Plan,
    settings: SweepSettings,
    load: float,
    *,
    target: str = "",
    model: str = "",
    name: str = "",
) -> Plan:
    """The base plan at one load: constant load for warm-up + step duration, and a
    validity floor that a step can meet (min duration = the step's; an open-loop step
    is lengthened, up to 4x, until it holds the plan's minimum request count)."""
    measured = settings.step_duration_s
    v = base.validity
    conns = settings.mode == "connections"
    if conns:
        load, held = step_rate(int(load), settings.rate_per_connection), int(load)
        base = replace(base, connections_total=held)
    if settings.mode == "rate" or conns:
        need = v.min_requests * 1.1 / load
        if need > measured:
            measured = min(math.ceil(round(need * 10, 6)) / 10, 4 * settings.step_duration_s)
        spec = replace(
            base.load,
            mode="open",
            rate=float(load),
            concurrency=0,
            stages=(),
            trace=None,
            duration_s=settings.warmup_s + measured,
            warmup_s=settings.warmup_s,
        )
        if spec.arrival == "trace":
            raise PlanError("a rate sweep needs constant or poisson arrivals, not a trace")
    else:
        spec = replace(
            base.load,
            mode="closed",
            rate=0.0,
            concurrency=int(load),
            stages=(),
            trace=None,
            duration_s=settings.warmup_s + measured,
            warmup_s=settings.warmup_s,
        )
    validity = replace(v, min_duration_s=min(v.min_duration_s, settings.step_duration_s))
    plan = replace(
        base,
        target=target or base.target,
        model=model or base.model,
        name=name or base.name,
        load=spec,
        validity=validity,
    )
    return plan_from_dict(plan.to_dict())  # validated like any plan
