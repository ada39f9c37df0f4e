"""Scoring with the torch model: mean cross-entropy in nats per character, and the label
accuracy of a memory task (charrnn.data.tasks).

The NumPy engine's scorer is charrnn.sample.numpy_net.score, on the step that samples.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.data.batching import eval_chunks
from charrnn.data.tasks import lookup, probes
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
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


@torch.no_grad()
def label_accuracy(
    model: CharRNN,
    vocab: Vocab,
    task: str,
    lengths: list[int],
    n_examples: int,
    seed: int,
    context: int = 2,
) -> dict[int, float]:
    """Fraction of label characters predicted right, per input length.

    Each example is one line of the task of that length, read from the zero state after
    a newline and `context` other lines of the same length, which are not scored. All
    `n_examples` of one length run as one batch (B = n_examples). The prediction at a
    label position is the argmax over the task's label characters only, so an untrained
    model scores chance rather than 0. Raises CharRNNError if `vocab` lacks the task's
    characters (the model was trained on something else) or a length is below 1.
    """
    spec = lookup(task)
    if n_examples < 1:
        raise CharRNNError("evaluation needs at least 1 example per length.")
    missing = vocab.missing(spec.alphabet)
    if missing:
        raise CharRNNError(
            f"the model's vocabulary lacks {''.join(missing)!r} of {task}: evaluate a model trained on {task}."
        )
    device = next(model.parameters()).device
    label_ids = torch.tensor(vocab.encode(spec.labels), device=device)
    was_training = model.training
    model.eval()
    try:
        result = {}
        for length in lengths:
            examples = probes(spec, length, n_examples, seed, context)
            ids = torch.tensor([vocab.encode(text) for text, _ in examples], device=device)
            targets = torch.tensor([pos for _, pos in examples], device=device)  # (B, P)
            logits, _ = model(ids[:, :-1], model.init_state(len(examples), device))  # (B, T, V)
            # logits[:, q - 1] predicts ids[:, q]
            index = (targets - 1).unsqueeze(2).expand(-1, -1, logits.size(2))
            scores = logits.gather(1, index)[:, :, label_ids]  # (B, P, number of labels)
            guess = label_ids[scores.argmax(2)]  # (B, P)
            result[length] = (guess == ids.gather(1, targets)).float().mean().item()
        return result
    finally:
        model.train(was_training)
