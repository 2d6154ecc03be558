"""Build summary.json from the aggregated run: figures, per-agent health, verdict (pure)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from coordinator.aggregate import AgentTally, Aggregator, GoodLimits, Stats
from coordinator.bottleneck import (
    Behind,
    Shortfall,
    grouped_lines,
    grouped_reasons,
    host_cpu,
    host_is_busy,
    host_key,
    host_phrase,
    host_reason,
    target_is_loopback,
)
from coordinator.clock import ClockEstimate
from coordinator.documents import (
    AgentRow,
    Goodput,
    Lateness,
    ModelRow,
    PayloadRow,
    Percentiles,
    RequestCounts,
    ServerBlock,
    ShapeRow,
    StreamBlock,
    Summary,
)
from coordinator.intervals import run_confidence
from coordinator.sequences import failed_reasons
from coordinator.slo import parse_slo
from coordinator.stats.documents import unavailable_server
from coordinator.validate import GARBAGE_SHARE
from volley import records as rc
from volley.conns import ConnFigures, describe, run_connections
from volley.histogram import LogHistogram
from volley.plan import Plan

PCTS = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}


@dataclass
class AgentInfo:
    """What the coordinator knows of one agent (filled from Hello, clock probes, its stream)."""

    index: int
    address: str
    id: str = ""
    host: str = ""
    workers: int = 0
    cores: int = 0
    clock: ClockEstimate | None = None
    state: str = "ready"  #: ready | running | done | failed | missing
    error: str = ""
    cpu_seconds: float = 0.0
    cpu_percent: float = 0.0  #: the last one reported
    cpu_percent_peak: float = 0.0
    #: requests in flight at its last status (`--duration auto` counts them as unknown)
    in_flight: int = 0
    cpu_samples: list[float] = field(default_factory=list)
    #: its host's CPU busy (% of all its cores, every process) per status while running
    host_cpu_samples: list[float] = field(default_factory=list)
    #: the seconds each one covers (its agent-clock gap to the status before it)
    host_cpu_spans: list[float] = field(default_factory=list)
    #: agent clock of its last status (what the next host sample's span is counted from)
    last_status_agent_ns: int = 0
    last_seen_ns: int = 0
    #: records of its batches dropped as invalid (coordinator/validate.py)
    invalid_records: int = 0
    #: what it got wrong: fault kind -> records (record faults) or events (the others)
    faults: Counter[str] = field(default_factory=Counter)
    #: requests its transport sent again (never processed by the server), and
    #: connections it opened to replace closed or drained ones (its last status)
    retried: int = 0
    reconnects: int = 0
    connect_errors: int = 0
    #: what happened to its connections to the target (its last status; volley/conns.py)
    conns: ConnFigures | None = None
    #: two-phase start: from its Run to every worker ready (s), each worker's own share
    prepare_s: float | None = None
    worker_prepare_s: list[float] = field(default_factory=list)
    #: how long before the start instant its Start arrived (ms; < 0: after it)
    start_margin_ms: float | None = None


def hist_ms(h: LogHistogram) -> Percentiles:
    if h.count == 0:
        return {
            "p50": 0.0,
            "p90": 0.0,
            "p95": 0.0,
            "p99": 0.0,
            "p999": 0.0,
            "max": 0.0,
            "mean": 0.0,
        }
    ps = h.percentiles(list(PCTS.values()))
    return {
        "p50": round(ps[PCTS["p50"]] / 1e6, 4),
        "p90": round(ps[PCTS["p90"]] / 1e6, 4),
        "p95": round(ps[PCTS["p95"]] / 1e6, 4),
        "p99": round(ps[PCTS["p99"]] / 1e6, 4),
        "p999": round(ps[PCTS["p999"]] / 1e6, 4),
        "max": round(h.max_ns / 1e6, 4),
        "mean": round(h.mean_ns / 1e6, 4),
    }


def lateness_ms(st: Stats) -> Lateness:
    h = st.lateness
    if h.count == 0:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "late_fraction": 0.0}
    return {
        "p50": round(h.percentile(50) / 1e6, 4),
        "p99": round(h.percentile(99) / 1e6, 4),
        "max": round(h.max_ns / 1e6, 4),
        "late_fraction": round(st.late / h.count, 6),
    }


def stream_block(st: Stats, measured_s: float) -> StreamBlock:
    """The streaming figures of `st` (summary.json's `stream`)."""
    n = st.streamed
    return {
        "requests": n,
        "responses": st.responses,
        "responses_per_request": {
            "min": max(st.responses_min, 0),
            "max": max(st.responses_max, 0),
            "mean": round(st.responses / n, 3) if n else 0.0,
        },
        "tokens": st.tokens,
        "tokens_per_request_mean": round(st.tokens / n, 3) if n else 0.0,
        "tokens_per_s": round(st.tokens / measured_s, 3) if measured_s > 0 else 0.0,
        "ttft_ms": hist_ms(st.ttft),
        "ttst_ms": hist_ms(st.ttst),
        "itl_ms": hist_ms(st.itl),
        "tpot_ms": hist_ms(st.tpot),
        "itl_samples": st.itl.count,
    }


def goodput_block(st: Stats, limits: GoodLimits, measured_s: float) -> Goodput:
    def ms(ns: int) -> float | None:
        return None if ns < 0 else ns / 1e6

    return {
        "ttft_ms": ms(limits.ttft_ns),
        "tpot_ms": ms(limits.tpot_ns),
        "latency_ms": ms(limits.latency_ns),
        "requests": st.good,
        "share": round(st.good / st.sent, 6) if st.sent else 0.0,
        "requests_per_s": round(st.good / measured_s, 3) if measured_s > 0 else 0.0,
        "tokens_per_s": round(st.good_tokens / measured_s, 3) if measured_s > 0 else 0.0,
    }


def stream_samples(st: Stats) -> dict[str, int]:
    """The values behind each streaming percentile family (for the SLO judge)."""
    return {
        "ttft_ms": st.ttft.count,
        "ttst_ms": st.ttst.count,
        "itl_ms": st.itl.count,
        "tpot_ms": st.tpot.count,
    }


def requests_block(st: Stats) -> RequestCounts:
    return {
        "scheduled": st.records,
        "sent": st.sent,
        "ok": st.ok,
        "errors": st.errors,
        "dropped": st.dropped,
        "not_sent": st.not_sent,
        "error_codes": {rc.status_name(c): n for c, n in sorted(st.error_codes.items())},
    }


#: A lateness p99 above the plan's limit blames the generator only when at least this
#: many sends were that late, and a late fraction above it only when at least this many
#: sends were over 1 ms late. With n sends, p99 is decided by the ceil(n / 100) latest
#: ones: in a 3 s step at 40 req/s that is two sends, and two 10 ms stalls of a busy
#: 2-core host (another tenant, the kernel) are not an agent that cannot keep up; nor
#: are 4 late sends of 6 (64 agents at 2 req/s for 3 s: "67 % late"). An agent that
#: really falls behind is late on a run of sends, never on one or two.
MIN_LATE_SENDS = 10


def sends_later_than(h: LogHistogram, limit_ns: float) -> int:
    """How many recorded values certainly exceed `limit_ns` (whole buckets above it:
    the bucket that holds the limit is left out, so this never over-counts)."""
    lower, _, counts = h.buckets()
    return int(counts[lower > limit_ns].sum())


def _late_reasons(plan: Plan, st: Stats, startup: Stats | None) -> tuple[list[str], bool]:
    """Lateness beyond the plan's limits: (what, and whether it was all start-up's).

    `startup`: the sends of an agent that started late, until it caught up
    (AgentTally.startup). Lateness that goes away once those are left out was the
    start-up's, not a lack of capacity."""
    v = plan.validity
    late = lateness_ms(st)
    limit_ns = v.max_lateness_p99_ms * 1e6
    why: list[str] = []
    if late["late_fraction"] > v.max_late_fraction and st.late >= MIN_LATE_SENDS:
        why.append(f"{late['late_fraction']:.1%} of sends >1 ms late")
    over = sends_later_than(st.lateness, limit_ns)
    if late["p99"] > v.max_lateness_p99_ms and over >= MIN_LATE_SENDS:
        why.append(f"send lateness p99 {late['p99']:.1f} ms")
    if not why or startup is None or startup.sent == 0:
        return why, False
    # the steady state: every send but the start-up's
    n = st.lateness.count - startup.lateness.count
    steady_late = st.late - startup.late
    steady_over = over - sends_later_than(startup.lateness, limit_ns)
    capacity = n > 0 and (
        (steady_late / n > v.max_late_fraction and steady_late >= MIN_LATE_SENDS)
        or (steady_over >= MIN_LATE_SENDS and steady_over > 0.01 * n)
    )
    return why, not capacity


def _behind(
    plan: Plan,
    st: Stats,
    info: AgentInfo,
    span_s: float,
    startup: Stats | None = None,
    skew_ns: int = 0,
) -> Behind | None:
    """Whether the agent lacked capacity, and where: its workers, or its host (every
    core busy: `coordinator.bottleneck`). An agent whose lateness was only its
    start-up's (it started `skew_ns` late) did not: `startup_note`."""
    cpu_avg = (info.cpu_seconds / span_s * 100.0) if span_s > 0 else 0.0
    util = cpu_avg / (100.0 * max(info.workers, 1))
    why: list[str] = []
    if plan.load.mode == "open" and st.sent:
        lateness, startup_only = _late_reasons(plan, st, startup)
        if not startup_only:
            why += lateness
    if st.dropped:
        why.append(f"{st.dropped} arrivals dropped at the in-flight cap")
    if util > 0.95:
        why.append(f"CPU {util:.0%} of {info.workers} workers")
    if not why:
        return None
    name = info.id or info.address
    p99 = lateness_ms(st)["p99"] if st.lateness.count else 0.0
    host_mean, _ = host_cpu(info.host_cpu_samples, info.host_cpu_spans)
    # drops at the in-flight cap are the cap's (and the server's pace), not the host's
    if host_mean is not None and host_is_busy(host_mean) and not st.dropped:
        line = host_phrase(
            info.host,
            info.cores,
            host_mean,
            target_is_loopback(plan.target),
        )
        return Behind(
            name,
            Shortfall.HOST,
            host_reason(name, ", ".join(why), line),
            p99,
            host_key(info.host, info.address),
            line,
        )
    workers = max(info.workers, 1)
    need = max(workers + 1, math.ceil(workers * max(util, 0.9) / 0.7))
    return Behind(
        name,
        Shortfall.WORKERS,
        f"agent {name} was the bottleneck ({', '.join(why)}): "
        f"give it ~{need - workers} more worker(s) (or add an agent) to keep up",
        p99,
        host_key(info.host, info.address),
    )


def startup_note(plan: Plan, st: Stats, info: AgentInfo, startup: Stats, skew_ns: int) -> str:
    """Why an agent that started late broke the lateness limits (empty when it did not,
    or when it lacked capacity beyond its start-up): start-up named, not capacity."""
    if plan.load.mode != "open" or not st.sent or startup.sent == 0:
        return ""
    lateness, startup_only = _late_reasons(plan, st, startup)
    if not lateness or not startup_only:
        return ""
    prep = f", prepared in {info.prepare_s:.2f}s" if info.prepare_s is not None else ""
    got = (
        f", its start instant arrived {info.start_margin_ms:.1f} ms before the instant"
        if info.start_margin_ms is not None
        else ""
    )
    return (
        f"agent {info.id or info.address} started {skew_ns / 1e6:.0f} ms late (start-up, "
        f"not capacity{prep}{got}): {startup.late} of its first {startup.sent} sends were "
        f">1 ms late while it caught up ({', '.join(lateness)}); past its start-up it kept "
        "up. Leave the start-up out with a warm-up (--warmup) or give the start a longer "
        "lead (--start-lead)"
    )


#: latency_by_shape lists at most this many shapes (the most sent).
MAX_SHAPES_LISTED = 100


def latency_by_shape(agg: Aggregator) -> list[ShapeRow]:
    """Per input shape (payloads with varied sizes): counts and latency, by request size."""
    top = sorted(agg.by_shape.items(), key=lambda kv: -kv[1].sent)[:MAX_SHAPES_LISTED]
    rows: list[ShapeRow] = [
        {
            "shape": shape,
            "count": st.ok,
            "sent": st.sent,
            "errors": st.errors,
            "request_bytes_mean": round(st.req_bytes / st.sent, 1) if st.sent else 0.0,
            "latency_ms": hist_ms(st.latency),
        }
        for shape, st in top
    ]
    return sorted(rows, key=lambda r: r["request_bytes_mean"])


def latency_by_payload(agg: Aggregator) -> list[PayloadRow]:
    """Per power-of-two request size bucket that had sends."""
    return [
        {
            "bucket_bytes": [2**b, 2 ** (b + 1)],
            "count": st.ok,
            "sent": st.sent,
            "errors": st.errors,
            "request_bytes_mean": round(st.req_bytes / st.sent, 1) if st.sent else 0.0,
            "latency_ms": hist_ms(st.latency),
            "service_time_ms": hist_ms(st.service),
        }
        for b, st in sorted(agg.by_size.items())
        if st.sent
    ]


def model_rows(
    plan: Plan, agg: Aggregator, measured_s: float, server: ServerBlock | None = None
) -> list[ModelRow]:
    """Per-model figures (mixed traffic; one row for a single-model plan), each with the
    server's row for that model (empty without one)."""
    from volley.plan import plan_models

    models = plan_models(plan)
    total_w = sum(m.weight for m in models) or 1.0
    server_models = {
        (m["name"], m["version"]): m for m in (server.get("models", []) if server else [])
    }
    rows: list[ModelRow] = []
    for i, m in enumerate(models):
        st = agg.by_model.get(i, Stats())
        rows.append(
            {
                "id": i,
                "name": m.name,
                "version": m.version,
                "weight": m.weight,
                "share": round(m.weight / total_w, 6),
                "requests": requests_block(st),
                "throughput_rps": round(st.ok / measured_s, 3),
                "error_rate": round(st.errors / st.sent, 6) if st.sent else 0.0,
                "latency_ms": hist_ms(st.latency),
                "service_time_ms": hist_ms(st.service),
                "bytes": {"request": st.req_bytes, "response": st.resp_bytes},
                "server": server_models.get((m.name, m.version), {}),
            }
        )
    return rows


def _agent_row(
    plan: Plan, info: AgentInfo, tally: AgentTally, measured_s: float, span_s: float
) -> tuple[AgentRow, Behind | None]:
    """One agent's figures over the measured period (span_s: measured + warm-up), and
    whether (and where) it lacked capacity."""
    st = tally.measured
    behind = _behind(plan, st, info, span_s, tally.startup, tally.first_skew_ns)
    host_mean, host_peak = host_cpu(info.host_cpu_samples, info.host_cpu_spans)
    startup = startup_note(plan, st, info, tally.startup, tally.first_skew_ns)
    row: AgentRow = {
        "id": info.id or info.address,
        "address": info.address,
        "host": info.host,
        "workers": info.workers,
        "state": info.state,
        "error": info.error,
        "scheduled": st.records,
        "sent": st.sent,
        "ok": st.ok,
        "errors": st.errors,
        "dropped": st.dropped,
        "throughput_rps": round(st.ok / measured_s, 3),
        "latency_ms": hist_ms(st.latency),
        "service_time_ms": hist_ms(st.service),
        "send_lateness_ms": lateness_ms(st),
        "clock_offset_ms": round(info.clock.offset_ns / 1e6, 4) if info.clock else None,
        "clock_uncertainty_ms": (round(info.clock.uncertainty_ns / 1e6, 4) if info.clock else None),
        "start_skew_ms": (
            round(tally.first_skew_ns / 1e6, 4) if tally.first_intended_ns < 2**62 else None
        ),
        "cpu_seconds": round(info.cpu_seconds, 3),
        "cpu_percent_avg": round(info.cpu_seconds / max(span_s, 1e-9) * 100.0, 1),
        "cpu_percent_peak": round(info.cpu_percent_peak, 1),
        "cpu_us_per_request": (
            round(info.cpu_seconds / (st.sent + tally.warmup.sent) * 1e6, 1)
            if st.sent + tally.warmup.sent
            else None
        ),
        "saturated": behind is not None,
        "saturation": behind.reason if behind is not None else "",
        "bottleneck": behind.shortfall.value if behind is not None else "",
        "host_cpu_percent_avg": host_mean,
        "host_cpu_percent_peak": host_peak,
        "invalid_records": info.invalid_records,
        "faults": dict(sorted(info.faults.items())),
        "retried": info.retried,
        "reconnects": info.reconnects,
        "connect_errors": info.connect_errors,
    }
    if info.conns is not None:
        row["connections"] = info.conns.block()
    if info.prepare_s is not None or info.start_margin_ms is not None:
        row["prepare_s"] = info.prepare_s
        row["start_margin_ms"] = info.start_margin_ms
    if startup:
        row["startup"] = startup
    return row, behind


def _fault_lines(agents: list[AgentInfo], tallies: list[AgentTally]) -> tuple[list[str], list[str]]:
    """(reasons, warnings) for agents that sent invalid events: mostly garbage makes the
    run invalid, less is a warning naming the agent and the kinds of fault."""
    reasons: list[str] = []
    warnings: list[str] = []
    for info, tally in zip(agents, tallies, strict=True):
        if not info.faults:
            continue
        name = info.id or info.address
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(info.faults.items()))
        bad = info.invalid_records
        seen = bad + tally.measured.records + tally.warmup.records
        if bad and bad > GARBAGE_SHARE * seen:
            reasons.append(
                f"agent {name} sent mostly invalid records ({bad} of {seen} dropped: {kinds})"
            )
        else:
            warnings.append(
                f"agent {name}: {bad} invalid records dropped, invalid events ignored ({kinds})"
            )
    return reasons, warnings


def build_summary(
    plan: Plan,
    run_id: str,
    agg: Aggregator,
    agents: list[AgentInfo],
    span_s: float,
    scheduled_total: int | None,
    server: ServerBlock | None = None,
    stopped: str = "",
) -> Summary:
    """span_s: seconds of the measured period (schedule span minus warm-up)."""
    total = agg.total()
    measured_s = max(span_s, 1e-9)
    error_rate = round(total.errors / total.sent, 6) if total.sent else 0.0
    requests = requests_block(total)
    judged = [
        _agent_row(plan, info, tally, measured_s, span_s + plan.load.warmup_s)
        for info, tally in zip(agents, agg.agents, strict=True)
    ]
    rows = [row for row, _ in judged]
    reasons = grouped_reasons([b for _, b in judged if b is not None])
    reasons += grouped_lines(
        [(r["start_skew_ms"] or 0.0, r["startup"]) for r in rows if r.get("startup")],
        "started late by",
        "{:.0f} ms",
    )
    # ---- verdict ---------------------------------------------------------
    v = plan.validity
    partial = [a for a in agents if a.state in ("failed", "missing")]
    for a in partial:
        reasons.append(f"agent {a.id or a.address} {a.state}: {a.error or 'no details'}")
    fault_reasons, fault_warnings = _fault_lines(agents, agg.agents)
    reasons += fault_reasons
    if stopped:
        reasons.append(f"run stopped early: {stopped}")
    if span_s < v.min_duration_s:
        reasons.append(f"measured for {span_s:.1f}s, less than the {v.min_duration_s:g}s minimum")
    if total.ok < v.min_requests:
        reasons.append(f"{total.ok} successful requests, fewer than the {v.min_requests} minimum")
    if error_rate > v.max_error_rate:
        reasons.append(f"error rate {error_rate:.2%} above {v.max_error_rate:.2%}")
    if scheduled_total is not None and plan.load.mode == "open" and not stopped:
        got = total.records + agg.total_warmup().records
        if got != scheduled_total:
            dropped = " or dropped as invalid" if any(a.invalid_records for a in agents) else ""
            reasons.append(
                f"{scheduled_total - got} of {scheduled_total} scheduled requests "
                f"have no record (lost with an agent{dropped})"
            )
        requests["schedule_total"] = scheduled_total
    seq_block = (
        agg.sequences.block(plan)
        if plan.sequence is not None and agg.sequences is not None
        else None
    )
    if seq_block is not None:
        reasons += failed_reasons(seq_block)
    warnings = grouped_lines(
        [
            (
                r["send_lateness_ms"]["late_fraction"],
                f"agent {r['id']}: {r['send_lateness_ms']['late_fraction']:.1%} of sends were "
                ">1 ms late (timer wake-up); latency from intended time includes it",
            )
            for r in rows
            if r["send_lateness_ms"]["late_fraction"] > v.warn_late_fraction and not r["saturated"]
        ],
        "sends >1 ms late",
        "{:.1%}",
    )
    warnings += fault_warnings
    summary: Summary = {
        "run_id": run_id,
        "name": plan.name,
        "target": plan.target,
        "model": plan.model,
        "protocol": plan.protocol,
        "mode": plan.load.mode,
        "arrival": plan.load.arrival if plan.load.mode == "open" else "closed",
        "seed": plan.seed,
        "duration_s": round(span_s, 3),
        "warmup_s": plan.load.warmup_s,
        "requests": requests,
        "warmup_requests": requests_block(agg.total_warmup()),
        "offered_rps": round(total.records / measured_s, 3),
        "throughput_rps": round(total.ok / measured_s, 3),
        "error_rate": error_rate,
        "latency_ms": hist_ms(total.latency),
        "service_time_ms": hist_ms(total.service),
        "send_lateness_ms": lateness_ms(total),
        "bytes": {"request": total.req_bytes, "response": total.resp_bytes},
        "agents": rows,
        "server": server
        if server is not None
        else unavailable_server(plan.model, "no server statistics for this run"),
        "latency_by_payload": latency_by_payload(agg),
        "latency_by_shape": latency_by_shape(agg),
        "models": model_rows(plan, agg, measured_s, server),
        "partial": bool(partial),
        "verdict": {
            "valid": not reasons,
            "reasons": reasons,
            "warnings": warnings,
            "slo": [],
            "slo_passed": True,
        },
    }
    if seq_block is not None:
        summary["sequences"] = seq_block
    conns = run_connections([a.conns for a in agents], plan.connections_total > 0)
    if conns is not None:
        summary["connections"] = conns
        if conns["errors_total"] or conns["resets_received"]:
            warnings.append(f"connections: {describe(conns)}")
    if plan.stream.decoupled or total.streamed:
        summary["stream"] = stream_block(total, measured_s)
        if agg.good is not None:
            summary["stream"]["goodput"] = goodput_block(total, agg.good, measured_s)
    summary["confidence"] = run_confidence(agg, total, measured_s, v.confidence)
    # SLOs are judged on the figures above and their intervals
    judge_slos(summary, plan, total)
    return summary


def judge_slos(summary: Summary, plan: Plan, total: Stats) -> None:
    """verdict.slo, slo_passed, slo_outcome (and a warning per SLO percentile the run
    had too few requests to bound) from the summary's figures and intervals."""
    samples = {"latency_ms": total.latency.count, "service_time_ms": total.service.count}
    samples.update(stream_samples(total))
    slo = [parse_slo(s).evaluate(summary, samples) for s in plan.slos]
    verdict = summary["verdict"]
    verdict["slo"] = slo
    verdict["slo_passed"] = all(r["passed"] for r in slo)
    outcomes = {r.get("outcome", "pass" if r["passed"] else "fail") for r in slo}
    verdict["slo_outcome"] = (
        "fail" if "fail" in outcomes else "inconclusive" if "inconclusive" in outcomes else "pass"
    )
    verdict["warnings"] += [
        f"SLO {r['slo']} inconclusive: {r['reason']}"
        for r in slo
        if r.get("outcome") == "inconclusive" and r["reason"]
    ]
