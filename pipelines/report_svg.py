"""Small hand-written SVG charts for `eva report`: line charts, stacked bars, histogram rows.

Plain functions from numbers to an SVG string, so the report stays one self-contained file with no
plotting dependency and no script needed to draw. Every piece of text goes through `esc`; every
data mark carries a `<title>` (the browser shows it as a tooltip) and its exact numbers in data
attributes (`data-series`/`data-stack`, `data-x`, `data-y`/`data-value`), and every y grid line its
tick value, so a test can check both what a point says and where it is drawn.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

# Observable's 10-colour categorical palette: distinguishable, and readable on white.
PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e", "#9498a0")
WIDTH, HEIGHT = 480, 250
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 62, 14, 12, 40


def esc(value: object) -> str:
    """HTML/SVG-escape any value (quotes too, so the result is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


@dataclass(frozen=True)
class Series:
    """One line: points (x, y) with y None for a gap; optional band (x, lo, hi) drawn under it."""

    name: str
    points: Sequence[tuple[float, float | None]]
    color: str
    band: Sequence[tuple[float, float, float]] = ()
    dashed: bool = False


# --- scales and ticks --------------------------------------------------------------------------


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 × 10^k) that cover [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi - lo < 1e-12 * max(1.0, abs(hi)):  # one value: open a small window around it
        pad = abs(hi) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(1, count)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = mag * next(s for s in (1, 2, 2.5, 5, 10) if s * mag >= raw * (1 - 1e-9))
    start, end = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    return [start + i * step for i in range(round((end - start) / step) + 1)]


def fmt_tick(value: float, ticks: Sequence[float]) -> str:
    """A tick label with just enough decimals to tell neighbouring ticks apart."""
    # without float noise: 0.6928 - 0.6927 < 1e-4
    step = float(f"{abs(ticks[1] - ticks[0]):.6g}") if len(ticks) > 1 else 1.0
    if step >= 1 and abs(value) < 1e6:
        return f"{value:,.0f}"
    quarter = 1 if round(step / 10 ** math.floor(math.log10(step)), 6) == 2.5 else 0  # a step of 2.5: one more digit
    if step < 1e-4 or abs(value) >= 1e6:  # exponent notation, with the significant digits the step needs
        top = max(abs(t) for t in ticks) or step
        return f"{value:.{max(2, math.floor(math.log10(top)) - math.floor(math.log10(step) + 1e-9) + 1 + quarter)}g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + quarter
    return f"{value:.{decimals}f}"


class Frame:
    """The plot area of one chart: data -> pixel mapping plus axes, grid and labels."""

    def __init__(
        self,
        x_ticks: Sequence[float],
        y_ticks: Sequence[float],
        width: int = WIDTH,
        height: int = HEIGHT,
        x_domain: tuple[float, float] | None = None,
    ) -> None:
        """`x_domain` defaults to the first..last x tick; bar charts widen it by half a bar each side."""
        self.x_lo, self.x_hi = x_domain if x_domain is not None else (x_ticks[0], x_ticks[-1])
        self.x_ticks = [v for v in x_ticks if self.x_lo <= v <= self.x_hi]
        self.y_ticks = list(y_ticks)
        self.width, self.height = width, height
        self.left, self.right = MARGIN_LEFT, width - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, height - MARGIN_BOTTOM

    def x(self, value: float) -> float:
        lo, hi = self.x_lo, self.x_hi
        return self.left + (self.right - self.left) * ((value - lo) / (hi - lo) if hi > lo else 0.5)

    def y(self, value: float) -> float:
        lo, hi = self.y_ticks[0], self.y_ticks[-1]
        return self.bottom - (self.bottom - self.top) * ((value - lo) / (hi - lo) if hi > lo else 0.5)

    def axes(self, x_label: str, y_label: str, x_labels: dict[float, str] | None = None) -> str:
        """Horizontal grid lines with y labels, x tick labels, and both axis titles."""
        parts = []
        for v in self.y_ticks:
            y = self.y(v)
            parts.append(
                f'<line class="grid" data-value="{v!r}" x1="{self.left}" x2="{self.right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            )
            parts.append(
                f'<text class="tick y-tick" data-value="{v!r}" x="{self.left - 6}" y="{y + 4:.1f}" '
                f'text-anchor="end">{esc(fmt_tick(v, self.y_ticks))}</text>'
            )
        for v in self.x_ticks:
            label = (x_labels or {}).get(v, fmt_tick(v, self.x_ticks))
            parts.append(
                f'<text class="tick" x="{self.x(v):.1f}" y="{self.bottom + 16}" '
                f'text-anchor="middle">{esc(label)}</text>'
            )
        parts.append(f'<line class="axis" x1="{self.left}" x2="{self.right}" y1="{self.bottom}" y2="{self.bottom}"/>')
        parts.append(
            f'<text class="axis-title" x="{(self.left + self.right) / 2:.1f}" y="{self.height - 6}" '
            f'text-anchor="middle">{esc(x_label)}</text>'
        )
        mid = (self.top + self.bottom) / 2
        parts.append(
            f'<text class="axis-title" transform="translate(13 {mid:.1f}) rotate(-90)" '
            f'text-anchor="middle">{esc(y_label)}</text>'
        )
        return "".join(parts)


def svg(frame: Frame, body: str, label: str, kind: str) -> str:
    return (
        f'<svg class="chart" data-kind="{esc(kind)}" viewBox="0 0 {frame.width} {frame.height}" '
        f'role="img" aria-label="{esc(label)}" xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )


def iteration_ticks(xs: Sequence[float], max_ticks: int = 10) -> list[float]:
    """Integer x ticks from the first to the last iteration, at most `max_ticks` of them."""
    lo, hi = int(min(xs)), int(max(xs))
    if lo == hi:
        return [lo - 1, lo, lo + 1]
    step = max(1, math.ceil((hi - lo) / (max_ticks - 1)))
    return [float(v) for v in range(lo, hi + step, step)]


# --- charts ----------------------------------------------------------------------------------------


def line_chart(
    series: Sequence[Series],
    y_label: str,
    label: str,
    x_label: str = "iteration",
    fmt: str = "{:.4g}",
    y_domain: tuple[float, float] | None = None,
    continuous_x: bool = False,
) -> str | None:
    """Lines over iterations; bands (e.g. p10–p90) drawn first. None when there is no point.

    `y_domain` fixes the y range (e.g. 0..1 for an accuracy) instead of fitting it to the data; it
    widens to any value outside it, so a point is never drawn off the chart. The x axis spans the
    data (no tick for an iteration that does not exist); `continuous_x` gives it round ticks instead
    of iteration numbers.
    """
    ys = [y for s in series for _, y in s.points if y is not None and math.isfinite(y)]
    if not ys:
        return None
    ys += [v for s in series for _, lo, hi in s.band for v in (lo, hi) if math.isfinite(v)]
    xs = [x for s in series for x, y in s.points if y is not None]
    lo, hi = (min(y_domain[0], *ys), max(y_domain[1], *ys)) if y_domain is not None else (min(ys), max(ys))
    # continuous: e.g. tokens, not iterations
    x_ticks = nice_ticks(min(xs), max(xs)) if continuous_x else iteration_ticks(xs)
    frame = Frame(x_ticks, nice_ticks(lo, hi), x_domain=(min(xs), max(xs)) if max(xs) > min(xs) else None)
    parts = [frame.axes(x_label, y_label)]
    for s in series:
        if s.band:
            top = " ".join(f"{frame.x(x):.1f},{frame.y(hi):.1f}" for x, _, hi in s.band)
            bottom = " ".join(f"{frame.x(x):.1f},{frame.y(lo):.1f}" for x, lo, _ in reversed(s.band))
            tip = f"{s.name}, p10–p90 band: " + "; ".join(
                f"{x_label} {x:g}: {fmt.format(lo)} – {fmt.format(hi)}" for x, lo, hi in s.band
            )
            parts.append(
                f'<polygon class="band" data-series="{esc(s.name)}" points="{top} {bottom}" fill="{s.color}" '
                f'fill-opacity="0.16"><title>{esc(tip)}</title></polygon>'
            )
    for s in series:
        parts.append(_polyline(frame, s))
        for x, y in s.points:
            if y is not None and math.isfinite(y):
                tip = f"{s.name}, {x_label} {x:g}: {fmt.format(y)}"
                data = f'data-series="{esc(s.name)}" data-x="{x:g}" data-y="{float(y)!r}"'
                parts.append(
                    f'<circle class="point" {data} cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="3.2" '
                    f'fill="{s.color}"><title>{esc(tip)}</title></circle>'
                )
    return svg(frame, "".join(parts), label, "line")


def _polyline(frame: Frame, s: Series) -> str:
    """The line of one series, broken at missing values (one <polyline> per run of points)."""
    runs: list[list[str]] = [[]]
    for x, y in s.points:
        if y is None or not math.isfinite(y):
            runs.append([])
        else:
            runs[-1].append(f"{frame.x(x):.1f},{frame.y(y):.1f}")
    dash = ' stroke-dasharray="5 4"' if s.dashed else ""
    return "".join(
        f'<polyline class="line" points="{" ".join(r)}" stroke="{s.color}"{dash}/>' for r in runs if len(r) > 1
    )


def stacked_bars(
    xs: Sequence[int],
    stacks: dict[str, Sequence[float]],
    colors: dict[str, str],
    y_label: str,
    label: str,
    x_label: str = "iteration",
    unit: str = "",
) -> str | None:
    """One bar per x, split into the `stacks` categories (bottom to top in dict order)."""
    totals = [sum(vals[i] for vals in stacks.values()) for i in range(len(xs))]
    if not xs or max(totals, default=0) <= 0:
        return None
    frame = Frame(iteration_ticks(xs), nice_ticks(0.0, max(totals)), x_domain=(min(xs) - 0.5, max(xs) + 0.5))
    unit_px = frame.x(1.0) - frame.x(0.0)  # pixels per iteration: bars of consecutive iterations never touch
    bar = max(2.0, min(44.0, unit_px * 0.7))
    parts = [frame.axes(x_label, y_label)]
    for i, x in enumerate(xs):
        base = 0.0
        for name, vals in stacks.items():
            v = vals[i]
            if v <= 0:
                continue
            y0, y1 = frame.y(base), frame.y(base + v)
            tip = f"{x_label} {x}: {name} {v:,.4g}{unit} (total {totals[i]:,.4g}{unit})"
            data = f'data-stack="{esc(name)}" data-x="{x}" data-value="{float(v)!r}"'
            parts.append(
                f'<rect class="bar" {data} x="{frame.x(x) - bar / 2:.1f}" y="{y1:.1f}" width="{bar:.1f}" '
                f'height="{max(0.5, y0 - y1):.1f}" fill="{colors[name]}"><title>{esc(tip)}</title></rect>'
            )
            base += v
    return svg(frame, "".join(parts), label, "bars")


def histogram_rows(
    rows: Sequence[tuple[str, str, Sequence[int]]], edges: Sequence[float], x_label: str, label: str
) -> str | None:
    """One small histogram per row (e.g. per iteration) over shared bin `edges`, stacked vertically.

    A row is (name, a second label line such as the count, bin counts). Each row is scaled to its
    own tallest bin, so the shape of every distribution is readable even when the rows hold very
    different numbers of prompts.
    """
    if not rows or len(edges) < 2:
        return None
    row_h, gap = 46, 8
    height = MARGIN_TOP + len(rows) * (row_h + gap) + MARGIN_BOTTOM
    frame = Frame(nice_ticks(edges[0], edges[-1]), [0.0, 1.0], height=height)
    frame.left = 96
    parts = []
    for r, (name, sub, counts) in enumerate(rows):
        top = MARGIN_TOP + r * (row_h + gap)
        peak = max(counts, default=0) or 1
        parts.append(f'<g class="hist-row" data-row="{esc(name)}">')
        parts.append(
            f'<text class="tick row-label" x="{frame.left - 8}" y="{top + row_h / 2:.1f}" '
            f'text-anchor="end">{esc(name)}</text>'
        )
        parts.append(
            f'<text class="tick" x="{frame.left - 8}" y="{top + row_h / 2 + 13:.1f}" '
            f'text-anchor="end">{esc(sub)}</text>'
        )
        parts.append(f'<line class="axis" x1="{frame.left}" x2="{frame.right}" y1="{top + row_h}" y2="{top + row_h}"/>')
        for i, c in enumerate(counts):
            if c <= 0:
                continue
            x0, x1 = frame.x(edges[i]), frame.x(edges[i + 1])
            h = row_h * c / peak
            tip = f"{name}: {c} prompt(s) with {x_label} in [{edges[i]:.4g}, {edges[i + 1]:.4g})"
            parts.append(
                f'<rect class="bar hist" x="{x0 + 0.5:.1f}" y="{top + row_h - h:.1f}" '
                f'width="{max(1.0, x1 - x0 - 1):.1f}" height="{h:.1f}" '
                f'fill="{color(0)}"><title>{esc(tip)}</title></rect>'
            )
        parts.append("</g>")
    for v in frame.x_ticks:
        parts.append(
            f'<text class="tick" x="{frame.x(v):.1f}" y="{frame.bottom + 16}" '
            f'text-anchor="middle">{esc(fmt_tick(v, frame.x_ticks))}</text>'
        )
    parts.append(
        f'<text class="axis-title" x="{(frame.left + frame.right) / 2:.1f}" y="{height - 6}" '
        f'text-anchor="middle">{esc(x_label)}</text>'
    )
    return svg(frame, "".join(parts), label, "histogram")


def legend(items: Sequence[tuple[str, str]], dashed: Sequence[str] = ()) -> str:
    """An HTML legend (wraps on narrow screens, unlike text inside an SVG); names in `dashed` get
    a dashed-line key instead of a colour box."""
    keys = "".join(
        f'<span class="key"><i class="dash" style="border-color:{c}"></i>{esc(name)}</span>'
        if name in dashed
        else f'<span class="key"><i style="background:{c}"></i>{esc(name)}</span>'
        for name, c in items
    )
    return f'<div class="legend">{keys}</div>'
