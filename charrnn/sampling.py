"""Seeded autoregressive sampling: feed the prime in one pass, then one character per step.

Each step turns the last logits into a distribution (temperature, top-k,
top-p), draws one symbol with a seeded generator, and feeds it back.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from charrnn.config import SampleConfig
from charrnn.errors import CharRNNError
from charrnn.fastpath import ModelStepper, Stepper, build_stepper
from charrnn.model import CharRNN, State
from charrnn.npsample import StopTail, sampling_context
from charrnn.vocab import Vocab


def make_stepper(model: CharRNN, weights: str = "fp32") -> Stepper:
    """The fastest stepper for `model` with `weights` (see charrnn.fastpath). Raises CharRNNError."""
    return build_stepper(model, weights)


def pick_next(logits: Tensor, cfg: SampleConfig, generator: torch.Generator) -> Tensor:
    """logits (B, V) -> next ids (B,). Temperature 0 is greedy."""
    if cfg.temperature < 1e-6:  # greedy; also below float32's range, where division would give nan
        return logits.argmax(dim=-1)
    logits = logits.float()
    # Shift so the maximum is 0 before dividing: a tiny temperature then gives -inf, never inf - inf.
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a symbol when the mass before it already reaches top_p (the first always stays).
        drop = (probs.cumsum(dim=-1) - probs) >= cfg.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    # The exponential race: argmax of p / Exp(1) draws index i with probability p_i. It is
    # the draw torch.multinomial makes for one sample, bit for bit, at half its cost.
    return (probs / torch.empty_like(probs).exponential_(generator=generator)).argmax(dim=-1)


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
    seed = cfg.seed if cfg.seed is not None else int(torch.seed() % (2**63))
    generator = torch.Generator().manual_seed(seed)
    stepper = stepper or ModelStepper(model)
    device = model.head.weight.device
    state = model.init_state(1, device)
    logits, state = stepper.prefill(torch.tensor([ids], device=device), state)
    out: list[str] = []
    stop = StopTail(cfg.stop)
    for _ in range(cfg.length):
        nxt = pick_next(logits.float().cpu(), cfg, generator)
        ch = vocab.chars[int(nxt[0])]
        out.append(ch)
        emit(ch)
        if stop.reached(ch):
            break
        logits, state = stepper.step(nxt.to(device), state)
    return "".join(out)


@torch.inference_mode()
def score_with_stepper(stepper, model: CharRNN, tokens, batch_size: int = 64) -> float:
    """Mean cross-entropy (nats/char) of `tokens` through `stepper.step`, one position at a time.

    The text is cut into `batch_size` contiguous streams, each starting from a
    zero state, as in training's validation. Used to measure what bf16 or int8
    weights cost in quality on the very path that samples.
    """
    import numpy as np

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
