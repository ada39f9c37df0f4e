"""The `charrnn` command line: one module per command group, each command a thin door
(options -> configs -> one library call -> rich output).

Heavy modules (torch, numpy) are imported inside the commands so `--help` is instant.
"""

from typing import Annotated

import typer

from charrnn.cli import evaluate, export, neurons, runs, sample, serve, train
from charrnn.cli.common import PanelCommand, handle_errors

app = typer.Typer(
    name="charrnn",
    help="Character-level recurrent language models: train on any text, sample, look inside.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    # Plain help: rendering it with rich costs ~0.15 s of start-up; PanelCommand keeps the
    # option groups (rich_help_panel) as plain sections.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    """charrnn, torch and Python versions; torch's read from its metadata, not imported."""
    if not value:
        return
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from charrnn import __version__

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "not installed"
    typer.echo(f"charrnn {__version__}\ntorch {torch_version}\nPython {platform.python_version()}")
    raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Show the charrnn, torch and Python versions and exit.",
        ),
    ] = False,
) -> None:
    pass


for _name, _command in {
    "prepare": train.prepare,
    "train": train.train,
    "sample": sample.sample,
    "eval": evaluate.evaluate_cmd,
    "export": export.export_cmd,
    "runs": runs.runs,
    "info": runs.info,
    "curves": runs.curves_cmd,
    "plot": runs.plot_cmd,
    "serve": serve.serve,
    **neurons.COMMANDS,
}.items():
    app.command(_name, cls=PanelCommand)(handle_errors(_command))


def main() -> None:
    app()
