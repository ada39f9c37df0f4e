"""Training set-up without the command line (charrnn.training.setup.train_run), and the
`train` command's conventions: choices, --version, plain progress in a log file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from charrnn.cli import app
from charrnn.errors import CharRNNError
from charrnn.training.setup import train_run

TINY = {"hidden_size": 16, "num_layers": 1, "batch_size": 4, "seq_len": 16, "device": "cpu"}


def test_train_run_trains_a_new_run_and_reports_it(tmp_path: Path, corpus: Path) -> None:
    notes: list[str] = []
    events: list[dict] = []
    done = train_run(
        corpus,
        name="lib",
        runs_dir=tmp_path / "runs",
        data_dir=tmp_path / "data",
        auto=False,
        max_steps=30,
        on_note=notes.append,
        on_event=events.append,
        **TINY,
    )
    assert done.result.status == "done" and done.result.step == 30
    assert done.path == tmp_path / "runs" / "lib" and (done.path / "best.pt").is_file()
    assert done.model_config.hidden_size == 16 and done.train_config.max_steps == 30
    assert done.best_val < 10 and done.train_chars_per_s > 0 and done.wall_seconds > 0
    assert {"start", "train", "eval", "end"} <= {e["event"] for e in events}
    assert not any("plan:" in n for n in notes)  # auto=False plans nothing


def test_train_run_resumes_and_refuses_new_settings(tmp_path: Path, corpus: Path) -> None:
    dirs = {"runs_dir": tmp_path / "runs", "data_dir": tmp_path / "data"}
    train_run(corpus, name="r", auto=False, max_steps=10, **dirs, **TINY)
    with pytest.raises(CharRNNError, match="--hidden-size"):
        train_run(resume="r", hidden_size=32, max_steps=20, **dirs)
    done = train_run(resume="r", max_steps=20, time_budget=None, **dirs)
    assert done.result.step == 20 and done.model_config.hidden_size == 16


def test_train_run_takes_a_preset_and_a_time_budget_as_text(tmp_path: Path, corpus: Path) -> None:
    notes: list[str] = []
    done = train_run(
        corpus,
        name="p",
        preset="tiny",
        runs_dir=tmp_path / "runs",
        data_dir=tmp_path / "data",
        time_budget="3s",
        batch_size=4,
        seq_len=16,
        device="cpu",
        on_note=notes.append,
    )
    assert done.model_config.hidden_size == 128 and done.train_config.time_budget == 3.0
    assert any(n.startswith("plan: 2x128 lstm") for n in notes)
    assert json.loads((done.path / "config.json").read_text())["corpus"]["plan"]


def test_train_run_refuses_a_bad_preset_and_unknown_settings(tmp_path: Path, corpus: Path) -> None:
    dirs = {"runs_dir": tmp_path / "runs", "data_dir": tmp_path / "data"}
    with pytest.raises(CharRNNError, match="unknown --preset"):
        train_run(corpus, preset="huge", max_steps=1, **dirs, **TINY)
    with pytest.raises(CharRNNError, match="hiden_size"):
        train_run(corpus, hiden_size=8, max_steps=1, **dirs)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # failed runs leave no folder


def test_a_bad_choice_is_a_usage_error_listing_the_choices(runner, corpus: Path) -> None:
    result = runner.invoke(app, ["train", str(corpus), "--model", "bogus"])
    assert result.exit_code == 2
    assert "bogus" in result.output and "lstm" in result.output and "gf-lstm" in result.output


def test_version_names_charrnn_torch_and_python(runner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == ["charrnn", "torch", "Python"]


def test_train_help_groups_its_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "charrnn", "train", "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0
    assert all(f"\n{panel}:" in proc.stdout for panel in ("Model", "Training", "Data", "Output", "Distributed"))


def test_training_into_a_log_file_writes_plain_lines(tmp_path: Path, corpus: Path) -> None:
    log = tmp_path / "log"
    with open(log, "wb") as f:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "charrnn",
                "train",
                str(corpus),
                "--max-steps",
                "20",
                "--hidden",
                "16",
                "--layers",
                "1",
                "--batch-size",
                "4",
                "--seq-len",
                "16",
                "--device",
                "cpu",
                "--runs-dir",
                str(tmp_path / "runs"),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        )
    text = log.read_text(encoding="utf-8")
    assert proc.returncode == 0, text
    assert "\r" not in text and "\x1b" not in text
    assert "step 20  val" in text and "chars/s" in text
