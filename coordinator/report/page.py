"""What every report page is built of: the inline CSS, the page frame, number formats,
tables, figures, cards and notes, and the columns of per-window rows that charts draw.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from coordinator.report.data import RunData

CSS = """
:root{--fg:#1f2937;--mut:#6b7280;--bd:#e5e7eb;--bg:#f9fafb;--ok:#15803d;--bad:#b91c1c;
--warn:#b45309}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
margin:0;background:#fff}
main{max-width:1120px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:17px;margin:30px 0 8px;padding-top:8px;
border-top:1px solid var(--bd)}h3{font-size:14px;margin:16px 0 6px}
.sub{color:var(--mut);margin:0 0 12px}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;
font-size:13px;margin-right:6px;color:#fff}
.ok{background:var(--ok)}.bad{background:var(--bad)}.warnb{background:var(--warn)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px;
margin:14px 0}
.card{border:1px solid var(--bd);border-radius:8px;padding:8px 12px;background:var(--bg)}
.card .k{color:var(--mut);font-size:12px}.card .v{font-size:19px;font-weight:600}
.card .n{color:var(--mut);font-size:12px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:13px}
th,td{border-bottom:1px solid var(--bd);padding:4px 10px;text-align:right;
white-space:nowrap}th{background:var(--bg);font-weight:600}
td:first-child,th:first-child{text-align:left}
td.l,th.l{text-align:left}.pass{color:var(--ok);font-weight:600}
.fail{color:var(--bad);font-weight:600}.better{color:var(--ok)}.worse{color:var(--bad)}
.warn{color:var(--warn);font-weight:600}.noise{color:var(--mut)}td.ci{color:var(--mut)}
.scroll{overflow-x:auto}
figure.chart{margin:10px 0 18px;border:1px solid var(--bd);border-radius:8px;
padding:6px 8px 2px}
figure.chart figcaption{color:var(--mut);font-size:12px;padding:0 6px 6px}
.chart-svg{width:100%;height:auto;display:block}
.chart-svg .ct{font-weight:600;font-size:13px;fill:#111827}
.chart-svg .tk{font-size:11px;fill:#4b5563}.chart-svg .al{font-size:12px;fill:#374151}
.chart-svg .lg{font-size:12px;fill:#374151}.chart-svg .na{font-size:13px;fill:#9ca3af}
.chart-svg .grid{stroke:#eef0f3;stroke-width:1}.chart-svg .ax{stroke:#9ca3af;stroke-width:1}
.chart-svg .band{fill:#f3f4f6}.chart-svg .outage{fill:#fecaca;opacity:.7}
.note{border-left:3px solid var(--warn);background:#fffbeb;padding:6px 12px;margin:8px 0}
.reasons li{margin:2px 0}
pre{background:var(--bg);border:1px solid var(--bd);border-radius:6px;padding:10px;
overflow-x:auto;font-size:12px}
footer{color:var(--mut);font-size:12px;margin-top:30px}
"""


# ---------------------------------------------------------------- small HTML helpers
def page(title: str, body: Iterable[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>"
        + "".join(body)
        + f"<footer>volley report · generated {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())}"
        " · self-contained (no scripts, no external files)</footer></main></body></html>\n"
    )


def num(v: Any, digits: int = 3, unit: str = "") -> str:
    """A figure for a table cell: ints with separators, floats to `digits` significant
    decimals (trailing zeros dropped), None as an en dash."""
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    if isinstance(v, float):
        a = abs(v)
        if a >= 1000:
            text = f"{v:,.0f}"
        elif a >= 1 or a == 0:
            text = f"{v:.{digits}f}".rstrip("0").rstrip(".")
        else:
            text = f"{v:.{digits}g}"
        return text + unit
    return escape(str(v)) + unit


def short(v: Any, unit: str = "") -> str:
    """A headline figure: about four significant digits."""
    if not isinstance(v, float):
        return num(v, unit=unit)
    a = abs(float(v))
    if a >= 1000:
        text = f"{v:,.0f}"
    elif a >= 100:
        text = f"{v:.1f}"
    elif a >= 10:
        text = f"{v:.2f}"
    elif a >= 0.001 or a == 0:
        text = f"{v:.3f}"
    else:
        text = f"{v:.2g}"
    return text + unit


def table(head: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1, cls: str = "") -> str:
    h = "".join(
        f'<th class="l">{escape(c)}</th>' if i < left else f"<th>{escape(c)}</th>"
        for i, c in enumerate(head)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f'<div class="scroll"><table class="{cls}"><tr>{h}</tr>{body}</table></div>'


def figure(svg_text: str, caption: str = "") -> str:
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure class="chart">{svg_text}{cap}</figure>'


def card(key: str, value: str, note: str = "") -> str:
    n = f'<div class="n">{note}</div>' if note else ""
    return (
        f'<div class="card"><div class="k">{escape(key)}</div><div class="v">{value}</div>{n}</div>'
    )


def note(text: str) -> str:
    return f'<div class="note">{escape(text)}</div>'


def mids(rows: list[dict[str, Any]], window_s: float = 1.0) -> list[float]:
    """x of each time-series row: the middle of its window."""
    return [float(r["t_s"]) + window_s / 2 for r in rows]


def col(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> list[float | None]:
    return [None if r.get(key) is None else float(r[key]) * scale for r in rows]


def warmup_band(run: RunData) -> tuple[float, float, str] | None:
    w = float(run.summary.get("warmup_s") or 0.0)
    return (0.0, w, "warm-up") if w > 0 else None
