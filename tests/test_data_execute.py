"""task:execute: programs and their printed results, the difficulty knobs, training and eval."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from charrnn.data.tasks import MAX_NESTING, execute_example, generate_task, lookup, task_vocab
from charrnn.errors import CharRNNError
from tests.helpers import TINY_TRAIN


def run_program(program: str) -> str:
    """What Python prints for a generated program (test-only cross-check; the generator never runs text)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(program.replace(";", "\n"), {})  # one statement per line: a loop body is its one line
    return buffer.getvalue().strip()


def split(line: str) -> tuple[str, str]:
    program, result = line.rstrip("\n").split("#")
    return program, result


def test_results_match_python_on_hundreds_of_random_programs() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        digits, nesting = int(rng.integers(1, 5)), int(rng.integers(1, MAX_NESTING + 1))
        line, positions = execute_example(rng, digits, nesting)
        program, result = split(line)
        assert run_program(program) == result, line
        assert "".join(line[q] for q in positions) == result


def test_hand_written_cases_have_their_results() -> None:
    # the shapes the generator writes, computed by hand
    cases = {
        "print((86 if 56<34 else 37))": "37",
        "print(((13+11)-83))": "-59",
        "a=55;for x in range(6):a+=68;print(a)": "463",
        "a=83;d=((a*5)+78);print(d)": "493",
    }
    for program, result in cases.items():
        assert run_program(program) == result


def test_digits_set_the_constants_and_nesting_the_operations() -> None:
    rng = np.random.default_rng(0)
    for digits in (1, 3, 5):
        for _ in range(50):
            program, _ = split(execute_example(rng, digits, 2)[0])
            numbers = re.findall(r"(?<!range\()\b\d+\b", program)
            assert all(len(n) <= digits for n in numbers) and any(len(n) == digits for n in numbers)
    mean_length = [np.mean([len(execute_example(rng, 2, n)[0]) for _ in range(200)]) for n in (1, 2, 4)]
    assert mean_length[0] < mean_length[1] < mean_length[2]


def test_mixed_curriculum_adds_easier_lines() -> None:
    plain = generate_task("task:execute", 3, 3, 20_000, 1, nesting=2, curriculum="plain")
    mixed = generate_task("task:execute", 3, 3, 20_000, 1, nesting=2, curriculum="mixed")
    short = re.compile(r"(?<![\d(])\d{1,2}(?!\d)")  # a constant under 3 digits (not a loop count)

    def easier(text: str) -> float:
        lines = text.splitlines()
        return sum(bool(short.search(re.sub(r"range\(\d\)|\*\d\)", "", ln.split("#")[0]))) for ln in lines) / len(lines)

    assert easier(plain) < 0.05 < 0.2 < easier(mixed)
    with pytest.raises(CharRNNError):
        generate_task("task:execute", 1, 2, 100, 1, curriculum="sideways")
    with pytest.raises(CharRNNError):
        generate_task("task:execute", 1, 2, 100, 1, nesting=MAX_NESTING + 1)


def test_same_seed_same_programs_and_the_vocabulary_covers_them() -> None:
    a = generate_task("task:execute", 1, 4, 5000, 3, nesting=4, curriculum="mixed")
    assert a == generate_task("task:execute", 1, 4, 5000, 3, nesting=4, curriculum="mixed")
    assert a != generate_task("task:execute", 1, 4, 5000, 4, nesting=4, curriculum="mixed")
    assert not task_vocab("task:execute").missing(a)
    assert set(lookup("task:execute").labels) >= {c for line in a.splitlines() for c in line.split("#")[1]}


def test_scorer_reaches_one_with_the_true_answers() -> None:
    from charrnn.training.execute_eval import execute_probes, score_answers

    pairs = execute_probes(2, 2, 50, seed=0)
    assert all(p.endswith("#") and run_program(p.rsplit("\n", 1)[1][:-1]) == t for p, t in pairs)
    assert score_answers([t for _, t in pairs], [t for _, t in pairs]) == 1.0
    assert score_answers(["?"] * 50, [t for _, t in pairs]) == 0.0


def test_tiny_run_trains_and_eval_prints_both_accuracies_per_level(runner, tmp_path: Path) -> None:
    from charrnn.cli import app

    args = ["train", "task:execute", "--length-max", "2", "--nesting", "2", "--curriculum", "mixed"]
    result = runner.invoke(app, [*args, "--task-chars", "5000", "--max-steps", "20", "--name", "ex", *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "data" / "tasks").glob("execute-1-2-5000-*-2-mixed.txt"))
    shown = runner.invoke(
        app, ["eval", "ex", "task:execute", "--lengths", "1,2", "--nesting", "1,2", "--examples", "8"]
    )
    assert shown.exit_code == 0, shown.output
    assert "exact match" in shown.output and "char accuracy" in shown.output
    assert len(re.findall(r"│\s+[12] │\s+[12] │", shown.output)) == 4
    as_json = runner.invoke(
        app, ["eval", "ex", "task:execute", "--lengths", "2", "--nesting", "1", "--examples", "8", "--json"]
    )
    rows = json.loads(as_json.stdout)["results"]
    assert [(r["digits"], r["nesting"]) for r in rows] == [(2, 1)]
    assert 0.0 <= rows[0]["exact"] <= 1.0 and 0.0 <= rows[0]["char"] <= 1.0
