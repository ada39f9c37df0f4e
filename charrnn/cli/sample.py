"""The `sample` command: text from a trained run, streamed as it is drawn."""

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from charrnn.cli.common import (
    Device,
    RunArg,
    RunsDir,
    err,
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
    num_samples: Annotated[
        int,
        typer.Option(
            help="Number of samples, separated by a blank line; drawn together as one batch, "
            "sample i with seed --seed + i (the text --seed + i writes alone)."
        ),
    ] = 1,
    stop: Annotated[
        str,
        typer.Option(
            help="End a sample once it produces this string; \\n, \\t, \\r and \\\\ are read as newline, tab, return and backslash (--stop '\\n\\n' ends at a blank line)."
        ),
    ] = "",
    beam: Annotated[
        int,
        typer.Option(
            min=0,
            max=1024,
            metavar="N",
            help="Beam search with this many beams instead of drawing: the most likely text they find, "
            "the same every time (--temp, --top-k, --top-p and --seed are not used); 1 = greedy; 0 = off.",
        ),
    ] = 0,
    length_norm: Annotated[
        float,
        typer.Option(
            min=0.0,
            metavar="ALPHA",
            help="With --beam and --stop, beams end at different lengths: rank them by log-probability / "
            "length**ALPHA. 0 favours the ones that stop soonest, 1 ranks by mean per character.",
        ),
    ] = 0.0,
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
    interactive: Annotated[
        bool,
        typer.Option("--interactive", "-i", help="Prompt for primes in a terminal; each continuation streams."),
    ] = False,
    pick: Annotated[
        bool,
        typer.Option(
            "--pick",
            help="Start --interactive in pick mode (implies it): choose each character among the top-k (5 without --top-k).",
        ),
    ] = False,
) -> None:
    """Generate text from a trained run; only the text goes to stdout."""
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
        beam=beam,
        length_norm=length_norm,
    )
    if interactive or pick:  # the prompt loop: charrnn/cli/interactive.py
        from charrnn.cli.interactive import run_loop

        return run_loop(run, runs_dir, cfg, engine, weights, device, pick, prime, prime_file)
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
        # The samples run as one batch: the first streams as it is drawn, the others follow it.
        writer.write(text)
        samples = sampler.generate_samples(text, cfg, lambda i, piece: writer.write(piece) if i == 0 else None)
        for sample_text in samples[1:]:
            writer.write("\n\n" + text + sample_text)
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
