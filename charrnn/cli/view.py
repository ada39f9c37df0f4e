"""`charrnn view RUN FILE`: one self-contained HTML page to explore a run's units."""

from pathlib import Path
from typing import Annotated

import typer

from charrnn.cli.neuron_common import (
    BatchSizeOpt,
    Console,
    FileArg,
    PrecisionOpt,
    RunReq,
    RunsDirOpt,
    UnknownOpt,
    chosen_precision,
    load_run,
    progress_bar,
)


def view_cmd(
    run: RunReq,
    file: FileArg,
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("view.html"),
    max_chars: Annotated[
        int, typer.Option("--max-chars", min=1, help="Characters shown (and embedded) in the page.")
    ] = 1000,
    predictions: Annotated[int, typer.Option("--predictions", min=0, help="Next-character guesses per position.")] = 5,
    top: Annotated[int, typer.Option("--top", min=1, help="Units listed per feature.")] = 5,
    batch_size: BatchSizeOpt = 16,
    unknown: UnknownOpt = "error",
    precision: PrecisionOpt = "auto",
    runs_dir: RunsDirOpt = Path("checkpoints"),
) -> None:
    """Write one self-contained HTML page to explore units, predictions, gates and curves."""
    from charrnn.neurons.gradient_panel import panel_data
    from charrnn.neurons.reports import build_page, read_file
    from charrnn.neurons.viewer import write_page

    ckpt, model, path = load_run(run, runs_dir)
    raw = read_file(file, ckpt.vocab.byte_level)
    cfg = ckpt.model_config
    title = f"{path.parent.name} · {cfg.model} {cfg.num_layers}×{cfg.hidden_size} · {file.name}"
    chosen = chosen_precision(model, precision)
    progress = progress_bar("view")
    try:
        page, n = build_page(ckpt, model, path.parent, raw, title, max_chars, predictions, top,
                             batch_size, unknown, progress, chosen)  # fmt: skip
    finally:
        progress.close()
    page.gradients, page.grad_health, page.grad_clip = panel_data(model, ckpt, raw, path.parent, unknown)
    write_page(out, page)
    size = out.stat().st_size / 1024
    Console(stderr=True).print(f"wrote {out} ({size:.0f} KiB, {len(page.text)} of {n} characters shown)")
