"""One character at a time: the next-character distribution of a run, for
`charrnn sample --interactive` (its pick mode) and `charrnn.Model.next_chars`.

A `CharStepper` carries one stream of a checkpoint's network:

    stepper = open_stepper(path)             # the engine `charrnn sample` would use
    stepper.start("ROMEO:")                  # read the prime as sampling does
    stepper.candidates(5)                    # [('\\n', 0.41), (' ', 0.22), ...] most likely first
    stepper.feed("\\n")                       # append one character, step the network
    stepper.draw(cfg, rng)                   # the character the sampler would draw now

`generate` runs the sampling loop of every engine (charrnn.sample.draw.draw_text) on the
same steps, so for a seed it writes what `charrnn sample --seed` writes; and a pick mode that
draws once per character with one generator and accepts every draw writes that text too.

The engine follows open_sampler's rule for sampling: the NumPy network for lstm/gru/rnn runs on
the CPU with fp32 weights (int8 where numba imports), without importing torch; torch's model
and its fast step otherwise. Probabilities come from the logits in float64 by the rule of
charrnn.sample.draw.draw (temperature, then top-k, then top-p), so what is listed is what
is drawn from.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from charrnn.config import DeviceName, Engine, SampleConfig, Weights
from charrnn.errors import CharRNNError
from charrnn.sample.draw import draw, draw_text, sampling_context

__all__ = ["CharStepper", "distribution", "open_stepper"]


class Steps(Protocol):
    """An engine's network for one stream: `start` reads ids from a zero state, `step`
    reads one more; both return the next logits (1, V) as float32/float64 NumPy."""

    def start(self, ids: list[int]) -> np.ndarray: ...

    def step(self, ids: np.ndarray) -> np.ndarray: ...


class NumpySteps:
    """The NumPy network (charrnn.sample.numpy_net), stepped one id at a time."""

    def __init__(self, net: Any) -> None:
        self.net = net
        self.state: Any = None

    @np.errstate(all="ignore")  # NaN from non-finite weights: the caller warns once
    def start(self, ids: list[int]) -> np.ndarray:
        self.state = self.net.zero_state(1)
        logits = None
        for i in ids:
            logits, self.state = self.net.step(np.array([i]), self.state)
        return np.array(logits)  # a copy: the network reuses its output buffer

    @np.errstate(all="ignore")
    def step(self, ids: np.ndarray) -> np.ndarray:
        logits, self.state = self.net.step(ids, self.state)
        return np.array(logits)


class TorchSteps:
    """torch's model with its fastest step (charrnn.sample.torch_engine.make_stepper): the prime
    in one pass, then one id per step, as charrnn.sample.torch_engine.generate does."""

    def __init__(self, path: Path, weights: str, device: str) -> None:
        from charrnn.checkpoint import build_model, load_checkpoint
        from charrnn.device import pick_device
        from charrnn.sample.torch_engine import make_stepper

        ckpt = load_checkpoint(path)
        self.device = pick_device(device)
        self.model = build_model(ckpt).to(self.device)
        self.stepper = make_stepper(self.model, weights)  # refuses weights it cannot run
        self.vocab, self.nonfinite = ckpt.vocab, list(ckpt.nonfinite)
        self.state: Any = None

    def start(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.tensor([ids], device=self.device)
            logits, self.state = self.stepper.prefill(x, self.model.init_state(1, self.device))
            return logits.float().cpu().numpy()

    def step(self, ids: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits, self.state = self.stepper.step(torch.from_numpy(ids).to(self.device), self.state)
            return logits.float().cpu().numpy()


def open_stepper(
    path: str | Path, engine: Engine = "auto", weights: Weights = "fp32", device: DeviceName | str = "cpu"
) -> CharStepper:
    """The checkpoint at `path`, ready to step one character at a time on the engine
    `charrnn sample` would pick for `engine`, `weights` and `device`. Raises CharRNNError."""
    from charrnn.sample import numpy_engine, numpy_int8

    if engine not in ("auto", "numpy", "torch"):
        raise CharRNNError(f"unknown --engine '{engine}': choose auto, numpy or torch.")
    path = Path(path)
    if engine != "torch" and device == "cpu" and (weights == "fp32" or (weights == "int8" and numpy_int8.available())):
        loaded = numpy_engine.load(path, weights)
        if loaded is not None:
            net, vocab = loaded
            return CharStepper(NumpySteps(net), vocab, "numpy", list(getattr(net, "nonfinite", None) or []))
    if engine == "numpy":  # the sampler's policy says what to change, in its words
        from charrnn.sample import open_sampler

        open_sampler(path, engine, weights, device)
        raise CharRNNError(f"--engine numpy cannot step '{path}' one character at a time: use --engine torch.")
    steps = TorchSteps(path, weights, str(device))
    return CharStepper(steps, steps.vocab, "torch", steps.nonfinite)


@np.errstate(all="ignore")
def distribution(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Probabilities (V,) of the next symbol from logits (1, V) or (V,), by the rule of
    charrnn.sample.draw.draw: temperature (0 = all on the most likely), then top-k, then
    top-p (a symbol drops when the mass before it already reaches top_p; the first stays)."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    if temperature < 1e-6:
        probs = np.zeros_like(z)
        probs[z.argmax()] = 1.0
        return probs
    z = (z - z.max()) / temperature
    probs = np.exp(z)
    V = len(z)
    if top_k and top_k < V:
        probs[z < np.partition(z, V - top_k)[V - top_k]] = 0.0
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        drop = (np.cumsum(probs[order]) - probs[order]) >= top_p
        probs[order[drop]] = 0.0
        probs /= probs.sum()
    return probs


class CharStepper:
    """One stream through a checkpoint's network: start from a prime, read the next-character
    probabilities, feed characters one at a time. `text` is what was read since `start`
    (the prime and every character fed); `vocab`, `engine` ("numpy" or "torch") and
    `nonfinite` (weights holding NaN or infinity) describe what steps."""

    def __init__(self, steps: Steps, vocab: Any, engine: str, nonfinite: list[str]) -> None:
        self.steps = steps
        self.vocab = vocab
        self.engine = engine
        self.nonfinite = nonfinite
        self.text = ""
        self.logits: np.ndarray | None = None  # (1, V): the next symbol's, after start/feed
        self.lock = threading.Lock()  # next_chars: one stream, callers in several threads

    def start(self, prime: str = "") -> None:
        """Read `prime` from a zero state as sampling does (after a newline, see
        charrnn.sample.draw.sampling_context). Raises CharRNNError for unknown characters."""
        self.vocab.encode(prime)  # unknown characters: named as the user typed them
        self.logits = self.steps.start(self.vocab.encode(sampling_context(prime, self.vocab)))
        self.text = prime

    def feed(self, ch: str) -> None:
        """Append the one character `ch` and step the network."""
        self.logits = self.steps.step(np.array(self.vocab.encode(ch)[:1]))
        self.text += ch

    def candidates(
        self, k: int = 5, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
    ) -> list[tuple[str, float]]:
        """Up to `k` next characters with their probabilities, most likely first; characters
        that cannot be drawn (probability 0 after top-k/top-p) are left out."""
        if self.logits is None:
            self.start()
        probs = distribution(self.logits, temperature, top_k, top_p)  # type: ignore[arg-type]
        order = np.argsort(-probs, kind="stable")[: max(k, 0)]
        return [(self.vocab.chars[i], float(probs[i])) for i in order if probs[i] > 0 or i == order[0]]

    def draw(self, cfg: SampleConfig, rng: np.random.Generator) -> str:
        """The character `cfg` draws next with `rng` (one draw of the generator)."""
        if self.logits is None:
            self.start()
        with np.errstate(all="ignore"):
            return self.vocab.chars[int(draw(self.logits, cfg, rng)[0])]  # type: ignore[arg-type]

    def generate(self, prime: str, cfg: SampleConfig, emit: Callable[[str], None] | None = None) -> str:
        """`cfg.length` new characters after `prime`, each passed to `emit` as drawn: the
        text `charrnn sample --prime PRIME` writes for cfg.seed. Leaves the stream after them."""
        self.start(prime)

        def step(ids: np.ndarray) -> np.ndarray:
            self.feed(self.vocab.chars[int(ids[0])])
            return self.logits  # type: ignore[return-value]

        return draw_text(self.logits, step, self.vocab, cfg, emit or (lambda _piece: None))  # type: ignore[arg-type]

    def next_chars(
        self, prime: str = "", k: int = 5, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
    ) -> list[tuple[str, float]]:
        """The `k` most likely characters after `prime` (read from a zero state) with their
        probabilities, most likely first. Raises CharRNNError for bad arguments."""
        if k < 1:
            raise CharRNNError("k must be at least 1.")
        SampleConfig(temperature=temperature, top_k=top_k, top_p=top_p)  # the sampler's checks
        with self.lock:
            self.start(prime)
            return self.candidates(k, temperature, top_k, top_p)
