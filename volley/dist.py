"""Distributions of input sizes: one small text syntax, used in plans and on the command line.

A distribution says how a number (an image side, a pixel count, an aspect ratio, a
string length, a batch size) varies from one request payload to the next:

    224                      fixed
    200..800                 uniform (integers when both ends are integers)
    0.5..2.0                 uniform (real)
    1|4|8                    choice, equal weights
    1:5|4:3|8:2              choice, weights (value:weight)
    normal(500,100)          normal(mean, std)
    lognormal(200,1)         lognormal(median, sigma)
    lognormal(200,1,min=1,max=4096)   truncated to [min, max] (any kind)

Numbers may carry a k (x1e3) or M (x1e6) suffix: `50k..2M`. Plans may also use
mappings (`{uniform: [200, 800]}`, `{choice: {1: 5, 4: 3}}`, `{normal: [500, 100],
max: 900}`); they are stored as the text form above, which `str(dist)` gives back.

Sampling is by the inverse CDF of a uniform number in [0, 1), so a pool builder can
stratify draws (Latin hypercube) and get each distribution's shares right with few
payloads. This module is pure (no I/O, no plan types).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

from volley.shown import shown

Kind = Literal["fixed", "uniform", "choice", "normal", "lognormal"]

_NUM_RE = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([kM]?)\s*$")
_FUNC_RE = re.compile(r"^\s*(uniform|normal|lognormal|choice)\s*\((.*)\)\s*$", re.S)
_STD_NORMAL = NormalDist()
#: An integer uniform over at most this many values counts as a discrete choice.
MAX_DISCRETE = 1024
#: A truncated normal/lognormal with less than this mass inside [min, max] is refused.
_MIN_MASS = 1e-12


class DistError(ValueError):
    """A distribution's text or mapping is invalid; the message says what."""


def parse_number(text: str) -> float:
    """'224', '0.5', '50k', '2M' -> float."""
    m = _NUM_RE.match(text)
    if not m:
        raise DistError(f"expected a number, got {shown(text.strip())}")
    value = float(m.group(1)) * {"": 1.0, "k": 1e3, "M": 1e6}[m.group(2)]
    if not math.isfinite(value):
        raise DistError(f"expected a finite number, got {shown(text.strip())}")
    return value


def _is_int_text(text: str) -> bool:
    m = _NUM_RE.match(text)
    if m is None:
        return False
    number = m.group(1)
    return parse_number(text).is_integer() and "." not in number and "e" not in number.lower()


def fmt_number(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


@dataclass(frozen=True)
class Dist:
    """One distribution. `values`/`weights` for choice; `a`, `b` are (lo, hi) for uniform,
    (mean, std) for normal, (median, sigma) for lognormal, (value, -) for fixed."""

    kind: Kind
    a: float = 0.0
    b: float = 0.0
    values: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()
    lo: float = -math.inf
    hi: float = math.inf
    #: Uniform over integers (both ends given as integers).
    integer: bool = False

    # ---- construction ------------------------------------------------------
    @staticmethod
    def fixed(v: float) -> Dist:
        return Dist("fixed", a=float(v))

    def __post_init__(self) -> None:
        if self.kind == "uniform" and self.b < self.a:
            raise DistError(f"uniform range {fmt_number(self.a)}..{fmt_number(self.b)} is empty")
        if self.kind == "choice":
            if not self.values or len(self.values) != len(self.weights):
                raise DistError("choice needs at least one value")
            if any(w < 0 or not math.isfinite(w) for w in self.weights) or sum(self.weights) <= 0:
                raise DistError("choice weights must be >= 0 and not all 0")
        if self.kind == "normal" and not self.b > 0:
            raise DistError("normal(mean, std) needs std > 0")
        if self.kind == "lognormal" and not (self.a > 0 and self.b > 0):
            raise DistError("lognormal(median, sigma) needs median > 0 and sigma > 0")
        if self.lo > self.hi:
            raise DistError(f"min {fmt_number(self.lo)} is above max {fmt_number(self.hi)}")
        if self.kind in ("normal", "lognormal") and self._mass() < _MIN_MASS:
            raise DistError(f"{self}: almost no probability between min and max")

    # ---- properties ---------------------------------------------------------
    @property
    def is_discrete(self) -> bool:
        """Fixed, choice, or a uniform over at most MAX_DISCRETE integers."""
        if self.kind == "uniform" and self.integer:
            return self.b - self.a < MAX_DISCRETE
        return self.kind in ("fixed", "choice")

    @property
    def is_fixed(self) -> bool:
        return self.kind == "fixed" or (self.kind == "choice" and len(self.support()) == 1)

    def support(self) -> list[tuple[float, float]]:
        """Discrete distributions: [(value, probability)], by value, probabilities > 0."""
        if self.kind == "fixed":
            return [(self.a, 1.0)]
        if self.kind == "uniform" and self.is_discrete:
            n = int(self.b) - int(self.a) + 1
            return [(float(v), 1.0 / n) for v in range(int(self.a), int(self.b) + 1)]
        if self.kind == "choice":
            total = sum(self.weights)
            merged: dict[float, float] = {}
            for v, w in zip(self.values, self.weights, strict=True):
                if w > 0:
                    merged[v] = merged.get(v, 0.0) + w / total
            return sorted(merged.items())
        raise DistError(f"{self} is not discrete")

    def max(self) -> float:
        """The largest value it can produce (inf when unbounded)."""
        if self.kind == "fixed":
            return self.a
        if self.kind == "choice":
            return max(v for v, _ in self.support())
        if self.kind == "uniform":
            return self.b
        return self.hi

    def min(self) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "choice":
            return min(v for v, _ in self.support())
        if self.kind == "uniform":
            return self.a
        if self.kind == "lognormal":
            return max(self.lo, 0.0)
        return self.lo

    # ---- sampling -------------------------------------------------------------
    def _cdf(self, x: float) -> float:
        if self.kind == "normal":
            return _STD_NORMAL.cdf((x - self.a) / self.b)
        # lognormal
        if x <= 0:
            return 0.0
        return _STD_NORMAL.cdf(math.log(x / self.a) / self.b)

    def _mass(self) -> float:
        return self._cdf(self.hi) - self._cdf(self.lo)

    def quantile(self, u: float) -> float:
        """Inverse CDF: u in [0, 1) -> a value of the distribution."""
        u = min(max(u, 0.0), math.nextafter(1.0, 0.0))
        if self.kind == "fixed":
            return self.a
        if self.kind == "choice":
            acc = 0.0
            sup = self.support()
            for v, p in sup:
                acc += p
                if u < acc:
                    return v
            return sup[-1][0]
        if self.kind == "uniform":
            if self.integer:
                n = int(self.b) - int(self.a) + 1
                return float(int(self.a) + min(int(u * n), n - 1))
            return self.a + u * (self.b - self.a)
        lo_c = self._cdf(self.lo)
        p = lo_c + u * (self._cdf(self.hi) - lo_c)
        p = min(max(p, 1e-300), math.nextafter(1.0, 0.0))
        z = _STD_NORMAL.inv_cdf(p)
        x = self.a + self.b * z if self.kind == "normal" else self.a * math.exp(self.b * z)
        return min(max(x, self.lo), self.hi)

    # ---- text form ------------------------------------------------------------
    def __str__(self) -> str:
        clip = ""
        if self.kind in ("normal", "lognormal"):
            parts = []
            if math.isfinite(self.lo):
                parts.append(f"min={fmt_number(self.lo)}")
            if math.isfinite(self.hi):
                parts.append(f"max={fmt_number(self.hi)}")
            clip = "".join("," + p for p in parts)
        if self.kind == "fixed":
            return fmt_number(self.a)
        if self.kind == "uniform":
            a, b = fmt_number(self.a), fmt_number(self.b)
            if not self.integer:
                a = a if "." in a or "e" in a else a + ".0"
                b = b if "." in b or "e" in b else b + ".0"
            return f"{a}..{b}"
        if self.kind == "choice":
            if len(set(self.weights)) == 1:
                return "|".join(fmt_number(v) for v in self.values)
            return "|".join(
                f"{fmt_number(v)}:{fmt_number(w)}"
                for v, w in zip(self.values, self.weights, strict=True)
            )
        return f"{self.kind}({fmt_number(self.a)},{fmt_number(self.b)}{clip})"


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside parentheses."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def _func(name: str, args_text: str) -> Dist:
    pos: list[float] = []
    pos_text: list[str] = []
    kw: dict[str, float] = {}
    for raw in [a for a in args_text.split(",") if a.strip()]:
        key, eq, val = raw.partition("=")
        if eq:
            k = key.strip()
            if k not in ("min", "max"):
                raise DistError(f"{name}(): unknown argument {shown(k)} (min and max are allowed)")
            kw[k] = parse_number(val)
        else:
            if kw:
                raise DistError(f"{name}(): positional argument after min=/max=")
            pos.append(parse_number(raw))
            pos_text.append(raw)
    lo, hi = kw.get("min", -math.inf), kw.get("max", math.inf)
    if name == "uniform":
        if len(pos) != 2 or kw:
            raise DistError("uniform(lo, hi) takes two numbers")
        return Dist("uniform", pos[0], pos[1], integer=all(_is_int_text(t) for t in pos_text))
    if name == "choice":
        raise DistError("write a choice as 1|4|8 or 1:5|4:3|8:2")
    if len(pos) != 2:
        what = "mean, std" if name == "normal" else "median, sigma"
        raise DistError(f"{name}({what}) takes two numbers (and optional min=, max=)")
    return Dist(name, pos[0], pos[1], lo=lo, hi=hi)  # type: ignore[arg-type]


def parse_dist(value: object) -> Dist:
    """A distribution from its text, a number, or a plan mapping. Raises DistError."""
    if isinstance(value, bool):
        raise DistError(f"expected a number or a distribution, got {shown(value)}")
    if isinstance(value, int | float):
        if isinstance(value, int) and abs(value) > 2**1000:
            raise DistError(f"expected a finite number, got {shown(value)}")
        if not math.isfinite(float(value)):
            raise DistError(f"expected a finite number, got {shown(value)}")
        return Dist.fixed(float(value))
    if isinstance(value, dict):
        return _from_mapping(value)
    if not isinstance(value, str):
        raise DistError(f"expected a number or a distribution, got {shown(value)}")
    text = value.strip()
    if not text:
        raise DistError("empty distribution")
    m = _FUNC_RE.match(text)
    if m:
        return _func(m.group(1), m.group(2))
    if "|" in text or (":" in text and ".." not in text):
        values, weights = [], []
        for part in text.split("|"):
            v, colon, w = part.partition(":")
            values.append(parse_number(v))
            weights.append(parse_number(w) if colon else 1.0)
        return Dist("choice", values=tuple(values), weights=tuple(weights))
    if ".." in text:
        lo_t, _, hi_t = text.partition("..")
        lo, hi = parse_number(lo_t), parse_number(hi_t)
        return Dist("uniform", lo, hi, integer=_is_int_text(lo_t) and _is_int_text(hi_t))
    return Dist.fixed(parse_number(text))


def _nums(v: object, n: int, what: str) -> list[float]:
    if not isinstance(v, list | tuple) or len(v) != n:
        raise DistError(f"{what}: expected a list of {n} numbers, got {shown(v)}")
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int | float | str):
            raise DistError(f"{what}: expected numbers, got {shown(x)}")
        out.append(parse_number(str(x)))
    return out


def _from_mapping(d: dict[object, object]) -> Dist:
    keys = set(d)
    kinds = keys & {"fixed", "uniform", "choice", "normal", "lognormal"}
    if len(kinds) != 1:
        raise DistError(
            "a distribution mapping needs exactly one of fixed, uniform, choice, normal, "
            f"lognormal (got keys {', '.join(sorted(shown(k) for k in keys))})"
        )
    kind = str(next(iter(kinds)))
    extra = keys - {kind, "min", "max", "weights"}
    if extra:
        raise DistError(f"{kind}: unknown key(s) {', '.join(sorted(shown(k) for k in extra))}")
    arg = d[kind]
    if kind == "fixed":
        return parse_dist(arg)
    if kind == "uniform":
        lo, hi = _nums(arg, 2, "uniform")
        assert isinstance(arg, list | tuple)
        ints = all(
            (isinstance(x, int) and not isinstance(x, bool))
            or (isinstance(x, str) and _is_int_text(x))
            for x in arg
        )
        return Dist("uniform", lo, hi, integer=ints)
    if kind == "choice":
        if isinstance(arg, dict):
            values = [parse_number(str(k)) for k in arg]
            weights = [parse_number(str(w)) for w in arg.values()]
        elif isinstance(arg, list | tuple):
            values = [parse_number(str(x)) for x in arg]
            raw_w = d.get("weights")
            weights = (
                _nums(raw_w, len(values), "choice weights")
                if raw_w is not None
                else ([1.0] * len(values))
            )
        else:
            raise DistError(f"choice: expected a list or a value->weight mapping, got {shown(arg)}")
        return Dist("choice", values=tuple(values), weights=tuple(weights))
    if "weights" in d:
        raise DistError(f"{kind}: 'weights' belongs to choice")
    a, b = _nums(arg, 2, kind)
    lo = parse_number(str(d["min"])) if "min" in d else -math.inf
    hi = parse_number(str(d["max"])) if "max" in d else math.inf
    return Dist(kind, a, b, lo=lo, hi=hi)  # type: ignore[arg-type]


def canonical(value: object) -> str:
    """Validate and normalise a distribution to its text form."""
    return str(parse_dist(value))


# ---- shapes ---------------------------------------------------------------------


def parse_dims_pattern(text: str) -> list[str]:
    """'200..800x200..800x3' -> ['200..800', '200..800', '3'] (each one a distribution)."""
    parts = [p.strip() for p in _split_top(text.strip(), "x")]
    if not text.strip() or any(not p for p in parts):
        raise DistError(f"expected dims like 224x224x3 or 200..800x200..800x3, got {shown(text)}")
    return [canonical(p) for p in parts]


def parse_shape_text(text: str) -> tuple[int, ...]:
    """'224x224x3' -> (224, 224, 3)."""
    out = []
    for part in text.strip().lower().split("x"):
        try:
            d = int(part)
        except ValueError:
            raise DistError(f"expected a shape like 224x224x3, got {shown(text)}") from None
        if d < 0:
            raise DistError(f"shape {shown(text)}: dims must be >= 0")
        out.append(d)
    return tuple(out)


@dataclass(frozen=True)
class WeightedShape:
    shape: tuple[int, ...]
    weight: float

    def __str__(self) -> str:
        s = "x".join(str(d) for d in self.shape)
        return s if self.weight == 1 else f"{s}:{fmt_number(self.weight)}"


def parse_weighted_shape(value: object) -> WeightedShape:
    """'224x224x3', '224x224x3:2', [224, 224, 3], {shape: ..., weight: 2}."""
    weight = 1.0
    if isinstance(value, dict):
        unknown = set(value) - {"shape", "weight"}
        if unknown or "shape" not in value:
            raise DistError(f"expected {{shape: 224x224x3, weight: 1}}, got {shown(value)}")
        w = value.get("weight", 1)
        if isinstance(w, bool) or not isinstance(w, int | float | str):
            raise DistError(f"weight: expected a number, got {shown(w)}")
        weight = parse_number(str(w))
        value = value["shape"]
    if isinstance(value, list | tuple):
        dims = []
        for d in value:
            if isinstance(d, bool) or not isinstance(d, int) or d < 0:
                raise DistError(f"shape {shown(value)}: dims must be non-negative integers")
            dims.append(d)
        shape = tuple(dims)
    elif isinstance(value, str):
        text, colon, w_text = value.partition(":")
        if colon:
            weight = parse_number(w_text)
        shape = parse_shape_text(text)
    else:
        raise DistError(f"expected a shape like 224x224x3, got {shown(value)}")
    if weight < 0 or not math.isfinite(weight):
        raise DistError(f"shape {shown(value)}: weight must be >= 0")
    return WeightedShape(shape, weight)


def parse_shapes(values: Sequence[object]) -> list[WeightedShape]:
    shapes = [parse_weighted_shape(v) for v in values]
    if not shapes:
        raise DistError("shapes: give at least one shape")
    if sum(s.weight for s in shapes) <= 0:
        raise DistError("shapes: weights are all 0")
    ranks = {len(s.shape) for s in shapes}
    if len(ranks) != 1:
        raise DistError("shapes: all shapes must have the same number of dims")
    return shapes


_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_BYTE_UNITS = {
    None: 1,
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def parse_bytes(value: object) -> int:
    """'256MB', '1GiB', 4096 -> bytes."""
    if isinstance(value, bool):
        raise DistError(f"expected a size like 256MB, got {shown(value)}")
    if isinstance(value, int):
        if value < 0:
            raise DistError(f"expected a size >= 0, got {shown(value)}")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str):
        m = _BYTES_RE.match(value)
        size = float(m.group(1)) * _BYTE_UNITS[m.group(2)] if m else math.inf
        if math.isfinite(size):
            return int(size)
    raise DistError(f"expected a size like 256MB or 1GiB, got {shown(value)}")


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
