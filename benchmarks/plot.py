"""How the figures grow with fleet size, drawn as a small SVG (no plotting library): one panel
per measure, nodes on a log axis, one line per cluster count."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape

W, H, PAD = 360, 240, 48
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")

Series = dict[str, list[tuple[float, float]]]


def _panels(result: dict[str, Any]) -> list[tuple[str, Series]]:
    sections = result.get("sections", {})
    panels: list[tuple[str, Series]] = []
    recheck: Series = {}
    for row in sections.get("recheck", {}).get("detail") or []:
        if row.get("ms") is not None:
            recheck.setdefault(f"{row['clusters']} cluster(s)", []).append(
                (row["nodes"], row["ms"])
            )
    if recheck:
        panels.append(("full re-evaluation, ms", recheck))
    rows = [r for r in sections.get("fleet", {}).get("detail") or [] if "idle_cpu_pct" in r]
    for title, pick in (
        ("first load until ready, every node tracked, s", lambda r: r["first"]["done"]),
        ("restart until ready, every node tracked, s", lambda r: r["restart"]["done"]),
        ("idle CPU, % of a core", lambda r: r["idle_cpu_pct"]),
        ("RSS, MB", lambda r: r["rss_mb"]),
    ):
        points = [(r["nodes"], pick(r)) for r in rows if pick(r) is not None]
        if points:
            panels.append((title, {"daemon (clusters: see table)": points}))
    return panels


def _panel(x0: float, title: str, series: Series) -> list[str]:
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    lo_x, hi_x = math.log10(min(xs)), math.log10(max(xs))
    hi_y = max(ys) * 1.1 or 1.0
    span_x = (hi_x - lo_x) or 1.0

    def px(x: float) -> float:
        return x0 + PAD + (math.log10(x) - lo_x) / span_x * (W - 2 * PAD)

    def py(y: float) -> float:
        return H - PAD - max(y, 0.0) / hi_y * (H - 2 * PAD)

    out = [
        f'<text x="{x0 + W / 2}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<line x1="{x0 + PAD}" y1="{H - PAD}" x2="{x0 + W - PAD}" y2="{H - PAD}" stroke="#444"/>',
        f'<line x1="{x0 + PAD}" y1="{PAD}" x2="{x0 + PAD}" y2="{H - PAD}" stroke="#444"/>',
        f'<text x="{x0 + PAD - 4}" y="{PAD + 4}" text-anchor="end" font-size="10">{hi_y:.3g}</text>',
        f'<text x="{x0 + PAD - 4}" y="{H - PAD}" text-anchor="end" font-size="10">0</text>',
        f'<text x="{x0 + W / 2}" y="{H - 12}" text-anchor="middle" font-size="10">nodes (log)</text>',
    ]
    for x in sorted(set(xs)):
        out.append(
            f'<text x="{px(x):.1f}" y="{H - PAD + 14}" text-anchor="middle" '
            f'font-size="10">{x:,.0f}</text>'
        )
    for i, (label, points) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        pts = sorted(points)
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out += [
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>' for x, y in pts
        ]
        out.append(
            f'<text x="{x0 + PAD + 6}" y="{PAD + 12 + 13 * i}" font-size="10" '
            f'fill="{colour}">{escape(label)}</text>'
        )
    return out


def scaling_svg(result: dict[str, Any]) -> str | None:
    """The SVG, or None when the result has nothing measured at two sizes or more."""
    panels = [(t, s) for t, s in _panels(result) if _sizes(s) >= 2]
    if not panels:
        return None
    body: list[str] = []
    for i, (title, series) in enumerate(panels):
        body += _panel(i * W, title, series)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * len(panels)}" height="{H}" '
        f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n'
        + "\n".join(body)
        + "\n</svg>\n"
    )


def _sizes(series: Series) -> int:
    xs: Sequence[float] = [x for pts in series.values() for x, _ in pts]
    return len(set(xs))
