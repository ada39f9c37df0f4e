"""The `charrnn` command line: one module per command group, each command a thin door
(options -> configs -> one library call -> rich output).

Heavy modules (torch, numpy) are imported inside the commands so `--help` is instant.
"""

import typer

from charrnn.cli import neurons, runs, sample, train
from charrnn.cli.common import handle_errors

app = typer.Typer(
    name="charrnn",
    help="Character-level recurrent language models: train on any text, sample, look inside.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rendering it with rich costs ~0.15 s of start-up
    context_settings={"help_option_names": ["-h", "--help"]},
)

for _name, _command in {
    "prepare": train.prepare, "train": train.train, "sample": sample.sample, "eval": sample.evaluate_cmd,
    "runs": runs.runs, "info": runs.info, "curves": runs.curves_cmd, "plot": runs.plot_cmd, **neurons.COMMANDS,
}.items():
    app.command(_name)(handle_errors(_command))


def main() -> None:
    app()
