"""B parallel contiguous streams over a token array, cut into (x, y) chunks of T steps.

Stream layout for B = 3 over N tokens, n = (N - 1) // B tokens per stream:

    tokens:  |---- stream 0 ----|---- stream 1 ----|---- stream 2 ----|(rest)
             0                  n                  2n                 3n

    step s:  x[b] = tokens[b*n + s*T     : b*n + s*T + T]
             y[b] = tokens[b*n + s*T + 1 : b*n + s*T + T + 1]

Row b of step s + 1 continues row b of step s, so the hidden state left by one
step is the right initial state for the next (truncated BPTT). An epoch is
n // T steps; the last n % T tokens of each stream are not used as inputs.
"""

from __future__ import annotations

import numpy as np

from charrnn.errors import CharRNNError


class StreamBatcher:
    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, what: str = "train split") -> None:
        n_tokens = len(tokens)
        self.stream_len = (n_tokens - 1) // batch_size
        if self.stream_len < seq_len:
            fit_b = max((n_tokens - 1) // seq_len, 0)
            fit_t = max((n_tokens - 1) // batch_size, 0)
            hint = []
            if fit_b >= 1:
                hint.append(f"--batch-size {fit_b} or less with --seq-len {seq_len}")
            if fit_t >= 1:
                hint.append(f"--seq-len {fit_t} or less with --batch-size {batch_size}")
            raise CharRNNError(
                f"the {what} has {n_tokens} characters, too short for --batch-size {batch_size} x "
                f"--seq-len {seq_len} (needs at least {batch_size * seq_len + 1}): use "
                + (" or ".join(hint) if hint else "a longer corpus")
                + "."
            )
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.steps_per_epoch = self.stream_len // seq_len
        # (B, T+1) index grid of step 0; step s adds s*T.
        starts = np.arange(batch_size, dtype=np.int64)[:, None] * self.stream_len
        self._grid = starts + np.arange(seq_len + 1, dtype=np.int64)[None, :]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets of step `step` of an epoch, each (B, T) int64."""
        assert 0 <= step < self.steps_per_epoch
        rows = self.tokens[self._grid + step * self.seq_len].astype(np.int64)
        return rows[:, :-1], rows[:, 1:]


def eval_chunks(tokens: np.ndarray, batch_size: int, seq_len: int):
    """Chunks covering (almost) all of `tokens` for evaluation with carried state.

    Streams as in StreamBatcher, but the final chunk may be shorter than T, so
    every token but the last (B - 1) % ... remainder is scored. Yields (x, y)
    int64 arrays of shape (B, t) with t <= T.
    """
    n_tokens = len(tokens)
    batch_size = max(1, min(batch_size, (n_tokens - 1) // max(seq_len, 1)))
    stream_len = (n_tokens - 1) // batch_size
    if stream_len < 1:
        raise CharRNNError(f"text of {n_tokens} characters is too short to evaluate: give at least 2.")
    starts = np.arange(batch_size, dtype=np.int64)[:, None] * stream_len
    for at in range(0, stream_len, seq_len):
        t = min(seq_len, stream_len - at)
        rows = np.asarray(tokens[starts + at + np.arange(t + 1)[None, :]]).astype(np.int64)
        yield rows[:, :-1], rows[:, 1:]
