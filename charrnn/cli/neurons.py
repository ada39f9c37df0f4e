"""Commands that look inside a trained network: inspect, cells, gates (view: charrnn.cli.view).

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
from charrnn.cli.neuron_common import (
    BatchSizeOpt,
    ExportOpt,
    FileArg,
    KindHelp,
    NoColorOpt,
    PrecisionOpt,
    RunArg,
    RunReq,
    RunsDirOpt,
    UnknownOpt,
    chosen_precision,
    console_and_plain,
    echo_rows,
    load_run,
    progress_bar,
    say_wrote,
)
from charrnn.cli.view import view_cmd
from charrnn.config import UnitKind
from charrnn.lazy import lazy_callable
from charrnn.neurons.feature_rules import FEATURE_RULES

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text
else:
    Console = lazy_callable("rich.console", "Console")
    Text = lazy_callable("rich.text", "Text")
Table = lazy_callable("rich.table", "Table")


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
    precision: PrecisionOpt = "auto",
    runs_dir: RunsDirOpt = Path("checkpoints"),
) -> None:
    """Print a text coloured by one unit's activation (or the K most varying units)."""
    from charrnn.neurons.reports import inspect_rows, inspect_units, read_input

    ckpt, model, _ = load_run(run, runs_dir)
    raw = read_input(text, file, ckpt.vocab.byte_level, sys.stdin)
    progress = progress_bar("inspect")
    try:
        report = inspect_units(ckpt, model, raw, layer, unit, kind, top_units, predictions, unknown,
                               batch_size, export, progress, chosen_precision(model, precision))  # fmt: skip
    finally:
        progress.close()
    console, plain = console_and_plain(no_color)
    if plain:
        echo_rows(inspect_rows(report))
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
        say_wrote(export, f"activations of {len(report.text)} characters")


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
    precision: PrecisionOpt = "auto",
    runs_dir: RunsDirOpt = Path("checkpoints"),
) -> None:
    """Rank every unit of every layer by how well it tracks a feature of the text (Pearson r)."""
    from charrnn.neurons.reports import cells_rows, read_file, scan_cells

    ckpt, model, _ = load_run(run, runs_dir)
    raw = read_file(file, ckpt.vocab.byte_level)
    chosen = chosen_precision(model, precision)
    progress = progress_bar("cells")
    try:
        report = scan_cells(ckpt, model, raw, feature, top, kind, excerpt, batch_size, unknown, export, progress,
                            chosen)  # fmt: skip
    finally:
        progress.close()
    if export is not None:
        say_wrote(export, f"activations of {len(report.text)} characters")
    console, plain = console_and_plain(no_color)
    rows = cells_rows(report.scores)
    if plain:
        echo_rows(rows)
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
    precision: PrecisionOpt = "auto",
    runs_dir: RunsDirOpt = Path("checkpoints"),
) -> None:
    """Gate saturation: how often each gate is left- (< 0.1) or right-saturated (> 0.9)."""
    from charrnn.neurons.reports import GATE_HEAD, count_gates, gate_rows, gate_unit_rows, read_file

    ckpt, model, _ = load_run(run, runs_dir)
    raw = read_file(file, ckpt.vocab.byte_level)
    chosen = chosen_precision(model, precision)
    progress = progress_bar("gates")
    try:
        counts, n = count_gates(ckpt, model, raw, batch_size, unknown, progress, chosen)
    finally:
        progress.close()
    if per_unit:
        echo_rows(gate_unit_rows(counts))
        return
    console, plain = console_and_plain(no_color)
    rows = gate_rows(counts)
    if plain:
        echo_rows([GATE_HEAD, *rows])
        return
    table = Table(*GATE_HEAD, title=f"gate saturation over {n} characters (mean fraction of time per unit)")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print("'mostly': saturated more than half the time; 'rarely': less than 10%. Scatter: charrnn view.")


# name -> command, read by charrnn.cli. curves and plot live in charrnn.cli.runs (run-level
# commands) and are listed here only until charrnn.cli registers them from there.
COMMANDS: dict[str, Callable[..., None]] = {
    "inspect": inspect_cmd,
    "cells": cells_cmd,
    "gates": gates_cmd,
    "view": view_cmd,
    "gradients": gradients_cmd,
}
