"""SLO expressions: parse `p99<50ms`, `errors<0.1%`, `throughput>=0.98*offered` (pure)."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from coordinator.documents import SloResult
from volley.plan import PlanError

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_UNITS_MS = {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}
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

    def evaluate(self, summary: Mapping[str, object]) -> SloResult:
        actual = _lookup(summary, self.metric)
        threshold = self.value
        if self.relative_to == "offered":
            threshold = self.value * (_lookup(summary, "offered_rps") or 0.0)
        passed = actual is not None and _OPS[self.op](float(actual), threshold)
        return {
            "slo": self.text,
            "metric": self.metric,
            "op": self.op,
            "threshold": threshold,
            "actual": actual,
            "passed": bool(passed),
        }


def _lookup(summary: Mapping[str, object], path: str) -> float | None:
    cur: Any = summary
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return float(cur) if isinstance(cur, int | float) else None


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
        "service.p99, errors, throughput)"
    )
