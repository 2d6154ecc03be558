"""Small inline-SVG charts for the HTML report (no JavaScript, no external files).

Each function returns one `<svg>` element as a string. Values of None are gaps.
Native `<title>` elements give hover tooltips without any script.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = (
    "#2563eb",
    "#dc2626",
    "#16a34a",
    "#d97706",
    "#7c3aed",
    "#0891b2",
    "#db2777",
    "#4b5563",
    "#65a30d",
    "#9333ea",
)
W, H = 760, 290
ML, MR, MT, MB = 64, 16, 48, 46


@dataclass
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    color: str = ""
    dashed: bool = False
    points: bool = False


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def fmt(v: float) -> str:
    """Compact tick label."""
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e9:
        return f"{v / 1e9:g}G"
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e4:
        return f"{v / 1e3:g}k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.3g}"
    return f"{v:.2g}"


def nice_ticks(lo: float, hi: float, n: int = 5, inside: bool = False) -> list[float]:
    """About `n` round ticks (steps of 1, 2, 2.5 or 5 x 10^k) from lo to hi: the first
    and last at or beyond the ends, or with `inside` only those within [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        if inside:
            return [lo]
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = (math.ceil if inside else math.floor)(lo / step) * step
    ticks: list[float] = []
    t = start
    while len(ticks) < 60:
        if inside and t > hi + 1e-9:
            break
        ticks.append(round(t, 12))
        if not inside and t >= hi - step * 1e-9:
            break
        t += step
    return ticks


def log_ticks(lo: float, hi: float, thin: bool = True) -> list[float]:
    """1, 2 and 5 x 10^k within [lo, hi]; with `thin`, only powers of ten when there are
    more than 9, and [lo, hi] when there are fewer than 2."""
    lo, hi = max(lo, 1e-12), max(hi, lo * 1.0001)
    out: list[float] = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**e
            if lo <= v <= hi:
                out.append(v)
    if thin and len(out) > 9:
        out = [v for v in out if str(f"{v:e}").startswith("1")]
    if thin and len(out) < 2:
        out = [lo, hi]
    return out


class _Scale:
    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool = False) -> None:
        self.log = log
        if log:
            lo, hi = math.log10(max(lo, 1e-12)), math.log10(max(hi, 1e-12))
        if hi <= lo:
            hi = lo + 1.0
        self.lo, self.hi, self.a, self.b = lo, hi, a, b

    def __call__(self, v: float) -> float:
        if self.log:
            v = math.log10(max(v, 1e-12))
        return self.a + (v - self.lo) / (self.hi - self.lo) * (self.b - self.a)


def _svg_open(title: str, chart_id: str, height: int = H) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" '
        f'class="chart-svg" data-chart="{escape(chart_id)}" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{ML}" y="18" class="ct">{escape(title)}</text>',
    ]


def empty_chart(title: str, chart_id: str, why: str = "no data") -> str:
    parts = _svg_open(title, chart_id, 90)
    parts.append(f'<text x="{W / 2}" y="55" class="na" text-anchor="middle">{escape(why)}</text>')
    parts.append("</svg>")
    return "".join(parts)


LEGEND_ROW = 17


def _legend(names: list[tuple[str, str, bool]], box: bool = False) -> tuple[list[str], int]:
    """Legend entries under the title, wrapped to the chart's width; returns the parts
    and the extra height (px) its rows beyond the first take."""
    out: list[str] = []
    x, y = float(ML), 36
    for name, col, dashed in names:
        width = 7 * len(name) + 34
        if x > ML and x + width > W - MR:
            x, y = float(ML), y + LEGEND_ROW
        if box:
            out.append(f'<rect x="{x:.1f}" y="{y - 9}" width="11" height="11" fill="{col}"/>')
        else:
            dash = ' stroke-dasharray="5 3"' if dashed else ""
            out.append(
                f'<line x1="{x:.1f}" y1="{y - 4}" x2="{x + 16:.1f}" y2="{y - 4}" '
                f'stroke="{col}" stroke-width="2.5"{dash}/>'
            )
        out.append(f'<text x="{x + 20:.1f}" y="{y}" class="lg">{escape(name)}</text>')
        x += width
    return out, y - 36


def _axes(
    xs: _Scale,
    ys: _Scale,
    xt: list[tuple[float, str]],
    yt: list[tuple[float, str]],
    x_label: str,
    y_label: str,
    height: int = H,
    top: int = MT,
) -> list[str]:
    out: list[str] = []
    bottom = height - MB
    for v, label in yt:
        y = ys(v)
        if top - 0.5 <= y <= bottom + 0.5:
            out.append(
                f'<line x1="{ML}" y1="{y:.1f}" x2="{W - MR}" y2="{y:.1f}" class="grid"/>'
                f'<text x="{ML - 6}" y="{y + 4:.1f}" class="tk" text-anchor="end">'
                f"{escape(label)}</text>"
            )
    for v, label in xt:
        x = xs(v)
        if ML - 0.5 <= x <= W - MR + 0.5:
            out.append(
                f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" class="ax"/>'
                f'<text x="{x:.1f}" y="{bottom + 16}" class="tk" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    out.append(f'<line x1="{ML}" y1="{bottom}" x2="{W - MR}" y2="{bottom}" class="ax"/>')
    out.append(f'<line x1="{ML}" y1="{top}" x2="{ML}" y2="{bottom}" class="ax"/>')
    out.append(
        f'<text x="{(ML + W - MR) / 2}" y="{height - 8}" class="al" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    out.append(
        f'<text transform="translate(14 {(top + bottom) / 2}) rotate(-90)" class="al" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    return out


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    chart_id: str,
    x_label: str,
    y_label: str,
    log_x: bool = False,
    log_y: bool = False,
    band: tuple[float, float, str] | None = None,
    x_ticks: list[tuple[float, str]] | None = None,
    y_zero: bool = True,
    spans: Sequence[tuple[float, float, str]] = (),
) -> str:
    """Lines over a shared x axis; band = (x0, x1, label) shades a span (warm-up); each of
    `spans` (x0, x1, label) is marked as an outage (class "outage", its label the tooltip)."""
    pts = [
        (x, y)
        for s in series
        for x, y in zip(s.xs, s.ys, strict=False)
        if y is not None and math.isfinite(y) and math.isfinite(x)
    ]
    if log_y:
        pts = [(x, y) for x, y in pts if y > 0]
    if not pts:
        return empty_chart(title, chart_id)
    x_lo, x_hi = min(p[0] for p in pts), max(p[0] for p in pts)
    y_lo, y_hi = min(p[1] for p in pts), max(p[1] for p in pts)
    if band is not None:
        x_lo, x_hi = min(x_lo, band[0]), max(x_hi, band[1])
    for x0, x1, _ in spans:
        x_lo, x_hi = min(x_lo, x0), max(x_hi, x1)
    if log_y:
        yt_vals = log_ticks(y_lo, y_hi)
        y_lo, y_hi = min(y_lo, yt_vals[0]), max(y_hi, yt_vals[-1])
    else:
        if y_zero:
            y_lo = min(0.0, y_lo)
        yt_vals = nice_ticks(y_lo, y_hi * 1.05 if y_hi > 0 else y_hi + 1)
        y_lo, y_hi = yt_vals[0], yt_vals[-1]
    if x_ticks is None:
        xt_vals = log_ticks(x_lo, x_hi) if log_x else nice_ticks(x_lo, x_hi, 8)
        x_ticks = [(v, fmt(v)) for v in xt_vals]
        if not log_x and xt_vals:
            x_lo, x_hi = min(x_lo, xt_vals[0]), max(x_hi, xt_vals[-1])
    entries = [(s.name, s.color or color(i), s.dashed) for i, s in enumerate(series)]
    legend, extra = _legend(entries)
    top, height = MT + extra, H + extra
    xs = _Scale(x_lo, x_hi, ML, W - MR, log_x)
    ys = _Scale(y_lo, y_hi, height - MB, top, log_y)
    parts = _svg_open(title, chart_id, height)
    if band is not None and band[1] > band[0]:
        x0, x1 = xs(band[0]), xs(band[1])
        parts.append(
            f'<rect x="{x0:.1f}" y="{top}" width="{x1 - x0:.1f}" height="{height - MB - top}" '
            f'class="band"><title>{escape(band[2])}</title></rect>'
            f'<text x="{x0 + 4:.1f}" y="{top + 12}" class="tk">{escape(band[2])}</text>'
        )
    for x0, x1, label in spans:
        a, b = xs(x0), xs(x1)
        parts.append(
            f'<rect x="{a:.1f}" y="{top}" width="{max(b - a, 1.0):.1f}" '
            f'height="{height - MB - top}" class="outage"><title>{escape(label)}</title></rect>'
        )
    parts += _axes(xs, ys, x_ticks, [(v, fmt(v)) for v in yt_vals], x_label, y_label, height, top)
    for s, (_, col, _) in zip(series, entries, strict=True):
        d: list[str] = []
        pen_up = True
        dots: list[str] = []
        for x, y in zip(s.xs, s.ys, strict=False):
            if y is None or not math.isfinite(y) or (log_y and y <= 0):
                pen_up = True
                continue
            px, py = xs(x), ys(y)
            d.append(f"{'M' if pen_up else 'L'}{px:.1f},{py:.1f}")
            pen_up = False
            if s.points:
                dots.append(
                    f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.6" fill="{col}">'
                    f"<title>{escape(s.name)}: {fmt(x)} → {y:.4g}</title></circle>"
                )
        if d:
            dash = ' stroke-dasharray="5 3"' if s.dashed else ""
            parts.append(
                f'<path d="{" ".join(d)}" fill="none" stroke="{col}" stroke-width="2"'
                f'{dash} stroke-linejoin="round"><title>{escape(s.name)}</title></path>'
            )
        parts += dots
    parts += legend
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    title: str,
    chart_id: str,
    y_label: str,
    stacked: bool = False,
    colors: Sequence[str] | None = None,
) -> str:
    """Vertical bars: one group per category, one bar (or stack segment) per series."""
    if not categories or not series:
        return empty_chart(title, chart_id)
    if stacked:
        tops = [sum(v or 0.0 for v in (s[1][i] for s in series)) for i in range(len(categories))]
    else:
        tops = [v or 0.0 for _, vals in series for v in vals]
    hi = max(tops) if tops else 0.0
    if hi <= 0:
        return empty_chart(title, chart_id)
    cols = list(colors) if colors else [color(i) for i in range(len(series))]
    legend, extra = _legend(
        [(name, cols[i % len(cols)], False) for i, (name, _) in enumerate(series)], box=True
    )
    top, height = MT + extra, H + extra
    yt = nice_ticks(0.0, hi * 1.08)
    ys = _Scale(0.0, yt[-1], height - MB, top)
    parts = _svg_open(title, chart_id, height)
    parts += _axes(
        _Scale(0, 1, ML, W - MR), ys, [], [(v, fmt(v)) for v in yt], "", y_label, height, top
    )
    group_w = (W - MR - ML) / len(categories)
    n_bars = 1 if stacked else len(series)
    bar_w = min(group_w * 0.8 / n_bars, 60.0)
    for ci, cat in enumerate(categories):
        gx = ML + ci * group_w + (group_w - bar_w * n_bars) / 2
        base = 0.0
        for si, (name, vals) in enumerate(series):
            v = vals[ci] if ci < len(vals) else None
            if v is None or v <= 0:
                continue
            x = gx if stacked else gx + si * bar_w
            y0 = ys(base + v) if stacked else ys(v)
            y1 = ys(base) if stacked else ys(0.0)
            parts.append(
                f'<rect x="{x:.1f}" y="{y0:.1f}" width="{max(bar_w - 2, 1):.1f}" '
                f'height="{max(y1 - y0, 0.5):.1f}" fill="{cols[si % len(cols)]}">'
                f"<title>{escape(cat)} · {escape(name)}: {v:.4g}</title></rect>"
            )
            if stacked:
                base += v
        label = cat if len(cat) <= 22 else cat[:21] + "…"
        parts.append(
            f'<text x="{ML + (ci + 0.5) * group_w:.1f}" y="{height - MB + 16}" class="tk" '
            f'text-anchor="middle">{escape(label)}<title>{escape(cat)}</title></text>'
        )
    parts += legend
    parts.append("</svg>")
    return "".join(parts)


def hbar_stack(
    rows: Sequence[tuple[str, Sequence[tuple[str, float | None]]]],
    *,
    title: str,
    chart_id: str,
    unit: str = "ms",
) -> str:
    """Horizontal stacked bars: one row per label, segments in order (e.g. where a
    request's time goes)."""
    rows = [(label, [(n, v) for n, v in segs if v is not None and v > 0]) for label, segs in rows]
    rows = [r for r in rows if r[1]]
    if not rows:
        return empty_chart(title, chart_id)
    names: list[str] = []
    for _, segs in rows:
        for n, _ in segs:
            if n not in names:
                names.append(n)
    cols = {n: color(i) for i, n in enumerate(names)}
    legend, extra = _legend([(n, cols[n], False) for n in names], box=True)
    left = 170
    row_h = 30
    top = MT + 6 + extra
    height = top + row_h * len(rows) + 40
    hi = max(sum(v for _, v in segs if v) for _, segs in rows)
    xt = nice_ticks(0.0, hi * 1.05)
    xs = _Scale(0.0, xt[-1], left, W - MR)
    parts = _svg_open(title, chart_id, height)
    bottom = top + row_h * len(rows)
    for v in xt:
        x = xs(v)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" class="grid"/>'
            f'<text x="{x:.1f}" y="{bottom + 14}" class="tk" text-anchor="middle">{fmt(v)}</text>'
        )
    parts.append(
        f'<text x="{(left + W - MR) / 2}" y="{bottom + 32}" class="al" text-anchor="middle">'
        f"{escape(unit)}</text>"
    )
    for ri, (label, segs) in enumerate(rows):
        y = top + ri * row_h + 4
        parts.append(
            f'<text x="{left - 8}" y="{y + 15}" class="tk" text-anchor="end">{escape(label)}</text>'
        )
        base = 0.0
        for n, seg in segs:
            val = float(seg or 0.0)
            x0, x1 = xs(base), xs(base + val)
            parts.append(
                f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 0.5):.1f}" '
                f'height="{row_h - 8}" fill="{cols[n]}"><title>{escape(label)} · '
                f"{escape(n)}: {val:.4g} {escape(unit)}</title></rect>"
            )
            base += val
    parts += legend
    parts.append("</svg>")
    return "".join(parts)


def log_histogram(
    lower_ns: Sequence[float],
    upper_ns: Sequence[float],
    counts: Sequence[int],
    *,
    title: str,
    chart_id: str,
    x_label: str = "latency (ms, log scale)",
    bins: int = 60,
    marks: Sequence[tuple[str, float]] = (),
) -> str:
    """A log-bucketed histogram (ns buckets) re-binned to `bins` log-spaced bars in ms;
    `marks` draws vertical lines (e.g. p50, p99)."""
    data = [
        (lo / 1e6, hi / 1e6, c)
        for lo, hi, c in zip(lower_ns, upper_ns, counts, strict=True)
        if c > 0
    ]
    if not data:
        return empty_chart(title, chart_id)
    lo = max(min(d[0] for d in data), 1e-4)
    hi = max(max(d[1] for d in data), lo * 1.01)
    edges = [lo * (hi / lo) ** (i / bins) for i in range(bins + 1)]
    totals = [0] * bins
    span = math.log(hi / lo)
    for a, b, c in data:
        mid = math.sqrt(max(a, 1e-6) * b)
        i = int(math.log(max(mid, lo) / lo) / span * bins) if span > 0 else 0
        totals[min(max(i, 0), bins - 1)] += c
    xs = _Scale(lo, hi, ML, W - MR, log=True)
    yt = nice_ticks(0.0, max(totals) * 1.08)
    ys = _Scale(0.0, yt[-1], H - MB, MT)
    parts = _svg_open(title, chart_id)
    parts += _axes(
        xs,
        ys,
        [(v, fmt(v)) for v in log_ticks(lo, hi)],
        [(v, fmt(v)) for v in yt],
        x_label,
        "requests",
    )
    for i, n in enumerate(totals):
        if n == 0:
            continue
        x0, x1 = xs(edges[i]), xs(edges[i + 1])
        y = ys(n)
        parts.append(
            f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 0.6, 0.6):.1f}" '
            f'height="{H - MB - y:.1f}" fill="{PALETTE[0]}"><title>'
            f"{edges[i]:.3g}–{edges[i + 1]:.3g} ms: {n} requests</title></rect>"
        )
    for j, (name, v) in enumerate(marks):
        if lo <= v <= hi:
            x = xs(v)
            parts.append(
                f'<line x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{H - MB}" stroke="{color(j + 1)}" '
                f'stroke-width="1.5" stroke-dasharray="4 3"/>'
                f'<text x="{x + 3:.1f}" y="{MT + 12 + 12 * j}" class="tk" fill="{color(j + 1)}">'
                f"{escape(name)} {v:.3g} ms</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


#: Percentile-curve x positions: -log10(1 - q/100), labelled as percentiles.
PCT_TICKS = (
    (0.0, "0%"),
    (1.0, "90%"),
    (2.0, "99%"),
    (3.0, "99.9%"),
    (4.0, "99.99%"),
    (5.0, "99.999%"),
)


def pct_x(q: float, count: int) -> float:
    """x of percentile q on the curve; q=100 sits one rank past the last finite one."""
    if q >= 100.0:
        return math.log10(max(count, 1))
    return -math.log10(1.0 - q / 100.0)


def percentile_curve(
    series: Sequence[tuple[str, Sequence[tuple[float, float]], int]],
    *,
    title: str,
    chart_id: str,
    y_label: str = "latency (ms)",
    dashed: Sequence[bool] = (),
) -> str:
    """HdrHistogram-style curve: series of (name, [(percentile, value_ms)], count)."""
    lines: list[Series] = []
    top = 1.0
    for i, (name, pts, count) in enumerate(series):
        xs = [pct_x(q, count) for q, _ in pts]
        top = max(top, *xs) if xs else top
        lines.append(
            Series(
                name,
                xs,
                [v for _, v in pts],
                color=color(i),
                dashed=bool(dashed[i]) if i < len(dashed) else False,
                points=True,
            )
        )
    ticks = [(x, label) for x, label in PCT_TICKS if x <= top + 0.01]
    return line_chart(
        lines,
        title=title,
        chart_id=chart_id,
        x_label="percentile (log scale of 1/(1−q))",
        y_label=y_label,
        x_ticks=ticks,
    )
