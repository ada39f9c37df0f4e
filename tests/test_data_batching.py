"""Training batches: streams that continue step to step, and validation chunks."""

import numpy as np
import pytest

from charrnn.data.batching import StreamBatcher, eval_chunks
from charrnn.errors import CharRNNError


def test_streams_continue_step_to_step() -> None:
    tokens = np.arange(1000)
    batcher = StreamBatcher(tokens, batch_size=4, seq_len=10)
    n = batcher.stream_len
    assert n == 249 and batcher.steps_per_epoch == 24
    x0, y0 = batcher.batch(0)
    x1, _ = batcher.batch(1)
    assert x0.shape == (4, 10)
    assert (y0[:, :-1] == x0[:, 1:]).all()  # targets are inputs shifted by one
    assert (x1[:, 0] == x0[:, -1] + 1).all()  # row b of step 1 continues row b of step 0
    assert list(x0[:, 0]) == [0, n, 2 * n, 3 * n]


def test_too_short_corpus_says_what_fits() -> None:
    with pytest.raises(CharRNNError, match=r"--batch-size 1 or less.*--seq-len 24 or less"):
        StreamBatcher(np.arange(100), batch_size=4, seq_len=50)


def test_eval_chunks_cover_the_text() -> None:
    tokens = np.arange(101)
    ys = [y for _, y in eval_chunks(tokens, batch_size=2, seq_len=7)]
    covered = np.sort(np.concatenate([y.ravel() for y in ys]))
    assert list(covered) == list(range(1, 101))
