"""The `sample` and `eval` commands: text from a trained run, and the score of a text."""

import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from charrnn.cli.common import (
    LN2,
    Device,
    RunArg,
    RunsDir,
    Table,
    err,
    out,
)
from charrnn.config import Engine, Weights
from charrnn.errors import CharRNNError


def sample(
    run: RunArg = None,
    temp: Annotated[float, typer.Option("--temp", "--temperature", help="Softmax temperature; 0 = greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(help="Keep only the K most likely characters; 0 = all.")] = 0,
    top_p: Annotated[
        float, typer.Option(help="Nucleus sampling: keep the smallest set with this much probability.")
    ] = 1.0,
    length: Annotated[int, typer.Option("--length", "-n", help="New characters per sample.")] = 500,
    prime: Annotated[Optional[str], typer.Option(help="Text to start from (printed first).")] = None,
    prime_file: Annotated[Optional[str], typer.Option(help="Read the prime from a file; '-' = standard input.")] = None,
    seed: Annotated[Optional[int], typer.Option(min=0, max=2**63 - 1, help="Seed for repeatable samples.")] = None,
    num_samples: Annotated[int, typer.Option(help="Number of samples, separated by a blank line.")] = 1,
    stop: Annotated[
        str,
        typer.Option(
            help="End a sample once it produces this string; \\n, \\t, \\r and \\\\ are read as newline, tab, return and backslash (--stop '\\n\\n' ends at a blank line)."
        ),
    ] = "",
    weights: Annotated[
        Weights, typer.Option(help="Weights for sampling (int8 on the NumPy engine needs charrnn[int8]).")
    ] = "fp32",
    engine: Annotated[
        Engine,
        typer.Option(
            help=(
                "numpy steps lstm/gru/rnn runs with fp32 or int8 weights on the CPU "
                "without loading torch (first character in under a second); auto uses it when it can."
            )
        ),
    ] = "auto",
    device: Device = "cpu",
    runs_dir: RunsDir = Path("checkpoints"),
) -> None:
    """Generate text from a trained run; only the text goes to stdout."""
    import dataclasses

    # One BLAS thread for the NumPy engine's one-row products: OpenBLAS threads spin while they
    # wait, which on a busy CPU costs far more than they save (benchmarks/RESULTS.md, "Sampling
    # kernels"). Set before NumPy loads; the user's setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    from charrnn.config import SampleConfig

    cfg = SampleConfig(
        temperature=temp,
        top_k=top_k,
        top_p=top_p,
        length=length,
        num_samples=num_samples,
        seed=seed,
        stop=unescape(stop),
    )
    if prime is not None and prime_file is not None:
        raise CharRNNError("give --prime or --prime-file, not both.")
    from charrnn.data.corpus import read_text
    from charrnn.rundir import resolve_checkpoint
    from charrnn.sample import open_sampler

    path = resolve_checkpoint(run, runs_dir)
    if run is None:
        err.print(f"sampling from {path}", highlight=False)
    sampler = open_sampler(path, engine, weights, device, prime_len=len(prime or ""))
    _warn_nonfinite(sampler.nonfinite)
    vocab = sampler.vocab
    text = read_text(prime_file, "bytes" if vocab.byte_level else "utf-8") if prime_file is not None else (prime or "")
    vocab.encode(text)  # reject unknown characters before anything is printed
    writer = _StreamWriter(vocab)
    try:
        for i in range(cfg.num_samples):
            if i:
                writer.write("\n\n")
            writer.write(text)
            sampler.generate(
                text, dataclasses.replace(cfg, seed=None if cfg.seed is None else cfg.seed + i), writer.write
            )
        writer.write("\n")
        writer.flush()
    except BrokenPipeError:  # `| head` closed the pipe: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(0)


def unescape(text: str) -> str:
    """Read \\n, \\t, \\r and \\\\ in an option as newline, tab, return and backslash: a shell
    passes `--stop "\\n\\n"` to charrnn as backslashes. Other characters stay as they are."""
    import re

    table = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    return re.sub(r"\\([ntr\\])", lambda m: table[m.group(1)], text)


def _encodable(ch: str, encoding: str) -> bool:
    try:
        ch.encode(encoding)
        return True
    except UnicodeEncodeError:
        return False


def _warn_nonfinite(names: Any) -> None:
    """Say so when the weights being sampled hold NaN or infinity (the text will be junk)."""
    if names:
        err.print(
            f"warning: the checkpoint has non-finite weights ({', '.join(names[:3])}): the text will be "
            "meaningless; resume or sample from an earlier checkpoint.",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


class _StreamWriter:
    """Writes generated text to stdout, flushing at line ends and at least every 50 ms.

    Where stdout's encoding cannot write some of the model's characters (PYTHONIOENCODING=ascii,
    an old Windows console), they are written as backslash escapes, with one warning."""

    def __init__(self, vocab: Any) -> None:
        self.byte_level = vocab.byte_level
        self.last = time.monotonic()
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        if not self.byte_level:
            try:
                unwritable = [c for c in vocab.chars if not _encodable(c, encoding)]
            except LookupError:
                unwritable = []
            if unwritable and hasattr(sys.stdout, "reconfigure"):
                sys.stdout.reconfigure(errors="backslashreplace")
                err.print(
                    f"warning: standard output ({encoding}) cannot write {len(unwritable)} of the model's "
                    "characters; they are written as backslash escapes (set PYTHONIOENCODING=utf-8 to see "
                    "them).",
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )

    def write(self, text: str) -> None:
        if self.byte_level:
            sys.stdout.buffer.write(text.encode("latin-1"))
        else:
            sys.stdout.write(text)
        now = time.monotonic()
        if "\n" in text or now - self.last > 0.05:
            self.flush()
            self.last = now

    def flush(self) -> None:
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------
def evaluate_cmd(
    run: Annotated[str, typer.Argument(help="Run name, run folder or .pt file.")],
    file: Annotated[str, typer.Argument(help="Text file to score ('-' = standard input), or a task (task:parity).")],
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
) -> None:
    """Score a text: nats/char, bits/char and perplexity."""
    import numpy as np

    from charrnn.data.corpus import read_text
    from charrnn.rundir import resolve_checkpoint, to_json
    from charrnn.sample import open_sampler

    if batch_size < 1 or seq_len < 1:
        raise CharRNNError("--batch-size and --seq-len must be at least 1.")
    path = resolve_checkpoint(run, runs_dir)
    if file.startswith("task:"):
        from charrnn.checkpoint import load_checkpoint

        if file == "task:execute":
            _eval_execute(load_checkpoint(path), path, lengths, nesting, examples, seed, as_json)
        else:
            _eval_task(load_checkpoint(path), path, file, lengths, examples, seed, as_json)
        return
    sampler = open_sampler(path, engine, weights, device, purpose="score")
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
