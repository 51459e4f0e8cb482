"""Inline SVG charts drawn on the server: no script, no library, and they print.

Each function returns markup ready to drop into a template (`Markup`: every text in it is escaped
here). Colours come from the stylesheet's palette by series index (`.s0` ... `.s7`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

__all__ = ["Segment", "sparkline", "stacked_bars", "timeline"]

_SERIES = 8  # colours in the stylesheet's palette


def stacked_bars(
    svg_id: str, columns: Sequence[str], series: Mapping[str, Sequence[float]], *, unit: str = "$"
) -> Markup:
    """Bars per column (a day), stacked by series (a model), with a legend; `series` values are in
    column order. An empty chart says so."""
    width, height, left, bottom, top = 720, 240, 56, 28, 12
    totals = [sum(values[i] for values in series.values()) for i in range(len(columns))]
    peak = max(totals, default=0.0)
    empty = not columns or peak <= 0
    full_height = 48 if empty else height + 24 * _legend_rows(series)
    parts = [
        f'<svg id="{escape(svg_id)}" class="chart" viewBox="0 0 {width} {full_height}" '
        f'role="img" aria-label="{escape(svg_id)}">'
    ]
    if empty:
        parts.append(f'<text x="{width / 2}" y="28" class="empty" text-anchor="middle">no data yet</text>')
        return Markup("".join(parts) + "</svg>")
    plot_w, plot_h = width - left - 8, height - bottom - top
    step = plot_w / len(columns)
    bar_w = max(2.0, step * 0.7)
    for tick in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - tick)
        parts.append(f'<line x1="{left}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">'
            f"{unit}{peak * tick:.4g}</text>"
        )
    for i, column in enumerate(columns):
        x = left + i * step + (step - bar_w) / 2
        base = float(top + plot_h)
        for n, (name, values) in enumerate(series.items()):
            h = plot_h * values[i] / peak
            if h <= 0:
                continue
            base -= h
            label = f"{column} {name}: {unit}{values[i]:.6g}"
            parts.append(
                f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'class="s{n % _SERIES}">'
                f"<title>{escape(label)}</title></rect>"
            )
        if len(columns) <= 16 or i % max(1, len(columns) // 8) == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - 10}" class="axis" text-anchor="middle">'
                f"{escape(column[5:])}</text>"
            )
    for n, name in enumerate(series):
        row, col = divmod(n, 4)
        x, y = left + col * 170, height + 8 + row * 24
        parts.append(f'<rect x="{x}" y="{y}" width="12" height="12" rx="2" class="s{n % _SERIES}"/>')
        parts.append(f'<text x="{x + 18}" y="{y + 11}" class="legend">{escape(name[:24])}</text>')
    return Markup("".join(parts) + "</svg>")


def _legend_rows(series: Mapping[str, object]) -> int:
    return (len(series) + 3) // 4


def sparkline(values: Sequence[float], *, width: int = 120, height: int = 28) -> Markup:
    """A small line of `values` (oldest first), its last point marked."""
    if len(values) < 2:
        return Markup("")
    peak = max(values) or 1.0
    step = width / (len(values) - 1)

    def y(value: float) -> float:
        return height - 2 - (height - 4) * value / peak

    points = " ".join(f"{i * step:.1f},{y(v):.1f}" for i, v in enumerate(values))
    last_y = y(values[-1])
    return Markup(
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
        f'<polyline points="{points}" class="spark-line"/>'
        f'<circle cx="{width:.1f}" cy="{last_y:.1f}" r="2.5" class="spark-dot"/></svg>'
    )


@dataclass(frozen=True, slots=True)
class Segment:
    """One attempt on a timeline: the wait before it, then the call."""

    label: str
    wait_ms: float
    call_ms: float
    ok: bool


def timeline(segments: Sequence[Segment]) -> Markup:
    """The attempts one after another on one time axis: a grey wait, then a green (success) or red
    (failure) call."""
    total = sum(s.wait_ms + s.call_ms for s in segments)
    if not segments or total <= 0:
        return Markup("")
    width, row = 720, 22
    height = row * len(segments) + 20
    parts = [f'<svg class="chart timeline" viewBox="0 0 {width} {height}" role="img" aria-label="attempts">']
    scale = (width - 170) / total
    at = 0.0
    for i, s in enumerate(segments):
        y = i * row + 4
        parts.append(f'<text x="0" y="{y + 13}" class="legend">{escape(s.label[:22])}</text>')
        x = 160 + at * scale
        if s.wait_ms > 0:
            wait_w = max(1.0, s.wait_ms * scale)
            parts.append(f'<rect x="{x:.1f}" y="{y}" width="{wait_w:.1f}" height="16" class="wait"/>')
        x += s.wait_ms * scale
        kind = "ok" if s.ok else "bad"
        parts.append(
            f'<rect x="{x:.1f}" y="{y}" width="{max(2.0, s.call_ms * scale):.1f}" height="16" rx="2" '
            f'class="{kind}">'
            f"<title>{escape(s.label)}: {s.call_ms:.0f} ms</title></rect>"
        )
        at += s.wait_ms + s.call_ms
    parts.append(
        f'<text x="{width - 4}" y="{height - 4}" class="axis" text-anchor="end">{total:,.0f} ms</text>'
    )
    return Markup("".join(parts) + "</svg>")
