"""Beam search: the most likely continuation the beams find, on any engine (no torch).

Instead of drawing one character at a time, the search keeps the `cfg.beam` continuations
with the highest total log-probability so far. Each step extends every beam by every
character of the vocabulary, scores each extension (its beam's total + the character's
log-probability) and keeps the best `cfg.beam` of them that go on (an extension that ends
the text, ranked among the best `cfg.beam`, is set aside as a candidate); the beams run as one batch through
the engine's step (charrnn.sample.draw.Streams), their states reordered to follow the
surviving extensions. Ties go to the lower beam, then the lower character id, so the
result is deterministic, and one beam is greedy sampling (temperature 0).

A beam ends when its text ends with `cfg.stop`, or after `cfg.length` characters. Ended
beams compete by score = total log-probability / length ** cfg.length_norm: 0 ranks them
by their totals, which favours the ones that end early; 1 by their mean per character.

Each character is passed to `emit` once every beam (and the best ended one) agrees on it:
text that no later step can change.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from charrnn.config import SampleConfig
from charrnn.data.vocab import Vocab
from charrnn.sample.draw import Streams


class Beam(NamedTuple):
    """The search's result: the text, its ids, their total log-probability (nats)."""

    text: str
    ids: list[int]
    logprob: float


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities (B, V) float64 of logits (B, V)."""
    z = logits.astype(np.float64)
    z -= z.max(-1, keepdims=True)
    z -= np.log(np.exp(z).sum(-1, keepdims=True))
    return z


def _stop_ids(stop: str, vocab: Vocab) -> list[int] | None:
    """`stop` as ids, or None where it never ends a text (empty, or outside the vocabulary)."""
    if not stop or vocab.missing(stop):
        return None
    return vocab.encode(stop)


def _agreed(rows: np.ndarray, ended: np.ndarray | None) -> int:
    """How many leading ids every row of `rows` (B, T) and `ended` (T',) share."""
    same = (rows == rows[0]).all(0)
    if ended is not None:
        width = min(len(ended), rows.shape[1])
        same = same[:width] & (rows[0, :width] == ended[:width])
    return len(same) if same.all() else int(np.argmin(same))


@np.errstate(all="ignore")  # NaN from non-finite weights: the caller warns once
def beam_search(
    logits: np.ndarray, streams: Streams, vocab: Vocab, cfg: SampleConfig, emit: Callable[[str], None]
) -> Beam:
    """The best continuation `cfg.beam` beams find, for `streams` holding one stream that has
    read the prime and `logits` (1, V) after it: up to `cfg.length` characters."""
    width, alpha = max(1, cfg.beam), cfg.length_norm
    stop = _stop_ids(cfg.stop, vocab)
    V = logits.shape[-1]
    rows = np.zeros((1, 0), np.int64)  # (B, t): each beam's ids so far
    totals = np.zeros(1)  # (B,): their total log-probabilities
    best: tuple[float, float, np.ndarray] | None = None  # ended beam: (score, total, ids)
    shown = 0  # characters passed to emit
    logp = log_softmax(vocab.mask_unknown(logits))  # never the unknown symbol
    for t in range(cfg.length):
        flat = (totals[:, None] + logp).ravel()  # (B * V,): beam-major, so ties keep order
        # At most one extension per beam ends with the stop: width + B candidates hold width that go on.
        order = np.argsort(-flat, kind="stable")[: width + len(totals)]
        parents, ids = np.divmod(order, V)
        rows = np.concatenate([rows[parents], ids[:, None]], 1)
        totals = flat[order]
        ended = np.zeros(len(order), bool)
        if stop is not None and t + 1 >= len(stop):
            ended = (rows[:, -len(stop) :] == stop).all(1)
        for r in np.flatnonzero(ended[:width]):  # an ending counts where it ranks among the best width
            score = totals[r] / (t + 1) ** alpha
            if best is None or score > best[0]:
                best = (float(score), float(totals[r]), rows[r].copy())
        going = np.flatnonzero(~ended)[:width]
        if len(going) == 0:  # every beam ended
            rows, totals = rows[:0], totals[:0]
            break
        streams.keep(parents[going])
        rows, totals = rows[going], totals[going]
        agreed = _agreed(rows, None if best is None else best[2])
        if agreed > shown:
            emit(vocab.decode(rows[0, shown:agreed].tolist()))
            shown = agreed
        # Without length normalisation a beam's total only falls: none can overtake an ended one.
        if t + 1 == cfg.length or (best is not None and alpha == 0 and best[1] >= totals[0]):
            break
        logp = log_softmax(vocab.mask_unknown(streams.step(rows[:, -1])))
    if len(rows) and rows.shape[1] and (best is None or totals[0] / rows.shape[1] ** alpha > best[0]):
        ids, total = rows[0].tolist(), float(totals[0])
    elif best is not None:
        ids, total = best[2].tolist(), best[1]
    else:
        ids, total = [], 0.0
    text = vocab.decode(ids)
    if len(ids) > shown:
        emit(vocab.decode(ids[shown:]))
    return Beam(text, ids, total)
