"""The `charrnn view` panel of gradients: the norm by lag over the page's text
(charrnn.neurons.gradients) and the training gradient norm before clipping, with the
clip level and the clipped fraction, from metrics.jsonl. Both on a log scale, as inline SVG.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from charrnn.config import Unknown
from charrnn.models.charrnn import CharRNN
from charrnn.neurons.activations import encode_text
from charrnn.neurons.gradients import GradientNorms, gradient_norms, series
from charrnn.rundir import GradHealth, grad_health, read_events

PANEL_LAG = 100  # the largest lag the panel shows (fewer on a shorter text)
PANEL_POSITIONS = 32  # target positions it averages


def panel_data(
    model: CharRNN, ckpt: Any, text: str, run_dir: Path, unknown: Unknown = "error"
) -> tuple[GradientNorms | None, GradHealth | None, float]:
    """What the panel draws: the norms by lag over `text` (None for fewer than 3 characters),
    the run's training gradient health (None when it logged none) and its clip level."""
    _, ids = encode_text(text, ckpt.vocab, unknown)
    norms = gradient_norms(model, ids, min(PANEL_LAG, len(ids) - 2), PANEL_POSITIONS) if len(ids) >= 3 else None
    return norms, grad_health(read_events(run_dir / "metrics.jsonl")), ckpt.train_config.grad_clip


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten spanning [lo, hi] (both > 0), at most about 6 of them."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    step = max(1, math.ceil((b - a) / 6))
    return [10.0**e for e in range(a, b + 1, step)]


# Viewer colours, one per layer (as the gate scatter's); the cell's curve is dashed.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
Line = tuple[str, list[float], list[float], str, bool]  # label, x, y (> 0), colour, dashed


def log_svg(lines: list[Line], x_label: str, level: float = 0.0, width: int = 640, height: int = 240) -> str:
    """Lines on a log-scale y axis as an inline SVG, a legend below; `level` > 0 draws a
    dashed horizontal line there (the clip). Values that are not positive are left out."""
    ys = [y for _, _, y_list, _, _ in lines for y in y_list if y > 0] + ([level] if level > 0 else [])
    xs = [x for _, x_list, _, _, _ in lines for x in x_list]
    if not ys or not xs:
        return "<p>No values to plot.</p>"
    ticks = log_ticks(min(ys), max(ys))
    y0, y1 = math.log10(ticks[0]), math.log10(ticks[-1])
    y1 = y1 if y1 > y0 else y0 + 1
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    m = 56

    def xy(x: float, y: float) -> str:
        px = m + (x - x0) / (x1 - x0) * (width - 1.5 * m)
        py = m / 3 + (y1 - math.log10(y)) / (y1 - y0) * (height - 1.5 * m)
        return f"{px:.1f},{py:.1f}"

    parts = [f'<svg class="curves" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for tick in ticks:
        y = xy(x0, tick).split(",")[1]
        parts.append(f'<line x1="{m}" x2="{width - m / 2}" y1="{y}" y2="{y}" stroke="#eee"/>')
        parts.append(f'<text x="{m - 4}" y="{y}" font-size="11" text-anchor="end" dy="4">{tick:.0e}</text>')
    if level > 0:
        y = xy(x0, level).split(",")[1]
        parts.append(f'<line x1="{m}" x2="{width - m / 2}" y1="{y}" y2="{y}" stroke="#999" stroke-dasharray="4 3"/>')
    legend = []
    for label, x_list, y_list, colour, dashed in lines:
        pts = " ".join(xy(x, y) for x, y in zip(x_list, y_list) if y > 0)
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>')
        legend.append(f'<tspan fill="{colour}">{"- -" if dashed else "—"} {html.escape(label)}</tspan>')
    base = height - m / 2 - 6
    parts.append(f'<text x="{m}" y="{base}" font-size="11">{html.escape(x_label)} {x0:g}</text>')
    parts.append(f'<text x="{width - m / 2}" y="{base}" font-size="11" text-anchor="end">{x1:g}</text>')
    parts.append(f'<text x="{m}" y="{height - 6}" font-size="12">{"  ".join(legend)}</text></svg>')
    return "".join(parts)


def gradients_html(report: GradientNorms | None, health: GradHealth | None, clip: float = 0.0) -> str:
    """The viewer's gradient panel: the norm by lag over the page's text, and the training
    gradient norm (before clipping) by step with the clip level, when the run logged it."""
    parts = []
    if report is not None:
        lines = [
            (
                label,
                report.lags.tolist(),
                curve.tolist(),
                COLOURS[int(label.split()[1]) % len(COLOURS)],
                label[-1] == "c",
            )
            for label, curve in series(report)
        ]
        parts.append(
            f"<p>‖d loss(t) / d state(t−k)‖ by lag k, mean of {len(report.positions)} positions (log scale)</p>"
            + log_svg(lines, "lag k")
        )
    if health is not None and health.norms:
        clipped = f"; clipped {health.clipped_fraction:.1%} of {health.counted:,} steps" if health.counted else ""
        parts.append(
            f"<p>Training gradient norm before clipping (log scale; dashed: the clip){clipped}</p>"
            + log_svg([("grad norm", health.steps, health.norms, COLOURS[0], False)], "step", clip)
        )
    return "".join(parts) or "<p>No gradients: the text is too short and the run logged no gradient norms.</p>"
