"""No run is ever lost and nothing outside a run is ever touched: the lock, links, atomic
rewrites, failed starts, OS errors and damaged run files (issue 21)."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import TINY_TRAIN, one_line_error, tiny_setup

from charrnn import files as files_mod
from charrnn.checkpoint import load_checkpoint
from charrnn.cli import app
from charrnn.errors import CharRNNError
from charrnn.rundir import RunLock, RunPaths, read_metrics
from charrnn.training.loop import Trainer


def train_steps(runner, corpus: Path, name: str, steps: int, *extra: str):
    return runner.invoke(
        app, ["train", str(corpus), "--name", name, "--max-steps", str(steps), "--no-auto", *TINY_TRAIN, *extra]
    )


def logged_train_steps(run: Path) -> list[int]:
    return [e["step"] for e in read_metrics(RunPaths(run)) if e.get("event") == "train"]


def child_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CHARRNN_RUNS_DIR": str(tmp_path / "checkpoints"),
        "CHARRNN_DATA_DIR": str(tmp_path / "data"),
        "OMP_NUM_THREADS": "1",
    }


# -- the lock ------------------------------------------------------------------------------


def test_two_resumes_started_together_lose_no_step(runner, corpus: Path, tmp_path: Path) -> None:
    assert train_steps(runner, corpus, "r", 10, "--log-every", "1").exit_code == 0
    cmd = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        "--resume",
        "r",
        "--max-steps",
        "60",
        "--log-every",
        "1",
        "--quiet",
    ]
    procs = [
        subprocess.Popen(
            cmd, env=child_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outcomes = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for code, stderr in outcomes:
        assert code == 0 or (code == 1 and "is being trained by pid" in stderr), stderr
    run = tmp_path / "checkpoints" / "r"
    assert load_checkpoint(run / "last.pt").progress["step"] == 60
    assert logged_train_steps(run) == list(range(1, 61))  # every step once: none lost, none twice


def test_the_lock_is_taken_before_the_checkpoint_is_read(runner, corpus: Path, tmp_path: Path) -> None:
    assert train_steps(runner, corpus, "r", 3).exit_code == 0
    run = RunPaths(tmp_path / "checkpoints" / "r")
    run.last.write_bytes(b"being written")  # a resume that read first would fail on this instead
    with RunLock(run):
        lock_path = run.dir / ".lock"
        assert lock_path.read_text().strip() == str(os.getpid())
        child = subprocess.run(
            [sys.executable, "-m", "charrnn", "train", "--resume", "r", "--max-steps", "5"],
            env=child_env(tmp_path),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert child.returncode == 1 and "is being trained by pid" in child.stderr, child.stderr


def test_a_resume_from_an_older_checkpoint_never_overwrites_newer_training(tmp_path: Path, corpus: Path) -> None:
    run = tmp_path / "r"
    Trainer(*tiny_setup(tmp_path, corpus, run, max_steps=4)).run()
    first = Trainer(*tiny_setup(tmp_path, corpus, run, resume=True))  # both read step 4
    second = Trainer(*tiny_setup(tmp_path, corpus, run, resume=True))
    assert first.run().step == 6
    newer = (run / "last.pt").read_bytes()
    with pytest.raises(CharRNNError, match="written by another process"):
        second.run()  # no lock stood in its way (the first had finished): the save refuses
    assert (run / "last.pt").read_bytes() == newer


# -- links ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [".lock", "metrics.jsonl", "config.json", "last.pt", "best.pt"])
def test_a_linked_file_in_a_run_folder_is_refused_and_its_target_untouched(
    runner, corpus: Path, tmp_path: Path, name: str
) -> None:
    assert train_steps(runner, corpus, "r", 3).exit_code == 0
    run = tmp_path / "checkpoints" / "r"
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"not charrnn's\n" * 100)
    if name.endswith(".pt"):
        os.replace(run / name, outside)  # the link points at a real checkpoint kept elsewhere
    keep = outside.read_bytes()
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(outside)
    result = runner.invoke(app, ["train", "--resume", "r", "--max-steps", "6"])
    one_line_error(result, name)
    assert "link" in result.stderr
    assert outside.read_bytes() == keep


@pytest.mark.parametrize("name", [".lock", "metrics.jsonl", "config.json"])
def test_a_hard_linked_file_in_a_run_folder_never_changes_the_other_name(
    runner, corpus: Path, tmp_path: Path, name: str
) -> None:
    assert train_steps(runner, corpus, "r", 3).exit_code == 0
    run = tmp_path / "checkpoints" / "r"
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b'{"event": "train", "step": 1, "train_loss": 1.0}\n')
    keep = outside.read_bytes()
    (run / name).unlink()
    os.link(outside, run / name)
    result = runner.invoke(app, ["train", "--resume", "r", "--max-steps", "6"])
    assert result.exit_code == 0 or result.stderr.startswith("error: "), result.output
    assert outside.read_bytes() == keep


# -- atomic rewrites -----------------------------------------------------------------------

_REWRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from charrnn.rundir import RunPaths, keep_events_until
    from charrnn.files import atomic_write_text

    run = RunPaths(Path(sys.argv[1]))
    print("ready", flush=True)
    n = int(sys.argv[2])
    while n > 1:
        keep_events_until(run, n)  # rewrites metrics.jsonl without its last event
        atomic_write_text(run.config, f'{{"steps": {n}, "pad": "{"x" * 200_000}"}}')
        n -= 1
    """
)


def test_a_kill_during_a_rewrite_leaves_the_old_or_the_new_file(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    steps = 20_000
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"event": "train", "step": s, "train_loss": 1.0}) + "\n" for s in range(1, steps + 1))
    )
    rng = random.Random(3)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _REWRITER, str(run), str(steps)], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        lines = (run / "metrics.jsonl").read_text().splitlines()
        steps = len(lines)
        assert steps > 0 and [json.loads(line)["step"] for line in lines] == list(range(1, steps + 1))
        if (run / "config.json").exists():
            assert json.loads((run / "config.json").read_text())["steps"] >= steps


# -- failed starts and OS errors ------------------------------------------------------------


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_its_name_free(runner, corpus: Path) -> None:
    result = runner.invoke(
        app, ["train", str(corpus), "--name", "x", "--max-steps", "2", "--no-auto", "--batch-size", "100000", "--quiet"]
    )
    one_line_error(result, "too short")
    assert not Path("checkpoints/x").exists()
    assert train_steps(runner, corpus, "x", 2).exit_code == 0


def test_a_folder_left_by_an_older_failed_start_is_taken_over(runner, corpus: Path) -> None:
    Path("checkpoints/x").mkdir(parents=True)
    Path("checkpoints/x/.lock").write_text("123\n")
    assert train_steps(runner, corpus, "x", 2).exit_code == 0
    assert Path("checkpoints/x/last.pt").is_file()


def test_a_full_disk_on_a_new_run_is_one_error_line_and_no_folder(runner, corpus: Path, monkeypatch) -> None:
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).parent.name == "x":
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(files_mod.os, "replace", replace)
    result = train_steps(runner, corpus, "x", 2)
    one_line_error(result, "No space left on device")
    assert "free some disk space" in result.stderr
    assert not Path("checkpoints/x").exists()


@pytest.mark.parametrize("where", ["runs dir is a file", "runs dir under a file"])
def test_a_runs_folder_that_cannot_be_a_folder_is_one_error_line(runner, corpus: Path, where: str) -> None:
    Path("blocker").write_text("a file\n")
    runs_dir = "blocker" if where == "runs dir is a file" else "blocker/runs"
    result = runner.invoke(
        app, ["train", str(corpus), "--name", "x", "--max-steps", "2", "--no-auto", *TINY_TRAIN, "--runs-dir", runs_dir]
    )
    one_line_error(result, "blocker")
    assert Path("blocker").read_text() == "a file\n"


# -- damaged run files ----------------------------------------------------------------------


def test_listing_commands_show_damaged_runs_and_go_on(runner, corpus: Path) -> None:
    assert train_steps(runner, corpus, "good", 3).exit_code == 0
    assert train_steps(runner, corpus, "bad", 3).exit_code == 0
    bad = Path("checkpoints/bad")
    (bad / "config.json").write_text("[1, 2, 3]")
    with open(bad / "metrics.jsonl", "ab") as f:
        f.write(
            b'\xff\xfe not utf-8\n{"event": "train", "step": "ten", "train_loss": 1}\n'
            b'{"event": "eval", "step": 1e999, "val_loss": 1e999}\n[1]\n"text"\n'
        )
    result = runner.invoke(app, ["runs"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "good" in result.stdout and "bad" in result.stdout and "config.json damaged" in result.stdout
    result = runner.invoke(app, ["curves", "bad"])
    assert result.exit_code == 0 and "damaged line" in result.stderr, result.output
    assert runner.invoke(app, ["info", "bad"]).exit_code == 0
    Path("checkpoints/bad/best.pt").unlink()  # a hard link of last.pt: replace, not overwrite
    Path("checkpoints/bad/best.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    result = runner.invoke(app, ["runs", "--check"])
    one_line_error(result, "damaged checkpoint")
    assert "DAMAGED  checkpoints/bad/best.pt" in result.stdout
    assert "ok       checkpoints/good/last.pt" in result.stdout  # listed after the damaged run: it went on
    result = runner.invoke(app, ["info", "bad"])  # last.pt is fine
    assert result.exit_code == 0, result.output
    (bad / "last.pt").unlink()
    (bad / "last.pt").write_bytes(b"")
    result = runner.invoke(app, ["info", "bad"])  # both damaged: one clean line
    one_line_error(result, "checkpoint")


def test_metrics_are_valid_json_even_before_the_first_validation(runner, corpus: Path) -> None:
    assert train_steps(runner, corpus, "r", 3, "--evals", "1").exit_code == 0
    for line in Path("checkpoints/r/metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
