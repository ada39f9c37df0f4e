"""Scoring a text with the torch model: mean cross-entropy in nats per character.

The NumPy engine's scorer is charrnn.sample.numpy_net.score, on the step that samples.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.data.batching import eval_chunks
from charrnn.models.charrnn import CharRNN, State

VAL_CHUNK = 256  # characters per validation forward (state carried across: only speed depends on it)


@torch.no_grad()
def evaluate(model: CharRNN, tokens: np.ndarray, batch_size: int, seq_len: int, device: torch.device) -> float:
    """Mean cross-entropy (nats/char) over `tokens`, state carried across chunks."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    state: State | None = None
    for x, y in eval_chunks(tokens, batch_size, seq_len):
        xb = torch.from_numpy(x).to(device)
        yb = torch.from_numpy(y).to(device)
        if state is None:
            state = model.init_state(xb.shape[0], device)
        logits, state = model(xb, state)
        total += F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="sum").item()
        count += yb.numel()
    model.train(was_training)
    return total / max(count, 1)
