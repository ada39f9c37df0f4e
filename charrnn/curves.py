"""Learning curves of a run: read metrics.jsonl, draw a small text plot.

metrics.jsonl has one JSON object per line with at least "event" ("train" or
"eval"), "step", "time" (seconds since start), and "train_loss" (train
events) or "val_loss" (eval events), in nats per character.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from charrnn.errors import CharRNNError


@dataclass
class Point:
    step: int
    time: float  # seconds since the start of the run
    loss: float  # nats per character


@dataclass
class Curves:
    train: list[Point] = field(default_factory=list)
    val: list[Point] = field(default_factory=list)

    @property
    def best_val(self) -> Point | None:
        return min(self.val, key=lambda p: p.loss) if self.val else None


def read_curves(path: Path) -> Curves:
    """Train and validation losses from a metrics.jsonl file, in file order.

    Lines that are not JSON objects with a finite loss are skipped (a run may be
    writing the last line). Raises CharRNNError if the file is missing or has no loss.
    """
    path = Path(path)
    if not path.is_file():
        raise CharRNNError(f"'{path}' does not exist: the run has not logged any metrics yet.")
    curves = Curves()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict):
            continue
        for event, key, target in (
            ("train", "train_loss", curves.train),
            ("eval", "val_loss", curves.val),
        ):
            value = row.get(key)
            if (
                row.get("event") == event
                and isinstance(value, (int, float))
                and math.isfinite(value)
            ):
                target.append(
                    Point(int(row.get("step", 0)), float(row.get("time", 0.0)), float(value))
                )
    if not curves.train and not curves.val:
        raise CharRNNError(f"'{path}' holds no train_loss or val_loss values yet.")
    return curves


def text_plot(curves: Curves, width: int = 60, height: int = 12) -> list[str]:
    """Loss against step as lines of text: '·' train, '●' validation (drawn on top).

    The y axis is labelled with the loss at the top, middle and bottom rows,
    the x axis with the first and last step.
    """
    points = curves.train + curves.val
    steps = [p.step for p in points]
    losses = [p.loss for p in points]
    lo_s, hi_s = min(steps), max(steps)
    lo_l, hi_l = min(losses), max(losses)
    if hi_l - lo_l < 1e-9:
        lo_l, hi_l = lo_l - 0.5, hi_l + 0.5
    grid = [[" "] * width for _ in range(height)]

    def put(p: Point, mark: str) -> None:
        col = 0 if hi_s == lo_s else round((p.step - lo_s) / (hi_s - lo_s) * (width - 1))
        row = round((hi_l - p.loss) / (hi_l - lo_l) * (height - 1))
        grid[row][col] = mark

    for p in curves.train:
        put(p, "·")
    for p in curves.val:
        put(p, "●")
    labels = {
        0: f"{hi_l:.3f}",
        (height - 1) // 2: f"{(hi_l + lo_l) / 2:.3f}",
        height - 1: f"{lo_l:.3f}",
    }
    pad = max(len(s) for s in labels.values())
    lines = [f"{labels.get(i, ''):>{pad}} │{''.join(row)}" for i, row in enumerate(grid)]
    lines.append(" " * pad + " └" + "─" * width)
    left, right = f"step {lo_s}", f"{hi_s}"
    lines.append(" " * (pad + 2) + left + " " * max(1, width - len(left) - len(right)) + right)
    return lines
