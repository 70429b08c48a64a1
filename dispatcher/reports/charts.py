"""Charts as inline SVG, drawn on the server: no JavaScript, no external asset, the page
renders offline and prints. Every text is escaped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#2b6cb0", "#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#718096")
FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg role="img" aria-label="{escape(title)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" {FONT}>'
            f'<title>{escape(title)}</title>{"".join(body)}</svg>')


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: Sequence[float]


def line_chart(title: str, labels: Sequence[str], series: Sequence[Series], *, width: int = 560,
               height: int = 260, fmt: str = "{:,.0f}") -> str:
    """One line per series over the labels (e.g. weeks), with a legend and y gridlines."""
    left, right, top, bottom = 92, 20, 34, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = _nice_max(max((v for s in series for v in s.values), default=0))
    body = [f'<text x="0" y="14" font-weight="bold">{escape(title)}</text>']
    tick_fmt = fmt if (top_value / 4).is_integer() else "{:,.1f}"  # 12.5, not 12
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#e2e8f0"/>')
        body.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                    f'{escape(tick_fmt.format(top_value * i / 4))}</text>')
    n = max(len(labels), 1)
    xs = [left + (plot_w * (i + 0.5) / n) for i in range(n)]
    for i, label in enumerate(labels):
        body.append(f'<text x="{xs[i]:.1f}" y="{height - bottom + 16}" text-anchor="middle">{escape(label)}</text>')
    for k, s in enumerate(series):
        colour = PALETTE[k % len(PALETTE)]
        points = [(xs[i], top + plot_h - plot_h * v / top_value) for i, v in enumerate(s.values)]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for (x, y), v in zip(points, s.values, strict=False):
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                        f'<title>{escape(s.name)}: {escape(fmt.format(v))}</title></circle>')
        lx = left + k * 150
        body.append(f'<rect x="{lx}" y="{height - 18}" width="12" height="12" fill="{colour}"/>')
        body.append(f'<text x="{lx + 16}" y="{height - 8}">{escape(s.name)}</text>')
    return _svg(width, height, title, body)


def funnel_chart(title: str, rows: Sequence[tuple[str, Sequence[tuple[str, int]]]], *, width: int = 720) -> str:
    """Per row (a stage), horizontal bars for each step of the funnel, scaled to the
    row's first step (the cases that entered), with counts and shares."""
    label_w, bar_h, gap, row_gap = 90, 14, 3, 14
    steps = max((len(s) for _, s in rows), default=0)
    row_h = steps * (bar_h + gap) + row_gap
    height = 40 + len(rows) * row_h + 24
    plot_w = width - label_w - 150
    body = [f'<text x="0" y="14" font-weight="bold">{escape(title)}</text>']
    y = 30
    for stage, values in rows:
        base = values[0][1] if values else 0
        body.append(f'<text x="0" y="{y + bar_h}" font-weight="bold">{escape(stage)}</text>')
        for k, (step, value) in enumerate(values):
            w = plot_w * value / base if base else 0
            colour = PALETTE[k % len(PALETTE)]
            share = f" ({value / base:.0%})" if base and k else ""
            body.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}">'
                        f'<title>{escape(step)}: {value:,}</title></rect>')
            body.append(f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h - 3}">'
                        f'{escape(step)} {value:,}{escape(share)}</text>')
            y += bar_h + gap
        y += row_gap
    return _svg(width, height, title, body)


@dataclass(frozen=True, slots=True)
class Arm:
    label: str
    value: float | None
    low: float | None
    high: float | None
    leader: bool = False


def interval_chart(title: str, arms: Sequence[Arm], *, width: int = 560, fmt: str = "{:.1%}") -> str:
    """One row per arm: its estimate as a dot and its confidence interval as a whisker,
    on one axis from 0, so overlapping intervals are seen at a glance."""
    label_w, row_h, top = 130, 24, 32
    height = top + len(arms) * row_h + 30
    plot_w = width - label_w - 110
    top_value = _nice_max(max((a.high or a.value or 0 for a in arms), default=0) * 100) / 100
    top_value = min(max(top_value, 0.01), 1.0)

    def x(v: float) -> float:
        return label_w + plot_w * v / top_value

    body = [f'<text x="0" y="14" font-weight="bold">{escape(title)}</text>']
    for i in range(5):
        gx = x(top_value * i / 4)
        body.append(f'<line x1="{gx:.1f}" y1="{top - 6}" x2="{gx:.1f}" y2="{height - 24}" stroke="#e2e8f0"/>')
        body.append(f'<text x="{gx:.1f}" y="{height - 10}" text-anchor="middle">'
                    f'{escape(fmt.format(top_value * i / 4))}</text>')
    for k, arm in enumerate(arms):
        cy = top + k * row_h + row_h / 2
        weight = ' font-weight="bold"' if arm.leader else ""
        body.append(f'<text x="0" y="{cy + 4:.1f}"{weight}>{escape(arm.label)}</text>')
        if arm.value is None:
            body.append(f'<text x="{label_w}" y="{cy + 4:.1f}" fill="#718096">not sent</text>')
            continue
        colour = PALETTE[2] if arm.leader else PALETTE[0]
        if arm.low is not None and arm.high is not None:
            body.append(f'<line x1="{x(arm.low):.1f}" y1="{cy:.1f}" x2="{x(arm.high):.1f}" y2="{cy:.1f}" '
                        f'stroke="{colour}" stroke-width="2"/>')
            for edge in (arm.low, arm.high):
                body.append(f'<line x1="{x(edge):.1f}" y1="{cy - 5:.1f}" x2="{x(edge):.1f}" y2="{cy + 5:.1f}" '
                            f'stroke="{colour}" stroke-width="2"/>')
        interval = "" if arm.low is None or arm.high is None else \
            f" [{fmt.format(arm.low)}, {fmt.format(arm.high)}]"
        body.append(f'<circle cx="{x(arm.value):.1f}" cy="{cy:.1f}" r="4.5" fill="{colour}">'
                    f'<title>{escape(arm.label)}: {escape(fmt.format(arm.value) + interval)}</title></circle>')
        body.append(f'<text x="{x(min(arm.high or arm.value, top_value)) + 8:.1f}" y="{cy + 4:.1f}">'
                    f'{escape(fmt.format(arm.value))}</text>')
    return _svg(width, height, title, body)
