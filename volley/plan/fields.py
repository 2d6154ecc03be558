"""Reading one field of a plan document: known keys only, numbers, integers, text, choices,
mappings and lists, each refused with a PlanError that names where it is.
"""

from __future__ import annotations

import math
from typing import Any, cast

from volley.dist import (
    DistError,
    canonical,
)
from volley.plan.spec import (
    MAX_NAMES,
    MAX_SEQUENCE_ID,
    PlanError,
)
from volley.shown import clipped, shown


def check_keys(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed, key=shown)
    if unknown:
        names = [
            clipped(k, 60) if isinstance(k, str) and k.isprintable() else shown(k, 60)
            for k in unknown
        ]
        more = f" and {len(names) - 8} more" if len(names) > 8 else ""
        raise PlanError(f"{where}: unknown key(s) {', '.join(names[:8])}{more}")


def get_num(data: dict[str, Any], key: str, where: str, default: float) -> float:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise PlanError(f"{where}.{key}: expected a number, got {shown(v)}")
    try:
        number = float(v)
    except OverflowError:  # an int beyond any float
        number = math.inf
    if not math.isfinite(number):
        raise PlanError(f"{where}.{key}: expected a finite number, got {shown(v)}")
    return number


def get_int(data: dict[str, Any], key: str, where: str, default: int) -> int:
    v = data.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        raise PlanError(f"{where}.{key}: expected an integer, got {shown(v)}")
    return v


def get_str(data: dict[str, Any], key: str, where: str, default: str) -> str:
    v = data.get(key, default)
    if not isinstance(v, str):
        raise PlanError(f"{where}.{key}: expected a string, got {shown(v)}")
    return v


def get_choice(
    data: dict[str, Any], key: str, where: str, default: str, options: tuple[str, ...]
) -> str:
    v = get_str(data, key, where, default)
    if v not in options:
        raise PlanError(f"{where}.{key}: must be one of {', '.join(options)}, got {shown(v)}")
    return v


def as_dict(v: object, where: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise PlanError(f"{where}: expected a mapping, got {type(v).__name__}")
    return cast(dict[str, Any], v)


def as_list(v: object, where: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list | tuple):
        raise PlanError(f"{where}: expected a list, got {type(v).__name__}")
    return list(v)


def as_str_list(v: object, where: str, limit: int = MAX_NAMES) -> tuple[str, ...]:
    items = as_list(v, where)
    if len(items) > limit:
        raise PlanError(f"{where}: more than {limit} entries")
    for i, x in enumerate(items):
        if not isinstance(x, str):
            raise PlanError(f"{where}[{i}]: expected a string, got {type(x).__name__}")
    return tuple(items)


def get_dist_text(d: dict[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if v is None or v == "":
        return ""
    try:
        return canonical(v)
    except DistError as exc:
        raise PlanError(f"{where}.{key}: {exc}") from None


def as_id_pair(v: object, where: str) -> tuple[int, int]:
    pair = as_list(v, where)
    if len(pair) != 2 or any(isinstance(x, bool) or not isinstance(x, int) for x in pair):
        raise PlanError(f"{where}: expected [lo, hi), two integers, got {shown(v)}")
    lo, hi = int(pair[0]), int(pair[1])
    if not 1 <= lo < hi <= MAX_SEQUENCE_ID:
        raise PlanError(f"{where}: need 1 <= lo < hi <= 2^63-1, got [{lo}, {hi})")
    return lo, hi
