"""Text forms of durations and addresses."""

from __future__ import annotations

import math
import re

from volley.plan.spec import PlanError
from volley.shown import shown

_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object, what: str = "duration") -> float:
    """'30s', '500ms', '2m', '1h' or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise PlanError(f"{what}: expected a duration like 30s, got {shown(value)}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float
            raise PlanError(f"{what}: out of range, got {shown(value)}") from None
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise PlanError(
                f"{what}: expected a duration like 30s, 500ms or 2m, got {shown(value)}"
            )
        seconds = float(m.group(1)) * _UNIT_S[m.group(2) or "s"]
    else:
        raise PlanError(f"{what}: expected a duration like 30s, got {shown(value)}")
    if not math.isfinite(seconds) or seconds < 0:
        raise PlanError(f"{what}: must be a non-negative duration, got {shown(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds * 1000:g}ms"


def parse_address(value: str, what: str = "address") -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_s = rest.removeprefix(":")
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise PlanError(f"{what}: expected HOST:PORT, got {shown(value)}")
    if not host:
        raise PlanError(f"{what}: missing host in {shown(value)}")
    try:
        port = int(port_s)
    except ValueError:
        raise PlanError(f"{what}: port must be a number in {shown(value)}") from None
    if not 0 <= port <= 65535:
        raise PlanError(f"{what}: port out of range in {shown(value)}")
    return host, port
