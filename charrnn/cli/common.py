"""What every command shares: the consoles, the one error handler, the shared options.

Only charrnn.cli prints. Every CharRNNError becomes `error: <message>` on stderr and exit 1;
an OSError on a user's path becomes the same, naming the path and what to do.
"""

# No `from __future__ import annotations` in the cli modules: typer evaluates every string
# annotation again on each start (about 35 ms of `charrnn --help`).
import copy
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, get_args

import typer
from typer.core import TyperCommand

from charrnn.config import DeviceName
from charrnn.errors import CharRNNError
from charrnn.lazy import LazyConsole, lazy_callable

Table = lazy_callable("rich.table", "Table")
out = LazyConsole()
err = LazyConsole(stderr=True)

LN2 = math.log(2)

# Options shared by several commands, declared once.
RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Folder holding run folders.", envvar="CHARRNN_RUNS_DIR")]
DataDir = Annotated[
    Path, typer.Option("--data-dir", help="Folder for corpora and the prepared-data cache.", envvar="CHARRNN_DATA_DIR")
]
Device = Annotated[DeviceName, typer.Option("--device", help="Where to compute; auto = cuda when present.")]
Encoding = Annotated[
    str, typer.Option("--encoding", help="Text codec of the file, or 'bytes' for a byte-level vocabulary.")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
RunArg = Annotated[
    Optional[str],
    typer.Argument(help="Run name, run folder or .pt file (default: the latest run).", show_default=False),
]


# Option groups in help, in this order; options without one come last, under "Options".
PANELS = ("Model", "Training", "Data", "Output", "Distributed", "Options")


def in_panel(alias: Any, panel: str) -> Any:
    """A shared option alias listed under `panel` in one command's help."""
    kind, info = get_args(alias)
    info = copy.copy(info)
    info.rich_help_panel = panel
    return Annotated[kind, info]


class PanelCommand(TyperCommand):
    """Plain (non-rich) help that still groups options under their `rich_help_panel`.

    The app renders help without rich for start-up time (see cli/__init__.py); typer's plain
    formatter would list every option under one "Options" heading."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args: list[tuple[str, str]] = []
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                args.append(record)
            else:
                panels.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        ordered = sorted(panels.items(), key=lambda item: PANELS.index(item[0]) if item[0] in PANELS else len(PANELS))
        for title, rows in ([("Arguments", args)] if args else []) + ordered:
            with formatter.section(title):
                formatter.write_dl(rows)


def fail(message: str) -> None:
    """Print `error: message` on stderr and exit 1."""
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """The one place where a CharRNNError turns into `error: ...` and exit 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except CharRNNError as exc:
            fail(str(exc))
        except BrokenPipeError:  # `| head` closed the pipe: the reader has what it wanted
            _quiet_stdout()
            raise typer.Exit(0) from None
        except OSError as exc:  # a user's path refused: no space, read-only, not a folder...
            from charrnn.files import os_error

            fail(str(os_error(exc)))
        except MemoryError:
            fail("out of memory: use a smaller model (--hidden, --layers) or --batch-size, or close other programs.")

    return wrapper


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail on the closed pipe."""
    import os
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def fmt_loss(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else "-"
