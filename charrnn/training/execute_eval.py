"""Scoring task:execute (charrnn.data.tasks): exact match of the greedy answer and
per-character accuracy with teacher forcing, per (digits, nesting) level.

Each probe is a newline, `context` unscored programs of the same level, then the scored
program up to and including '#'. Greedy: the model writes the answer one argmax
character at a time until a newline (or the answer's length + MAX_EXTRA characters);
exact match needs every character and the newline. Teacher forcing: the true answer is
fed and each of its characters is scored by the argmax over the whole vocabulary.
"""

from __future__ import annotations

import numpy as np
import torch

from charrnn.data.tasks import execute_example, lookup
from charrnn.data.vocab import Vocab
from charrnn.errors import CharRNNError
from charrnn.models.charrnn import CharRNN

MAX_EXTRA = 4  # characters a greedy answer may run past the true one before it is cut


def execute_probes(digits: int, nesting: int, n_examples: int, seed: int, context: int = 2) -> list[tuple[str, str]]:
    """(prompt ending in '#', true answer) pairs; each level has its own random stream."""
    rng = np.random.default_rng([seed, digits, nesting])
    pairs = []
    for _ in range(n_examples):
        prefix = "\n" + "".join(execute_example(rng, digits, nesting)[0] for _ in range(context))
        line, positions = execute_example(rng, digits, nesting)
        pairs.append((prefix + line[: positions[0]], line[positions[0] : positions[-1] + 1]))
    return pairs


def score_answers(answers: list[str], truths: list[str]) -> float:
    """Fraction of answers equal to their truth (the exact-match scorer)."""
    if not truths:
        return 0.0
    return sum(a == t for a, t in zip(answers, truths, strict=True)) / len(truths)


@torch.no_grad()
def _greedy(model: CharRNN, vocab: Vocab, prompt: str, limit: int, device: torch.device) -> str:
    """The greedy answer after `prompt`, up to its newline (or `limit` characters, then marked cut)."""
    ids = torch.tensor([vocab.encode(prompt)], device=device)
    logits, state = model(ids, model.init_state(1, device))  # (1, T, V)
    answer = ""
    for _ in range(limit):
        nxt = int(logits[0, -1].argmax())
        char = vocab.decode([nxt])
        if char == "\n":
            return answer
        answer += char
        logits, state = model(torch.tensor([[nxt]], device=device), state)
    return answer + "…"  # no newline: never an exact match


@torch.no_grad()
def execute_accuracy(
    model: CharRNN,
    vocab: Vocab,
    levels: list[tuple[int, int]],
    n_examples: int,
    seed: int,
    context: int = 2,
) -> dict[tuple[int, int], dict[str, float]]:
    """{(digits, nesting): {"exact": greedy exact match, "char": teacher-forced char accuracy}}.

    Raises CharRNNError if `vocab` lacks task:execute's characters or a level is out of range.
    """
    if n_examples < 1:
        raise CharRNNError("evaluation needs at least 1 example per level.")
    missing = vocab.missing(lookup("task:execute").alphabet)
    if missing:
        raise CharRNNError(
            f"the model's vocabulary lacks {''.join(missing)!r} of task:execute: evaluate a model trained on it."
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        result = {}
        for digits, nesting in levels:
            pairs = execute_probes(digits, nesting, n_examples, seed, context)
            answers, right, total = [], 0, 0
            for prompt, truth in pairs:
                answer = _greedy(model, vocab, prompt, len(truth) + MAX_EXTRA, device)
                answers.append(answer)
                ids = torch.tensor([vocab.encode(prompt + truth + "\n")], device=device)
                logits, _ = model(ids[:, :-1], model.init_state(1, device))  # (1, T, V)
                start = len(prompt)  # logits[:, q - 1] predicts ids[:, q]
                guess = logits[0, start - 1 : start - 1 + len(truth)].argmax(1)
                right += int((guess == ids[0, start : start + len(truth)]).sum())
                total += len(truth)
            result[(digits, nesting)] = {
                "exact": score_answers(answers, [t for _, t in pairs]),
                "char": right / total,
            }
        return result
    finally:
        model.train(was_training)
