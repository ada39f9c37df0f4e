"""The command line as a user meets it: help, the whole loop on a tiny file, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAIN, one_line_error

from charrnn.cli import app

COMMANDS = ["prepare", "train", "sample", "eval", "runs", "info"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(runner, command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from charrnn.cli import main; sys.argv=['charrnn','train','--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().endswith("False"), proc.stderr
    proc = subprocess.run([sys.executable, "-m", "charrnn", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "train" in proc.stdout


def test_prepare_train_sample_eval_loop(runner, corpus: Path, trained: str) -> None:
    result = runner.invoke(app, ["prepare", str(corpus)])
    assert result.exit_code == 0 and "characters" in result.output
    run = Path("checkpoints") / trained
    assert {p.name for p in run.iterdir()} >= {"config.json", "last.pt", "best.pt", "metrics.jsonl"}
    assert json.loads((run / "config.json").read_text())["model"]["hidden_size"] == 32
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "eval"} <= {e["event"] for e in events}

    # No run named: the latest is used and named on stderr; only the text is on stdout.
    result = runner.invoke(app, ["sample", "--length", "50", "--seed", "1", "--prime", "The"])
    assert result.exit_code == 0, result.output
    assert "sampling from" in result.stderr and "best.pt" in result.stderr
    assert result.stdout.startswith("The") and len(result.stdout) == len("The") + 50 + 1
    again = runner.invoke(app, ["sample", trained, "--length", "50", "--seed", "1", "--prime", "The"])
    assert again.stdout == result.stdout
    two = runner.invoke(app, ["sample", trained, "-n", "10", "--seed", "2", "--num-samples", "2", "--temp", "0"])
    assert two.exit_code == 0 and two.stdout.count("\n\n") == 1

    result = runner.invoke(app, ["eval", trained, str(corpus), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["bits_per_char"] == pytest.approx(scores["nats_per_char"] / 0.6931471805599453)
    assert 0 < scores["nats_per_char"] < 5

    result = runner.invoke(app, ["runs"])
    assert result.exit_code == 0 and trained in result.output
    result = runner.invoke(app, ["info", trained])
    assert result.exit_code == 0 and "lstm 1x32" in result.output
    assert "best val loss" in result.output and "validation" in result.output  # learning curves follow


def test_resume_continues_a_run(runner, corpus: Path, trained: str) -> None:
    result = runner.invoke(app, ["train", "--resume", trained, "--max-steps", "40", "--quiet"])
    assert result.exit_code == 0, result.output
    ckpt = torch.load(Path("checkpoints") / trained / "last.pt", weights_only=True)
    assert ckpt["progress"]["step"] == 40
    one_line_error(runner.invoke(app, ["train", "--resume", trained, "--hidden", "64"]), "--hidden-size")


def test_sample_streams_prime_from_stdin(runner, trained: str) -> None:
    result = runner.invoke(app, ["sample", trained, "--prime-file", "-", "-n", "5", "--seed", "0"], input="The cat")
    assert result.exit_code == 0 and result.stdout.startswith("The cat")


def test_bad_input_is_one_line_error(runner, corpus: Path, tmp_path: Path) -> None:
    one_line_error(runner.invoke(app, ["sample"]), "no runs")
    one_line_error(runner.invoke(app, ["train", "missing.txt"]), "does not exist")
    (tmp_path / "empty.txt").write_text("")
    one_line_error(runner.invoke(app, ["train", "empty.txt"]), "empty")
    (tmp_path / "bad.txt").write_bytes(b"hello \xc3\x28 world")
    one_line_error(runner.invoke(app, ["train", "bad.txt"]), "offset 6")
    (tmp_path / "short.txt").write_text("abcdefghij" * 20)
    one_line_error(
        runner.invoke(app, ["train", "short.txt", "--batch-size", "8", "--seq-len", "50"]), "--batch-size 3 or less"
    )
    one_line_error(runner.invoke(app, ["train", str(corpus), "--time-budget", "soon"]), "duration")
    one_line_error(runner.invoke(app, ["train", str(corpus), "--name", "../escape"]), "invalid run name")
    one_line_error(runner.invoke(app, ["train", str(corpus), "--dropout", "1.5"]), "--dropout")
    if not torch.cuda.is_available():
        one_line_error(runner.invoke(app, ["train", str(corpus), "--device", "cuda", "--max-steps", "1"]), "cuda")


def test_bad_sampling_input(runner, trained: str, tmp_path: Path) -> None:
    one_line_error(runner.invoke(app, ["sample", trained, "--temp", "-1"]), "--temp")
    one_line_error(runner.invoke(app, ["sample", trained, "--top-p", "0"]), "--top-p")
    one_line_error(runner.invoke(app, ["sample", trained, "--top-p", "1.5"]), "--top-p")
    one_line_error(runner.invoke(app, ["sample", trained, "--top-k", "-2"]), "--top-k")
    one_line_error(runner.invoke(app, ["sample", trained, "--length", "-5"]), "--length")
    one_line_error(runner.invoke(app, ["sample", trained, "--prime", "Zebra ✓"]), "'✓'")
    one_line_error(runner.invoke(app, ["sample", "nosuchrun"]), "unknown run")
    (tmp_path / "odd.txt").write_text("the cat ✓ ∑", encoding="utf-8")
    one_line_error(runner.invoke(app, ["eval", trained, "odd.txt"]), "'∑', '✓'")
    last = Path("checkpoints") / trained / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    one_line_error(runner.invoke(app, ["sample", str(last)]), "truncated or corrupt")


def test_usage_errors_keep_exit_2(runner) -> None:
    assert runner.invoke(app, ["train", "--no-such-option"]).exit_code == 2
    assert runner.invoke(app, ["sample", "--temp", "warm"]).exit_code == 2


def test_existing_run_name_is_refused(runner, corpus: Path, trained: str) -> None:
    before = (Path("checkpoints") / trained / "last.pt").read_bytes()
    one_line_error(runner.invoke(app, ["train", str(corpus), "--name", trained, "--max-steps", "1"]), "already exists")
    assert (Path("checkpoints") / trained / "last.pt").read_bytes() == before


def test_head_closing_the_pipe_is_quiet(runner, tmp_path: Path, corpus: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "CHARRNN_RUNS_DIR": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "charrnn"]
    result = runner.invoke(
        app, ["train", str(corpus), "--name", "p", "--max-steps", "5", "--runs-dir", "runs", *TINY_TRAIN]
    )
    assert result.exit_code == 0, result.output
    proc = subprocess.run(
        f"{' '.join(cmd)} sample p --length 100000 | head -n 2",
        shell=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.count("\n") == 2
    assert proc.stderr == "", proc.stderr


def test_task_corpus_trains_and_evaluates_per_length(runner) -> None:
    result = runner.invoke(
        app,
        [
            "train",
            "task:brackets",
            "--name",
            "br",
            "--model",
            "gf-lstm",
            "--task-chars",
            "20000",
            "--length-max",
            "8",
            "--max-steps",
            "5",
            *TINY_TRAIN,
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", "br", "task:brackets", "--lengths", "2,8", "--examples", "20", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    assert [r["length"] for r in rows] == [2, 8] and all(0 <= r["accuracy"] <= 1 for r in rows)
    result = runner.invoke(app, ["train", "--resume", "br", "--max-steps", "7", "--quiet"])
    assert result.exit_code == 0, result.output
    one_line_error(runner.invoke(app, ["eval", "br", "task:brackets", "--lengths", "x"]), "--lengths")
    one_line_error(runner.invoke(app, ["train", "task:nope"]), "task")


def test_min_lr_ratio_one_keeps_the_peak_rate(runner, corpus: Path) -> None:
    args = ["train", str(corpus), "--max-steps", "30", "--lr", "0.003", "--warmup", "0", *TINY_TRAIN]
    lrs = {}
    for name, ratio in (("flat", "1"), ("cosine", "0.1")):
        result = runner.invoke(app, [*args, "--name", name, "--min-lr-ratio", ratio])
        assert result.exit_code == 0, result.output
        events = [json.loads(line) for line in (Path("checkpoints") / name / "metrics.jsonl").read_text().splitlines()]
        lrs[name] = [e["lr"] for e in events if e["event"] == "train"]
    assert len(lrs["flat"]) == 3 and all(lr == pytest.approx(0.003) for lr in lrs["flat"])
    assert lrs["cosine"][-1] < 0.002  # the default schedule decays
