"""Per-layer bar charts as inline SVG, written by hand (no plotting dependency).

One chart is a row per layer and side-by-side panels (sparsity, bytes, FLOPs, ...); in each panel
every layer gets one thin bar per series (dense vs compressed, or A vs B), so every value stays
visible even when a compressed layer is larger than its dense form. Hovering a bar shows its
exact value (an SVG ``<title>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

__all__ = ["Series", "Panel", "bar_chart_svg"]

FONT = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace"
CHAR_PX = 7.3          # width of one 12-px monospace character
PANEL_W, GAP, PAD = 300, 32, 8
MAX_LABEL = 34         # longer layer names are shortened in the middle (full name on hover)


@dataclass(frozen=True)
class Series:
    """One bar per layer: label, colour and the values (None: no bar)."""

    label: str
    color: str
    values: list[float | None]


@dataclass(frozen=True)
class Panel:
    """A panel of the chart: a title, its series, and how to print a value."""

    title: str
    series: list[Series]
    fmt: object = str          # callable value -> str
    max_value: float | None = None   # fixed axis end (e.g. 1.0 for sparsity); default: the data's max


def _short(name: str) -> str:
    if len(name) <= MAX_LABEL:
        return name
    keep = (MAX_LABEL - 1) // 2
    return name[:keep] + "\u2026" + name[-(MAX_LABEL - 1 - keep):]


def _panel(panel: Panel, x0: float, top: float, row_h: float, n_rows: int, names: list[str]) -> list[str]:
    values = [v for s in panel.series for v in s.values if v is not None]
    vmax = panel.max_value or max(values, default=0) or 1.0
    scale = PANEL_W / vmax
    bottom = top + row_h * n_rows
    out = [f'<text x="{x0}" y="{top - 30}" font-weight="600" font-size="13">{escape(panel.title)}</text>']
    lx = x0
    for s in panel.series:   # legend
        out.append(f'<rect x="{lx}" y="{top - 23}" width="10" height="10" fill="{s.color}"/>'
                   f'<text x="{lx + 14}" y="{top - 14}" font-size="11">{escape(s.label)}</text>')
        lx += 24 + CHAR_PX * 0.9 * len(s.label)
    for frac in (0, 0.5, 1):   # axis: grid lines and tick labels
        x = x0 + PANEL_W * frac
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{bottom}" stroke="#d9dee6" stroke-width="1"/>')
        anchor = "start" if frac == 0 else "end" if frac == 1 else "middle"
        out.append(f'<text x="{x:.1f}" y="{bottom + 14}" font-size="10" fill="#566" text-anchor="{anchor}">'
                   f'{escape(panel.fmt(vmax * frac))}</text>')
    k = len(panel.series)
    bar_h = max(2.0, (row_h - 4) / k)
    for i, name in enumerate(names):
        for j, s in enumerate(panel.series):
            v = s.values[i]
            if v is None:
                continue
            y = top + i * row_h + 2 + j * bar_h
            w = max(0.0, min(PANEL_W, v * scale))
            out.append(f'<rect x="{x0}" y="{y:.1f}" width="{w:.1f}" height="{bar_h - 1:.1f}" fill="{s.color}">'
                       f'<title>{escape(name)}: {escape(s.label)} {escape(panel.fmt(v))}</title></rect>')
    return out


def bar_chart_svg(names: list[str], panels: list[Panel], title: str = "") -> str:
    """An inline ``<svg>`` with one row per name and the panels side by side."""
    n = len(names)
    row_h = 18 if n <= 40 else 14
    label_w = 16 + CHAR_PX * max((len(_short(x)) for x in names), default=4)
    top = 48
    width = label_w + len(panels) * (PANEL_W + GAP) + PAD
    height = top + row_h * n + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width:.0f} {height}" '
           f'width="{width:.0f}" height="{height}" role="img" aria-label="{escape(title)}">']
    for i, name in enumerate(names):
        y = top + i * row_h
        if i % 2:
            out.append(f'<rect x="0" y="{y}" width="{width:.0f}" height="{row_h}" fill="#f5f7fa"/>')
        out.append(f'<text x="{label_w - 8:.1f}" y="{y + row_h / 2 + 4:.1f}" font-size="12" text-anchor="end" '
                   f'style="{FONT}">{escape(_short(name))}<title>{escape(name)}</title></text>')
    for p, panel in enumerate(panels):
        out += _panel(panel, label_w + p * (PANEL_W + GAP), top, row_h, n, names)
    out.append("</svg>")
    return "\n".join(out)
