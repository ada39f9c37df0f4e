"""charrnn's one sampling draw and loop, shared by every engine (no torch).

`draw` turns logits into ids (temperature, top-k, top-p, then the exponential race on
NumPy's PCG64), `draw_text` is the loop every engine runs around its own step, so for
the same seed the torch and NumPy engines write the same characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable, Protocol

import numpy as np

from charrnn.config import SampleConfig
from charrnn.data.vocab import Vocab


def sampling_context(prime: str, vocab: Vocab) -> str:
    """The text fed before the first draw: the prime, read as the start of a line.

    A model trained on carried state rarely sees the zero state mid-text: starting
    the prime after a newline keeps it on familiar ground (a trained 2x512 LSTM
    primed with "ROMEO:" from zero state wrote noise; after a newline, verse).
    Without a prime: a newline, or the first symbol when the vocabulary has none.
    """
    if "\n" not in vocab.chars:
        return prime or vocab.chars[0]
    return prime if prime.startswith("\n") else "\n" + prime


class StopTail:
    """Tells when the generated text ends with `stop` ('' never stops)."""

    def __init__(self, stop: str) -> None:
        self.stop = stop
        self.tail = ""

    def reached(self, ch: str) -> bool:
        if not self.stop:
            return False
        self.tail = (self.tail + ch)[-len(self.stop) :]
        return self.tail == self.stop


def draw(logits: np.ndarray, cfg: SampleConfig, rng: np.random.Generator | Sequence[np.random.Generator]) -> np.ndarray:
    """Next ids (B,) from logits (B, V): temperature (0 = greedy), then top-k, then top-p.

    `rng` is one generator for all rows, or one per row: a row then draws what it would
    draw alone, so a stream of a batch writes what a single run with its seed writes.
    Computed in float64 from the logits, so paths whose logits differ by float rounding
    draw the same ids from the same generator state.
    """
    if cfg.temperature < 1e-6:
        return logits.argmax(-1)
    z = (logits.astype(np.float64) - logits.max(-1, keepdims=True)) / cfg.temperature
    V = z.shape[-1]
    if cfg.top_k and cfg.top_k < V:
        kth = np.partition(z, V - cfg.top_k, axis=-1)[:, V - cfg.top_k : V - cfg.top_k + 1]
        z[z < kth] = -np.inf
    if cfg.top_p < 1.0:
        order = np.argsort(-z, axis=-1, kind="stable")
        probs = np.exp(np.take_along_axis(z, order, -1))  # the first is exp(0) = 1
        probs /= probs.sum(-1, keepdims=True)
        # Drop a symbol when the mass before it already reaches top_p (the first always stays).
        drop = (np.cumsum(probs, -1) - probs) >= cfg.top_p
        np.put_along_axis(z, order, np.where(drop, -np.inf, np.take_along_axis(z, order, -1)), -1)
    # The exponential race: argmax of p / Exp(1) draws index i with probability p_i.
    if isinstance(rng, np.random.Generator):
        noise = rng.standard_exponential(z.shape)
    else:  # row by row: each generator advances by V draws, as it does alone
        noise = np.stack([r.standard_exponential(V) for r in rng])
    return (np.exp(z) / noise).argmax(-1)


@np.errstate(all="ignore")  # NaN from non-finite weights: the caller warns once
def draw_text(
    logits: np.ndarray,
    step: Callable[[np.ndarray], np.ndarray],
    vocab: Vocab,
    cfg: SampleConfig,
    emit: Callable[[str], None],
) -> str:
    """The sampling loop every engine shares: draw from `logits` (1, V), emit the character,
    feed it to `step` (ids (1,) -> next logits, the network's state carried by the caller),
    for `cfg.length` characters or until the text ends with `cfg.stop`."""
    rng = np.random.default_rng(cfg.seed)  # None: fresh entropy
    out: list[str] = []
    stop = StopTail(cfg.stop)
    for _ in range(cfg.length):
        logits = vocab.mask_unknown(logits)  # a capped vocabulary's unknown symbol is never written
        nxt = draw(logits, cfg, rng)
        ch = vocab.chars[int(nxt[0])]
        out.append(ch)
        emit(ch)
        if stop.reached(ch):
            break
        logits = step(nxt)
    return "".join(out)


class Streams(Protocol):
    """B streams of one network, their state held by the engine (see the engines' `open_streams`)."""

    def step(self, ids: np.ndarray) -> np.ndarray:
        """Feed ids (B,) int64, one per stream: the next logits (B, V) float32."""
        ...

    def keep(self, rows: np.ndarray) -> None:
        """Keep the states of these rows (B',), in this order; a row may repeat (beam search)."""
        ...


@np.errstate(all="ignore")  # NaN from non-finite weights: the caller warns once
def draw_streams(
    logits: np.ndarray,
    streams: Streams,
    vocab: Vocab,
    cfg: SampleConfig,
    seeds: Sequence[int | None],
    emit: Callable[[int, str], None],
) -> list[str]:
    """`draw_text` for B streams stepped as one batch: stream i draws with its own
    generator, seeded `seeds[i]`, from logits (B, V), and passes each character to
    `emit(i, ch)`. A stream that reaches `cfg.stop` leaves the batch. Returns the B texts."""
    rngs = [np.random.default_rng(seed) for seed in seeds]
    out: list[list[str]] = [[] for _ in rngs]
    stops = [StopTail(cfg.stop) for _ in rngs]
    active = list(range(len(rngs)))  # the stream in each row of the batch
    for _ in range(cfg.length):
        logits = vocab.mask_unknown(logits)  # a capped vocabulary's unknown symbol is never written
        nxt = draw(logits, cfg, [rngs[i] for i in active])
        going = []
        for row, i in enumerate(active):
            ch = vocab.chars[int(nxt[row])]
            out[i].append(ch)
            emit(i, ch)
            if not stops[i].reached(ch):
                going.append(row)
        if not going:
            break
        if len(going) < len(active):
            rows = np.array(going)
            streams.keep(rows)
            active, nxt = [active[r] for r in going], nxt[rows]
        logits = streams.step(nxt)
    return ["".join(chars) for chars in out]
