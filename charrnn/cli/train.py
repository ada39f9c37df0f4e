"""The `prepare` and `train` commands: options -> charrnn.training.setup.train_run -> progress and a summary.

The file stays whole: most of it is the `train` command's one signature of options, one per setting.
"""

import os
import signal
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional, get_args

import typer

from charrnn.cli.common import (
    LN2,
    PANELS,
    DataDir,
    Device,
    Encoding,
    Quiet,
    RunsDir,
    Table,
    err,
    fmt_loss,
    in_panel,
    out,
)
from charrnn.config import Curriculum, DropoutMask, LogKind, ModelKind, Precision, Preset


def prepare(
    corpus: Annotated[
        list[str],
        typer.Argument(help="Text files, folders (their files, recursively) or glob patterns, or a built-in name."),
    ],
    encoding: Encoding = "utf-8",
    data_dir: DataDir = Path("data"),
    corpus_url: Annotated[
        Optional[str],
        typer.Option(help="Download URL for a built-in corpus (mirrors, tests).", envvar="CHARRNN_SHAKESPEARE_URL"),
    ] = None,
) -> None:
    """Encode a corpus once into the token cache (train does this itself)."""
    from charrnn.data.corpus import prepare as prepare_corpus
    from charrnn.data.corpus import resolve_sources

    t0 = time.perf_counter()
    data = prepare_corpus(resolve_sources(corpus, data_dir, corpus_url), data_dir, encoding)
    _print_notes(data, quiet=False)
    table = Table(show_header=False, box=None)
    table.add_row(
        "corpus", str(data.source) + (f" and {len(data.files) - 1} more file(s)" if len(data.files) > 1 else "")
    )
    table.add_row("characters", f"{len(data.tokens):,}")
    table.add_row("vocabulary", f"{len(data.vocab)} symbols ({data.tokens.dtype})")
    table.add_row("sha256", data.sha256)
    table.add_row("seconds", f"{time.perf_counter() - t0:.2f}")
    out.print(table)


# ---------------------------------------------------------------------------------------
# Help panels of `charrnn train --help`.
MODEL, TRAINING, DATA, OUTPUT, DISTRIBUTED = PANELS[:5]


# Typer lists Literal choices but not a repeatable list of them: the same names as an Enum.
LogChoice = Enum("LogChoice", {kind: kind for kind in get_args(LogKind)}, type=str)  # type: ignore[misc]


def train(
    corpus: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Text files, folders (their files, recursively, joined by a blank line), glob patterns, "
            "or a built-in name (shakespeare). Optional with --resume.",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        Optional[str],
        typer.Option(help="Run name (folder under --runs-dir).  [default: corpus stem + time]", rich_help_panel=OUTPUT),
    ] = None,
    resume: Annotated[
        Optional[str], typer.Option(help="Continue this run from its last.pt.", rich_help_panel=OUTPUT)
    ] = None,
    model: Annotated[
        Optional[ModelKind], typer.Option(help="Recurrent kind.  [default: lstm]", rich_help_panel=MODEL)
    ] = None,
    num_layers: Annotated[
        Optional[int],
        typer.Option("--layers", "--num-layers", help="Recurrent layers.  [default: 2]", rich_help_panel=MODEL),
    ] = None,
    hidden_size: Annotated[
        Optional[int],
        typer.Option(
            "--hidden",
            "--hidden-size",
            help="Units per layer.  [default: planned; 512 with --no-auto]",
            rich_help_panel=MODEL,
        ),
    ] = None,
    embed_size: Annotated[
        Optional[int],
        typer.Option(
            "--embed",
            "--embed-size",
            help="Embedding size; 0 = same as --hidden.  [default: planned: 64 on CPU, 0 on GPU; 0 with --no-auto]",
            rich_help_panel=MODEL,
        ),
    ] = None,
    dropout: Annotated[
        Optional[float],
        typer.Option(
            help="Dropout on embedding, between layers, before the head.  [default: planned; 0 with --no-auto]",
            rich_help_panel=MODEL,
        ),
    ] = None,
    dropout_mask: Annotated[
        Optional[DropoutMask],
        typer.Option(
            help="locked: one mask per sequence (variational); per-step: a fresh one each step.  [default: locked]",
            rich_help_panel=MODEL,
        ),
    ] = None,
    weight_drop: Annotated[
        Optional[float],
        typer.Option(
            help="DropConnect on the recurrent weights (lstm, gru, rnn).  [default: planned; 0 with --no-auto]",
            rich_help_panel=MODEL,
        ),
    ] = None,
    init_from: Annotated[
        Optional[str],
        typer.Option(
            metavar="RUN",
            help="Fine-tune: start a new run from this run's weights and architecture (run name, folder or .pt); "
            "characters it lacks are added to its vocabulary.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    preset: Annotated[
        Optional[Preset],
        typer.Option(
            help="Fixed size: tiny 2x128, small 2x256, medium 2x512, large 2x1024, xl 3x1536.", rich_help_panel=MODEL
        ),
    ] = None,
    auto: Annotated[
        bool,
        typer.Option(
            "--auto/--no-auto",
            help="Plan unset settings from the budget, a speed probe and the corpus size; --no-auto uses fixed defaults.",
            rich_help_panel=TRAINING,
        ),
    ] = True,
    batch_size: Annotated[
        Optional[int],
        typer.Option(help="B parallel streams.  [default: planned; 32 with --no-auto]", rich_help_panel=TRAINING),
    ] = None,
    seq_len: Annotated[
        Optional[int],
        typer.Option(
            help="T characters per truncated-BPTT step.  [default: planned; 100 with --no-auto]",
            rich_help_panel=TRAINING,
        ),
    ] = None,
    lr: Annotated[
        Optional[float],
        typer.Option(
            help="Peak AdamW learning rate.  [default: planned; 0.002 with --no-auto]", rich_help_panel=TRAINING
        ),
    ] = None,
    weight_decay: Annotated[
        Optional[float], typer.Option(help="AdamW weight decay.  [default: 0]", rich_help_panel=TRAINING)
    ] = None,
    warmup: Annotated[
        Optional[float],
        typer.Option(help="Fraction of the run for linear warm-up.  [default: 0.02]", rich_help_panel=TRAINING),
    ] = None,
    min_lr_ratio: Annotated[
        Optional[float],
        typer.Option(
            help="The cosine ends at lr x this; 1 = constant after warm-up.  [default: 0.02]", rich_help_panel=TRAINING
        ),
    ] = None,
    grad_clip: Annotated[
        Optional[float],
        typer.Option(help="Global gradient-norm clip; 0 = off.  [default: 1]", rich_help_panel=TRAINING),
    ] = None,
    epochs: Annotated[
        Optional[float], typer.Option(help="Stop after this many epochs.", rich_help_panel=TRAINING)
    ] = None,
    max_steps: Annotated[
        Optional[int], typer.Option(help="Stop after this many steps.", rich_help_panel=TRAINING)
    ] = None,
    time_budget: Annotated[
        Optional[str],
        typer.Option(
            help="Stop after this long, e.g. 90s, 10m, 1h30m.  [default: 10m if no other stop is given]",
            rich_help_panel=TRAINING,
        ),
    ] = None,
    patience: Annotated[
        Optional[int],
        typer.Option(
            help="Stop after N validations without a new best; 0 = never.  [default: planned: 3; 0 with --no-auto]",
            rich_help_panel=TRAINING,
        ),
    ] = None,
    precision: Annotated[
        Optional[Precision],
        typer.Option(
            help="bf16 = autocast, the weights stay fp32.  [default: planned: bf16 on GPUs, and on CPUs where the probe finds it 1.2x faster (AMX), else fp32; fp32 with --no-auto]",
            rich_help_panel=TRAINING,
        ),
    ] = None,
    seed: Annotated[
        Optional[int], typer.Option(help="Seed for weights and dropout.  [default: 1337]", rich_help_panel=TRAINING)
    ] = None,
    device: in_panel(Device, TRAINING) = "auto",
    eval_every: Annotated[
        Optional[int],
        typer.Option(help="Validate every N steps; 0 = --evals times per run.  [default: 0]", rich_help_panel=TRAINING),
    ] = None,
    evals: Annotated[
        Optional[int],
        typer.Option(
            help="Validations spread over the run.  [default: planned; 10 with --no-auto]", rich_help_panel=TRAINING
        ),
    ] = None,
    val_chars: Annotated[
        Optional[int],
        typer.Option(
            help="Val characters scored per validation; 0 = all.  [default: planned; 2000000 with --no-auto]",
            rich_help_panel=DATA,
        ),
    ] = None,
    val_streams: Annotated[
        Optional[int],
        typer.Option(
            help="Parallel streams when validating; each starts from a zero state.  [default: 32]", rich_help_panel=DATA
        ),
    ] = None,
    val_frac: Annotated[
        Optional[float],
        typer.Option(help="Last fraction of the corpus kept for validation.  [default: 0.1]", rich_help_panel=DATA),
    ] = None,
    split: Annotated[
        Optional[str],
        typer.Option(
            help="train/val/test percentages, contiguous in that order, e.g. 90/5/5: the test part is never "
            "trained on (score it with `charrnn eval RUN --split test`).  [default: two parts by --val-frac]",
            rich_help_panel=DATA,
        ),
    ] = None,
    max_vocab: Annotated[
        Optional[int],
        typer.Option(
            help="Keep the N most frequent characters; all others become one unknown symbol (U+FFFD), "
            "so the vocabulary has N+1.  [default: every character of the corpus]",
            rich_help_panel=DATA,
        ),
    ] = None,
    encoding: in_panel(Encoding, DATA) = "utf-8",
    data_dir: in_panel(DataDir, DATA) = Path("data"),
    corpus_url: Annotated[
        Optional[str],
        typer.Option(
            help="Download URL for a built-in corpus.", envvar="CHARRNN_SHAKESPEARE_URL", rich_help_panel=DATA
        ),
    ] = None,
    length_min: Annotated[int, typer.Option(help="task:* corpora: shortest example.", rich_help_panel=DATA)] = 1,
    length_max: Annotated[int, typer.Option(help="task:* corpora: longest example.", rich_help_panel=DATA)] = 20,
    task_chars: Annotated[
        int, typer.Option(help="task:* corpora: characters generated.", rich_help_panel=DATA)
    ] = 1_000_000,
    nesting: Annotated[
        int, typer.Option(help="task:execute: operations nested in each program.", rich_help_panel=DATA)
    ] = 1,
    curriculum: Annotated[
        Curriculum,
        typer.Option(help="task:execute: mixed = half the lines at random easier levels.", rich_help_panel=DATA),
    ] = "plain",
    runs_dir: in_panel(RunsDir, OUTPUT) = Path("checkpoints"),
    log_every: Annotated[
        Optional[int], typer.Option(help="Log every N steps.  [default: 10]", rich_help_panel=OUTPUT)
    ] = None,
    keep_last: Annotated[
        Optional[int],
        typer.Option(help="Keep the last N periodic step-N.pt checkpoints too.  [default: 0]", rich_help_panel=OUTPUT),
    ] = None,
    log: Annotated[
        Optional[list[LogChoice]],
        typer.Option(
            help="Also log the events to metrics.csv or TensorBoard (repeatable; metrics.jsonl is always written).",
            rich_help_panel=OUTPUT,
        ),
    ] = None,
    quiet: in_panel(Quiet, OUTPUT) = False,
    nproc: Annotated[
        int,
        typer.Option(
            help="Data-parallel: start N processes on this machine via torchrun (--batch-size stays global); 0 = one process.",
            rich_help_panel=DISTRIBUTED,
        ),
    ] = 0,
    dist_timeout: Annotated[
        float, typer.Option(help="Seconds a rank waits for a silent one before failing.", rich_help_panel=DISTRIBUTED)
    ] = 1800.0,
) -> None:
    """Train a model on a text file, a built-in corpus (shakespeare) or a memory task
    (task:parity, task:brackets, task:copy, task:execute); checkpoints go to RUNS_DIR/NAME/."""
    from charrnn.training.distributed import DistConfig, exec_torchrun, init_from_env

    dcfg = DistConfig(nproc=nproc, timeout=dist_timeout)
    if dcfg.nproc:  # before torch is imported: torchrun starts this command once per rank
        exec_torchrun(dcfg.nproc, sys.argv[1:], os.environ)  # does not return
    from charrnn.cli.progress import TrainProgress
    from charrnn.training.setup import Aborted, process_age, train_run

    settings = {k: v for k, v in locals().items() if k in _SETTINGS}
    if log:
        settings["log"] = [kind.value for kind in log]
    dist = init_from_env(device, dcfg.timeout, os.environ)  # one process unless started by torchrun
    speak = not quiet and dist.is_main
    progress = TrainProgress() if speak else None
    stop = {"signal": 0}

    def on_signal(signum: int, frame: Any) -> None:
        if stop["signal"] and dist.enabled:  # torchrun and schedulers repeat a signal to every process: one stop
            return
        if stop["signal"]:  # second request: abort at once (checkpoint files are written atomically)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            raise KeyboardInterrupt
        stop["signal"] = signum
        if dist.enabled:  # torchrun signals every rank; rank 0 speaks for all (a second signal is ignored)
            if dist.is_main:
                err.print("\nstopping: saving a checkpoint")
            return
        err.print("\nstopping: saving a checkpoint (press Ctrl-C again to abort without saving)")

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        done = train_run(
            (corpus[0] if len(corpus) == 1 else corpus) if corpus else None,
            name=name,
            resume=resume,
            init_from=init_from,
            preset=preset,
            auto=auto,
            runs_dir=runs_dir,
            data_dir=data_dir,
            encoding=encoding,
            corpus_url=corpus_url,
            length_min=length_min,
            length_max=length_max,
            task_chars=task_chars,
            nesting=nesting,
            curriculum=curriculum,
            max_vocab=max_vocab,
            on_event=progress,
            on_note=_print_note if speak else None,
            should_stop=lambda: bool(stop["signal"]),
            dist=dist,
            spent=process_age(),
            **settings,
        )
    except Aborted as exc:
        err.print(f"aborted; the last saved checkpoint is {exc.last}")
        raise typer.Exit(130)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if progress is not None:
            progress.close()
    result, run = done.result, done.run
    if speak:
        _print_summary(done)
    if result.status == "interrupted":
        if dist.is_main:
            err.print(f"saved {run.last}; continue with: charrnn train --resume {run.dir.name}")
        raise typer.Exit(130 if stop["signal"] == signal.SIGINT else 143)  # a rank stopped by another's SIGTERM: 143
    if speak:
        err.print(f"sample with: charrnn sample {run.dir.name}")


# Options passed to train_run as settings, by config field name.
_SETTINGS = (
    "model",
    "num_layers",
    "hidden_size",
    "embed_size",
    "dropout",
    "dropout_mask",
    "weight_drop",
    "batch_size",
    "seq_len",
    "lr",
    "weight_decay",
    "warmup",
    "min_lr_ratio",
    "grad_clip",
    "epochs",
    "max_steps",
    "time_budget",
    "patience",
    "precision",
    "seed",
    "device",
    "eval_every",
    "evals",
    "val_chars",
    "val_streams",
    "val_frac",
    "split",
    "log_every",
    "keep_last",
    "log",
)


def _print_note(text: str) -> None:
    err.print(text, highlight=False, markup=False, soft_wrap=True)


def _print_notes(data: Any, quiet: bool) -> None:
    """What preparing the corpus had to repair (a damaged cache rebuilt), one line each."""
    if not quiet:
        for note in getattr(data, "notes", ()):
            _print_note(note)


def _print_summary(done: Any) -> None:
    """The closing table: quality, training speed, and where the time went."""
    result = done.result
    table = Table(
        title=f"run {done.run.dir.name}: {result.status}",
        caption="train chars/s: this session, while training only; run time: training + validation, "
        "all sessions; wall time: this command, with preparation and the plan's probe",
    )
    for col in (
        "steps",
        "epochs",
        "best val nats/char",
        "best val bits/char",
        "train chars/s",
        "run time",
        "wall time",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        f"{result.step:,}",
        f"{result.step / max(done.steps_per_epoch, 1):.2f}",
        fmt_loss(result.best_val),
        fmt_loss(result.best_val / LN2),
        f"{done.train_chars_per_s:,.0f}",
        f"{result.elapsed:.1f}s",
        f"{done.wall_seconds:.1f}s",
    )
    out.print(table)
    if result.skipped:
        err.print(f"{result.skipped} step(s) with a non-finite loss were skipped.")
