"""`charrnn export`: a trained run as safetensors (weights + config), ONNX or TorchScript (the step)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from charrnn.cli.common import RunsDir
from charrnn.config import ExportFormat


def export_cmd(
    run: Annotated[str, typer.Argument(help="Run name, run folder, .pt or .safetensors file.")],
    format: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help=(
                "safetensors: weights, config and vocabulary (sample/eval/load read it without torch); "
                "onnx, torchscript: the one-character step of an lstm/gru/rnn run."
            ),
        ),
    ] = "safetensors",
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out", help="File to write (default: beside the checkpoint, named <checkpoint>-export.<format>)."
        ),
    ] = None,
    runs_dir: RunsDir = Path("checkpoints"),
) -> None:
    """Write a trained run as a safetensors, ONNX or TorchScript file."""
    from charrnn.exporting import export
    from charrnn.limits import format_bytes

    path = export(run, format=format, out=out, runs_dir=runs_dir)
    typer.echo(f"wrote {path} ({format}, {format_bytes(path.stat().st_size)})")
