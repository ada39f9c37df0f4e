"""The `sample` and `eval` commands: text from a trained run, and the score of a text."""

import functools
import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

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
from charrnn.errors import CharRNNError


def sample(
    run: RunArg = None,
    temp: Annotated[float, typer.Option("--temp", "--temperature", help="Softmax temperature; 0 = greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(help="Keep only the K most likely characters; 0 = all.")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling: keep the smallest set with this much probability.")] = 1.0,
    length: Annotated[int, typer.Option("--length", "-n", help="New characters per sample.")] = 500,
    prime: Annotated[Optional[str], typer.Option(help="Text to start from (printed first).")] = None,
    prime_file: Annotated[Optional[str], typer.Option(help="Read the prime from a file; '-' = standard input.")] = None,
    seed: Annotated[Optional[int], typer.Option(min=0, max=2**63 - 1, help="Seed for repeatable samples.")] = None,
    num_samples: Annotated[int, typer.Option(help="Number of samples, separated by a blank line.")] = 1,
    stop: Annotated[str, typer.Option(help="End a sample once it produces this string; \\n, \\t, \\r and \\\\ are read as newline, tab, return and backslash (--stop '\\n\\n' ends at a blank line).")] = "",
    weights: Annotated[str, typer.Option(help="Weights for sampling: fp32 | bf16 | int8.")] = "fp32",
    engine: Annotated[str, typer.Option(help=(
        "auto | numpy | torch. numpy steps lstm/gru/rnn runs with fp32 or int8 weights on the CPU "
        "without loading torch (first character in under a second); auto uses it when it can."))] = "auto",
    device: Device = "cpu",
    runs_dir: RunsDir = Path("checkpoints"),
) -> None:
    """Generate text from a trained run; only the text goes to stdout."""
    import dataclasses

    # One BLAS thread for the NumPy engine's one-row products: OpenBLAS threads spin while
    # they wait, and on a busy CPU (a training run beside it) 600 characters of a 2x384 LSTM
    # took 8.4 s with two threads and 1.3 s with one. Set before NumPy loads; the user's wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    from charrnn.config import SampleConfig

    cfg = SampleConfig(temperature=temp, top_k=top_k, top_p=top_p, length=length,
                       num_samples=num_samples, seed=seed, stop=unescape(stop))
    if prime is not None and prime_file is not None:
        raise CharRNNError("give --prime or --prime-file, not both.")
    from charrnn.data.corpus import read_text
    from charrnn.runs import resolve_checkpoint

    _check_engine(engine)
    path = resolve_checkpoint(run, runs_dir)
    if run is None:
        err.print(f"sampling from {path}", highlight=False)
    generate_one, vocab = _numpy_sampler(path, engine, weights, device) or _torch_sampler(path, weights, device)
    text = read_text(prime_file, "bytes" if vocab.byte_level else "utf-8") if prime_file is not None else (prime or "")
    vocab.encode(text)  # reject unknown characters before anything is printed
    if engine == "auto" and generate_one.func.__module__ == "charrnn.sample.numpy_engine":
        from charrnn.sample.numpy_engine import MAX_PRIME

        if len(text) > MAX_PRIME:  # torch reads a long prime in one pass; numpy steps through it
            generate_one, _ = _torch_sampler(path, weights, device)
    writer = _StreamWriter(vocab)
    try:
        for i in range(cfg.num_samples):
            if i:
                writer.write("\n\n")
            writer.write(text)
            generate_one(text, dataclasses.replace(cfg, seed=None if cfg.seed is None else cfg.seed + i), writer.write)
        writer.write("\n")
        writer.flush()
    except BrokenPipeError:  # `| head` closed the pipe: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(0)


def _numpy_sampler(path: Path, engine: str, weights: str, device: str) -> tuple[Callable, Any] | None:
    """(generate(prime, cfg, emit), vocab) on charrnn.sample.numpy_engine, or None when torch must serve."""
    loaded = _numpy_net(path, engine, weights, device)
    if loaded is None:
        return None
    from charrnn.sample import numpy_engine as npsample

    net, vocab = loaded
    _warn_nonfinite(getattr(net, "nonfinite", None))
    return functools.partial(npsample.generate, net, vocab), vocab


def _numpy_net(path: Path, engine: str, weights: str, device: str) -> tuple[Any, Any] | None:
    """(NumPy network, vocab) of the checkpoint for --engine numpy, and for auto where the
    NumPy engine runs these weights; None when torch must serve. Raises CharRNNError.
    `engine` has passed _check_engine."""
    if engine == "torch":
        return None
    # numba is imported only when int8 is asked for: fp32 sampling starts without it.
    if device != "cpu" or not (weights == "fp32" or (weights == "int8" and _numba_int8())):
        if engine == "auto":
            return None
        int8 = _numba_int8()
        hint = " (int8 there needs numba: pip install numba)" if weights == "int8" and not int8 else ""
        raise CharRNNError(f"--engine numpy runs {'fp32 and int8' if int8 else 'fp32'} weights on the CPU{hint}: "
                           "change --weights/--device or use --engine torch.")
    from charrnn.sample import numpy_engine as npsample

    loaded = npsample.load(path, weights)
    if loaded is None and engine == "numpy":
        raise CharRNNError(f"--engine numpy cannot read '{path}' (it serves lstm, gru and rnn runs): use --engine torch.")
    return loaded


def _check_engine(engine: str) -> None:
    """Refuses an --engine other than auto, numpy or torch (sample and eval)."""
    if engine not in ("auto", "numpy", "torch"):
        raise CharRNNError(f"unknown --engine '{engine}': choose auto, numpy or torch.")


def _numba_int8() -> bool:
    """Whether the NumPy engine's compiled int8 product can run here (imports numba)."""
    from charrnn.sample import numpy_int8 as npint8

    return npint8.available()


def _torch_sampler(path: Path, weights: str, device: str) -> tuple[Callable, Any]:
    """(generate(prime, cfg, emit), vocab) on the torch model and its fast step."""
    from charrnn.checkpoint import build_model, load_checkpoint
    from charrnn.device import pick_device
    from charrnn.sample.torch_engine import generate, make_stepper

    ckpt = load_checkpoint(path)
    model = build_model(ckpt).to(pick_device(device))
    stepper = make_stepper(model, weights)  # refuses int8 of non-finite weights: then no warning first
    _warn_nonfinite(ckpt.nonfinite)
    return functools.partial(generate, model, ckpt.vocab, stepper=stepper), ckpt.vocab


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
        err.print(f"warning: the checkpoint has non-finite weights ({', '.join(names[:3])}): the text will be "
                  "meaningless; resume or sample from an earlier checkpoint.", highlight=False, markup=False,
                  soft_wrap=True)


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
                err.print(f"warning: standard output ({encoding}) cannot write {len(unwritable)} of the model's "
                          "characters; they are written as backslash escapes (set PYTHONIOENCODING=utf-8 to see "
                          "them).", highlight=False, markup=False, soft_wrap=True)

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
    lengths: Annotated[str, typer.Option(help="task:* only: example lengths to score, e.g. 10,20,50,100.")] = "5,10,20,50",
    examples: Annotated[int, typer.Option(help="task:* only: examples per length.")] = 500,
    seed: Annotated[int, typer.Option(help="task:* only: seed of the generated examples.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Parallel streams while scoring.")] = 32,
    seq_len: Annotated[int, typer.Option(help="Characters per chunk (state is carried across).")] = 256,
    weights: Annotated[str, typer.Option(help="Weights: fp32 | bf16 | int8.")] = "fp32",
    engine: Annotated[str, typer.Option(help=(
        "auto | numpy | torch: the engine `charrnn sample` would use. auto scores int8 on the NumPy "
        "engine's step where it runs (lstm/gru/rnn, numba installed), everything else with torch."))] = "auto",
    device: Device = "auto",
    runs_dir: RunsDir = Path("checkpoints"),
) -> None:
    """Score a text: nats/char, bits/char and perplexity."""
    import numpy as np

    from charrnn.checkpoint import build_model, load_checkpoint
    from charrnn.data.corpus import read_text
    from charrnn.device import pick_device
    from charrnn.runs import resolve_checkpoint, to_json
    from charrnn.train.loop import evaluate

    if batch_size < 1 or seq_len < 1:
        raise CharRNNError("--batch-size and --seq-len must be at least 1.")
    _check_engine(engine)
    path = resolve_checkpoint(run, runs_dir)
    ckpt = load_checkpoint(path)
    if file.startswith("task:"):
        _eval_task(ckpt, path, file, lengths, examples, seed, as_json)
        return
    text = read_text(file, "bytes" if ckpt.vocab.byte_level else "utf-8")
    tokens = np.asarray(ckpt.vocab.encode(text), dtype=np.int64)
    if len(tokens) < 2:
        raise CharRNNError(f"'{file}' has {len(tokens)} character(s): at least 2 are needed to score.")
    # fp32 on auto: torch's batched forward is faster than stepping; int8 on auto: the
    # arithmetic `charrnn sample --weights int8` runs, so its cost is what is measured.
    wants_numpy = engine == "numpy" or (engine == "auto" and weights == "int8")
    loaded = _numpy_net(path, engine, weights, "cpu" if device in ("auto", "cpu") else device) if wants_numpy else None
    if loaded is not None:
        from charrnn.sample import numpy_engine as npsample

        used = f"numpy, {weights}"
        t0 = time.perf_counter()
        nats = npsample.score(loaded[0], tokens, batch_size, seq_len)
    else:
        dev = pick_device(device)
        model = build_model(ckpt).to(dev)
        if weights != "fp32":
            from charrnn.sample.fast_step import quantize_model  # type: ignore[attr-defined]

            model = quantize_model(model, weights)
        used = f"torch, {weights}"
        t0 = time.perf_counter()
        nats = evaluate(model, tokens, batch_size, seq_len, dev)
    result = {"checkpoint": str(path), "file": file, "chars": int(len(tokens)), "weights": weights, "engine": used,
              "nats_per_char": nats, "bits_per_char": nats / LN2, "perplexity": math.exp(nats),
              "seconds": time.perf_counter() - t0}
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
    from charrnn.data.tasks import label_accuracy, majority_baseline
    from charrnn.runs import to_json

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
        out.print_json(to_json({"checkpoint": str(path), "task": task, "model": ckpt.model_config.model,
                                 "examples": examples, "results": rows}))
        return
    table = Table(title=f"{task}: {ckpt.model_config.model} {ckpt.model_config.num_layers}x{ckpt.model_config.hidden_size}")
    for col in ("length", "accuracy", "majority guess"):
        table.add_column(col, justify="right")
    for n in sizes:
        table.add_row(str(n), f"{accuracy[n]:.3f}", f"{chance[n]:.3f}")
    out.print(table)
