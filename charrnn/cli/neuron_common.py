"""What the commands that look inside a network share: their options, loading a run, a
progress bar and the note on the precision the activations were computed in.
"""

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from charrnn.config import Unknown
from charrnn.lazy import lazy_callable

if TYPE_CHECKING:
    from rich.console import Console
else:
    Console = lazy_callable("rich.console", "Console")

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


PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Arithmetic of wide LSTM layers: auto (int8 or bf16 where the CPU runs it faster), fp32 (exact), "
        "bf16, int8. Values differ from fp32 by about 0.01.",
    ),
]


def console_and_plain(no_color: bool) -> tuple["Console", bool]:
    """The stdout console and whether to print plain tables instead of colours."""
    console = Console(highlight=False, soft_wrap=True)
    return console, no_color or console.no_color or not console.is_terminal


def load_run(run: str | None, runs_dir: Path) -> tuple[Any, Any, Path]:
    from charrnn.checkpoint import build_model, load_checkpoint
    from charrnn.rundir import resolve_checkpoint

    path = resolve_checkpoint(run, runs_dir)
    ckpt = load_checkpoint(path)
    return ckpt, build_model(ckpt), path


def echo_rows(rows: list[list[str]]) -> None:
    for row in rows:
        typer.echo("\t".join(row))


def progress_bar(what: str) -> Any:
    """A progress bar on stderr (when it is a terminal), sized on its first update."""
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    bar = tqdm(unit="char", unit_scale=True, desc=what, leave=False, disable=not sys.stderr.isatty())

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done)

    update.close = bar.close  # type: ignore[attr-defined]
    return update


def say_wrote(path: Path, what: str) -> None:
    Console(stderr=True).print(f"wrote {what} to {path}")


def chosen_precision(model: Any, requested: str) -> str:
    """The precision the activations of `model` are computed in; a note on stderr when not fp32."""
    from charrnn.neurons.precision import resolve_precision

    precision = resolve_precision(model, requested)
    if precision != "fp32":
        Console(stderr=True).print(f"activations computed with {precision} products (--precision fp32: exact)")
    return precision
