"""SLO expressions: parse `p99<50ms`, `errors<0.1%`, `throughput>=0.98*offered`, and on
streaming models `ttft_p99<200ms`, `itl_p99<30ms`, `tpot.p50<10ms`, `tokens_per_s>500`,
and the connect time of the run's connections `connect_p99<50ms` (`connect_p50`,
`connect_max`; summary.json `connections.connect_ms`) (pure)."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from coordinator.aggregate import GoodLimits
from coordinator.documents import ConfidenceBlock, SloOutcome, SloResult
from coordinator.intervals import metric_interval, unbounded_note
from volley.confidence import decide
from volley.plan import PlanError

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_UNITS_MS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}
#: The summary's percentile blocks an SLO may name (from latency histograms).
PERCENTILE_FAMILIES = ("latency_ms", "service_time_ms")
#: Streaming metrics (summary.json `stream.<family>`): the name an SLO uses -> family.
STREAM_FAMILIES = {"ttft": "ttft_ms", "ttst": "ttst_ms", "itl": "itl_ms", "tpot": "tpot_ms"}
_STREAM = re.compile(r"^(ttft|ttst|itl|tpot)[._](p50|p90|p95|p99|p999|max|mean)$")
#: Connect time (TCP, TLS, HTTP/2 SETTINGS) of the run's connections: summary.json
#: `connections.connect_ms.<stat>`.
_CONNECT = re.compile(r"^connect[._](p50|p99|max)$")
_LAT = re.compile(r"^(p50|p90|p95|p99|p999|max|mean)$")
_SLO = re.compile(
    r"^\s*(?P<metric>[a-z_0-9.]+)\s*(?P<op><=|>=|<|>)\s*(?P<value>[0-9]*\.?[0-9]+)\s*"
    r"(?:(?P<unit>us|µs|ms|s|%|/s|rps)|\*\s*(?P<ref>offered))?\s*$"
)


@dataclass(frozen=True)
class Slo:
    text: str
    metric: str  #: e.g. latency_ms.p99, error_rate, throughput_rps
    op: str
    value: float
    relative_to: str = ""  #: "offered" for throughput>=0.98*offered

    def evaluate(
        self, summary: Mapping[str, object], samples: Mapping[str, int] | None = None
    ) -> SloResult:
        """Judge the SLO on a summary. `samples`: the number of values behind each
        percentile family (latency_ms, service_time_ms), from their histograms; without
        it, the summary's successful requests. A percentile of no value, an error rate
        of no request, a share of nothing offered: failed, with the reason, never passed.
        With the summary's `confidence` block the SLO is judged on the figure's interval:
        pass (all of it meets the SLO), fail (none of it), inconclusive (it straddles the
        threshold, or too few requests bound it: the reason says how many are needed);
        without one, on the point figure (pass or fail)."""
        actual = _lookup(summary, self.metric)
        threshold = self.value
        offered = _lookup(summary, "offered_rps")
        if self.relative_to == "offered":
            threshold = self.value * (offered or 0.0)
        reason = _nothing_to_judge(self, summary, samples, offered)
        if not reason and actual is None:
            reason = f"the summary has no {self.metric}"
        passed = not reason and actual is not None and _OPS[self.op](float(actual), threshold)
        outcome: SloOutcome = "pass" if passed else "fail"
        block = summary.get("confidence")
        interval = None
        if isinstance(block, dict) and not reason:
            conf = cast(ConfidenceBlock, block)
            interval = metric_interval(conf, self.metric)
            if interval is not None:
                outcome = decide(interval, self.op, threshold)
                if outcome == "inconclusive" and not interval.bounded:
                    reason = unbounded_note(conf, self.metric)
        result: SloResult = {
            "slo": self.text,
            "metric": self.metric,
            "op": self.op,
            "threshold": threshold,
            "actual": None if reason and outcome == "fail" else actual,
            "passed": outcome == "pass",
            "reason": reason,
            "outcome": outcome,
        }
        if interval is not None:
            result["interval"] = {"low": interval.low, "high": interval.high}
        return result


def _nothing_to_judge(
    slo: Slo,
    summary: Mapping[str, object],
    samples: Mapping[str, int] | None,
    offered: float | None,
) -> str:
    """Why the SLO's figure means nothing ("" when it does)."""
    parts = slo.metric.split(".")
    family = parts[1] if parts[0] == "stream" and len(parts) > 2 else parts[0]
    if family in PERCENTILE_FAMILIES or family in STREAM_FAMILIES.values():
        count = samples.get(family) if samples is not None else None
        if count is None:
            ok = _lookup(summary, "requests.ok")
            count = None if ok is None else int(ok)
        if count is not None and count <= 0:
            return "no successful request" if family in PERCENTILE_FAMILIES else "no such value"
    elif family == "connections":
        return _no_connect_time(summary)
    elif slo.metric == "error_rate" and _lookup(summary, "requests.sent") == 0:
        return "no request sent"
    elif slo.relative_to == "offered" and not offered:
        return "nothing offered"
    return ""


def _no_connect_time(summary: Mapping[str, object]) -> str:
    """Why a connect-time SLO has nothing to judge ("" when it has)."""
    block = summary.get("connections")
    if not isinstance(block, dict):
        return "no connection figures (this transport reports none)"
    if not block.get("connect_ms"):
        return "no connection was opened and timed (grpcio times only held ones: --connections)"
    return ""


def _lookup(summary: Mapping[str, object], path: str) -> float | None:
    cur: Any = summary
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return float(cur) if isinstance(cur, int | float) else None


def goodput_limits(slos: tuple[str, ...] | list[str]) -> GoodLimits:
    """Per-request goodput limits from the upper bounds among the SLOs: any percentile of
    TTFT, time per output token or latency (`ttft_p99<200ms` -> TTFT <= 200 ms), the
    tightest when several name one figure. Bad SLO texts are left to the plan's check."""
    limits: dict[str, int] = {}
    for text in slos:
        try:
            slo = parse_slo(text)
        except PlanError:
            continue
        if slo.op not in ("<", "<="):
            continue
        fam = slo.metric.split(".")
        key = {"stream.ttft_ms": "ttft_ns", "stream.tpot_ms": "tpot_ns", "latency_ms": "latency_ns"}
        name = key.get(".".join(fam[:-1]))
        if name is None:
            continue
        ns = int(slo.value * 1e6)
        limits[name] = min(limits.get(name, ns), ns)
    return GoodLimits(**limits)


def parse_slo(text: str) -> Slo:
    m = _SLO.match(text)
    if not m:
        raise PlanError(
            f"SLO {text!r}: expected e.g. 'p99<50ms', 'errors<0.1%', 'throughput>=0.98*offered'"
        )
    metric, op, value = m["metric"], m["op"], float(m["value"])
    unit, ref = m["unit"], m["ref"]
    if _LAT.match(metric) or metric.startswith(("latency.", "service.")):
        family = "service_time_ms" if metric.startswith("service.") else "latency_ms"
        stat = metric.split(".")[-1]
        if not _LAT.match(stat):
            raise PlanError(f"SLO {text!r}: unknown percentile {stat!r}")
        if unit not in _UNITS_MS:
            raise PlanError(f"SLO {text!r}: latency needs a unit (us, ms or s)")
        return Slo(text, f"{family}.{stat}", op, value * _UNITS_MS[unit])
    cm = _CONNECT.match(metric)
    if cm:
        if unit not in _UNITS_MS:
            raise PlanError(f"SLO {text!r}: a connect time needs a unit (us, ms or s)")
        return Slo(text, f"connections.connect_ms.{cm[1]}", op, value * _UNITS_MS[unit])
    sm = _STREAM.match(metric)
    if sm:
        if unit not in _UNITS_MS:
            raise PlanError(f"SLO {text!r}: a token latency needs a unit (us, ms or s)")
        family = STREAM_FAMILIES[sm[1]]
        return Slo(text, f"stream.{family}.{sm[2]}", op, value * _UNITS_MS[unit])
    if metric == "goodput":
        if unit == "%":
            value /= 100.0
        elif unit is not None:
            raise PlanError(f"SLO {text!r}: goodput is a share: a % or a fraction")
        return Slo(text, "stream.goodput.share", op, value)
    if metric in ("tokens_per_s", "tokens"):
        if unit not in (None, "/s"):
            raise PlanError(f"SLO {text!r}: tokens/s takes no unit (or /s)")
        return Slo(text, "stream.tokens_per_s", op, value)
    if metric in ("errors", "error_rate"):
        if unit == "%":
            value /= 100.0
        elif unit is not None:
            raise PlanError(f"SLO {text!r}: error rate takes a % or a fraction")
        return Slo(text, "error_rate", op, value)
    if metric in ("throughput", "rps"):
        if ref:
            return Slo(text, "throughput_rps", op, value, relative_to="offered")
        return Slo(text, "throughput_rps", op, value)
    raise PlanError(
        f"SLO {text!r}: unknown metric {metric!r} (use p50..p999, max, mean, "
        "service.p99, errors, throughput, ttft_p99, itl_p99, ttst_p99, tpot_p99, tokens_per_s, "
        "goodput, connect_p50, connect_p99, connect_max)"
    )
