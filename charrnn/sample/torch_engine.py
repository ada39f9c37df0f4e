"""Seeded autoregressive sampling: feed the prime in one pass, then one character per step.

Each step turns the last logits into a distribution (temperature, top-k,
top-p), draws one symbol with a seeded generator, and feeds it back. That loop
and its draw (`charrnn.sample.draw.draw_text`, NumPy's PCG64) are the ones the
torch-free engine runs: for the same seed every path -- the model's own forward,
the fast step, the NumPy engine -- writes the same characters.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from charrnn.config import SampleConfig
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.models.charrnn import CharRNN
from charrnn.sample.draw import draw_streams, draw_text, sampling_context
from charrnn.sample.fast_step import ModelStepper, Stepper, build_stepper


def make_stepper(model: CharRNN, weights: str = "fp32") -> Stepper:
    """The fastest stepper for `model` with `weights` (see charrnn.sample.fast_step). Raises CharRNNError."""
    return build_stepper(model, weights)


@torch.inference_mode()
def generate(
    model: CharRNN,
    vocab: Vocab,
    prime: str,
    cfg: SampleConfig,
    emit: Callable[[str], None],
    stepper=None,
) -> str:
    """Generate `cfg.length` characters after `prime`, passing each to `emit` as it comes.

    Returns the generated text (without the prime). Stops early once the text
    ends with `cfg.stop`. Raises CharRNNError for characters outside the vocab.
    """
    ids = vocab.encode(sampling_context(prime, vocab))
    stepper = stepper or ModelStepper(model)
    device = model.head.weight.device
    logits, state = stepper.prefill(torch.tensor([ids], device=device), model.init_state(1, device))

    def step(nxt: np.ndarray) -> np.ndarray:
        nonlocal state
        out, state = stepper.step(torch.from_numpy(nxt).to(device), state)
        return out.float().cpu().numpy()

    return draw_text(logits.float().cpu().numpy(), step, vocab, cfg, emit)


class TorchStreams:
    """B streams of a stepper (charrnn.sample.draw.Streams): the state, a tuple of (L, B, H)
    tensors, stepped as one batch; ids and logits cross as NumPy arrays."""

    def __init__(self, stepper: Stepper, state: tuple[torch.Tensor, ...], device: torch.device) -> None:
        self.stepper = stepper
        self.state = state
        self.device = device

    @torch.inference_mode()
    def step(self, ids: np.ndarray) -> np.ndarray:
        logits, self.state = self.stepper.step(torch.from_numpy(ids.astype(np.int64)).to(self.device), self.state)
        return logits.float().cpu().numpy()

    @torch.inference_mode()
    def keep(self, rows: np.ndarray) -> None:
        index = torch.from_numpy(rows.astype(np.int64)).to(self.device)
        self.state = tuple(s.index_select(1, index) for s in self.state)


@torch.inference_mode()
def open_streams(
    model: CharRNN, vocab: Vocab, prime: str, n: int, stepper: Stepper | None = None
) -> tuple[np.ndarray, TorchStreams]:
    """`n` streams that have read `prime` (read once, then copied): their logits (n, V) and streams."""
    ids = vocab.encode(sampling_context(prime, vocab))
    stepper = stepper or ModelStepper(model)
    device = model.head.weight.device
    logits, state = stepper.prefill(torch.tensor([ids], device=device), model.init_state(1, device))
    streams = TorchStreams(stepper, state, device)
    streams.keep(np.zeros(n, np.int64))
    return np.repeat(logits.float().cpu().numpy(), n, 0), streams


def generate_many(
    model: CharRNN,
    vocab: Vocab,
    prime: str,
    cfg: SampleConfig,
    seeds: list[int | None],
    emit: Callable[[int, str], None],
    stepper: Stepper | None = None,
) -> list[str]:
    """As `generate` for len(seeds) samples stepped as one batch, sample i drawn with seeds[i]."""
    logits, streams = open_streams(model, vocab, prime, len(seeds), stepper)
    return draw_streams(logits, streams, vocab, cfg, seeds, emit)


@torch.inference_mode()
def score_with_stepper(stepper, model: CharRNN, tokens, batch_size: int = 64) -> float:
    """Mean cross-entropy (nats/char) of `tokens` through `stepper.step`, one position at a time.

    The text is cut into `batch_size` contiguous streams, each starting from a
    zero state, as in training's validation. Used to measure what bf16 or int8
    weights cost in quality on the very path that samples.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    streams = max(1, min(batch_size, len(tokens) - 1))
    length = (len(tokens) - 1) // streams
    if length < 1:
        raise CharRNNError("the text is too short to score: give at least 2 characters.")
    grid = torch.from_numpy(tokens[: streams * length + 1])
    rows = torch.stack([grid[b * length : b * length + length + 1] for b in range(streams)])  # (B, n+1)
    device = model.head.weight.device
    rows = rows.to(device)
    state = model.init_state(streams, device)
    total = 0.0
    for t in range(length):
        logits, state = stepper.step(rows[:, t], state)
        total += torch.nn.functional.cross_entropy(logits.float(), rows[:, t + 1], reduction="sum").item()
    return total / (streams * length)
