"""Never lose a run: kills, signals, locks, divergence, full disks, hostile files and input."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAIN, one_line_error, tiny_setup

from charrnn import checkpoint as checkpoint_mod
from charrnn import files as files_mod
from charrnn.checkpoint import build_model, load_checkpoint
from charrnn.cli import app
from charrnn.config import SampleConfig
from charrnn.errors import CharRNNError
from charrnn.rundir import RunPaths, read_metrics
from charrnn.sample.torch_engine import generate
from charrnn.training.loop import Trainer


def start_training(tmp_path: Path, corpus: Path, *extra: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "CHARRNN_RUNS_DIR": str(tmp_path / "runs"),
        "CHARRNN_DATA_DIR": str(tmp_path / "data"),
        "OMP_NUM_THREADS": "1",
    }
    sizes = ["--quiet"] if "--resume" in extra else TINY_TRAIN
    cmd = [sys.executable, "-m", "charrnn", "train", *extra, *sizes]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def trained_steps(run: Path) -> int:
    return max((e.get("step", 0) for e in read_metrics(RunPaths(run)) if e["event"] == "train"), default=0)


def starts(run: Path) -> int:
    return sum(e["event"] == "start" for e in read_metrics(RunPaths(run)))


def test_sigkill_at_random_moments_never_loses_the_run(tmp_path: Path, corpus: Path) -> None:
    run = tmp_path / "runs" / "k"
    rng = random.Random(7)
    steps_seen = []
    for attempt in range(5):
        args = ["--resume", "k"] if attempt else [str(corpus), "--name", "k"]
        # Validate + checkpoint every step, so kills often land inside a checkpoint write.
        proc = start_training(tmp_path, corpus, *args, "--max-steps", "100000", "--eval-every", "1", "--log-every", "1")
        previous = steps_seen[-1] if steps_seen else 0
        wait_for(lambda: starts(run) > attempt and trained_steps(run) > previous)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        ckpt = load_checkpoint(run / "last.pt")  # never a partial file
        build_model(ckpt)
        steps_seen.append(ckpt.progress["step"])
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] > steps_seen[0]
    proc = start_training(tmp_path, corpus, "--resume", "k", "--max-steps", str(steps_seen[-1] + 3))
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    assert load_checkpoint(run / "last.pt").progress["step"] == steps_seen[-1] + 3
    assert not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_and_says_how_to_resume(tmp_path: Path, corpus: Path, signum: int, code: int) -> None:
    run = tmp_path / "runs" / "s"
    proc = start_training(tmp_path, corpus, str(corpus), "--name", "s", "--max-steps", "100000", "--log-every", "1")
    wait_for(lambda: trained_steps(run) >= 3)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "charrnn train --resume s" in stderr and str(Path("runs") / "s" / "last.pt") in stderr
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt.progress["step"] >= 3


def test_second_ctrl_c_aborts_without_damage(tmp_path: Path, corpus: Path) -> None:
    run = tmp_path / "runs" / "d"
    proc = start_training(
        tmp_path, corpus, str(corpus), "--name", "d", "--max-steps", "100000", "--eval-every", "1", "--log-every", "1"
    )
    wait_for(lambda: trained_steps(run) >= 2)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    build_model(load_checkpoint(run / "last.pt"))


def test_one_trainer_per_run(tmp_path: Path, corpus: Path, runner) -> None:
    run = tmp_path / "runs" / "l"
    proc = start_training(tmp_path, corpus, str(corpus), "--name", "l", "--max-steps", "100000", "--log-every", "1")
    try:
        wait_for(lambda: trained_steps(run) >= 1)
        result = runner.invoke(
            app,
            [
                "train",
                "--resume",
                "l",
                "--runs-dir",
                str(tmp_path / "runs"),
                "--data-dir",
                str(tmp_path / "data"),
                "--quiet",
            ],
        )
        one_line_error(result, "is being trained by pid")
        result = runner.invoke(app, ["train", str(corpus), "--name", "l", "--runs-dir", str(tmp_path / "runs")])
        one_line_error(result, "already exists")
    finally:
        proc.kill()
        proc.wait()
    # The dead trainer's lock is taken over.
    assert (run / ".lock").is_file()
    assert Trainer(*tiny_setup(tmp_path, corpus, run, resume=True)).run().status == "done"


def poison(trainer: Trainer, bad_calls: set[int] | None) -> dict:
    """Make the training forward return NaN logits on the given call numbers (None = always)."""
    original = trainer.model.forward
    calls = {"n": 0}

    def forward(x, state):
        logits, new_state = original(x, state)
        if trainer.model.training:
            calls["n"] += 1
            if bad_calls is None or calls["n"] in bad_calls:
                logits = logits * float("nan")
        return logits, new_state

    trainer.model.forward = forward  # type: ignore[method-assign]
    return calls


def all_finite(path: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_checkpoint(path).model_state.values())


def test_nan_steps_are_skipped_and_counted(tmp_path: Path, corpus: Path) -> None:
    trainer = Trainer(*tiny_setup(tmp_path, corpus, tmp_path / "n"))
    poison(trainer, {4, 9})
    result = trainer.run()
    assert result.status == "done" and result.skipped == 2 and result.step == 20
    assert all_finite(tmp_path / "n" / "last.pt") and all_finite(tmp_path / "n" / "best.pt")


def test_nan_streak_rolls_back_with_lower_lr(tmp_path: Path, corpus: Path) -> None:
    trainer = Trainer(*tiny_setup(tmp_path, corpus, tmp_path / "r"))
    poison(trainer, {7, 8, 9})
    result = trainer.run()
    assert result.status == "done" and trainer.lr_scale == 0.5
    events = [e["event"] for e in read_metrics(RunPaths(tmp_path / "r"))]
    assert "rollback" in events
    assert all_finite(tmp_path / "r" / "last.pt")


def test_persistent_nan_stops_with_clear_error(tmp_path: Path, corpus: Path) -> None:
    trainer = Trainer(*tiny_setup(tmp_path, corpus, tmp_path / "p"))
    before = (tmp_path / "p").exists()
    poison(trainer, None)
    with pytest.raises(CharRNNError, match="diverged"):
        trainer.run()
    assert not before and all_finite(tmp_path / "p" / "last.pt")


@pytest.mark.parametrize("failure", ["enospc", "readonly"])
def test_unwritable_checkpoint_keeps_the_previous_one(tmp_path: Path, corpus: Path, monkeypatch, failure: str) -> None:
    run = tmp_path / "w"
    Trainer(*tiny_setup(tmp_path, corpus, run, max_steps=5)).run()
    good = (run / "last.pt").read_bytes()
    if failure == "enospc":

        def save(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(checkpoint_mod.torch, "save", save)
        expected = "No space left"
    else:

        def replace(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(files_mod.os, "replace", replace)
        expected = "Read-only"
    trainer = Trainer(*tiny_setup(tmp_path, corpus, run, resume=True))
    with pytest.raises(CharRNNError, match=expected):
        trainer.run()
    monkeypatch.undo()
    assert (run / "last.pt").read_bytes() == good
    assert not list(run.glob(".*.tmp"))
    assert Trainer(*tiny_setup(tmp_path, corpus, run, resume=True)).run().status == "done"


@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "a\x00b", "x" * 300, ".hidden", "a/b", ""])
def test_run_names_cannot_escape(runner, corpus: Path, name: str) -> None:
    one_line_error(runner.invoke(app, ["train", str(corpus), "--name", name, "--max-steps", "1"]), "invalid run name")
    assert not Path("checkpoints").exists() or not any(Path("checkpoints").iterdir())


def test_exact_resume_includes_samples(tmp_path: Path, corpus: Path) -> None:
    whole = tmp_path / "whole"
    Trainer(*tiny_setup(tmp_path, corpus, whole, max_steps=16)).run()
    part = tmp_path / "part"
    polls = iter(range(100))
    stopped = Trainer(*tiny_setup(tmp_path, corpus, part, max_steps=16), should_stop=lambda: next(polls) >= 8).run()
    assert stopped.status == "interrupted" and stopped.step == 8
    ckpt = load_checkpoint(part / "last.pt")
    mcfg, cfg, data, run, info, _ = tiny_setup(tmp_path, corpus, part, max_steps=16)
    Trainer(mcfg, cfg, data, run, info, resume=ckpt).run()
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(part / "last.pt")
    assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
    cfg = SampleConfig(length=60, seed=11)
    text = [generate(build_model(c), c.vocab, "The", cfg, lambda ch: None) for c in (a, b)]
    assert text[0] == text[1]


def test_runs_check_reports_damage(runner, corpus: Path) -> None:
    assert (
        runner.invoke(
            app,
            [
                "train",
                str(corpus),
                "--name",
                "c",
                "--max-steps",
                "5",
                "--keep-last",
                "2",
                "--eval-every",
                "1",
                *TINY_TRAIN,
            ],
        ).exit_code
        == 0
    )
    run = Path("checkpoints") / "c"
    assert len(list(run.glob("step-*.pt"))) == 2
    listing = runner.invoke(app, ["runs"])
    assert " MB" in listing.output
    assert runner.invoke(app, ["runs", "--check"]).exit_code == 0
    (run / "best.pt").unlink()
    (run / "best.pt").write_bytes(b"garbage")
    result = runner.invoke(app, ["runs", "--check"])
    assert result.exit_code == 1 and "DAMAGED" in result.output and "best.pt" in result.output
