"""Built-in synthetic corpora for memory diagnostics, and label accuracy per length.

Each task writes one example per line: an input of `length` symbols, a separator,
then the label the model must predict, then a newline.

    task:parity    01101=N     Y if the number of 1s is even, else N
    task:brackets  (()(()=2    nesting depth after the last bracket (kept within 0..9)
    task:copy      cabd|cabd   the input again after `|`: every copied symbol is a label

Parity and depth need a counter carried over the whole input, copy a memory of all of
it: a vanilla RNN fails as the length grows, gated models hold longer. The vocabulary of
a task is its full alphabet (`task_vocab`), so every evaluation text is encodable.
`label_accuracy` scores each line after two unscored lines of the same length, so the
state is where a line starts in training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from charrnn.data.vocab import Vocab, build_vocab
from charrnn.errors import CharRNNError

PREFIX = "task:"
_MAX_DEPTH = 9  # bracket depth stays a single digit
_COPY_SYMBOLS = "abcdefgh"

# (text, positions of its label characters in the text)
Example = tuple[str, list[int]]


def _parity(rng: np.random.Generator, length: int) -> Example:
    bits = rng.integers(0, 2, length)
    label = "Y" if int(bits.sum()) % 2 == 0 else "N"
    return "".join("01"[b] for b in bits) + "=" + label + "\n", [length + 1]


def _brackets(rng: np.random.Generator, length: int) -> Example:
    # A random walk on depth 0..9: open at 0, close at 9, otherwise either with p = 1/2.
    coins = rng.integers(0, 2, length)
    depth, chars = 0, []
    for coin in coins:
        opening = depth == 0 or (depth < _MAX_DEPTH and coin == 1)
        depth += 1 if opening else -1
        chars.append("(" if opening else ")")
    return "".join(chars) + "=" + str(depth) + "\n", [length + 1]


def _copy(rng: np.random.Generator, length: int) -> Example:
    text = "".join(_COPY_SYMBOLS[i] for i in rng.integers(0, len(_COPY_SYMBOLS), length))
    return text + "|" + text + "\n", list(range(length + 1, 2 * length + 1))


@dataclass(frozen=True)
class Task:
    make: Callable[[np.random.Generator, int], Example]
    alphabet: str  # every character a line can hold
    labels: str  # characters that can stand at a label position


_TASKS = {
    "parity": Task(_parity, "01=YN\n", "YN"),
    "brackets": Task(_brackets, "()=0123456789\n", "0123456789"),
    "copy": Task(_copy, _COPY_SYMBOLS + "|\n", _COPY_SYMBOLS),
}
TASKS = tuple(PREFIX + name for name in _TASKS)


def is_task(corpus: str) -> bool:
    """True when a corpus argument names a built-in task (`task:...`) rather than a file."""
    return corpus.startswith(PREFIX)


def lookup(name: str) -> Task:
    key = name.removeprefix(PREFIX)
    if key not in _TASKS:
        raise CharRNNError(f"unknown task '{name}': choose one of {', '.join(TASKS)}.")
    return _TASKS[key]


def task_vocab(name: str) -> Vocab:
    """The vocabulary of every character the task can write. Raises CharRNNError."""
    return build_vocab(lookup(name).alphabet)


def _check_length(length: int) -> None:
    if length < 1:
        raise CharRNNError(f"task length {length} must be at least 1.")


def generate_task(name: str, length_min: int, length_max: int, n_chars: int, seed: int) -> str:
    """A training corpus of whole lines, lengths uniform in [length_min, length_max].

    Stops at the first line that brings the text to at least `n_chars` characters; the
    same arguments give the same text. Raises CharRNNError for an unknown task or bad sizes.
    """
    task = lookup(name)
    _check_length(length_min)
    if length_max < length_min:
        raise CharRNNError(f"task length range {length_min}..{length_max} is empty.")
    if n_chars < 1:
        raise CharRNNError("a task corpus needs at least 1 character.")
    rng = np.random.default_rng(seed)
    lines, total = [], 0
    while total < n_chars:
        line, _ = task.make(rng, int(rng.integers(length_min, length_max + 1)))
        lines.append(line)
        total += len(line)
    return "".join(lines)


def probes(task: Task, length: int, n_examples: int, seed: int, context: int) -> list[Example]:
    """Evaluation texts: a newline, `context` unscored lines, then the scored line.

    The label positions returned index the whole text. The context lines (same length)
    bring the state to where a line starts in training, after other lines: a zero state
    is not that, and a counter started from it can sit in the wrong phase.
    """
    _check_length(length)
    rng = np.random.default_rng([seed, length])  # each length its own stream
    examples = []
    for _ in range(n_examples):
        prefix = "\n" + "".join(task.make(rng, length)[0] for _ in range(context))
        line, positions = task.make(rng, length)
        examples.append((prefix + line, [len(prefix) + p for p in positions]))
    return examples


def majority_baseline(task: str, lengths: list[int], n_examples: int, seed: int) -> dict[int, float]:
    """Accuracy of always answering the most frequent label, on label_accuracy's examples."""
    spec = lookup(task)
    result = {}
    for length in lengths:
        examples = probes(spec, length, n_examples, seed, context=2)
        labels = [text[q] for text, positions in examples for q in positions]
        result[length] = max(labels.count(c) for c in set(labels)) / len(labels)
    return result
