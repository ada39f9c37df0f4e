"""`charrnn gradients RUN FILE`: how far back the loss reaches, as a table and a log-scale
plot of the gradient norm through the carried state against the lag (the library is
charrnn.neurons.gradients). Also the text sparkline `charrnn info` draws the training
gradient norm with. torch is imported inside the command, so `charrnn --help` stays fast.
"""

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from charrnn.cli.common import Table, err, out
from charrnn.config import Unknown

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 60, lo: float | None = None, hi: float | None = None) -> str:
    """Positive values as one line of bars on a log scale from lo to hi (default: their own
    range), at most `width` bars: longer series are averaged (geometric mean) in buckets.
    Values that are not positive draw as the lowest bar."""
    logs = [math.log10(v) if v > 0 and math.isfinite(v) else -math.inf for v in values]
    finite = [v for v in logs if math.isfinite(v)]
    if not finite:
        return BARS[0] * min(len(logs), width)
    a = math.log10(lo) if lo else min(finite)
    b = math.log10(hi) if hi else max(finite)
    columns = min(len(logs), max(width, 1))
    bars = []
    for i in range(columns):
        bucket = [v for v in logs[i * len(logs) // columns : (i + 1) * len(logs) // columns] if math.isfinite(v)]
        if not bucket:
            bars.append(BARS[0])
            continue
        level = (sum(bucket) / len(bucket) - a) / (b - a) if b > a else 1.0
        bars.append(BARS[round(min(max(level, 0.0), 1.0) * (len(BARS) - 1))])
    return "".join(bars)


def _progress() -> Any:
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    bar = tqdm(unit="pos", desc="gradients", leave=False, disable=not sys.stderr.isatty())

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done)

    update.close = bar.close  # type: ignore[attr-defined]
    return update


def gradients_cmd(
    run: Annotated[str, typer.Argument(help="Run name, run folder or .pt checkpoint.")],
    file: Annotated[Path, typer.Argument(help="Text file to run through the model (UTF-8).")],
    max_lag: Annotated[int, typer.Option("--max-lag", min=1, help="Largest lag K, in characters.")] = 100,
    positions: Annotated[
        int, typer.Option("--positions", min=1, help="Target positions drawn from the text and averaged over.")
    ] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed that draws the positions.")] = 0,
    export: Annotated[
        Path | None,
        typer.Option("--export", help="Also save the norms at every lag to this .csv or .npz (per position)."),
    ] = None,
    no_color: Annotated[
        bool,
        typer.Option(
            "--no-color",
            help="Print a plain tab-separated table (also when NO_COLOR is set or output is not a terminal).",
        ),
    ] = False,
    unknown: Annotated[
        Unknown, typer.Option("--unknown", help="Characters outside the vocabulary: error or skip.")
    ] = "error",
    runs_dir: Annotated[
        Path, typer.Option("--runs-dir", help="Folder holding run folders.", envvar="CHARRNN_RUNS_DIR")
    ] = Path("checkpoints"),
) -> None:
    """Vanishing gradients: norm of d loss(t) / d state(t-k) per layer, by lag k (log scale)."""
    from charrnn.checkpoint import build_model, load_checkpoint
    from charrnn.neurons.gradients import decay_lag, series, shown_lags, text_gradients
    from charrnn.neurons.reports import read_file
    from charrnn.rundir import resolve_checkpoint

    ckpt = load_checkpoint(resolve_checkpoint(run, runs_dir))
    raw = read_file(file, ckpt.vocab.byte_level)
    progress = _progress()
    try:
        report = text_gradients(build_model(ckpt), ckpt.vocab, raw, max_lag, positions, seed, unknown, progress)
    finally:
        progress.close()
    if export is not None:
        report.save(export)
        err.print(f"wrote gradient norms at lags 1-{max_lag} to {export}", markup=False, highlight=False)
    curves = series(report)
    lags = shown_lags(max_lag)
    rows = [[str(k)] + [f"{curve[k - 1]:.3e}" for _, curve in curves] for k in lags]
    head = ["lag"] + [label for label, _ in curves]
    plain = no_color or out.no_color or not out.is_terminal
    if plain:
        for row in [head, *rows]:
            typer.echo("\t".join(row))
        return
    cfg = ckpt.model_config
    out.print(
        f"‖d loss(t) / d state(t-k)‖ of a {cfg.model} {cfg.num_layers}x{cfg.hidden_size},"
        f" mean of {len(report.positions)} positions of {file.name}",
        highlight=False,
        markup=False,
    )
    table = Table(*head)
    for row in rows:
        table.add_row(*row)
    out.print(table)
    values = [v for _, curve in curves for v in curve.tolist() if v > 0]
    if not values:
        return
    lo, hi = min(values), max(values)
    out.print(f"log scale: {BARS[0]} {lo:.1e} … {BARS[-1]} {hi:.1e}, lag 1 … {max_lag} left to right", highlight=False)
    width = max(len(label) for label, _ in curves)
    for label, curve in curves:
        ten, thousand = decay_lag(curve, 10), decay_lag(curve, 1000)
        falls = f"÷10 at k={ten}" if ten else "never ÷10"
        falls += f", ÷1000 at k={thousand}" if thousand else ""
        out.print(f"{label:<{width}}  {sparkline(curve.tolist(), 60, lo, hi)}  {falls}", highlight=False)


def health_rows(health: Any, train_config: Any) -> list[tuple[str, str]]:
    """Rows of `charrnn info` for a charrnn.rundir.GradHealth (none for None: a run logged
    before gradient norms were): the clipped fraction, then the norm's summary and curve."""
    if health is None:
        return []
    clip = getattr(train_config, "grad_clip", 0.0)
    rows = []
    if health.counted:
        limit = f"clip {clip:g}" if clip else "clip off"
        rows.append(("clipped", f"{health.clipped_fraction:.1%} of {health.counted:,} steps ({limit})"))
    if health.norms:
        ordered = sorted(health.norms)
        median = ordered[len(ordered) // 2]
        rows.append(
            (
                "grad norm",
                f"{sparkline(health.norms, 40)}  median {median:.3g}, max {ordered[-1]:.3g}, last {health.norms[-1]:.3g}"
                f" (before clipping; log scale, steps {health.steps[0]}-{health.steps[-1]})",
            )
        )
    return rows
