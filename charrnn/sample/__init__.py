"""Generating and scoring text with a trained run: `open_sampler` picks the engine.

The engines are charrnn.sample.numpy_engine (NumPy, no torch; int8 through
charrnn.sample.numpy_int8, which needs numba) and charrnn.sample.torch_engine
(torch's model and its fast steps). The policy, in one place:

- `engine="numpy"` steps lstm/gru/rnn runs with fp32 weights on the CPU, and int8 where
  numba is importable; anything else is a CharRNNError saying what to change.
- `engine="torch"` always uses torch.
- `engine="auto"`, sampling: numpy where it can run (first character in under a second:
  no 3 s torch import), torch otherwise; a prime longer than numpy_engine.MAX_PRIME goes
  to torch, which reads it in one pass. Without numba, int8 is torch's int8.
- `engine="auto"`, scoring (`purpose="score"`): torch for fp32 (its batched forward beats
  stepping), numpy for int8 where it runs, so that the cost measured is the one
  `charrnn sample --weights int8` pays. Scoring counts `device="auto"` as the CPU for numpy.

This module imports neither torch nor numba (nor NumPy): each engine is imported when chosen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from charrnn.config import DeviceName, Engine, SampleConfig, Weights
from charrnn.errors import CharRNNError

Purpose = Literal["sample", "score"]

# Streams stepped as one batch by `Sampler.generate_samples`; more samples run in turns.
MAX_BATCH = 256

__all__ = ["Purpose", "Sampler", "open_sampler"]


def open_sampler(
    path: str | Path,
    engine: Engine = "auto",
    weights: Weights = "fp32",
    device: DeviceName | str = "cpu",
    prime_len: int = 0,
    purpose: Purpose = "sample",
) -> Sampler:
    """The checkpoint file at `path`, ready to generate and score on the engine the policy
    above picks for `engine`, `weights` and `device` (`prime_len`: characters of the prime
    that will be given, if known). Raises CharRNNError."""
    if engine not in ("auto", "numpy", "torch"):
        raise CharRNNError(f"unknown --engine '{engine}': choose auto, numpy or torch.")
    path = Path(path)
    if purpose == "score":
        wants_numpy = engine == "numpy" or (engine == "auto" and weights == "int8")
        numpy_device = "cpu" if device in ("auto", "cpu") else device
        loaded = _numpy_net(path, engine, weights, numpy_device) if wants_numpy else None
    else:
        loaded = _numpy_net(path, engine, weights, device)
        if loaded is not None and engine == "auto" and prime_len > _max_prime():
            loaded = None  # torch reads a long prime in one pass; numpy steps through it
    sampler = Sampler(path, engine, weights, device, purpose)
    if loaded is not None:
        sampler._use_numpy(*loaded)
    else:
        sampler._use_torch()
    return sampler


class Sampler:
    """One checkpoint on one engine: `generate` text after a prime, `score` a text.

    `engine` is "numpy" or "torch" (what serves now), `nonfinite` names the weights
    holding NaN or infinity (the text will be noise: callers may warn).

    One Sampler may be shared between threads (a server): the engines' steps keep scratch
    buffers per batch size, so `generate`, `generate_samples` and `score` hold the Sampler's
    lock while they step, and nothing the policy above decides per call (the engine for a long prime, the
    fast step) is changed on the shared object. Threads that must step in parallel each
    open their own Sampler."""

    def __init__(self, path: Path, engine: str, weights: str, device: str, purpose: str) -> None:
        self.path = path
        self.requested = engine  # auto | numpy | torch, as asked
        self.weights = weights
        self.device = device
        self.purpose = purpose
        self.engine = ""
        self.vocab: Any = None
        self.config: Any = None  # charrnn.config.ModelConfig
        self.nonfinite: list[str] = []
        self._net: Any = None  # the NumPy network, on numpy
        self._model: Any = None  # the torch model (quantized for scoring), on torch
        self._stepper: Any = None  # its fast step, for sampling on torch
        self._long: Sampler | None = None  # torch, for primes too long for the NumPy engine
        self._lock = threading.RLock()

    def _use_numpy(self, net: Any, vocab: Any) -> None:
        self.engine, self._net, self.vocab, self.config = "numpy", net, vocab, net.cfg
        self.nonfinite = list(getattr(net, "nonfinite", None) or [])

    def _use_torch(self) -> None:
        from charrnn.checkpoint import build_model, load_checkpoint
        from charrnn.device import pick_device

        ckpt = load_checkpoint(self.path)
        model = build_model(ckpt).to(pick_device(self.device))
        if self.purpose == "score":
            if self.weights != "fp32":
                from charrnn.sample.fast_step import quantize_model

                model = quantize_model(model, self.weights)
        else:
            from charrnn.sample.torch_engine import make_stepper

            self._stepper = make_stepper(model, self.weights)  # refuses int8 of non-finite weights
        self.engine, self._model, self.vocab, self.config = (
            "torch",
            model,
            ckpt.vocab,
            ckpt.model_config,
        )
        self.nonfinite = list(ckpt.nonfinite)

    def generate(self, prime: str, cfg: SampleConfig, emit: Callable[[str], None] | None = None) -> str:
        """`cfg.length` new characters after `prime` (one sample: see `generate_samples` for
        cfg.num_samples), each passed to `emit` as it is drawn; with `cfg.beam`, the beam
        search's text (charrnn.sample.beam), passed on as the beams agree on it. Returns
        them, without the prime. Raises CharRNNError for characters outside the vocabulary."""
        emit = emit or (lambda _piece: None)
        self.vocab.encode(prime)  # unknown characters: an error before anything is drawn
        with self._lock:
            serving = self._serving(prime)
            if cfg.beam:
                from charrnn.sample.beam import beam_search

                return beam_search(*serving.open_streams(prime, 1), serving.vocab, cfg, emit).text
            if serving.engine == "numpy":
                from charrnn.sample import numpy_engine

                return numpy_engine.generate(serving._net, serving.vocab, prime, cfg, emit)
            from charrnn.sample.torch_engine import generate

            return generate(serving._model, serving.vocab, prime, cfg, emit, stepper=serving._torch_stepper())

    def generate_samples(
        self, prime: str, cfg: SampleConfig, emit: Callable[[int, str], None] | None = None
    ) -> list[str]:
        """`cfg.num_samples` samples after `prime`, stepped together as one batch (of up to
        MAX_BATCH streams at a time), each character passed to `emit(i, ch)` for sample i.
        Sample i draws with seed cfg.seed + i (each a fresh one if cfg.seed is None), so it
        is the text `generate` writes with that seed. With `cfg.beam`: one sample."""
        if cfg.beam or cfg.num_samples == 1:  # one text: the single stream's loop is a little faster
            return [self.generate(prime, cfg, None if emit is None else lambda piece: emit(0, piece))]
        emit = emit or (lambda _i, _piece: None)
        self.vocab.encode(prime)
        seeds = [None if cfg.seed is None else cfg.seed + i for i in range(cfg.num_samples)]
        texts: list[str] = []
        from charrnn.sample.draw import draw_streams

        with self._lock:
            serving = self._serving(prime)
            for start in range(0, len(seeds), MAX_BATCH):
                chunk = seeds[start : start + MAX_BATCH]
                logits, streams = serving.open_streams(prime, len(chunk))
                texts += draw_streams(logits, streams, serving.vocab, cfg, chunk, lambda i, ch: emit(start + i, ch))
        return texts

    def _serving(self, prime: str) -> Sampler:
        """The sampler that steps `prime`: this one, or on auto a torch one for a long prime."""
        if self.engine == "numpy" and self.requested == "auto" and len(prime) > _max_prime():
            if self._long is None:  # a long prime: torch reads it in one pass
                self._long = Sampler(self.path, self.requested, self.weights, self.device, self.purpose)
                self._long._use_torch()
            return self._long
        return self

    def _torch_stepper(self) -> Any:
        if self._stepper is None:  # opened for scoring: sampling needs the fast step
            from charrnn.sample.torch_engine import make_stepper

            self._stepper = make_stepper(self._model, self.weights)
        return self._stepper

    def open_streams(self, prime: str, n: int) -> tuple[Any, Any]:
        """`n` streams that have read `prime` on this engine: their logits (n, V) and the
        charrnn.sample.draw.Streams that steps them as one batch. The caller holds the lock
        while it steps them, and passes a prime the engine serves (see `generate`)."""
        if self.engine == "numpy":
            from charrnn.sample import numpy_engine

            return numpy_engine.open_streams(self._net, self.vocab, prime, n)
        from charrnn.sample import torch_engine

        return torch_engine.open_streams(self._model, self.vocab, prime, n, self._torch_stepper())

    def score(self, text_or_ids: str | Sequence[int] | Any, batch_size: int = 32, seq_len: int = 256) -> float:
        """Mean cross-entropy of the text in nats per character (state carried across chunks
        of `seq_len`, `batch_size` parallel streams). Raises CharRNNError."""
        import numpy as np

        if batch_size < 1 or seq_len < 1:
            raise CharRNNError("--batch-size and --seq-len must be at least 1.")
        ids = self.vocab.encode(text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
        tokens = np.asarray(ids, dtype=np.int64)
        if len(tokens) < 2:
            raise CharRNNError(f"the text has {len(tokens)} character(s): at least 2 are needed to score.")
        with self._lock:
            return self._score(tokens, batch_size, seq_len)

    def _score(self, tokens: Any, batch_size: int, seq_len: int) -> float:
        if self.engine == "numpy":
            from charrnn.sample import numpy_engine

            return numpy_engine.score(self._net, tokens, batch_size, seq_len)
        from charrnn.device import pick_device
        from charrnn.training.evaluate import evaluate

        model = self._model
        if self.purpose != "score" and self.weights != "fp32":
            from charrnn.sample.fast_step import quantize_model

            model = quantize_model(model, self.weights)
        return evaluate(model, tokens, batch_size, seq_len, pick_device(self.device))


def _max_prime() -> int:
    from charrnn.sample import numpy_engine

    return numpy_engine.MAX_PRIME


def _numba_int8() -> bool:
    """Whether the NumPy engine's compiled int8 product can run here (imports numba)."""
    from charrnn.sample import numpy_int8

    return numpy_int8.available()


def _numpy_net(path: Path, engine: str, weights: str, device: str) -> tuple[Any, Any] | None:
    """(NumPy network, vocab) of the checkpoint for engine numpy, and for auto where the
    NumPy engine runs these weights; None when torch must serve. Raises CharRNNError."""
    if engine == "torch":
        return None
    # numba is imported only when int8 is asked for: fp32 sampling starts without it.
    if device != "cpu" or not (weights == "fp32" or (weights == "int8" and _numba_int8())):
        if engine == "auto":
            return None
        int8 = _numba_int8()
        hint = " (int8 there needs numba: pip install 'charrnn[int8]')" if weights == "int8" and not int8 else ""
        raise CharRNNError(
            f"--engine numpy runs {'fp32 and int8' if int8 else 'fp32'} weights on the CPU{hint}: "
            "change --weights/--device or use --engine torch."
        )
    from charrnn.sample import numpy_engine

    loaded = numpy_engine.load(path, weights)
    if loaded is None and engine == "numpy":
        raise CharRNNError(
            f"--engine numpy cannot read '{path}' (it serves lstm, gru and rnn runs): use --engine torch."
        )
    return loaded
