"""Built-in synthetic corpora for memory diagnostics, and label accuracy per length.

Each task writes one example per line: an input of `length` symbols, a separator,
then the label the model must predict, then a newline.

    task:parity    01101=N     Y if the number of 1s is even, else N
    task:brackets  (()(()=2    nesting depth after the last bracket (kept within 0..9)
    task:copy      cabd|cabd   the input again after `|`: every copied symbol is a label
    task:execute   a=(12+7);for x in range(3):b+=a;print(b)#57   what the program prints

task:execute (Zaremba & Sutskever, "Learning to Execute"): statements joined by ';' (a
for-loop's body is the one statement after its ':'), '#', then the printed integer,
whose characters are the labels. `length` is the digits of each constant, `nesting` the
number of operations wrapped around the first constant (+, -, * by 1..9, if-else on a
comparison, assignment, for-loop). Programs and results come from one expression tree
here: the generated text is never run.

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


_VARS = "abcdefgh"  # one fresh variable per assignment or loop (nesting <= MAX_NESTING)
MAX_NESTING = len(_VARS)
# Curriculum "mixed" (the paper's mixed strategy): this fraction of the lines is drawn at
# uniformly random easier levels, digits in 1..d and nesting in 1..n of the line's level.
MIXED_FRACTION = 0.5


def _constant(rng: np.random.Generator, digits: int) -> int:
    # digit by digit, so any length fits (int64 ends at 19 digits); no leading zero
    first = int(rng.integers(1 if digits > 1 else 0, 10))
    return int(str(first) + "".join(str(int(d)) for d in rng.integers(0, 10, digits - 1)))


def execute_example(rng: np.random.Generator, digits: int, nesting: int) -> Example:
    """One task:execute line (program, '#', result, newline) and its result positions."""
    _check_length(digits)
    if not 1 <= nesting <= MAX_NESTING:
        raise CharRNNError(f"nesting {nesting} must be in 1..{MAX_NESTING}.")
    value = _constant(rng, digits)
    expr, statements = str(value), []
    for level in range(nesting):
        op = int(rng.integers(0, 6))
        c = _constant(rng, digits)
        if op == 0:
            expr, value = f"({expr}+{c})", value + c
        elif op == 1:
            expr, value = f"({expr}-{c})", value - c
        elif op == 2:
            k = int(rng.integers(1, 10))
            expr, value = f"({expr}*{k})", value * k
        elif op == 3:  # keep the expression when c < d, else another constant
            d, other = _constant(rng, digits), _constant(rng, digits)
            expr, value = f"({expr} if {c}<{d} else {other})", value if c < d else other
        elif op == 4:
            statements.append(f"{_VARS[level]}={expr}")
            expr = _VARS[level]
        else:  # v=c; add the expression k times
            k, var = int(rng.integers(1, 10)), _VARS[level]
            statements += [f"{var}={c}", f"for x in range({k}):{var}+={expr}"]
            expr, value = var, c + k * value
    program = ";".join([*statements, f"print({expr})"]) + "#"
    result = str(value)
    return program + result + "\n", list(range(len(program), len(program) + len(result)))


@dataclass(frozen=True)
class Task:
    make: Callable[[np.random.Generator, int], Example]
    alphabet: str  # every character a line can hold
    labels: str  # characters that can stand at a label position


_TASKS = {
    "parity": Task(_parity, "01=YN\n", "YN"),
    "brackets": Task(_brackets, "()=0123456789\n", "0123456789"),
    "copy": Task(_copy, _COPY_SYMBOLS + "|\n", _COPY_SYMBOLS),
    "execute": Task(
        lambda rng, length: execute_example(rng, length, 1),
        "0123456789abcdefghilnoprstx()+-*<=;:# \n",
        "0123456789-",
    ),
}
# The one-label-per-line memory tasks (label_accuracy, majority_baseline); task:execute is
# scored by charrnn.training.execute_eval instead (a greedy answer of several characters).
TASKS = tuple(PREFIX + name for name in _TASKS if name != "execute")
ALL_TASKS = tuple(PREFIX + name for name in _TASKS)


def is_task(corpus: str) -> bool:
    """True when a corpus argument names a built-in task (`task:...`) rather than a file."""
    return corpus.startswith(PREFIX)


def lookup(name: str) -> Task:
    key = name.removeprefix(PREFIX)
    if key not in _TASKS:
        raise CharRNNError(f"unknown task '{name}': choose one of {', '.join(ALL_TASKS)}.")
    return _TASKS[key]


def task_vocab(name: str) -> Vocab:
    """The vocabulary of every character the task can write. Raises CharRNNError."""
    return build_vocab(lookup(name).alphabet)


def _check_length(length: int) -> None:
    if length < 1:
        raise CharRNNError(f"task length {length} must be at least 1.")


def generate_task(
    name: str,
    length_min: int,
    length_max: int,
    n_chars: int,
    seed: int,
    nesting: int = 1,
    curriculum: str = "plain",
) -> str:
    """A training corpus of whole lines, lengths uniform in [length_min, length_max].

    task:execute only: `nesting` of every line ("plain"), or with curriculum "mixed" a
    MIXED_FRACTION of lines at uniformly random easier (digits, nesting) levels.

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
    if curriculum not in ("plain", "mixed"):
        raise CharRNNError(f"unknown curriculum '{curriculum}': choose plain or mixed.")
    execute = name.removeprefix(PREFIX) == "execute"
    while total < n_chars:
        length = int(rng.integers(length_min, length_max + 1))
        if not execute:
            line, _ = task.make(rng, length)
        elif curriculum == "mixed" and rng.random() < MIXED_FRACTION:
            easier = int(rng.integers(1, length + 1)), int(rng.integers(1, nesting + 1))
            line, _ = execute_example(rng, *easier)
        else:
            line, _ = execute_example(rng, length, nesting)
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
