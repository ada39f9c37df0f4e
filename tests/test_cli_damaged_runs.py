"""Every command on a damaged run folder, and the option edges: a result or one `error:` line,
never a traceback, nothing outside the scratch folder touched (issue 21)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAIN, make_text, one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from charrnn.checkpoint import Checkpoint, save_checkpoint
from charrnn.cli import app
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.vocab import build_vocab
from charrnn.models.charrnn import CharRNN

ROUNDS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def clean_outcome(result) -> None:
    """A result (exit 0) or one `error:` line (exit 1); usage errors keep exit 2."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 1, 2), result.output
    if result.exit_code == 1:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A trained run 'r' (1x32 LSTM, 12 steps) with its corpus, to copy and damage."""
    root = tmp_path_factory.mktemp("pristine")
    (root / "c.txt").write_text(make_text(6000), encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(
            app, ["train", "c.txt", "--name", "r", "--max-steps", "12", "--no-auto", "--log-every", "2", *TINY_TRAIN]
        )
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return root


def _json_values():
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), st.floats(), st.text(max_size=8))
    return st.recursive(
        leaves,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=8,
    )


@st.composite
def metrics_line(draw) -> str:
    """One metrics line: a plausible event with odd values, any JSON value, or raw bytes as text."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        value = {
            "event": draw(st.sampled_from(["train", "eval", "start", "end"])),
            "step": draw(st.one_of(st.integers(-5, 10**30), st.floats(), st.text(max_size=4), st.none())),
            "train_loss": draw(st.one_of(st.floats(), st.text(max_size=3))),
            "val_loss": draw(st.one_of(st.floats(), st.none())),
            "time": draw(st.floats()),
        }
        return json.dumps(value)
    if kind == 1:
        return json.dumps(draw(_json_values()))
    return draw(st.binary(max_size=30)).decode("latin-1")


@st.composite
def damage(draw) -> list[tuple[str, str, object]]:
    """A list of (file, how, data) changes to make to a run folder."""
    changes = []
    if draw(st.booleans()):
        changes.append(
            (
                "config.json",
                "bytes",
                draw(st.one_of(st.binary(max_size=40), _json_values().map(lambda v: json.dumps(v).encode()))),
            )
        )
    if draw(st.booleans()):
        lines = draw(st.lists(metrics_line(), max_size=6))
        changes.append(("metrics.jsonl", "append", "\n".join(lines).encode("utf-8", "surrogatepass")))
    for name in ("last.pt", "best.pt"):
        how = draw(st.sampled_from(["keep", "keep", "truncate", "flip", "remove", "link"]))
        if how != "keep":
            changes.append((name, how, draw(st.integers(0, 10**9))))
    return changes


def apply(run: Path, outside: Path, changes: list[tuple[str, str, object]]) -> None:
    for name, how, data in changes:
        path = run / name
        if how == "bytes":
            path.write_bytes(data)  # type: ignore[arg-type]
        elif how == "append":
            with open(path, "ab") as f:
                f.write(data)  # type: ignore[arg-type]
        else:
            raw = path.read_bytes()
            path.unlink()  # best.pt and last.pt may be hard links of one file: damage one name only
            at = int(data) % max(len(raw), 1)  # type: ignore[call-overload]
            if how == "truncate":
                path.write_bytes(raw[:at])
            elif how == "flip":
                path.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :] if raw else b"")
            elif how == "link":
                path.symlink_to(outside)


COMMANDS = [
    ["runs"],
    ["runs", "--check"],
    ["info", "r"],
    ["curves", "r"],
    ["sample", "r", "--length", "5", "--seed", "1"],
    ["sample", "r", "--length", "5", "--seed", "1", "--engine", "torch"],
    ["eval", "r", "c.txt", "--json"],
    ["train", "--resume", "r", "--max-steps", "14", "--quiet"],
]


@ROUNDS
@given(changes=damage())
def test_every_command_on_a_damaged_run_folder_works_or_says_one_line(
    pristine: Path, tmp_path_factory, changes
) -> None:
    root = tmp_path_factory.mktemp("damaged")
    shutil.copy(pristine / "c.txt", root / "c.txt")
    shutil.copytree(pristine / "checkpoints", root / "checkpoints")
    shutil.copytree(pristine / "data", root / "data")
    outside = root.parent / f"{root.name}-outside.txt"
    outside.write_bytes(b"somebody else's file\n")
    apply(root / "checkpoints" / "r", outside, changes)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for command in COMMANDS:
            clean_outcome(CliRunner().invoke(app, command))
    finally:
        os.chdir(cwd)
    assert outside.read_bytes() == b"somebody else's file\n"


# -- option edges ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory) -> Path:
    """A checkpoint whose head weights are NaN, beside a small text it knows."""
    root = tmp_path_factory.mktemp("nan")
    text = "abc abc cab\n" * 20
    (root / "t.txt").write_text(text)
    vocab = build_vocab(text)
    cfg = ModelConfig(vocab_size=len(vocab), num_layers=1, hidden_size=8)
    torch.manual_seed(0)
    state = CharRNN(cfg).state_dict()
    state["head.weight"].fill_(float("nan"))
    save_checkpoint(Checkpoint(cfg, TrainConfig(), vocab, state), root / "n" / "best.pt")
    return root


def test_eval_json_is_valid_json_when_the_loss_is_not_a_number(nan_run: Path) -> None:
    result = CliRunner().invoke(app, ["eval", str(nan_run / "n" / "best.pt"), str(nan_run / "t.txt"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert data["nats_per_char"] is None and data["chars"] == 240


def test_sampling_non_finite_weights_warns(nan_run: Path) -> None:
    result = CliRunner().invoke(app, ["sample", str(nan_run / "n" / "best.pt"), "--length", "5", "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert "non-finite weights" in result.stderr and "head.weight" in result.stderr


def test_the_readme_stop_example_ends_at_a_blank_line(trained: str, runner) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert '--stop "\\n\\n"' in readme  # the shell passes the two backslash pairs through as written
    result = runner.invoke(
        app, ["sample", trained, "--length", "2000", "--seed", "2", "--stop", "\\n\\n", "--temp", "1.5"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n\n\n") and result.stdout.count("\n\n") == 1  # stopped: text + the final newline


def test_a_stdout_that_cannot_encode_the_text_gets_escapes_and_one_warning(trained: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "CHARRNN_RUNS_DIR": str(tmp_path / "checkpoints")}
    child = subprocess.run(
        [sys.executable, "-m", "charrnn", "sample", trained, "--length", "400", "--seed", "1", "--prime", "café"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.isascii() and b"caf\\xe9" in child.stdout
    assert child.stderr.decode().startswith("warning: standard output (ascii) cannot write")


@pytest.mark.parametrize("args", [["sample", "--seed", "-1"], ["sample", "--seed", str(2**64)]])
def test_an_out_of_range_seed_is_a_usage_error(trained: str, runner, args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--seed" in result.output


@pytest.mark.parametrize("epochs", ["inf", "1e308", "nan", "-1"])
def test_an_impossible_epoch_count_is_one_error_line(runner, corpus: Path, epochs: str) -> None:
    result = runner.invoke(app, ["train", str(corpus), "--epochs", epochs, *TINY_TRAIN])
    one_line_error(result, "--epochs")
    assert not Path("checkpoints").exists() or not any(Path("checkpoints").iterdir())


def test_a_model_larger_than_memory_is_refused_before_allocating(runner, corpus: Path) -> None:
    result = runner.invoke(
        app, ["train", str(corpus), "--no-auto", "--hidden", "1000000", "--max-steps", "1", "--quiet"]
    )
    one_line_error(result, "memory")
    assert "GB" in result.stderr
