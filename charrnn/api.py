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
    ) -> str:
        """`length` new characters after `prime` (returned without it), as `charrnn sample`
        draws them: the same seed gives the same text. Stops early after `stop`."""
        cfg = SampleConfig(temperature=temperature, top_k=top_k, top_p=top_p, length=length, seed=seed, stop=stop)
        return self._sampler.generate(prime, cfg)

    def stream(
        self,
        prime: str = "",
        length: int = 500,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str = "",
    ) -> Iterator[str]:
        """As `generate`, yielding the text in pieces as they are drawn; the pieces join to
        what `generate` returns. Leaving the loop early stops the drawing."""
        cfg = SampleConfig(temperature=temperature, top_k=top_k, top_p=top_p, length=length, seed=seed, stop=stop)
        self.vocab.encode(prime)  # unknown characters: an error at the call, not at the first next()
        return _pieces(lambda emit: self._sampler.generate(prime, cfg, emit))

    def score(self, text: str, batch_size: int = 32, seq_len: int = 256) -> float:
        """Mean cross-entropy of `text` in nats per character, as `charrnn eval` reports it
        (same engine policy: torch for fp32, the NumPy step for int8 where it runs)."""
        if self._scorer is None:
            engine, weights, device = self._options
            self._scorer = open_sampler(self.path, engine, weights, device, purpose="score")  # type: ignore[arg-type]
        return self._scorer.score(text, batch_size, seq_len)

    def activations(self, text: str, unknown: str = "error") -> dict[str, Any]:
        """Every per-unit activation of the model over `text`, read in one stream from a zero
        state: kind ("hidden", "cell", gates...) -> float32 array (L, N, U) for L layers, N
        characters, U units. `unknown="skip"` drops characters outside the vocabulary."""
        from charrnn.checkpoint import build_model, load_checkpoint
        from charrnn.neurons.activations import Recorder, activation_kinds, encode_text, run_text

        ckpt = load_checkpoint(self.path)
        model = build_model(ckpt)
        _, ids = encode_text(text, ckpt.vocab, unknown)  # type: ignore[arg-type]
        recorder = Recorder(activation_kinds(model), ckpt.model_config.num_layers, len(ids))
        run_text(model, ids, [recorder])
        return recorder.values


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
    (called with each event dict), should_stop, and any ModelConfig/TrainConfig field
    (hidden_size=64, max_steps=100, time_budget="10m", log="csv,tensorboard")."""
    from charrnn.training.setup import train_run

    return train_run(corpus, **options)
