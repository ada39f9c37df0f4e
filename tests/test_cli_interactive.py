"""`charrnn sample --interactive` in a pseudo-terminal (pexpect), and Model.next_chars."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pexpect
import pytest
from helpers import TINY_TRAIN, make_text, one_line_error
from typer.testing import CliRunner

import charrnn
from charrnn.cli import app
from charrnn.errors import CharRNNError

CANDIDATE = re.compile(r"^  (\d+)  (\S+)\s+([0-9.]+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder holding 'tiny', a 1x32 LSTM trained 30 steps (shared by this file's tests)."""
    root = tmp_path_factory.mktemp("interactive")
    corpus = root / "tiny.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    result = CliRunner().invoke(
        app,
        ["train", str(corpus), "--name", "tiny", "--max-steps", "30", *TINY_TRAIN]
        + ["--runs-dir", str(root / "checkpoints"), "--data-dir", str(root / "data")],
    )
    assert result.exit_code == 0, result.output
    return root / "checkpoints"


def spawn(runs: Path, *args: str) -> pexpect.spawn:
    """`charrnn sample tiny --interactive ARGS` on a pseudo-terminal (TERM=dumb: no escapes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARRNN_")}
    env.update(TERM="dumb", CI="true")
    argv = ["-m", "charrnn", "sample", "tiny", "--runs-dir", str(runs), *args]
    return pexpect.spawn(sys.executable, argv, cwd=str(runs.parent), env=env, timeout=30, encoding="utf-8")


def sampled(runs: Path, *args: str) -> str:
    """What `charrnn sample tiny ARGS` writes."""
    result = CliRunner().invoke(app, ["sample", "tiny", "--runs-dir", str(runs), *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def lines(text: str) -> str:
    return text.replace("\r\n", "\n")


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def test_each_prime_streams_what_sample_writes_for_seed_then_seed_plus_one(runs: Path) -> None:
    child = spawn(runs, "--interactive", "--seed", "3", "-n", "60")
    try:
        child.expect("prime> ")
        for seed in (3, 4):
            child.sendline("The ")
            child.expect("prime> ")
            echo, shown = lines(child.before).split("\n", 1)
            assert echo == "The "
            assert shown == sampled(runs, "--prime", "The ", "--seed", str(seed), "-n", "60")
        child.sendeof()  # Ctrl-D quits cleanly
        assert finish(child) == 0
    finally:
        child.close(force=True)


def test_pick_lists_k_candidates_and_1_takes_the_most_likely(runs: Path) -> None:
    child = spawn(runs, "--interactive")
    try:
        child.expect("prime> ")
        child.sendline(":pick")
        child.expect("pick> ")
        child.sendline("The ")
        child.expect(r"\. ends> ")
        shown = CANDIDATE.findall(lines(child.before))
        assert [int(n) for n, _, _ in shown] == [1, 2, 3, 4, 5]
        probs = [float(p) for _, _, p in shown]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3
        best = charrnn.load("tiny", runs_dir=runs).next_chars("The ", k=1, temperature=0.8)[0][0]
        assert shown[0][1] == {" ": "␣", "\n": "\\n"}.get(best, best)
        child.sendline("1")
        child.expect(r"\. ends> ")
        assert f"» The {best}\n" in lines(child.before)
        child.sendline(".")
        child.expect("pick> ")
        assert lines(child.before).endswith(f"The {best}\n")  # the text, as written
        child.sendline(":q")
        assert finish(child) == 0
    finally:
        child.close(force=True)


def test_pick_taking_every_draw_writes_the_seeded_sample(runs: Path) -> None:
    child = spawn(runs, "--pick", "--seed", "5", "-n", "6", "--top-k", "3")
    try:
        child.expect("pick> ")
        child.sendline("The ")
        for _ in range(6):
            child.expect(r"\. ends> ")
            assert len(CANDIDATE.findall(lines(child.before))) <= 3  # k = --top-k
            child.sendline("")  # Enter: the drawn character
        child.expect("pick> ")
        text = lines(child.before).rsplit("» ", 1)[1].split("\n", 1)[1]
        assert text == sampled(runs, "--prime", "The ", "--seed", "5", "-n", "6", "--top-k", "3")
        child.sendline("")  # an empty line quits
        assert finish(child) == 0
    finally:
        child.close(force=True)


def test_ctrl_c_stops_a_continuation_and_the_prompt_comes_back(runs: Path) -> None:
    child = spawn(runs, "-i", "-n", "100000000")
    try:
        child.expect("prime> ")
        child.sendline("The ")
        child.expect("The .{40}")  # streaming
        child.sendintr()
        child.expect(r"\[stopped\]")
        child.expect("prime> ")
        child.sendline("Qz")  # outside the vocabulary: one error line, and the loop goes on
        child.expect("prime> ")
        assert "error: 2 character(s) are not in the model's vocabulary" in child.before
        child.sendeof()
        assert finish(child) == 0
    finally:
        child.close(force=True)


def test_interactive_refuses_when_stdin_is_not_a_terminal(runs: Path) -> None:
    result = CliRunner().invoke(app, ["sample", "tiny", "--runs-dir", str(runs), "--interactive"], input="The \n")
    one_line_error(result, "needs a terminal")


def test_next_chars_lists_the_most_likely_first(runs: Path) -> None:
    model = charrnn.load("tiny", runs_dir=runs)
    found = model.next_chars("The ", k=4)
    assert len(found) == 4 and all(ch in model.vocab.chars for ch, _ in found)
    probs = [p for _, p in found]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-9
    assert found[0][0] == model.generate("The ", length=1, temperature=0)  # greedy takes the first
    assert len(model.next_chars("The ", k=10, top_k=2)) == 2  # what cannot be drawn is left out
    assert model.next_chars("The ", k=3, temperature=0) == [(found[0][0], 1.0)]
    with pytest.raises(CharRNNError):
        model.next_chars("The ", k=0)


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [(["--prime", "The "], "drop --prime"), (["--num-samples", "2"], "drop --num-samples")],
)
def test_interactive_refuses_options_it_cannot_honour(runs: Path, extra: list[str], pattern: str) -> None:
    result = CliRunner().invoke(app, ["sample", "tiny", "--runs-dir", str(runs), "--pick", *extra])
    one_line_error(result, pattern)
