"""Learning curves of a run: read metrics.jsonl, draw a small text plot or a picture.

metrics.jsonl has one JSON object per line with at least "event" ("train" or
"eval"), "step", "time" (seconds since start), and "train_loss" (train
events) or "val_loss" (eval events), in nats per character.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from charrnn.errors import CharRNNError
from charrnn.rundir import event_step, number, read_events


@dataclass
class Point:
    step: int
    time: float  # seconds since the start of the run
    loss: float  # nats per character


@dataclass
class Curves:
    train: list[Point] = field(default_factory=list)
    val: list[Point] = field(default_factory=list)
    skipped: int = 0  # train/eval events that could not be read (damaged lines)

    @property
    def best_val(self) -> Point | None:
        return min(self.val, key=lambda p: p.loss) if self.val else None


def read_curves(path: Path) -> Curves:
    """Train and validation losses from a metrics.jsonl file, in file order.

    Events without a finite loss and a step are skipped (a run may be writing the last
    line; a damaged file keeps what can be read); `Curves.skipped` counts them. Raises
    CharRNNError if the file is missing or has no loss.
    """
    path = Path(path)
    if not path.is_file():
        raise CharRNNError(f"'{path}' does not exist: the run has not logged any metrics yet.")
    curves = Curves()
    for row in read_events(path):
        kind = row.get("event")
        if kind not in ("train", "eval"):
            continue
        loss = number(row, "train_loss" if kind == "train" else "val_loss")
        step = event_step(row)
        if step is None or not math.isfinite(loss):
            curves.skipped += 1
            continue
        point = Point(step, number(row, "time", 0.0), loss)
        (curves.train if kind == "train" else curves.val).append(point)
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


def plot_curves(curves: Curves, out: Path) -> None:
    """Draw train and validation loss against step to `out` (.png, .svg or .pdf).

    Raises CharRNNError when matplotlib is missing or the file cannot be written.
    """
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise CharRNNError("plot needs matplotlib: pip install 'charrnn[plot]' (or matplotlib).")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if curves.train:
        steps, losses = [p.step for p in curves.train], [p.loss for p in curves.train]
        ax.plot(steps, losses, lw=1, alpha=0.6, label="train")
    if curves.val:
        steps, losses = [p.step for p in curves.val], [p.loss for p in curves.val]
        ax.plot(steps, losses, "o-", lw=2, ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, bbox_inches="tight")
    except (OSError, ValueError) as exc:
        raise CharRNNError(f"cannot write '{out}': {exc}.")
    finally:
        plt.close(fig)
