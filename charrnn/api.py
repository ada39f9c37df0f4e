"""charrnn from Python: load a run, generate and score text, list runs, train.

    import charrnn
    model = charrnn.load("shakespeare")
    print(model.generate("ROMEO:", length=200, seed=1))

`import charrnn` stays light (no torch, no NumPy): charrnn/__init__.py imports this module
on first use of one of its names. The engines are those of `charrnn sample` and
`charrnn eval`, chosen by charrnn.sample.open_sampler, so for a seed a Model writes what
`charrnn sample --seed` writes and scores what `charrnn eval` prints.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from charrnn.config import DeviceName, Engine, SampleConfig, Weights
from charrnn.sample import Sampler, open_sampler

__all__ = ["Model", "RunInfo", "load", "runs", "train"]


def load(
    run_or_path: str | Path,
    device: DeviceName | str = "cpu",
    weights: Weights = "fp32",
    engine: Engine = "auto",
    runs_dir: str | Path = "checkpoints",
) -> Model:
    """A trained run (name in `runs_dir`, run folder or .pt file) ready to generate and score.
    Raises charrnn.errors.CharRNNError."""
    from charrnn.rundir import resolve_checkpoint

    path = resolve_checkpoint(str(run_or_path), Path(runs_dir))
    return Model(path, open_sampler(path, engine, weights, device), engine, weights, device)


class Model:
    """A checkpoint opened for sampling (`generate`, `stream`), scoring and inspection."""

    def __init__(self, path: Path, sampler: Sampler, engine: str, weights: str, device: str) -> None:
        self.path = path
        self._sampler = sampler
        self._scorer: Sampler | None = None
        self._stepper: Any = None  # charrnn.sample.interactive.CharStepper, for next_chars
        self._options = (engine, weights, device)

    @property
    def vocab(self) -> Any:
        """The charrnn.data.vocab.Vocab: `.chars`, `.encode(text)`, `.decode(ids)`."""
        return self._sampler.vocab

    @property
    def config(self) -> Any:
        """The run's charrnn.config.ModelConfig (kind, layers, sizes)."""
        return self._sampler.config

    @property
    def engine(self) -> str:
        """What samples: "numpy" or "torch"."""
        return self._sampler.engine

    def generate(
        self,
        prime: str = "",
        length: int = 500,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str = "",
        beam: int = 0,
        length_norm: float = 0.0,
    ) -> str:
        """`length` new characters after `prime` (returned without it), as `charrnn sample`
        draws them: the same seed gives the same text. Stops early after `stop`.

        `beam=N` searches with N beams instead of drawing (`charrnn sample --beam N`): the
        most likely continuation they find, the same every time (temperature, top_k, top_p
        and seed are not used); `length_norm` ranks beams that ended at `stop` by total
        log-probability / length ** length_norm. beam=1 is greedy (temperature=0)."""
        cfg = SampleConfig(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            length=length,
            seed=seed,
            stop=stop,
            beam=beam,
            length_norm=length_norm,
        )
        return self._sampler.generate(prime, cfg)

    def generate_many(
        self,
        n: int,
        prime: str = "",
        length: int = 500,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str = "",
    ) -> list[str]:
        """`n` samples after `prime`, drawn together as one batch (`charrnn sample
        --num-samples n`): sample i is what `generate(..., seed=seed + i)` returns (each a
        fresh seed if `seed` is None). Faster than n calls to `generate`."""
        cfg = SampleConfig(
            temperature=temperature, top_k=top_k, top_p=top_p, length=length, num_samples=n, seed=seed, stop=stop
        )
        return self._sampler.generate_samples(prime, cfg)

    def stream(
        self,
        prime: str = "",
        length: int = 500,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str = "",
        beam: int = 0,
        length_norm: float = 0.0,
    ) -> Iterator[str]:
        """As `generate`, yielding the text in pieces as they are drawn (with `beam`, as the
        beams agree on them); the pieces join to what `generate` returns. Leaving the loop
        early stops the drawing."""
        cfg = SampleConfig(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            length=length,
            seed=seed,
            stop=stop,
            beam=beam,
            length_norm=length_norm,
        )
        self.vocab.encode(prime)  # unknown characters: an error at the call, not at the first next()
        return _pieces(lambda emit: self._sampler.generate(prime, cfg, emit))

    def score(self, text: str, batch_size: int = 32, seq_len: int = 256) -> float:
        """Mean cross-entropy of `text` in nats per character, as `charrnn eval` reports it
        (same engine policy: torch for fp32, the NumPy step for int8 where it runs)."""
        if self._scorer is None:
            engine, weights, device = self._options
            self._scorer = open_sampler(self.path, engine, weights, device, purpose="score")  # type: ignore[arg-type]
        return self._scorer.score(text, batch_size, seq_len)

    def evaluate_split(
        self, part: str = "test", data_dir: str | Path = "data", batch_size: int = 32, seq_len: int = 256
    ) -> float:
        """Mean cross-entropy in nats per character of part "test" (held out by
        `train(..., split="90/5/5")`) or "val" of the run's own corpus, read through the data
        cache in `data_dir`: what `charrnn eval RUN --split test` reports."""
        from charrnn.training.splits import split_tokens

        tokens = split_tokens(self.path, part, data_dir)
        if self._scorer is None:
            engine, weights, device = self._options
            self._scorer = open_sampler(self.path, engine, weights, device, purpose="score")  # type: ignore[arg-type]
        return self._scorer.score(tokens, batch_size, seq_len)

    def next_chars(
        self, prime: str = "", k: int = 5, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
    ) -> list[tuple[str, float]]:
        """The `k` most likely characters after `prime`, most likely first, with their
        probabilities under `temperature`, `top_k` and `top_p` as sampling applies them (those
        that cannot be drawn are left out): what `charrnn sample --pick` lists."""
        if self._stepper is None:
            from charrnn.sample.interactive import open_stepper

            self._stepper = open_stepper(self.path, *self._options)  # type: ignore[arg-type]
        return self._stepper.next_chars(prime, k, temperature, top_k, top_p)

    def activations(self, text: str, unknown: str = "error", precision: str = "fp32") -> dict[str, Any]:
        """Every per-unit activation of the model over `text`, read in one stream from a zero
        state: kind ("hidden", "cell", gates...) -> float32 array (L, N, U) for L layers, N
        characters, U units. `unknown="skip"` drops characters outside the vocabulary;
        `precision` "auto", "bf16" or "int8" computes wide LSTMs faster, within about 0.01
        (charrnn.neurons.precision)."""
        from charrnn.checkpoint import build_model, load_checkpoint
        from charrnn.neurons.activations import Recorder, activation_kinds, encode_text, run_text
        from charrnn.neurons.precision import resolve_precision

        ckpt = load_checkpoint(self.path)
        model = build_model(ckpt)
        _, ids = encode_text(text, ckpt.vocab, unknown)  # type: ignore[arg-type]
        recorder = Recorder(activation_kinds(model), ckpt.model_config.num_layers, len(ids))
        run_text(model, ids, [recorder], precision=resolve_precision(model, precision))
        return recorder.values

    def gradients(
        self, text: str, max_lag: int = 100, positions: int = 64, seed: int = 0, unknown: str = "error"
    ) -> Any:
        """What `charrnn gradients` shows: the norms of d loss(t) / d state(t-k), k = 1..max_lag,
        at `positions` target positions of `text` drawn with `seed`, as a
        charrnn.neurons.gradients.GradientNorms: `.mean("hidden")` (and "cell") (L, K),
        `.values` per position (P, L, K), `.save("g.csv" or "g.npz")`."""
        from charrnn.checkpoint import build_model, load_checkpoint
        from charrnn.neurons.gradients import text_gradients

        ckpt = load_checkpoint(self.path)
        return text_gradients(build_model(ckpt), ckpt.vocab, text, max_lag, positions, seed, unknown)  # type: ignore[arg-type]


_DONE = object()


class _Stopped(Exception):
    """Raised inside the drawing thread when the consumer left the loop."""


def _pieces(run: Callable[[Callable[[str], None]], Any]) -> Iterator[str]:
    """The pieces `run(emit)` emits, yielded as they come: run draws in a thread."""
    pieces: queue.Queue[Any] = queue.Queue()
    stopped = threading.Event()

    def emit(piece: str) -> None:
        if stopped.is_set():
            raise _Stopped
        pieces.put(piece)

    def work() -> None:
        try:
            run(emit)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            pieces.put(exc)
        pieces.put(_DONE)

    thread = threading.Thread(target=work, daemon=True, name="charrnn-stream")
    thread.start()
    try:
        while (item := pieces.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()
        thread.join()


class RunInfo(NamedTuple):
    """One run folder: its name, path, last step and best validation loss (nats/char, None
    before the first validation)."""

    name: str
    path: Path
    step: int
    best_val: float | None


def runs(runs_dir: str | Path = "checkpoints") -> list[RunInfo]:
    """The runs with a checkpoint in `runs_dir`, most recently written first."""
    from charrnn.rundir import event_step, list_runs, number, read_metrics

    found = []
    for run in list_runs(Path(runs_dir)):
        step, best = 0, math.inf
        for event in read_metrics(run):
            step = max(step, event_step(event) or 0)
            if event.get("event") == "eval":
                best = min(best, number(event, "val_loss", math.inf))
        found.append(RunInfo(run.dir.name, run.dir, step, best if math.isfinite(best) else None))
    return found


def train(corpus: str | Path | Sequence[str | Path] | None = None, **options: Any) -> Any:
    """Train a run on `corpus` (a file, a folder, a glob, a list of them read as one corpus, a
    corpus name such as "shakespeare", or task:*), or continue one with resume="name": what
    `charrnn train` does, returning charrnn.training.setup.RunResult (`.path`, `.best_val`,
    `.result.step`...). Keywords: name, resume, preset, auto, runs_dir, data_dir, on_event
    (called with each event dict), should_stop, max_vocab (keep the N most frequent characters,
    the others one unknown symbol), and any ModelConfig/TrainConfig field (hidden_size=64,
    max_steps=100, time_budget="10m", log="csv,tensorboard", split="90/5/5" to hold out a
    test part that Model.evaluate_split("test") scores)."""
    from charrnn.training.setup import train_run

    return train_run(corpus, **options)
