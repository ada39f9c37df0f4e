import numpy as np
import pytest
import torch

from charrnn.config import ModelConfig
from charrnn.data.batching import StreamBatcher, eval_chunks
from charrnn.errors import CharRNNError
from charrnn.models.charrnn import CharRNN


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


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_shapes_and_chunked_forward_equals_full(kind: str) -> None:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=11, model=kind, num_layers=2, hidden_size=8, embed_size=5)).eval()
    x = torch.randint(0, 11, (3, 20))
    state = model.init_state(3)
    assert len(state) == (2 if kind == "lstm" else 1) and state[0].shape == (2, 3, 8)
    full, full_state = model(x, state)
    assert full.shape == (3, 20, 11)
    a, s = model(x[:, :7], state)
    b, s = model(x[:, 7:], s)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=0, atol=1e-6)
    for got, want in zip(s, full_state):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_lstm_biases_keep_torchs_uniform_init() -> None:
    # No forget-gate bias of 1: it trained worse in the short runs charrnn plans.
    h = 64
    model = CharRNN(ModelConfig(vocab_size=5, hidden_size=h, num_layers=2))
    for layer in model.stack.layers:
        for bias in (layer.bias_ih_l0, layer.bias_hh_l0):
            assert bias.abs().max() <= h**-0.5
            assert bias[h : 2 * h].std() > 0.3 * h**-0.5  # random, not a constant
