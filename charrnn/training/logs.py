"""Event logs beside metrics.jsonl, chosen with `train --log`: metrics.csv (one row per
event, a fixed header) and a TensorBoard event file in the run folder. Both are fed the
events the trainer appends to metrics.jsonl, so the three hold the same steps and values."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

from charrnn.errors import CharRNNError
from charrnn.files import atomic_write

CSV_NAME = "metrics.csv"
# The header is fixed so that a script can read any run's file; absent values are empty cells.
CSV_FIELDS = ("time", "event", "step", "epoch", "train_loss", "val_loss", "lr", "chars_per_s", "grad_norm")
# metrics.jsonl key -> TensorBoard tag, for the events that carry numbers worth plotting.
TB_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "lr": "lr",
    "chars_per_s": "chars_per_s",
    "grad_norm": "grad_norm",
}


def check_tensorboard() -> None:
    """Raise CharRNNError with the pip command when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise CharRNNError(
            "--log tensorboard needs the tensorboard package: pip install 'charrnn[tensorboard]'."
        ) from None


class EventSinks:
    """The extra logs of one training session; `kinds` is TrainConfig.log ("csv,tensorboard").

    On resume from `step`, rows and events logged after it are dropped first (they will
    happen again), as metrics.jsonl does; then new ones are appended.
    """

    def __init__(self, run_dir: Path | None, kinds: str = "", step: int = 0) -> None:
        chosen = set(filter(None, kinds.split(","))) if run_dir is not None else set()
        self.csv: Any = None
        self.tb: Any = None
        if "csv" in chosen:
            assert run_dir is not None
            path = run_dir / CSV_NAME
            _keep_rows_until(path, step)
            fresh = not path.exists()
            self.csv_file = open(path, "a", encoding="utf-8", newline="")
            self.csv = csv.DictWriter(self.csv_file, CSV_FIELDS, extrasaction="ignore")
            if fresh:
                self.csv.writeheader()
        if "tensorboard" in chosen:
            check_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a crashed session logged after the checkpoint's step.
            self.tb = SummaryWriter(str(run_dir), purge_step=step + 1 if step else None)

    def write(self, event: dict[str, Any]) -> None:
        if self.csv is not None:
            self.csv.writerow({k: _cell(event.get(k)) for k in CSV_FIELDS})
            self.csv_file.flush()
        step = event.get("step")
        if self.tb is not None and isinstance(step, int):
            for key, tag in TB_TAGS.items():
                value = event.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(tag, value, step, walltime=None)
            self.tb.flush()

    def close(self) -> None:
        if self.csv is not None:
            self.csv_file.close()
        if self.tb is not None:
            self.tb.close()

    def __enter__(self) -> EventSinks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


def _keep_rows_until(path: Path, step: int) -> None:
    """Rewrite metrics.csv atomically without the rows of steps after `step`."""
    if not os.path.lexists(path):
        return
    text = path.read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        if row.get("step", "").isdigit() and int(row["step"]) <= step:
            writer.writerow(row)
    atomic_write(path, lambda f: f.write(out.getvalue().encode("utf-8")))
