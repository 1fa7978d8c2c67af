"""Charts as inline SVG, written by hand (no plotting dependency).

:func:`bar_chart_svg`: a row per layer and side-by-side panels (sparsity, bytes, FLOPs, ...); in each
panel every layer gets one thin bar per series (dense vs compressed, or A vs B), so every value stays
visible even when a compressed layer is larger than its dense form. :func:`line_chart_svg`: curves
(a metric against sparsity, one line per layer). Hovering a bar or a point shows its exact value
(an SVG ``<title>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

__all__ = ["Series", "Panel", "bar_chart_svg", "Line", "line_chart_svg", "PALETTE"]

FONT = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace"
CHAR_PX = 7.3          # width of one 12-px monospace character
PANEL_W, GAP, PAD = 300, 32, 8
MAX_LABEL = 34         # longer layer names are shortened in the middle (full name on hover)
#: line colours, cycled (Tableau 10)
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")


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


@dataclass(frozen=True)
class Line:
    """One curve: a label, a colour and its ``(x, y)`` points."""

    label: str
    color: str
    points: list[tuple[float, float]]


def line_chart_svg(lines: list[Line], x_title: str, y_title: str, fmt_x=str, fmt_y=str, title: str = "",
                   reference: float | None = None, reference_label: str = "", log_y: bool = False,
                   x_max: float | None = None) -> str:
    """An inline ``<svg>`` with every line on one pair of axes (x from 0 to ``x_max``, default the largest
    x), a legend beside it and, given ``reference``, a dashed horizontal line at that y (a dense model's
    value). ``log_y``: a logarithmic y axis (ignored unless every y is positive)."""
    import math

    w, h, left, top, bottom = 560, 320, 70, 30, 44
    xs = [x for line in lines for x, _ in line.points]
    ys = [y for line in lines for _, y in line.points] + ([reference] if reference is not None else [])
    x_max = x_max or max(xs, default=1.0) or 1.0
    if log_y and ys and min(ys) <= 0:
        log_y = False
    f = math.log if log_y else (lambda v: v)
    y_lo, y_hi = (f(min(ys)), f(max(ys))) if ys else (0.0, 1.0)
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    pad = (y_hi - y_lo) * 0.05
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def px(x: float) -> float:
        return left + w * x / x_max

    def py(y: float) -> float:
        return top + h * (1 - (f(y) - y_lo) / (y_hi - y_lo))

    legend_w = 16 + CHAR_PX * min(MAX_LABEL, max((len(_short(line.label)) for line in lines), default=4)) + 24
    width, height = left + w + 24 + legend_w, top + h + bottom + max(0, 16 * len(lines) - h)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width:.0f} {height}" '
           f'width="{width:.0f}" height="{height}" role="img" aria-label="{escape(title)}">',
           f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#fafbfc" stroke="#c5ceda"/>']
    for i in range(5):  # grid and ticks
        gx, gy = x_max * i / 4, y_lo + (y_hi - y_lo) * i / 4
        yv = math.exp(gy) if log_y else gy
        x_pos, y_pos = left + w * i / 4, top + h * (1 - i / 4)
        out.append(f'<line x1="{x_pos:.1f}" y1="{top}" x2="{x_pos:.1f}" y2="{top + h}" stroke="#e3e8ef"/>'
                   f'<text x="{x_pos:.1f}" y="{top + h + 15}" font-size="10" fill="#566" text-anchor="middle">'
                   f'{escape(fmt_x(gx))}</text>'
                   f'<line x1="{left}" y1="{y_pos:.1f}" x2="{left + w}" y2="{y_pos:.1f}" stroke="#e3e8ef"/>'
                   f'<text x="{left - 6}" y="{y_pos + 3:.1f}" font-size="10" fill="#566" text-anchor="end">'
                   f'{escape(fmt_y(yv))}</text>')
    out.append(f'<text x="{left + w / 2:.0f}" y="{top + h + 34}" font-size="12" text-anchor="middle">{escape(x_title)}</text>'
               f'<text x="14" y="{top + h / 2:.0f}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + h / 2:.0f})">{escape(y_title)}{" (log scale)" if log_y else ""}</text>')
    if title:
        out.append(f'<text x="{left}" y="{top - 12}" font-weight="600" font-size="13">{escape(title)}</text>')
    if reference is not None:
        y = py(reference)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" stroke="#333" stroke-dasharray="4 3">'
                   f'<title>{escape(reference_label)} {escape(fmt_y(reference))}</title></line>')
    for i, line in enumerate(lines):
        pts = sorted(line.points)
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{line.color}" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{line.color}">'
                       f'<title>{escape(line.label)}: {escape(fmt_x(x))} -> {escape(fmt_y(y))}</title></circle>')
        ly = top + 6 + 16 * i
        out.append(f'<rect x="{left + w + 24}" y="{ly}" width="10" height="10" fill="{line.color}"/>'
                   f'<text x="{left + w + 38}" y="{ly + 9}" font-size="11" style="{FONT}">{escape(_short(line.label))}'
                   f'<title>{escape(line.label)}</title></text>')
    out.append("</svg>")
    return "\n".join(out)
