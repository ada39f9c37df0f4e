"""Data-parallel training: two gloo processes on loopback against one process.

One run goes through `charrnn train --nproc 2`, which execs torchrun. The others
fork two ranks of `charrnn train` from this process with the environment torchrun
gives its workers (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): a
fresh interpreter would spend ~8 s importing torch and DDP's torch._dynamo on this
machine, and without torchrun's agent a dying rank must be noticed by the
survivor itself.

Tolerance: two ranks compute the same sums as one process in a different order
(the mean loss of 4 streams is the mean of two 2-stream means; DDP adds the
ranks' gradients), so float32 results differ by rounding only: a few ulps per
step, 1e-7 relative, grown to at most ~5e-7 over the 24 steps of these runs.
The tests allow 1e-6. Runs of two ranks against two ranks are bit-identical.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_text
from typer.testing import CliRunner

from charrnn.checkpoint import load_checkpoint
from charrnn.cli import app
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.batching import StreamBatcher
from charrnn.data.corpus import prepare
from charrnn.errors import CharRNNError
from charrnn.rundir import RunPaths, read_metrics
from charrnn.training.distributed import Dist, ShardedBatcher, torchrun_command
from charrnn.training.loop import Trainer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="loopback gloo test on Linux")

K = 24  # steps of every run
ATOL = 1e-6  # one process vs two: float32 reduction order only (module docstring)
MODEL = ["--hidden", "16", "--layers", "1", "--batch-size", "4", "--seq-len", "8", "--lr", "2e-3", "--device", "cpu"]
RUN = ["--eval-every", "1", "--log-every", "1", "--quiet"]  # validate + checkpoint every step: slow enough to interrupt


# -- helpers ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CHARRNN_RUNS_DIR": str(root / "runs"),
        "CHARRNN_DATA_DIR": str(root / "data"),
        "OMP_NUM_THREADS": "1",
    }


class Rank:
    """One rank of `charrnn train`, forked from this test process (torch and DDP already imported,
    so a rank starts at once) and given the environment torchrun gives its workers."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path) -> None:
        self.log = log
        self.proc = multiprocessing.get_context("fork").Process(target=_rank_main, args=(env, args, log))
        self.proc.start()

    def send_signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def poll(self) -> int | None:
        return self.proc.exitcode

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.is_file() else ""


def _rank_main(env: dict[str, str], args: list[str], log: Path) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115  lives as long as the rank
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(env)
    app(["train", *args], prog_name="charrnn")


def start_ranks(root: Path, *args: str, world: int = 2, dist_timeout: int = 30) -> list[Rank]:
    """Start `charrnn train ARGS` once per rank with RANK, WORLD_SIZE, ... as torchrun sets them."""
    import torch._dynamo  # noqa: F401  DDP imports it (seconds): pay once here, before forking

    port = str(free_port())
    ranks = []
    for rank in range(world):
        env = {
            **cli_env(root),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
        }
        ranks.append(Rank(env, [*args, "--dist-timeout", str(dist_timeout)], root / f"rank{rank}-{port}.log"))
    return ranks


def finish(ranks: list[Rank], timeout: float = 90) -> list[tuple[int, str]]:
    """(exit status, output) of each rank; kills them all if one hangs."""
    end = time.monotonic() + timeout
    try:
        for r in ranks:
            r.proc.join(max(end - time.monotonic(), 0.1))
    finally:
        for r in ranks:
            if r.proc.exitcode is None:
                r.proc.kill()
                r.proc.join()
    return [(r.proc.exitcode, r.output()) for r in ranks]


def train_steps(run: Path) -> int:
    return max((e["step"] for e in read_metrics(RunPaths(run)) if e["event"] == "train"), default=0)


def wait_for(predicate, procs: list[Rank], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end or any(p.poll() is not None for p in procs):
            raise AssertionError(f"gave up waiting: {finish(procs, 5)}")
        time.sleep(0.02)


def losses(run: Path) -> dict[int, float]:
    return {e["step"]: e["train_loss"] for e in read_metrics(RunPaths(run)) if e["event"] == "train"}


def assert_close_runs(a: Path, b: Path, atol: float) -> None:
    la, lb = losses(a), losses(b)
    assert sorted(la) == sorted(lb) == list(range(1, K + 1))
    assert max(abs(la[s] - lb[s]) for s in la) <= atol, (la, lb)
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ca.progress["step"] == cb.progress["step"] == K
    for name, tensor in ca.model_state.items():
        torch.testing.assert_close(cb.model_state[name], tensor, rtol=0, atol=atol, msg=name)
    for ha, hb in zip(ca.hidden, cb.hidden):
        assert ha.shape == hb.shape == (1, 4, 16)
        torch.testing.assert_close(hb, ha, rtol=0, atol=atol)


def assert_same_runs(a: Path, b: Path) -> None:
    assert losses(a) == losses(b)
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ca.progress["step"] == cb.progress["step"] == K
    assert ca.progress["best_val"] == cb.progress["best_val"]
    for name, tensor in ca.model_state.items():
        assert torch.equal(tensor, cb.model_state[name]), name
    assert all(torch.equal(ha, hb) for ha, hb in zip(ca.hidden, cb.hidden))


def invoke(root: Path, *args: str):
    dirs = ["--runs-dir", str(root / "runs")] + (["--data-dir", str(root / "data")] if args[0] == "train" else [])
    return CliRunner().invoke(app, [*args, *dirs])


# -- runs shared by the tests ----------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus, one single-process run `one` and one 2-process run `two` (via --nproc 2) of K steps."""
    root = tmp_path_factory.mktemp("dist")
    corpus = root / "tiny.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charrnn",
            "train",
            str(corpus),
            "--name",
            "two",
            *MODEL,
            "--max-steps",
            str(K),
            *RUN,
            "--nproc",
            "2",
        ],
        env=cli_env(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        result = invoke(root, "train", str(corpus), "--name", "one", *MODEL, "--max-steps", str(K), *RUN)
        assert result.exit_code == 0, result.output
    finally:
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    return root


# -- unit: the stream layout ------------------------------------------------------------------
def test_ranks_carry_contiguous_slices_of_the_single_process_batch() -> None:
    tokens = np.arange(1000, dtype=np.int64) % 97
    full = StreamBatcher(tokens, 8, 10)
    shards = [Dist(rank=r, world_size=4).shard(full) for r in range(4)]
    assert all(isinstance(s, ShardedBatcher) and s.batch_size == 2 for s in shards)
    assert {s.steps_per_epoch for s in shards} == {full.steps_per_epoch}
    for step in (0, 3, full.steps_per_epoch - 1):
        x, y = full.batch(step)
        parts = [s.batch(step) for s in shards]
        assert np.array_equal(np.concatenate([p[0] for p in parts]), x)
        assert np.array_equal(np.concatenate([p[1] for p in parts]), y)
    state = (torch.randn(2, 8, 5), torch.randn(2, 8, 5))
    pieces = [Dist(rank=r, world_size=4).shard_state(state) for r in range(4)]
    assert all(torch.equal(torch.cat([p[i] for p in pieces], 1), state[i]) for i in range(2))


def test_global_batch_must_split_evenly() -> None:
    with pytest.raises(CharRNNError, match="--batch-size 6 does not split evenly over 4 processes"):
        Dist(rank=1, world_size=4).streams(6)


def test_checkpoint_rng_per_rank() -> None:
    """Same N: each rank its own saved stream. Fewer ranks saved: rank 0 takes it, others keep theirs."""
    a, b = torch.tensor([1]), torch.tensor([2])
    saved = {"torch": a, "ranks": [{"torch": a}, {"torch": b}]}
    assert Dist(rank=1, world_size=2).rank_rng(saved) == {"torch": b}
    assert Dist().rank_rng(saved) == {"torch": a}
    assert Dist(rank=0, world_size=4).rank_rng(saved) == {"torch": a}
    assert Dist(rank=3, world_size=4).rank_rng(saved) == {}


def test_nproc_relaunches_through_torchrun_without_itself() -> None:
    cmd = torchrun_command(2, ["train", "c.txt", "--nproc", "2", "--name", "x", "--nproc=3"])
    assert cmd[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "charrnn",
        "train",
        "c.txt",
        "--name",
        "x",
    ]


def test_one_process_context_is_transparent(tmp_path: Path) -> None:
    """Without torchrun the Trainer trains `self.model` itself and the helpers pass values through."""
    path = tmp_path / "c.txt"
    path.write_text(make_text(5000), encoding="utf-8")
    data = prepare(path, tmp_path / "data")
    trainer = Trainer(
        ModelConfig(vocab_size=len(data.vocab), num_layers=1, hidden_size=8),
        TrainConfig(batch_size=4, seq_len=8, max_steps=1, device="cpu"),
        data,
        RunPaths(tmp_path / "r"),
        {},
    )
    assert trainer.net is trainer.model and not trainer.dist.enabled
    assert trainer.dist.agree_max(1.5, 2.0) == (1.5, 2.0)


# -- two processes ----------------------------------------------------------------------------
def test_two_processes_equal_one(root: Path) -> None:
    """(1) Same global batch: loss sequence, weights and hidden state within ATOL; same checkpoint format."""
    assert_close_runs(root / "runs" / "one", root / "runs" / "two", ATOL)
    two = load_checkpoint(root / "runs" / "two" / "last.pt")
    assert two.train_config.batch_size == 4  # the global batch is recorded, not a rank's share
    assert len(two.rng["ranks"]) == 2


def test_two_process_checkpoint_samples_and_resumes_in_one_process(root: Path) -> None:
    """(2a) The 2-process checkpoint is an ordinary one: `charrnn sample`, `info` read it."""
    result = invoke(root, "sample", "two", "--length", "40", "--seed", "1", "--prime", "The")
    assert result.exit_code == 0 and len(result.stdout) >= 43, result.output
    assert invoke(root, "info", "two").exit_code == 0


def test_sigterm_on_one_rank_saves_once_and_resume_is_exact(root: Path) -> None:
    """(2b) SIGTERM to rank 1 alone: all ranks stop at the same step, rank 0 saves, both exit 143.
    Resumed with two ranks, the run equals the uninterrupted 2-process run bit for bit; resumed
    with one process (hidden state re-sharded), it equals the single-process run within ATOL."""
    corpus = str(root / "tiny.txt")
    run = root / "runs" / "cut"
    procs = start_ranks(root, corpus, "--name", "cut", *MODEL, "--max-steps", str(K), *RUN)
    wait_for(lambda: train_steps(run) >= 2, procs)
    procs[1].send_signal(signal.SIGTERM)
    (code0, err0), (code1, err1) = finish(procs)
    assert (code0, code1) == (143, 143), (err0, err1)
    assert "Traceback" not in err0 + err1
    assert "charrnn train --resume cut" in err0 and "continue with" not in err1
    stopped = load_checkpoint(run / "last.pt")
    assert 2 <= stopped.progress["step"] < K, "the run ended before the signal: raise K"
    assert stopped.hidden[0].shape == (1, 4, 16)

    shutil.copytree(run, root / "runs" / "cut1", ignore=shutil.ignore_patterns(".lock"))
    results = finish(start_ranks(root, "--resume", "cut", "--quiet"))
    assert [code for code, _ in results] == [0, 0], results
    assert_same_runs(root / "runs" / "two", run)

    result = invoke(root, "train", "--resume", "cut1", "--quiet")
    assert result.exit_code == 0, result.output
    assert_close_runs(root / "runs" / "one", root / "runs" / "cut1", ATOL)


def test_single_process_checkpoint_resumes_on_two_ranks(root: Path) -> None:
    """(2c) The other way: a single-process checkpoint is re-sharded over two ranks."""
    data = prepare(root / "tiny.txt", root / "data")
    one = load_checkpoint(root / "runs" / "one" / "last.pt")
    polls = iter(range(100))
    run = RunPaths(root / "runs" / "half")
    cfg = TrainConfig(**one.train_config.__dict__)
    Trainer(one.model_config, cfg, data, run, one.corpus, should_stop=lambda: next(polls) >= K // 2).run()
    assert load_checkpoint(run.last).progress["step"] == K // 2
    results = finish(start_ranks(root, "--resume", "half", "--quiet"))
    assert [code for code, _ in results] == [0, 0], results
    assert_close_runs(root / "runs" / "one", run.dir, ATOL)


def test_a_rank_that_dies_stops_the_others_with_a_clear_error(root: Path) -> None:
    """(3) SIGKILL rank 1 mid-run: rank 0 notices on its next collective and exits 1 with one line."""
    run = root / "runs" / "dies"
    procs = start_ranks(
        root, str(root / "tiny.txt"), "--name", "dies", *MODEL, "--max-steps", "100000", "--log-every", "1", "--quiet"
    )
    wait_for(lambda: train_steps(run) >= 2, procs)
    t0 = time.monotonic()
    procs[1].send_signal(signal.SIGKILL)
    (code0, err0), (code1, _) = finish(procs, timeout=40)
    assert code1 == -signal.SIGKILL
    assert code0 == 1 and time.monotonic() - t0 < 30, err0
    lines = err0.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: rank 0 of 2 stopped: another process died"), err0
    assert "--resume dies" in lines[0]
    load_checkpoint(run / "last.pt")  # the last checkpoint is intact


def test_a_rank_that_hangs_is_given_up_after_the_timeout(root: Path) -> None:
    """(3b) A rank alive but silent (SIGSTOP: torchrun's agent would not notice): --dist-timeout ends the wait."""
    run = root / "runs" / "hangs"
    procs = start_ranks(
        root,
        str(root / "tiny.txt"),
        "--name",
        "hangs",
        *MODEL,
        "--max-steps",
        "100000",
        "--log-every",
        "1",
        "--quiet",
        dist_timeout=2,
    )
    wait_for(lambda: train_steps(run) >= 2, procs)
    t0 = time.monotonic()
    procs[1].send_signal(signal.SIGSTOP)
    try:
        procs[0].proc.join(30)
        waited = time.monotonic() - t0
    finally:
        procs[1].send_signal(signal.SIGKILL)
    (code0, err0), _ = finish(procs)
    assert code0 == 1 and 1.5 < waited < 20, (waited, err0)
    assert err0.strip().startswith("error: rank 0 of 2 stopped: another process died or stopped answering"), err0
    assert "Timed out" in err0


def test_time_budget_is_agreed_by_all_ranks(root: Path) -> None:
    """With --time-budget the lr, the eval marks and the stop read one clock: no rank waits for another."""
    run = root / "runs" / "timed"
    results = finish(
        start_ranks(root, str(root / "tiny.txt"), "--name", "timed", *MODEL, "--time-budget", "2s", "--quiet"),
        timeout=60,
    )
    assert [code for code, _ in results] == [0, 0], results
    events = read_metrics(RunPaths(run))
    assert [e["status"] for e in events if e["event"] == "end"] == ["done"]
    assert sum(e["event"] == "eval" for e in events) >= 2
    assert 1.0 <= load_checkpoint(run / "last.pt").progress["elapsed"] <= 4.0  # budget less the eval reserve


def test_a_kind_with_its_own_time_loop_trains_on_two_ranks_as_on_one(tmp_path: Path) -> None:
    """The stacks of charrnn.models.variants under DistributedDataParallel: the mogrifier, whose
    every weight is used inside the scripted loop, equals its one-process run."""
    (tmp_path / "tiny.txt").write_text(make_text(), encoding="utf-8")
    args = ["train", str(tmp_path / "tiny.txt"), "--model", "mogrifier-lstm", *MODEL, "--max-steps", str(K), *RUN]
    two = subprocess.run(
        [sys.executable, "-m", "charrnn", *args, "--name", "two", "--nproc", "2"],
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert two.returncode == 0, two.stderr
    assert invoke(tmp_path, *args, "--name", "one").exit_code == 0
    assert_close_runs(tmp_path / "runs" / "one", tmp_path / "runs" / "two", ATOL)
