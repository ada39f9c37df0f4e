"""Commands that look inside a trained network: inspect, cells, gates, view.

Each command loads the run, calls one function of charrnn.neurons.reports and renders
its report. torch is imported inside the commands, so `charrnn --help` stays fast.
Coloured output needs a terminal; with a pipe, NO_COLOR or --no-color the commands
print tab-separated tables instead.
"""

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from charrnn.cli.gradients import gradients_cmd
from charrnn.config import UnitKind, Unknown
from charrnn.lazy import lazy_callable
from charrnn.neurons.feature_rules import FEATURE_RULES

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text
else:
    Console = lazy_callable("rich.console", "Console")
    Text = lazy_callable("rich.text", "Text")
Table = lazy_callable("rich.table", "Table")

RunArg = Annotated[
    str | None,
    typer.Argument(help="Run name, run folder or .pt checkpoint; default: the latest run."),
]
RunReq = Annotated[str, typer.Argument(help="Run name, run folder or .pt checkpoint.")]
FileArg = Annotated[Path, typer.Argument(help="Text file to run through the model (UTF-8).")]
RunsDirOpt = Annotated[
    Path,
    typer.Option("--runs-dir", help="Folder holding run folders.", envvar="CHARRNN_RUNS_DIR"),
]
NoColorOpt = Annotated[
    bool,
    typer.Option(
        "--no-color",
        help="Print plain tab-separated tables (also when NO_COLOR is set or output is not a terminal).",
    ),
]
UnknownOpt = Annotated[Unknown, typer.Option("--unknown", help="Characters outside the vocabulary: error or skip.")]
BatchSizeOpt = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=1,
        help="Parallel streams over long files (each at least 10k characters, from a zero state).",
    ),
]
ExportOpt = Annotated[
    Path | None,
    typer.Option("--export", help="Also save every layer's activations per character to this .npz."),
]
KindHelp = (
    "Activation kind: cell, hidden, input, forget, output (LSTM); reset, update (GRU); feedback (gated-feedback)."
)


def _console(no_color: bool) -> tuple["Console", bool]:
    """The stdout console and whether to print plain tables instead of colours."""
    console = Console(highlight=False, soft_wrap=True)
    return console, no_color or console.no_color or not console.is_terminal


def _load(run: str | None, runs_dir: Path) -> tuple[Any, Any, Path]:
    from charrnn.checkpoint import build_model, load_checkpoint
    from charrnn.rundir import resolve_checkpoint

    path = resolve_checkpoint(run, runs_dir)
    ckpt = load_checkpoint(path)
    return ckpt, build_model(ckpt), path


def _echo_rows(rows: list[list[str]]) -> None:
    for row in rows:
        typer.echo("\t".join(row))


def _shown(ch: str) -> str:
    return {"\n": "↵", "\t": "→", "\r": "␍"}.get(ch, ch if ch.isprintable() else "·")


def _style(t: float) -> str:
    from charrnn.neurons.viewer import diverging_rgb

    r, g, b = diverging_rgb(t)
    return f"{'white' if abs(t) > 0.6 else 'black'} on rgb({r},{g},{b})"


def _coloured(text: str, values: Any, scale: float) -> "Text":
    out = Text()
    for ch, v in zip(text, values):
        out.append(_shown(ch), style=_style(float(v) / scale))
        if ch == "\n":
            out.append("\n")
    return out


def _print_unit(console: "Console", text: str, kind: str, layer: int, unit: int, values: Any) -> None:
    """A legend from -scale to +scale, then the text coloured by one unit's values."""
    from charrnn.neurons.reports import colour_scale

    scale = colour_scale(kind, values)
    legend = Text(f"layer {layer} · {kind} · unit {unit}   {-scale:+.2f} ")
    for i in range(11):
        legend.append("  ", style=_style(-1 + i / 5))
    legend.append(f" {scale:+.2f}")
    console.print(legend)
    console.print(_coloured(text, values, scale))


def _progress(what: str) -> Any:
    """A progress bar on stderr (when it is a terminal), sized on its first update."""
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    bar = tqdm(unit="char", unit_scale=True, desc=what, leave=False, disable=not sys.stderr.isatty())

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done)

    update.close = bar.close  # type: ignore[attr-defined]
    return update


def _wrote(path: Path, what: str) -> None:
    Console(stderr=True).print(f"wrote {what} to {path}")


def inspect_cmd(
    run: RunArg = None,
    text: Annotated[str | None, typer.Option("--text", help="Text to run through the model.")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="Read the text from this file.")] = None,
    layer: Annotated[int | None, typer.Option("--layer", help="Layer, 0 = first; default: the last.")] = None,
    unit: Annotated[
        int | None, typer.Option("--unit", help="Unit in the layer; default: the one with most variance.")
    ] = None,
    kind: Annotated[UnitKind | None, typer.Option("--kind", help=KindHelp + " Default: cell, else hidden.")] = None,
    top_units: Annotated[
        int, typer.Option("--top-units", min=0, help="Show the K units with the largest variance on this text.")
    ] = 0,
    predictions: Annotated[
        int, typer.Option("--predictions", min=0, help="Show the K most likely next characters per position.")
    ] = 0,
    batch_size: BatchSizeOpt = 16,
    no_color: NoColorOpt = False,
    export: ExportOpt = None,
    unknown: UnknownOpt = "error",
    runs_dir: RunsDirOpt = Path("checkpoints"),
) -> None:
    """Print a text coloured by one unit's activation (or the K most varying units)."""
    from charrnn.neurons.reports import inspect_rows, inspect_units, read_input

    ckpt, model, _ = _load(run, runs_dir)
    raw = read_input(text, file, ckpt.vocab.byte_level, sys.stdin)
    progress = _progress("inspect")
    try:
        report = inspect_units(ckpt, model, raw, layer, unit, kind, top_units, predictions, unknown,
                               batch_size, export, progress)  # fmt: skip
    finally:
        progress.close()
    console, plain = _console(no_color)
    if plain:
        _echo_rows(inspect_rows(report))
    else:
        for i, (l, u) in enumerate(report.units):
            _print_unit(console, report.text, report.kind, l, u, report.values[:, i])
            console.print()
        if predictions:
            table = Table("pos", "char", f"top {predictions} next characters", box=None)
            for t, ch in enumerate(report.text):
                guesses = zip(report.top_chars[t], report.top_probs[t])
                table.add_row(str(t), _shown(ch), "  ".join(f"{_shown(c)} {p:.2f}" for c, p in guesses))
            console.print(table)
    if export is not None:
        _wrote(export, f"activations of {len(report.text)} characters")


def cells_cmd(
    run: RunReq,
    file: FileArg,
    feature: Annotated[
        str,
        typer.Option(
            "--feature",
            help=f"{', '.join(FEATURE_RULES)}, or re:PATTERN (1 inside a match); rules above.",
        ),
    ] = "inside-quotes",
    top: Annotated[int, typer.Option("--top", min=1, help="Units to list.")] = 10,
    kind: Annotated[UnitKind | None, typer.Option("--kind", help=KindHelp + " Default: all kinds.")] = None,
    excerpt: Annotated[int, typer.Option("--excerpt", min=0, help="Characters of the coloured excerpt.")] = 400,
    batch_size: BatchSizeOpt = 16,
    no_color: NoColorOpt = False,
    export: ExportOpt = None,
    unknown: UnknownOpt = "error",
    runs_dir: RunsDirOpt = Path("checkpoints"),
) -> None:
    """Rank every unit of every layer by how well it tracks a feature of the text (Pearson r)."""
    from charrnn.neurons.reports import cells_rows, read_file, scan_cells

    ckpt, model, _ = _load(run, runs_dir)
    raw = read_file(file, ckpt.vocab.byte_level)
    progress = _progress("cells")
    try:
        report = scan_cells(ckpt, model, raw, feature, top, kind, excerpt, batch_size, unknown, export, progress)
    finally:
        progress.close()
    if export is not None:
        _wrote(export, f"activations of {len(report.text)} characters")
    console, plain = _console(no_color)
    rows = cells_rows(report.scores)
    if plain:
        _echo_rows(rows)
        return
    table = Table(*rows[0], title=f"units tracking {feature} ({len(report.text)} characters)")
    for i, s in enumerate(report.scores, 1):
        table.add_row(str(i), str(s.layer), str(s.unit), s.kind, f"{s.value:+.3f}")
    console.print(table)
    if excerpt and report.scores:
        best = report.scores[0]
        shown = report.text[report.start : report.start + len(report.excerpt)]
        _print_unit(console, shown, best.kind, best.layer, best.unit, report.excerpt)


# The feature rules, one paragraph each, end the help of `cells` (generated so it never drifts).
cells_cmd.__doc__ = "\n\n".join(
    [
        (cells_cmd.__doc__ or "").strip(),
        "Features, each a number per character, after reading it (docs/features.md):",
        *(f"{name}: {rule}" for name, rule in FEATURE_RULES.items()),
        "re:PATTERN: 1 on every character of a match of the regular expression PATTERN, else 0.",
    ]
)


def gates_cmd(
    run: RunReq,
    file: FileArg,
    per_unit: Annotated[bool, typer.Option("--per-unit", help="List every gate unit's fractions.")] = False,
    batch_size: BatchSizeOpt = 16,
    no_color: NoColorOpt = False,
    unknown: UnknownOpt = "error",
    runs_dir: RunsDirOpt = Path("checkpoints"),
) -> None:
    """Gate saturation: how often each gate is left- (< 0.1) or right-saturated (> 0.9)."""
    from charrnn.neurons.reports import GATE_HEAD, count_gates, gate_rows, gate_unit_rows, read_file

    ckpt, model, _ = _load(run, runs_dir)
    raw = read_file(file, ckpt.vocab.byte_level)
    progress = _progress("gates")
    try:
        counts, n = count_gates(ckpt, model, raw, batch_size, unknown, progress)
    finally:
        progress.close()
    if per_unit:
        _echo_rows(gate_unit_rows(counts))
        return
    console, plain = _console(no_color)
    rows = gate_rows(counts)
    if plain:
        _echo_rows([GATE_HEAD, *rows])
        return
    table = Table(*GATE_HEAD, title=f"gate saturation over {n} characters (mean fraction of time per unit)")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print("'mostly': saturated more than half the time; 'rarely': less than 10%. Scatter: charrnn view.")


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
    runs_dir: RunsDirOpt = Path("checkpoints"),
) -> None:
    """Write one self-contained HTML page to explore units, predictions, gates and curves."""
    from charrnn.neurons.gradient_panel import panel_data
    from charrnn.neurons.reports import build_page, read_file
    from charrnn.neurons.viewer import write_page

    ckpt, model, path = _load(run, runs_dir)
    raw = read_file(file, ckpt.vocab.byte_level)
    cfg = ckpt.model_config
    title = f"{path.parent.name} · {cfg.model} {cfg.num_layers}×{cfg.hidden_size} · {file.name}"
    progress = _progress("view")
    try:
        page, n = build_page(ckpt, model, path.parent, raw, title, max_chars, predictions, top,
                             batch_size, unknown, progress)  # fmt: skip
    finally:
        progress.close()
    page.gradients, page.grad_health, page.grad_clip = panel_data(model, ckpt, raw, path.parent, unknown)
    write_page(out, page)
    size = out.stat().st_size / 1024
    Console(stderr=True).print(f"wrote {out} ({size:.0f} KiB, {len(page.text)} of {n} characters shown)")


# name -> command, read by charrnn.cli. curves and plot live in charrnn.cli.runs (run-level
# commands) and are listed here only until charrnn.cli registers them from there.
COMMANDS: dict[str, Callable[..., None]] = {
    "inspect": inspect_cmd,
    "cells": cells_cmd,
    "gates": gates_cmd,
    "view": view_cmd,
    "gradients": gradients_cmd,
}
