"""`--duration auto`: the coordinator's rule for when a run has measured enough (pure).

Once a second (`RunLoop.check_auto`) the merged figures of the whole windows so far are
judged: the run loop holds records back until HOLD_S (1 s) after their window ended, so
the figures have every record of the windows they cover but the requests still in flight,
and those are counted as unknown values (`pending`: below every known one for a lower
bound, above for an upper one, volley/confidence.py `percentile_interval`):

* every SLO is decided (its interval is wholly on one side of the threshold) or its
  interval is narrower than the target (relative width `target_width`); without SLOs,
  the p99 latency interval is narrower than the target;
* and the completions per second of the last `stable_windows` windows agree with the
  ones before (volley/confidence.py `stable`);
* and at least the plan's minimum duration was measured.

Looking again every second and stopping at the first good look would make a wrong early
decision likelier than the level says, so these looks use a stricter level (a quarter of
the error allowed: 98.75 % for 95 %) and the rule must hold on two looks in a row. The
stop instant is the end of the windows the deciding look judged (records intended later,
held or still to come, are left out), so the summary, judged once more at the plan's
level, is on the figures that look had plus the stragglers it counted as unknown: what
was decided at the stricter level stays decided (an earlier version stopped at the next
whole second, and a slow spell in that last second turned a decided p99 unbounded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from coordinator.aggregate import Aggregator, Stats
from coordinator.documents import ConfidenceBlock
from coordinator.intervals import metric_interval, run_confidence
from coordinator.slo import parse_slo
from coordinator.summary import hist_ms
from volley.confidence import Interval, stable
from volley.plan import Plan

#: A look uses a level this many times stricter in its error allowance.
LOOK_STRICTNESS = 4.0
#: The rule must hold on this many looks in a row.
LOOKS_IN_A_ROW = 2


@dataclass(frozen=True)
class AutoDuration:
    """Settings of `--duration auto` (the plan's duration is the maximum)."""

    target_width: float = 0.1
    stable_windows: int = 3
    stable_tolerance: float = 0.1


@dataclass
class Look:
    """One look at the figures so far."""

    done: bool
    checks: list[str] = field(default_factory=list)


def completions_per_window(agg: Aggregator, first: int, last: int) -> list[float]:
    """OK completions (by done time) of windows first..last, summed over agents."""
    per: dict[int, int] = {}
    for (w, _agent), n in agg.completions.items():
        if first <= w <= last:
            per[w] = per.get(w, 0) + n
    return [float(per.get(w, 0)) for w in range(first, last + 1)]


def _figures(total: Stats, measured_s: float, block: ConfidenceBlock) -> dict[str, object]:
    """The part of a summary an SLO reads, from the records so far."""
    return {
        "latency_ms": hist_ms(total.latency),
        "service_time_ms": hist_ms(total.service),
        "error_rate": total.errors / total.sent if total.sent else 0.0,
        "throughput_rps": total.ok / measured_s,
        "offered_rps": total.records / measured_s,
        "requests": {"ok": total.ok, "sent": total.sent},
        "confidence": block,
    }


def figures_p99(total: Stats) -> float:
    return hist_ms(total.latency)["p99"]


def _narrow(
    name: str, iv: Interval | None, point: float | None, settings: AutoDuration
) -> tuple[bool, str]:
    """Is the interval narrower than the target (relative to the figure)?"""
    width = math.inf if iv is None or point is None else iv.width_ratio(float(point))
    if width <= settings.target_width:
        return True, f"{name}: interval {width:.1%} of the figure wide"
    if math.isfinite(width):
        return False, f"{name}: interval {width:.1%} wide, target {settings.target_width:.0%}"
    return False, f"{name}: not bounded yet"


def look(
    plan: Plan, agg: Aggregator, judged_s: int, settings: AutoDuration, pending: int = 0
) -> Look:
    """Judge the figures of the windows before `judged_s` (whole seconds from the start;
    `agg` holds only their records) with `pending` requests still to come (see the module
    docstring)."""
    warm = plan.load.warmup_s
    measured_s = judged_s - warm
    need_s = max(plan.validity.min_duration_s, 2.0 * settings.stable_windows + 2.0)
    if measured_s < need_s:
        return Look(False, [f"measured {max(measured_s, 0):g}s of at least {need_s:g}s"])
    total = agg.total()
    level = 1.0 - (1.0 - plan.validity.confidence) / LOOK_STRICTNESS
    block = run_confidence(agg, total, measured_s, level, pending)
    figures = _figures(total, measured_s, block)
    samples = {"latency_ms": total.latency.count, "service_time_ms": total.service.count}
    done = True
    checks: list[str] = []
    for slo in (parse_slo(s) for s in plan.slos):
        r = slo.evaluate(figures, samples)
        outcome = r.get("outcome", "pass" if r["passed"] else "fail")
        if outcome != "inconclusive":
            checks.append(f"{slo.text}: {outcome} at {level:.2%}")
            continue
        ok, line = _narrow(slo.text, metric_interval(block, slo.metric), r["actual"], settings)
        done = done and ok
        if r["reason"] and pending:
            line = f"{slo.text}: {r['reason']} ({pending} in flight, counted as unknown)"
        elif r["reason"]:
            line = f"{slo.text}: {r['reason']}"
        checks.append(line)
    if not plan.slos:
        p99 = metric_interval(block, "latency_ms.p99")
        ok, line = _narrow("p99", p99, figures_p99(total), settings)
        done = done and ok
        checks.append(line)
    first = math.ceil(warm)
    # completions by done time: a request done before judged_s was intended before it,
    # so its record is in (released), and the windows up to judged_s - 1 are whole
    last = judged_s - 1
    series = completions_per_window(agg, first, last)
    if stable(series, settings.stable_windows, settings.stable_tolerance):
        checks.append(f"throughput stable over the last {2 * settings.stable_windows} windows")
    else:
        done = False
        checks.append("throughput not stable yet")
    return Look(done, checks)
