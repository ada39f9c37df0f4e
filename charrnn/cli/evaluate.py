"""The `eval` command: the score of a text (nats/char, bits/char, perplexity), or a task's
accuracy per difficulty."""

import math
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from charrnn.cli.common import LN2, DataDir, Device, RunsDir, Table, out
from charrnn.config import Engine, SplitPart, Weights
from charrnn.errors import CharRNNError


def evaluate_cmd(
    run: Annotated[str, typer.Argument(help="Run name, run folder or .pt file.")],
    file: Annotated[
        Optional[str],
        typer.Argument(help="Text file to score ('-' = standard input), or a task (task:parity); or give --split."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    lengths: Annotated[
        str, typer.Option(help="task:* only: example lengths to score, e.g. 10,20,50,100.")
    ] = "5,10,20,50",
    examples: Annotated[int, typer.Option(help="task:* only: examples per length.")] = 500,
    nesting: Annotated[
        str, typer.Option(help="task:execute only: nesting levels to score (--lengths gives the digits), e.g. 1,2.")
    ] = "1,2",
    seed: Annotated[int, typer.Option(help="task:* only: seed of the generated examples.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Parallel streams while scoring.")] = 32,
    seq_len: Annotated[int, typer.Option(help="Characters per chunk (state is carried across).")] = 256,
    weights: Annotated[Weights, typer.Option(help="Weights to score with.")] = "fp32",
    engine: Annotated[
        Engine,
        typer.Option(
            help=(
                "The engine `charrnn sample` would use. auto scores int8 on the NumPy "
                "engine's step where it runs (lstm/gru/rnn, numba installed), everything else with torch."
            )
        ),
    ] = "auto",
    device: Device = "auto",
    runs_dir: RunsDir = Path("checkpoints"),
    split: Annotated[
        Optional[SplitPart],
        typer.Option(
            help="Score this part of the run's own corpus instead of a FILE (test: held out by train --split 90/5/5)."
        ),
    ] = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Score a text, or a part of the run's corpus: nats/char, bits/char and perplexity."""
    import numpy as np

    from charrnn.data.corpus import read_text
    from charrnn.rundir import resolve_checkpoint, to_json
    from charrnn.sample import open_sampler

    if batch_size < 1 or seq_len < 1:
        raise CharRNNError("--batch-size and --seq-len must be at least 1.")
    path = resolve_checkpoint(run, runs_dir)
    if (file is None) == (split is None):
        raise CharRNNError("give a FILE to score or --split val|test (the run's own corpus), one of them.")
    if file is None:
        from charrnn.training.splits import split_tokens

        part = split_tokens(path, split, data_dir)  # before the model loads: a run without the part fails fast
        file = f"{split} split"
    if file.startswith("task:"):
        from charrnn.checkpoint import load_checkpoint

        if file == "task:execute":
            _eval_execute(load_checkpoint(path), path, lengths, nesting, examples, seed, as_json)
        else:
            _eval_task(load_checkpoint(path), path, file, lengths, examples, seed, as_json)
        return
    sampler = open_sampler(path, engine, weights, device, purpose="score")
    if split is not None:
        tokens = np.asarray(part, dtype=np.int64)
    else:
        text = read_text(file, "bytes" if sampler.vocab.byte_level else "utf-8")
        tokens = np.asarray(sampler.vocab.encode(text), dtype=np.int64)
    if len(tokens) < 2:
        raise CharRNNError(f"'{file}' has {len(tokens)} character(s): at least 2 are needed to score.")
    used = f"{sampler.engine}, {weights}"
    t0 = time.perf_counter()
    nats = sampler.score(tokens, batch_size, seq_len)
    result = {
        "checkpoint": str(path),
        "file": file,
        "chars": int(len(tokens)),
        "weights": weights,
        "engine": used,
        "nats_per_char": nats,
        "bits_per_char": nats / LN2,
        "perplexity": math.exp(nats),
        "seconds": time.perf_counter() - t0,
    }
    if as_json:
        out.print_json(to_json(result))
        return
    table = Table(show_header=False, box=None)
    table.add_row("checkpoint", str(path))
    table.add_row("characters", f"{len(tokens):,}")
    table.add_row("engine", used)
    table.add_row("nats/char", f"{nats:.4f}")
    table.add_row("bits/char", f"{nats / LN2:.4f}")
    table.add_row("perplexity", f"{math.exp(nats):.3f}")
    out.print(table)


def _eval_task(ckpt: Any, path: Path, task: str, lengths: str, examples: int, seed: int, as_json: bool) -> None:
    """Accuracy of the label character per example length, beside the majority-guess baseline."""
    from charrnn.checkpoint import build_model
    from charrnn.data.tasks import majority_baseline
    from charrnn.rundir import to_json
    from charrnn.training.evaluate import label_accuracy

    try:
        sizes = [int(v) for v in lengths.split(",") if v.strip()]
    except ValueError:
        raise CharRNNError(f"--lengths must be comma-separated integers, got '{lengths}'.")
    if not sizes or min(sizes) < 1 or examples < 1:
        raise CharRNNError("--lengths needs positive integers and --examples at least 1.")
    model = build_model(ckpt)
    accuracy = label_accuracy(model, ckpt.vocab, task, sizes, examples, seed)
    chance = majority_baseline(task, sizes, examples, seed)
    if as_json:
        rows = [{"length": n, "accuracy": accuracy[n], "majority": chance[n]} for n in sizes]
        out.print_json(
            to_json(
                {
                    "checkpoint": str(path),
                    "task": task,
                    "model": ckpt.model_config.model,
                    "examples": examples,
                    "results": rows,
                }
            )
        )
        return
    table = Table(
        title=f"{task}: {ckpt.model_config.model} {ckpt.model_config.num_layers}x{ckpt.model_config.hidden_size}"
    )
    for col in ("length", "accuracy", "majority guess"):
        table.add_column(col, justify="right")
    for n in sizes:
        table.add_row(str(n), f"{accuracy[n]:.3f}", f"{chance[n]:.3f}")
    out.print(table)


def _eval_execute(ckpt: Any, path: Path, lengths: str, nesting: str, examples: int, seed: int, as_json: bool) -> None:
    """task:execute: greedy exact match and teacher-forced character accuracy per (digits, nesting)."""
    from charrnn.checkpoint import build_model
    from charrnn.rundir import to_json
    from charrnn.training.execute_eval import execute_accuracy

    try:
        digits = [int(v) for v in lengths.split(",") if v.strip()]
        nests = [int(v) for v in nesting.split(",") if v.strip()]
    except ValueError:
        raise CharRNNError(f"--lengths and --nesting must be comma-separated integers, got '{lengths}', '{nesting}'.")
    if not digits or not nests or examples < 1:
        raise CharRNNError("--lengths and --nesting need integers and --examples at least 1.")
    levels = [(d, n) for d in digits for n in nests]
    scores = execute_accuracy(build_model(ckpt), ckpt.vocab, levels, examples, seed)
    if as_json:
        rows = [{"digits": d, "nesting": n, **scores[(d, n)]} for d, n in levels]
        result = {"checkpoint": str(path), "task": "task:execute", "examples": examples, "results": rows}
        return out.print_json(to_json(result))
    cfg = ckpt.model_config
    table = Table(title=f"task:execute: {cfg.model} {cfg.num_layers}x{cfg.hidden_size}")
    for col in ("digits", "nesting", "exact match (greedy)", "char accuracy (teacher forced)"):
        table.add_column(col, justify="right")
    for d, n in levels:
        table.add_row(str(d), str(n), f"{scores[(d, n)]['exact']:.3f}", f"{scores[(d, n)]['char']:.3f}")
    out.print(table)
