"""A self-contained SVG chart of a bench report, written by hand (no plotting library).

Two panels side by side: aggregate throughput vs concurrency and TTFT p50 vs concurrency,
one polyline (with point markers) per endpoint, axes with ticks and labels, and a legend.
Concurrency levels are spaced evenly (1, 4, 16 read like a log scale). The y axis starts at
0 and ends at a "nice" round number.
"""
from __future__ import annotations

import math
from xml.sax.saxutils import escape

from .report import describe_endpoint

WIDTH, HEIGHT = 960, 430
PANEL_WIDTH, PANEL_GAP, MARGIN = 440, 40, 20
PLOT_TOP, PLOT_BOTTOM = 106, 370              # y of the plot area's top and bottom edge
PLOT_LEFT_PAD, PLOT_RIGHT_PAD = 70, 16       # inside a panel: room for y tick labels
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'
PANELS = (("Aggregate throughput", "tokens/s", lambda e: e["aggregate_tokens_per_second"]),
          ("Time to first token, p50", "ms", lambda e: e["ttft_ms"]["p50"]))


def nice_ticks(max_value: float, num_ticks: int = 5) -> list[float]:
    """0, step, 2*step ... >= max_value with step 1, 2, 2.5 or 5 times a power of ten."""
    if not max_value or max_value <= 0:
        return [0.0, 1.0]
    raw = max_value / num_ticks
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    return [i * step for i in range(int(math.ceil(max_value / step - 1e-9)) + 1)]


def _fmt(value: float) -> str:
    if value >= 10000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def _text(x: float, y: float, content: str, size: int = 12, anchor: str = "middle", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" {FONT} '
            f'fill="#222"{extra}>{escape(content)}</text>')


def _series(report: dict, value_of) -> list[tuple[str, list[tuple[int, float | None]]]]:
    """[(label, [(concurrency, value)...])] in endpoint order."""
    by_label: dict[str, list] = {e["label"]: [] for e in report["endpoints"]}
    for entry in report["aggregated"]:
        by_label[entry["label"]].append((entry["concurrency"], value_of(entry)))
    return list(by_label.items())


def _panel(report: dict, index: int, title: str, unit: str, value_of) -> list[str]:
    left = MARGIN + index * (PANEL_WIDTH + PANEL_GAP) + PLOT_LEFT_PAD
    right = MARGIN + index * (PANEL_WIDTH + PANEL_GAP) + PANEL_WIDTH - PLOT_RIGHT_PAD
    levels = list(report["concurrency"])
    series = _series(report, value_of)
    ticks = nice_ticks(max((v for _, points in series for _, v in points if v is not None), default=0))

    def x_of(level: int) -> float:
        if len(levels) == 1:
            return (left + right) / 2
        return left + 20 + (right - left - 40) * levels.index(level) / (len(levels) - 1)

    def y_of(value: float) -> float:
        return PLOT_BOTTOM - (PLOT_BOTTOM - PLOT_TOP) * value / ticks[-1]

    out = [f'<g class="panel" data-title="{escape(title)}">',
           _text((left + right) / 2, PLOT_TOP - 14, f"{title} ({unit})", 14, extra=' font-weight="bold"')]
    for tick in ticks:
        y = y_of(tick)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        out.append(_text(left - 8, y + 4, _fmt(tick), 11, "end", ' class="ytick"'))
    for level in levels:
        x = x_of(level)
        out.append(f'<line x1="{x:.1f}" y1="{PLOT_BOTTOM}" x2="{x:.1f}" y2="{PLOT_BOTTOM + 5}" stroke="#444"/>')
        out.append(_text(x, PLOT_BOTTOM + 19, str(level), 11, extra=' class="xtick"'))
    out.append(f'<polyline points="{left},{PLOT_TOP} {left},{PLOT_BOTTOM} {right},{PLOT_BOTTOM}" '
               'fill="none" stroke="#444" class="axis"/>')
    out.append(_text((left + right) / 2, PLOT_BOTTOM + 42, "concurrency (parallel requests)", 12))
    mid_y = (PLOT_TOP + PLOT_BOTTOM) / 2
    out.append(_text(left - 52, mid_y, unit, 12, extra=f' transform="rotate(-90 {left - 52} {mid_y})"'))
    for number, (label, points) in enumerate(series):
        out += _polyline(label, COLORS[number % len(COLORS)],
                         [(x_of(c), y_of(v)) for c, v in points if v is not None])
    return out + ["</g>"]


def _polyline(label: str, color: str, xy: list[tuple[float, float]]) -> list[str]:
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    out = [f'<polyline class="series" data-label="{escape(label)}" points="{coords}" fill="none" '
           f'stroke="{color}" stroke-width="2.5"/>']
    out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}"/>' for x, y in xy]
    return out


def _legend(report: dict) -> list[str]:
    """One row per endpoint under the title."""
    out = ['<g class="legend">']
    x = MARGIN + PLOT_LEFT_PAD
    for number, endpoint in enumerate(report["endpoints"]):
        color, y = COLORS[number % len(COLORS)], 46 + 18 * number
        text = f"{endpoint['label']} = {describe_endpoint(endpoint)}"
        out.append(f'<line x1="{x}" y1="{y}" x2="{x + 24}" y2="{y}" stroke="{color}" stroke-width="3"/>')
        out.append(_text(x + 30, y + 4, text, 12, "start", ' class="legend-label"'))
    return out + ["</g>"]


def render_chart(report: dict) -> str:
    """The whole SVG document for `report` (the dict returned by bench.run_bench)."""
    title = (f"velollmctl bench: profile {report['profile']}, max_tokens {report['max_tokens']}, "
             f"{report['requests_per_level']} requests x {report['rounds']} round(s) per level")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}">',
             f"<title>{escape(title)}</title>",
             f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
             _text(WIDTH / 2, 24, title, 15, extra=' font-weight="bold"')]
    parts += _legend(report)
    for index, (panel_title, unit, value_of) in enumerate(PANELS):
        parts += _panel(report, index, panel_title, unit, value_of)
    return "\n".join(parts + ["</svg>"]) + "\n"
