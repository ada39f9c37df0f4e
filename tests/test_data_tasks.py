"""Synthetic memory tasks: deterministic corpora with correct labels, label accuracy."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from charrnn.config import ModelConfig
from charrnn.data.tasks import (
    _TASKS,
    TASKS,
    generate_task,
    is_task,
    majority_baseline,
    probes,
    task_vocab,
)
from charrnn.data.vocab import Vocab, build_vocab
from charrnn.errors import CharRNNError
from charrnn.models.charrnn import CharRNN
from charrnn.training.evaluate import label_accuracy


def check_line(task: str, line: str) -> int:
    """Assert the label of one line (without its newline) is right; return the input length."""
    if task == "task:parity":
        bits, label = line.split("=")
        assert set(bits) <= {"0", "1"}
        assert label == ("Y" if bits.count("1") % 2 == 0 else "N")
        return len(bits)
    if task == "task:brackets":
        brackets, label = line.split("=")
        depth = 0
        for ch in brackets:
            depth += 1 if ch == "(" else -1
            assert 0 <= depth <= 9
        assert label == str(depth)
        return len(brackets)
    source, copy = line.split("|")
    assert copy == source and set(source) <= set("abcdefgh")
    return len(source)


@pytest.mark.parametrize("task", TASKS)
def test_generated_lines_are_labelled_right(task: str) -> None:
    text = generate_task(task, 3, 12, 3000, seed=5)
    assert len(text) >= 3000 and text.endswith("\n")
    lines = text[:-1].split("\n")
    assert len(text) - len(lines[-1]) - 1 < 3000  # stops at the first line reaching n_chars
    lengths = {check_line(task, line) for line in lines}
    assert min(lengths) >= 3 and max(lengths) <= 12 and len(lengths) > 5
    assert set(text) <= set(task_vocab(task).chars)


@pytest.mark.parametrize("task", TASKS)
def test_generation_is_seeded(task: str) -> None:
    assert generate_task(task, 1, 20, 500, seed=1) == generate_task(task, 1, 20, 500, seed=1)
    assert generate_task(task, 1, 20, 500, seed=1) != generate_task(task, 1, 20, 500, seed=2)


def test_task_names() -> None:
    assert is_task("task:parity") and not is_task("data/input.txt")
    assert generate_task("parity", 2, 2, 5, 0) == generate_task("task:parity", 2, 2, 5, 0)
    with pytest.raises(CharRNNError, match="task:parity, task:brackets, task:copy"):
        generate_task("task:nope", 1, 2, 10, 0)
    with pytest.raises(CharRNNError):
        task_vocab("task:nope")


@pytest.mark.parametrize("args", [(0, 5, 10), (6, 5, 10), (1, 5, 0)])
def test_bad_sizes(args: tuple[int, int, int]) -> None:
    with pytest.raises(CharRNNError):
        generate_task("task:copy", *args, seed=0)


class FakeModel(nn.Module):
    """Stands in for CharRNN: the oracle sees the next character, else it always says `fixed`."""

    def __init__(self, vocab: Vocab, fixed: str = "") -> None:
        super().__init__()
        self.vocab_size, self.fixed = len(vocab), vocab.encode(fixed) if fixed else []
        self.dummy = nn.Parameter(torch.zeros(1))

    def init_state(self, batch_size: int, device: torch.device) -> tuple[Tensor, ...]:
        return ()

    def forward(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
        logits = torch.zeros(*x.shape, self.vocab_size)  # (B, T, V)
        if self.fixed:
            logits[:, :, self.fixed[0]] = 1
        else:  # the final input is followed by "\n", never a label
            logits[:, :-1].scatter_(2, x[:, 1:].unsqueeze(2), 1.0)
        return logits, state


@pytest.mark.parametrize("task", TASKS)
def test_label_accuracy_reads_the_label_positions(task: str) -> None:
    vocab = task_vocab(task)
    oracle = FakeModel(vocab)
    assert label_accuracy(oracle, vocab, task, [1, 7], 50, seed=3) == {1: 1.0, 7: 1.0}  # type: ignore[arg-type]


def test_label_accuracy_of_a_constant_guess() -> None:
    vocab = task_vocab("task:parity")
    always_yes = FakeModel(vocab, fixed="Y")
    acc = label_accuracy(always_yes, vocab, "task:parity", [4, 9], 300, seed=0)  # type: ignore[arg-type]
    base = majority_baseline("task:parity", [4, 9], 300, seed=0)
    for length in (4, 9):
        assert acc[length] == pytest.approx(base[length]) or acc[length] == pytest.approx(1 - base[length])
        assert 0.4 < acc[length] < 0.6


@pytest.mark.parametrize("task, chance", [("task:parity", 0.5), ("task:copy", 1 / 8)])
def test_untrained_model_is_near_chance(task: str, chance: float) -> None:
    torch.manual_seed(0)
    vocab = task_vocab(task)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), model="gf-lstm", num_layers=2, hidden_size=8))
    model.train()
    acc = label_accuracy(model, vocab, task, [5, 30], 400, seed=1)
    assert set(acc) == {5, 30}
    assert all(abs(a - chance) < 0.1 for a in acc.values()), acc
    assert model.training  # restored


def test_label_accuracy_rejects_another_vocabulary() -> None:
    vocab = build_vocab("hello world\n")
    model = CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=8, num_layers=1))
    with pytest.raises(CharRNNError, match="task:parity"):
        label_accuracy(model, vocab, "task:parity", [5], 10, seed=0)


@pytest.mark.parametrize("task", TASKS)
def test_probes_score_only_the_last_line(task: str) -> None:
    # The context lines put the state where a line starts in training (a zero state can
    # leave a trained parity counter in the wrong phase); only the last line is scored.
    spec = _TASKS[task.removeprefix("task:")]
    for text, positions in probes(spec, 6, 20, seed=0, context=2):
        lines = text.split("\n")
        assert lines[0] == "" and lines[-1] == "" and len(lines) == 5
        assert all(len(line.split("=|"[task == "task:copy"])[0]) == 6 for line in lines[1:-1])
        last_start = len(text) - len(lines[-2]) - 1
        assert min(positions) > last_start and max(positions) == len(text) - 2
        check_line(task, lines[-2])
