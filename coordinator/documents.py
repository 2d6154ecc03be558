"""summary.json described once: the TypedDicts its writers fill and its readers use,
and `load_summary`, the one place a summary.json is read from disk.

Writers: `coordinator.summary.build_summary`, then the run (input pool, per-agent
detection times, outages, recovery) or `volley collect` (outages, recovered).
Keys marked NotRequired are absent from some summaries (see their comments).

No `from __future__ import annotations` here: on Python 3.11 it hides NotRequired
from `__required_keys__`, which the schema test reads.
"""

import functools
import json
import math
import types
from pathlib import Path
from typing import (
    Any,
    Literal,
    NotRequired,
    Required,
    TypedDict,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from coordinator.sequences import SequencesBlock
from coordinator.stats.documents import PlanModelRow, ServerSummary
from volley.conns import ConnBlock, RunConnBlock
from volley.plan import Arrival, Mode, Protocol
from volley.request import PoolDescription
from volley.shown import shown

#: summary.json's `server` (the plan's model, from server.json).
ServerBlock = ServerSummary


class NoServerRow(TypedDict):
    """`models[].server` of a model the server has no figures for: {}."""


#: `models[].server`: that model's row of the server's statistics, {} when it has none.
ServerModelBlock = PlanModelRow | NoServerRow


#: The keys of Percentiles.
PercentileKey = Literal["p50", "p90", "p95", "p99", "p999", "max", "mean"]


class Percentiles(TypedDict):
    """Milliseconds from a histogram (all 0.0 when it is empty)."""

    p50: float
    p90: float
    p95: float
    p99: float
    p999: float
    max: float
    mean: float


class Lateness(TypedDict):
    """Send lateness (sent - intended), ms; late_fraction: share of sends >1 ms late."""

    p50: float
    p99: float
    max: float
    late_fraction: float


class RequestCounts(TypedDict):
    #: Open loop: the schedule's arrivals in this period (regenerated from the plan);
    #: closed loop: the records.
    scheduled: int
    sent: int
    ok: int
    errors: int
    dropped: int
    not_sent: int
    #: status name -> count
    error_codes: dict[str, int]
    #: Top-level `requests` of an open-loop run: the whole schedule, warm-up included.
    schedule_total: NotRequired[int]
    #: Open loop: arrivals with a record, and scheduled - recorded (lost with an agent,
    #: or never sent because the run ended early).
    recorded: NotRequired[int]
    no_record: NotRequired[int]


class ByteCounts(TypedDict):
    request: int
    response: int


class SilenceRow(TypedDict):
    """`agents[].silences`: seconds from the start instant (coordinator clock)."""

    heard_s: float  #: its last event before the silence
    missing_s: float  #: declared missing
    back_s: float  #: its first event after it


class AgentRow(TypedDict):
    id: str
    address: str
    host: str
    workers: int
    #: ready | running | done | failed | missing | stopped
    state: str
    error: str
    scheduled: int
    sent: int
    ok: int
    errors: int
    dropped: int
    throughput_rps: float
    latency_ms: Percentiles
    service_time_ms: Percentiles
    send_lateness_ms: Lateness
    clock_offset_ms: float | None
    clock_uncertainty_ms: float | None
    start_skew_ms: float | None
    cpu_seconds: float
    cpu_percent_avg: float
    cpu_percent_peak: float
    cpu_us_per_request: float | None
    saturated: bool
    saturation: str
    #: What a saturated agent was short of (coordinator.bottleneck.Shortfall): "workers"
    #: or "host" (every core of its host busy); "" when it kept up. Absent from
    #: summaries written before it was told apart.
    bottleneck: NotRequired[str]
    #: Its host's CPU busy while the run ran (% of all its cores, every process on the
    #: host counted): mean and peak of its statuses; None where the host does not say.
    host_cpu_percent_avg: NotRequired[float | None]
    host_cpu_percent_peak: NotRequired[float | None]
    #: Records of its batches dropped as invalid (never ingested; coordinator/validate.py).
    invalid_records: int
    #: What it got wrong: fault kind (coordinator.validate.Fault) -> records (for record
    #: faults: bad clock, duplicate index, ...) or events (malformed batch, bad status
    #: message, start disagrees with the run); {} for an honest agent.
    faults: dict[str, int]
    #: Requests sent again transparently because the server never processed them
    #: (GOAWAY past them, REFUSED_STREAM, a reused HTTP/1.1 connection closed before any
    #: answer), and connections opened to replace ones the server closed or drained.
    #: Absent from summaries written before they were counted.
    retried: NotRequired[int]
    reconnects: NotRequired[int]
    #: Connection attempts that failed (refused, reset, TLS, timed out), apart from the
    #: request errors (the requests they left unsendable are errors UNAVAILABLE).
    connect_errors: NotRequired[int]
    #: Its connections to the target: wanted, opened, held at the end, connect times,
    #: connection errors by kind, resets and GOAWAYs received (volley/conns.py).
    connections: NotRequired[ConnBlock]
    #: Open loop: the agent's slice of the schedule has `scheduled` arrivals (measured
    #: period), `recorded` of them with a record, `no_record` without.
    recorded: NotRequired[int]
    no_record: NotRequired[int]
    #: Set by the run (not by `volley collect`).
    input_pool_bytes: NotRequired[int]
    last_seen_s: NotRequired[float]
    lost_detected_s: NotRequired[float | None]
    #: Times it was declared missing and then heard from again (its stream stayed open).
    silences: NotRequired[list[SilenceRow]]
    #: Two-phase start (set by the run): from its Run to every worker ready (s), how
    #: long before the start instant its Start arrived (ms, < 0: after it).
    prepare_s: NotRequired[float | None]
    start_margin_ms: NotRequired[float | None]
    #: Its first sends were late because it started late (start-up), not for lack of
    #: capacity: what happened (empty when it started on time).
    startup: NotRequired[str]


class PayloadRow(TypedDict):
    """`latency_by_payload`: one power-of-two request size bucket."""

    bucket_bytes: list[int]  #: [low, high)
    count: int
    sent: int
    errors: int
    request_bytes_mean: float
    latency_ms: Percentiles
    service_time_ms: Percentiles


class ShapeRow(TypedDict):
    """`latency_by_shape`: one input shape."""

    shape: str
    count: int
    sent: int
    errors: int
    request_bytes_mean: float
    latency_ms: Percentiles


class ModelRow(TypedDict):
    """`models`: one model of the plan (one row for a single-model plan)."""

    id: int
    name: str
    version: str
    weight: float
    share: float
    requests: RequestCounts
    throughput_rps: float
    error_rate: float
    latency_ms: Percentiles
    service_time_ms: Percentiles
    bytes: ByteCounts
    server: ServerModelBlock


#: An SLO judged on an interval (volley/confidence.py `decide`).
SloOutcome = Literal["pass", "fail", "inconclusive"]


class IntervalDoc(TypedDict):
    """A confidence interval; `high` is null when the data cannot bound the figure
    (too few values for that percentile at that level)."""

    low: float
    high: float | None


class PercentileIntervals(TypedDict):
    """Intervals of a Percentiles block (ms): distribution-free for p50..p999 (bucket
    error included), approximate (normal) for the mean, exact for the max."""

    p50: IntervalDoc
    p90: IntervalDoc
    p95: IntervalDoc
    p99: IntervalDoc
    p999: IntervalDoc
    max: IntervalDoc
    mean: IntervalDoc


class Enough(TypedDict):
    """Per percentile: successful requests needed for an upper bound at the level, and
    whether the run had them."""

    needed: int
    had: int
    enough: bool
    #: how much time correlation inflates the percentile's variance (1: none): the
    #: requests needed are the independent-values minimum times this
    design_effect: float


class RequestsNeeded(TypedDict):
    p50: Enough
    p90: Enough
    p95: Enough
    p99: Enough
    p999: Enough


class ConfidenceBlock(TypedDict):
    """summary.confidence: how sure every figure is (volley/confidence.py)."""

    level: float
    latency_ms: PercentileIntervals
    service_time_ms: PercentileIntervals
    throughput_rps: IntervalDoc
    error_rate: IntervalDoc
    #: the minimum-sample rule for each latency percentile
    requests_needed: RequestsNeeded
    method: str


class SteadyState(TypedDict):
    """summary.steady_state: the warm-up found in the per-window series (MSER-5)."""

    #: windows (1 s) from the end of the planned warm-up that had not settled yet
    unsettled_windows: int
    unsettled_s: float
    #: latency | throughput | "" (which series settled last)
    by: str
    #: "excluded" (the figures are from the settled windows) or "reported"
    action: str
    note: str
    #: `--warmup auto`: seconds and requests (records) left out of the figures, the
    #: windows judged, and the settle rule that decided it
    excluded_s: NotRequired[float]
    excluded_requests: NotRequired[int]
    windows_judged: NotRequired[int]
    rule: NotRequired[str]


class SloResult(TypedDict):
    slo: str
    metric: str
    op: str
    threshold: float
    #: None when there is nothing to judge (see reason).
    actual: float | None
    passed: bool
    #: Why it failed without a figure (e.g. "no successful request"); "" when judged.
    reason: str
    #: pass: the whole interval meets the SLO; fail: none of it does; inconclusive: it
    #: straddles the threshold or cannot be bounded (too few requests: see reason).
    outcome: NotRequired[SloOutcome]
    interval: NotRequired[IntervalDoc]


class Verdict(TypedDict):
    valid: bool
    reasons: list[str]
    warnings: list[str]
    slo: list[SloResult]
    slo_passed: bool
    #: fail if one SLO failed, else inconclusive if one was, else pass.
    slo_outcome: NotRequired[SloOutcome]


class InputPool(PoolDescription):
    """`input_pool`: the payload pool every worker built."""

    workers: int
    bytes_all_workers: int


class Outage(TypedDict):
    start_s: float
    end_s: float
    records: int
    errors: int
    error_codes: dict[str, int]


class Recovery(TypedDict):
    """How to collect what lost agents spooled."""

    agents: list[str]
    hint: str


class RecoveredAgent(TypedDict):
    index: int
    address: str
    spooled_records: int
    state: str
    notes: list[str]
    #: "agent" (replayed by the agent) or the spool folder read (a local agent)
    source: str


class Recovered(TypedDict):
    """`volley collect` rebuilt the summary from the agents' spools."""

    at_unix: float
    agents: list[RecoveredAgent]
    records_before: int
    records_after: int
    recovered: int
    unreachable: list[str]
    #: ok | none | unreadable
    requests_parquet_was: str
    #: the plan's measured period; `duration_s` is the one the records cover
    planned_duration_s: float
    #: "records": duration_s, offered_rps and throughput_rps are from the records
    duration_from: str


class RecoveredFile(TypedDict):
    """`volley collect` of a run without raw records: the spools went to `file`."""

    at_unix: float
    file: str
    records: int
    #: records of the spools dropped as invalid (per agent: agents[].invalid_records,
    #: faults); absent before s5
    invalid_records: NotRequired[int]
    note: str


class ResponseCounts(TypedDict):
    """Responses with data per successful streaming request."""

    min: int
    max: int
    mean: float


class Goodput(TypedDict):
    """Requests that met every per-request limit the SLOs set (TTFT, time per output
    token, latency): request-level goodput, and the tokens of those requests."""

    ttft_ms: float | None  #: the limits (None: not limited)
    tpot_ms: float | None
    latency_ms: float | None
    requests: int
    share: float  #: of the measured requests sent
    requests_per_s: float
    tokens_per_s: float


class StreamBlock(TypedDict):
    """Streaming (decoupled) requests of the measured period, the successful ones; every
    time from the request's intended send time (coordinator/aggregate.py says how)."""

    requests: int  #: successful requests that had at least one response with data
    responses: int
    responses_per_request: ResponseCounts
    tokens: int
    tokens_per_request_mean: float
    tokens_per_s: float  #: output tokens of successful requests per measured second
    ttft_ms: Percentiles  #: time to first token (response)
    ttst_ms: Percentiles  #: time to second token
    itl_ms: Percentiles  #: inter-token latency: every gap between consecutive responses
    tpot_ms: Percentiles  #: time per output token, (last - first) / (tokens - 1) per request
    itl_samples: int  #: gaps behind itl_ms (0 where they were not kept)
    #: Set when the plan's SLOs limit TTFT, time per output token or latency.
    goodput: NotRequired[Goodput]


class AutoStopDoc(TypedDict):
    """summary.auto_stop (`--duration auto`)."""

    #: decided | max duration
    reason: str
    #: the measured seconds when it stopped, and the most it could have run
    stopped_at_s: float
    max_duration_s: float
    target_width: float
    #: one line per SLO percentile / throughput: where it stood at the stop
    checks: list[str]


class AffinityDoc(TypedDict):
    """`affinity` (local agents): which cores the workers and the rest were pinned to
    (`coordinator/affinity.py`); `pinned` False with a `note` when nothing was."""

    pinned: bool
    allowed_cores: list[int]
    coordinator_cores: list[int]
    #: per local agent, its workers' cores
    worker_cores: list[list[int]]
    note: str


class StartBlock(TypedDict):
    """`start` (set by a run with the two-phase start): how the agents were prepared and
    started. Skews are |first send - its intended time| per agent."""

    two_phase: bool
    lead_ms: float  #: from the agreed start being fixed to the instant
    #: the ready round before it: one keepalive to every agent at once, to the last reply
    ready_round_ms: float
    agents: int
    prepare_s_max: float | None
    prepare_s_median: float | None
    slowest_agent: str
    #: the smallest margin between an agent's Start and the instant (ms; < 0: late)
    margin_ms_min: float | None
    start_late_agents: list[str]
    skew_ms_max: float | None
    skew_ms_median: float | None
    agents_within_5ms: int


class Summary(TypedDict):
    run_id: str
    name: str
    target: str
    model: str
    protocol: Protocol
    mode: Mode
    arrival: Arrival | Literal["closed"]
    seed: int
    duration_s: float
    warmup_s: float
    requests: RequestCounts
    warmup_requests: RequestCounts
    offered_rps: float
    throughput_rps: float
    error_rate: float
    latency_ms: Percentiles
    service_time_ms: Percentiles
    send_lateness_ms: Lateness
    bytes: ByteCounts
    agents: list[AgentRow]
    server: ServerBlock
    latency_by_payload: list[PayloadRow]
    latency_by_shape: list[ShapeRow]
    models: list[ModelRow]
    partial: bool
    verdict: Verdict
    #: Set by the run.
    input_pool: NotRequired[InputPool]
    #: Set by the run and by `volley collect`.
    partial_agents: NotRequired[list[str]]
    outages: NotRequired[list[Outage]]
    #: Set by the run when an agent was lost.
    recovery: NotRequired[Recovery]
    #: Set by `volley collect`.
    recovered: NotRequired[Recovered | RecoveredFile]
    #: A run of stateful sequences (coordinator/sequences.py).
    sequences: NotRequired[SequencesBlock]
    #: Set when the run's requests were streamed (a decoupled model).
    stream: NotRequired[StreamBlock]
    #: Intervals of the figures (absent from summaries before them).
    confidence: NotRequired[ConfidenceBlock]
    steady_state: NotRequired[SteadyState]
    #: `--duration auto`: why and when the coordinator stopped the run.
    auto_stop: NotRequired[AutoStopDoc]
    #: Set by a run with the two-phase start.
    start: NotRequired[StartBlock]
    #: Every agent's `connections` merged (absent from older summaries).
    connections: NotRequired[RunConnBlock]
    affinity: NotRequired[AffinityDoc]


class SummaryError(ValueError):
    """A summary.json cannot be used; the message names the file and why."""


_JSON_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _kind(value: object) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def mismatch(value: object, tp: Any, where: str = "", require: bool = True) -> str | None:
    """Where a JSON document differs from its description `tp` (a TypedDict, list, dict,
    union, Literal or scalar annotation), as one short phrase; None when it conforms.
    Keys a TypedDict does not describe are allowed (newer writers may add some); keys it
    requires must be there (unless not `require`: values only). Integers must fit 64 bits."""
    if tp is Any or tp is object:
        return None
    origin, args = get_origin(tp), get_args(tp)
    if origin is NotRequired or origin is Required:
        return mismatch(value, args[0], where, require)
    if is_typeddict(tp):
        if not isinstance(value, dict):
            return f"{where or 'the document'} holds {_kind(value)}, not an object"
        hints = _hints(tp)
        for key in (k for k in hints if k in value):  # a wrong value says more than a gap
            why = mismatch(value[key], hints[key], f"{where}.{key}" if where else key, require)
            if why:
                return why
        for key, hint in hints.items() if require else ():
            # (on 3.11, __required_keys__ misses a NotRequired written as a string)
            if (
                key not in value
                and key in tp.__required_keys__
                and get_origin(hint) is not NotRequired
            ):
                return f"{f'{where}.{key}' if where else key} is missing"
        return None
    if origin in (Union, types.UnionType):
        whys = [mismatch(value, alt, where, require) for alt in args]
        return whys[0] if all(whys) else None
    if origin is Literal:
        return None if value in args else f"{where} holds {_shown(value)}, not one of {args}"
    if origin is list:
        if not isinstance(value, list):
            return f"{where} holds {_kind(value)}, not an array"
        for i, item in enumerate(value):
            why = mismatch(item, args[0], f"{where}[{i}]", require)
            if why:
                return why
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return f"{where} holds {_kind(value)}, not an object"
        for k, item in value.items():
            why = mismatch(item, args[1], f"{where}[{_shown(k)}]", require)
            if why:
                return why
        return None
    if tp is type(None):
        return None if value is None else f"{where} holds {_kind(value)}, not null"
    if tp is bool:
        ok = type(value) is bool
    elif tp is int:
        ok = type(value) is int and abs(value) < 2**63
    elif tp is float:
        ok = (type(value) is int and abs(value) < 2**63) or type(value) is float
    elif tp is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"mismatch: annotation {tp!r} is not a JSON type")
    return None if ok else f"{where} holds {_shown(value)}, not {_WANTED[tp]}"


@functools.cache
def _hints(tp: Any) -> dict[str, Any]:
    return get_type_hints(tp, include_extras=True)


_WANTED = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _shown(value: object) -> str:
    return shown(value, 60)


def _finite(text: str) -> float:
    """JSON numbers of a summary: NaN and infinities are not (writers never write them)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _ranges(data: dict[str, Any]) -> str | None:
    """What the types do not say: a payload bucket is [low, high)."""
    for i, row in enumerate(data.get("latency_by_payload") or []):
        n = len(row["bucket_bytes"])
        if n != 2:
            return f"latency_by_payload[{i}].bucket_bytes holds {n} numbers, not 2"
    return None


def load_summary(path: Path) -> Summary:
    """Read a summary.json and check it against `Summary`, all the way down: a file that
    is not UTF-8 JSON, or whose values are not what readers expect, is a SummaryError
    naming the file and the first key that is wrong (never an error in a reader later)."""
    try:
        data = json.loads(
            path.read_bytes().decode("utf-8"), parse_float=_finite, parse_constant=_finite
        )
    except OSError as exc:
        raise SummaryError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SummaryError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise SummaryError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise SummaryError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError:  # NaN, 1e400, or past 4300 digits (int() refuses)
        raise SummaryError(
            f"{path} is not a volley summary (a number is not finite or has too many digits)"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("requests"), dict):
        raise SummaryError(f"{path} is not a volley summary")
    # a value of the wrong kind says more than a missing key: look for those first
    why = mismatch(data, Summary, require=False) or mismatch(data, Summary) or _ranges(data)
    if why:
        raise SummaryError(f"{path} is not a volley summary of this version: {why}")
    return cast(Summary, data)
