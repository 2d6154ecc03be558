"""sweep.html: one self-contained page (inline SVG, no scripts) from sweep.json (pure)."""

from __future__ import annotations

import math
from html import escape
from typing import Any

from coordinator.report.svg import log_ticks, nice_ticks

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
W, H = 760, 400
ML, MR, MT, MB = 64, 20, 20, 48

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.pass{color:#1a7f37}.fail{color:#b42318}.gen{color:#9a6700}.muted{color:#666}
.box{border:1px solid #ddd;padding:8px 12px;background:#fafafa;margin:.5em 0}
"""


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return escape(str(v))


def _marker(kind: str, x: float, y: float, color: str) -> str:
    if kind == "pass":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}"/>'
    if kind == "server":
        return (
            f'<path d="M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}M{x - 4:.1f},'
            f'{y + 4:.1f}L{x + 4:.1f},{y - 4:.1f}" stroke="{color}" stroke-width="2"/>'
        )
    if kind == "generator":
        return (
            f'<path d="M{x:.1f},{y - 5:.1f}L{x + 5:.1f},{y + 4:.1f}L{x - 5:.1f},{y + 4:.1f}Z" '
            f'fill="none" stroke="{color}" stroke-width="1.5"/>'
        )
    return (
        f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="none" '
        f'stroke="{color}" stroke-width="1.5"/>'
    )


def latency_slo_ms(doc: dict[str, Any]) -> list[tuple[str, float]]:
    from coordinator.slo import parse_slo

    out = []
    for text in doc.get("spec", {}).get("plan", {}).get("slos") or []:
        try:
            s = parse_slo(text)
        except ValueError:
            continue
        if s.metric.startswith("latency_ms.") and s.op in ("<", "<="):
            out.append((text, s.value))
    return out


def curve_svg(doc: dict[str, Any]) -> str:
    """Latency (p50 dashed, p99 solid; log scale) against achieved throughput."""
    series = []
    for i, t in enumerate(doc.get("targets") or []):
        pts = []
        steps = [s for s in t.get("steps") or [] if not s.get("superseded")]
        for s in sorted(steps, key=lambda s: s["load"]):
            lat = s.get("latency_ms") or {}
            if s.get("throughput_rps", 0) <= 0 or not lat.get("p99"):
                continue
            pts.append((float(s["throughput_rps"]), float(lat["p50"]), float(lat["p99"]), s))
        if pts:
            series.append((t, PALETTE[i % len(PALETTE)], pts))
    if not series:
        return '<p class="muted">no measured steps yet</p>'
    slos = latency_slo_ms(doc)
    xs = [p[0] for _, _, pts in series for p in pts]
    ys = [v for _, _, pts in series for p in pts for v in (p[1], p[2]) if v > 0]
    ys += [v for _, v in slos]
    x_hi = max(xs) * 1.08
    y_lo, y_hi = min(ys) / 1.4, max(ys) * 1.4

    def px(x: float) -> float:
        return ML + (W - ML - MR) * x / x_hi

    def py(y: float) -> float:
        f = (math.log10(max(y, y_lo)) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo))
        return H - MB - (H - MT - MB) * f

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" font-size="11" font-family="sans-serif">',
        f'<rect x="{ML}" y="{MT}" width="{W - ML - MR}" height="{H - MT - MB}" '
        'fill="#fff" stroke="#999"/>',
    ]
    for v in nice_ticks(0, x_hi, 6, inside=True):
        x = px(v)
        parts.append(
            f'<line x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{H - MB}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{H - MB + 14}" text-anchor="middle">{v:g}</text>'
        )
    for v in log_ticks(y_lo, y_hi, thin=False):
        y = py(v)
        parts.append(
            f'<line x1="{ML}" y1="{y:.1f}" x2="{W - MR}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>'
        )
    parts.append(
        f'<text x="{(ML + W - MR) / 2}" y="{H - 10}" text-anchor="middle">'
        "achieved throughput (req/s)</text>"
        f'<text transform="translate(14,{(MT + H - MB) / 2}) rotate(-90)" '
        'text-anchor="middle">latency from intended send (ms, log)</text>'
    )
    for text, v in slos:
        y = py(v)
        parts.append(
            f'<line x1="{ML}" y1="{y:.1f}" x2="{W - MR}" y2="{y:.1f}" stroke="#b42318" '
            f'stroke-dasharray="6,4"/><text x="{W - MR - 4}" y="{y - 4:.1f}" '
            f'text-anchor="end" fill="#b42318">SLO {escape(text)}</text>'
        )
    for t, color, pts in series:
        for idx, dash in ((1, "4,3"), (2, "")):
            d = "M" + "L".join(f"{px(p[0]):.1f},{py(p[idx]):.1f}" for p in pts)
            extra = f' stroke-dasharray="{dash}"' if dash else ""
            parts.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="1.5"{extra}/>')
        for p in pts:
            s = p[3]
            parts.append(_marker(str(s.get("kind")), px(p[0]), py(p[2]), color))
            parts.append(f'<circle cx="{px(p[0]):.1f}" cy="{py(p[1]):.1f}" r="2" fill="{color}"/>')
        out = t.get("outcome") or {}
        if out.get("max_throughput_rps"):
            x = px(float(out["max_throughput_rps"]))
            parts.append(
                f'<line x1="{x:.1f}" y1="{MT}" x2="{x:.1f}" y2="{H - MB}" stroke="{color}" '
                f'stroke-dasharray="2,3"/><text x="{x + 3:.1f}" y="{MT + 12}" fill="{color}">'
                f"max {escape(t['name'])}</text>"
            )
        kn = out.get("knee")
        if kn:
            step = next((p for p in pts if p[3]["index"] == kn["index"]), None)
            if step is not None:
                parts.append(
                    f'<circle cx="{px(step[0]):.1f}" cy="{py(step[2]):.1f}" r="9" '
                    f'fill="none" stroke="{color}" stroke-width="1"/>'
                )
    ly = MT + 14
    for t, color, _ in series:
        parts.append(
            f'<rect x="{ML + 8}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
            f'<text x="{ML + 22}" y="{ly + 1}">{escape(t["name"])}</text>'
        )
        ly += 14
    parts.append(
        f'<text x="{ML + 8}" y="{ly + 4}" fill="#555">solid p99, dashed p50; ● pass '
        "✕ server fail △ volley-limited □ invalid; ring = knee</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _kind_cell(s: dict[str, Any]) -> str:
    kind = s.get("kind")
    if s.get("superseded"):
        return f'<span class="muted">{escape(str(kind))}, measured again</span>'
    if kind == "pass":
        return '<span class="pass">pass</span>'
    if kind == "generator":
        return '<span class="gen">volley limit</span>'
    if kind == "invalid":
        return '<span class="gen">invalid</span>'
    if kind == "inconclusive":
        return '<span class="gen">inconclusive</span>'
    return '<span class="fail">fail</span>'


def _steps_table(t: dict[str, Any], mode: str) -> str:
    unit = {"rate": "rate (req/s)", "connections": "connections held"}.get(mode, "concurrency")
    streamed = any(s.get("tokens_per_s") is not None for s in t.get("steps") or [])
    rows = [
        "<table><tr><th>#</th><th>"
        + unit
        + "</th><th>offered/s</th><th>achieved/s</th>"
        + ("<th>tokens/s</th>" if streamed else "")
        + "<th>p50 ms</th><th>p99 ms</th>"
        "<th>errors</th><th>result</th><th class=l>why</th><th class=l>run</th></tr>"
    ]
    for s in t.get("steps") or []:
        lat = s.get("latency_ms") or {}
        run = escape(str(s.get("run_dir", "")))
        rows.append(
            f"<tr><td>{s['index'] + 1}</td><td>{s['load']:g}</td>"
            f"<td>{_fmt(s.get('offered_rps'))}</td><td>{_fmt(s.get('throughput_rps'))}</td>"
            + (f"<td>{_fmt(s.get('tokens_per_s'))}</td>" if streamed else "")
            + f"<td>{_fmt(lat.get('p50'), 2)}</td><td>{_fmt(lat.get('p99'), 2)}</td>"
            f"<td>{float(s.get('error_rate') or 0):.2%}</td><td>{_kind_cell(s)}</td>"
            f"<td class=l>{escape('; '.join(s.get('reasons') or []))}</td>"
            f'<td class=l><a href="{run}/summary.json">{run}</a></td></tr>'
        )
    rows.append("</table>")
    return "".join(rows)


def _tokens_line(cp: dict[str, Any]) -> str:
    """A streamed model's plan in tokens/s beside req/s ("" for unary models)."""
    if cp.get("max_tokens_per_s_per_replica") is None:
        return ""
    return (
        f"Per replica: <b>{cp['max_tokens_per_s_per_replica']:,.1f} tokens/s</b> "
        f"({cp['max_rps_per_replica']:,.1f} req/s, {cp['tokens_per_request']:,.2f} tokens per "
        f"request), planned at {cp['planned_tokens_per_s_per_replica']:,.1f} tokens/s "
        f"({cp['planned_rps_per_replica']:,.1f} req/s); the target needs "
        f"{cp['required_tokens_per_s']:,.0f} tokens/s.<br>"
    )


def render_report(doc: dict[str, Any]) -> str:
    spec = doc.get("spec") or {}
    plan = spec.get("plan") or {}
    settings = spec.get("settings") or {}
    mode = str(settings.get("mode", "rate"))
    title = f"volley sweep {doc.get('name', '')}"
    out = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p class=muted>model <b>{escape(str(plan.get('model')))}</b>; "
        f"SLOs: {escape(', '.join(plan.get('slos') or []) or 'none (keep up with the offer)')}; "
        f"{escape(mode)} sweep from {settings.get('start')}, x{settings.get('growth')} then "
        f"bisection to {float(settings.get('tolerance', 0)):.0%}; steps of "
        f"{settings.get('step_duration_s')} s after {settings.get('warmup_s')} s warm-up; "
        f"state <b>{escape(str(doc.get('state')))}</b> ({escape(str(doc.get('updated')))})</p>",
    ]
    if doc.get("error"):
        out.append(f"<p class=fail>error: {escape(str(doc['error']))}</p>")
    out.append("<h2>Latency–throughput curve</h2>")
    out.append(curve_svg(doc))
    out.append(
        "<h2>Results</h2><table><tr><th class=l>target</th><th class=l>endpoint</th>"
        "<th>max sustainable</th><th>knee</th><th class=l>verdict</th></tr>"
    )
    for t in doc.get("targets") or []:
        o = t.get("outcome") or {}
        kn = o.get("knee") or {}
        max_txt = "-" if t.get("max_rps") is None else f"{t['max_rps']:,.1f} req/s"
        if mode == "concurrency" and o.get("max_load") is not None:
            max_txt += f" (concurrency {o['max_load']:g})"
        if mode == "connections" and o.get("max_load") is not None:
            first = f"; {o['failed_first']} first" if o.get("failed_first") else ""
            max_txt = f"{o['max_load']:g} connections held cleanly{first}"
        knee_txt = (
            f"{kn['throughput_rps']:,.1f} req/s @ {kn['latency_ms']:.1f} ms mean" if kn else "-"
        )
        out.append(
            f"<tr><td class=l>{escape(t['name'])}</td><td class=l>{escape(t['address'])} "
            f"({escape(str(t.get('model')))}, x{t.get('replicas', 1)})</td>"
            f"<td>{max_txt}</td><td>{knee_txt}</td>"
            f"<td class=l>{escape(str(o.get('message', 'not finished')))}</td></tr>"
        )
    out.append("</table>")
    ranking = doc.get("ranking") or []
    if len(ranking) > 1:
        out.append(
            "<h2>Configurations ranked</h2><table><tr><th>by rate</th><th>by cost</th>"
            "<th class=l>config</th><th>max req/s per replica</th><th>cost/hour</th>"
            "<th>cost per 1k req/s</th><th class=l>note</th></tr>"
        )
        for r in ranking:
            out.append(
                f"<tr><td>{_fmt(r.get('rank_by_rate'))}</td><td>{_fmt(r.get('rank_by_cost'))}"
                f"</td><td class=l>{escape(r['name'])}</td><td>{_fmt(r.get('max_rps'))}</td>"
                f"<td>{_fmt(r.get('cost_per_hour'), 2)}</td>"
                f"<td>{_fmt(r.get('cost_per_1k_rps'), 3)}</td>"
                f"<td class=l>{escape(str(r.get('note', '')))}</td></tr>"
            )
        out.append("</table>")
    for name, sc in (doc.get("scaling") or {}).items():
        out.append(f"<h2>Scaling check: {escape(name)}</h2><div class=box>")
        if "error" in sc:
            out.append(escape(str(sc["error"])))
        else:
            out.append(
                f"{sc['replicas']} replicas/instances sustained {sc['measured_rps']:,.1f} req/s; "
                f"one ({escape(str(sc['of']))}) sustained {sc['base_rps']:,.1f}: efficiency "
                f"<b>{sc['efficiency']:.0%}</b> ("
                + ("linear" if sc["linear"] else "sub-linear")
                + (", a lower bound" if sc.get("lower_bound") else "")
                + ")"
            )
        out.append("</div>")
    for name, cp in (doc.get("capacity") or {}).items():
        out.append(f"<h2>Capacity plan: {escape(name)}</h2><div class=box>")
        if "error" in cp:
            out.append(escape(str(cp["error"])) + "</div>")
            continue
        cost = (
            f"; cost {cp['cost_per_hour']:,.2f}/hour ({cp['cost_per_1k_rps']:,.3f} per 1k req/s)"
            if cp.get("cost_per_hour") is not None
            else ""
        )
        out.append(
            f"<b>{cp['replicas']} replica(s)</b> for {cp['production_rps']:,.0f} req/s with "
            f"{cp['headroom']:.0%} headroom ({cp['required_rps']:,.0f} req/s of capacity), "
            f"{cp['gpus']:g} GPU(s), {cp['cpus']:g} CPU(s); utilisation at the target "
            f"{cp['utilization']:.0%}{cost}.<br>"
            + _tokens_line(cp)
            + "Assumptions:<ul>"
            + "".join(f"<li>{escape(a)}</li>" for a in cp.get("assumptions") or [])
            + "</ul></div>"
        )
    for t in doc.get("targets") or []:
        out.append(f"<h2>Steps: {escape(t['name'])}</h2>")
        out.append(_steps_table(t, mode))
    out.append("</body></html>\n")
    return "".join(out)
