"""Trust checks too slow for the suite: many kills, a large corpus, an inflated checkpoint.

1. kills: a tiny run is SIGKILLed at random moments N times (new run, then resumes, each
   validating and checkpointing every step); after every kill last.pt loads, metrics.jsonl
   holds only whole JSON lines whose train steps run 1..k without a gap or a repeat, and
   the final resume leaves no temporary file behind.
2. race: on a large corpus (hashing it takes seconds), a resume is frozen (SIGSTOP) while it
   prepares the corpus; a second resume started meanwhile must be refused at once (the first
   holds the lock before reading anything); the first, thawed, finishes; every step is logged
   once. Then two resumes are started together, and the same must hold.
3. prepare: `charrnn prepare` of the large corpus is killed at random moments; the next
   prepare leaves no temporary folder, and its result equals a clean one.
4. inflated: a checkpoint whose storage member is deflated from GiBs of zeros is sampled
   with the NumPy and the torch engine and described by `info`; the peak memory and the
   time to the refusal are recorded.

    python benchmarks/trust.py --kills 30 --corpus-mb 300 --json benchmarks/results/trust.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "32", "--layers", "1", "--batch-size", "4", "--seq-len", "16", "--no-auto", "--quiet"]


def charrnn(*args: str, tmp: Path, **kwargs) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "CHARRNN_RUNS_DIR": str(tmp / "runs"),
        "CHARRNN_DATA_DIR": str(tmp / "data"),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "charrnn", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def events(run: Path) -> list[dict]:
    """Every line of metrics.jsonl as JSON; raises on a torn or invalid line."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def train_steps(run: Path) -> list[int]:
    return [e["step"] for e in events(run) if e["event"] == "train"]


def checkpoint_step(run: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from charrnn.checkpoint import load_checkpoint

    return int(load_checkpoint(run / "last.pt").progress["step"])


def write_corpus(path: Path, mb: int) -> None:
    block = ("The quick brown fox jumps over the lazy dog; " * 40 + "\n").encode() * 500
    with open(path, "wb") as f:
        for _ in range(mb * 2**20 // len(block) + 1):
            f.write(block)


def kills(tmp: Path, corpus: Path, n: int, seed: int) -> dict:
    rng = random.Random(seed)
    run = tmp / "runs" / "k"
    report = {"kills": n, "bad_checkpoints": 0, "bad_metrics": 0, "steps": []}
    for attempt in range(n):
        args = ["train", "--resume", "k"] if attempt else ["train", str(corpus), "--name", "k", *TINY]
        proc = charrnn(*args, "--max-steps", "1000000", "--eval-every", "1", "--log-every", "1", tmp=tmp)
        time.sleep(rng.uniform(1.0, 4.0))  # start-up is ~1-2 s: kills land in start-up, rewrite and steps
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not (run / "last.pt").exists():
            continue
        try:
            report["steps"].append(checkpoint_step(run))
        except Exception:  # noqa: BLE001 - any failure to load is what this counts
            report["bad_checkpoints"] += 1
        try:
            steps = train_steps(run)
            assert steps == list(range(1, len(steps) + 1)) or steps == list(range(1, steps[-1] + 1))
        except (ValueError, AssertionError, IndexError):
            report["bad_metrics"] += 1
    final = charrnn("train", "--resume", "k", "--max-steps", str(max(report["steps"] or [0]) + 3), tmp=tmp)
    report["final_exit"] = final.wait()
    report["leftover_tmp_files"] = len(list(run.glob(".*.tmp")))
    report["final_steps_contiguous"] = train_steps(run) == list(range(1, checkpoint_step(run) + 1))
    return report


def race(tmp: Path, corpus: Path) -> dict:
    run = tmp / "runs" / "r"
    first = charrnn("train", str(corpus), "--name", "r", *TINY, "--max-steps", "20", "--log-every", "1", tmp=tmp)
    assert first.wait() == 0, first.stderr.read()
    frozen = charrnn("train", "--resume", "r", "--max-steps", "60", "--log-every", "1", tmp=tmp)
    lock = run / ".lock"
    while not (lock.exists() and lock.read_text().strip() == str(frozen.pid)):
        time.sleep(0.01)
    frozen.send_signal(signal.SIGSTOP)  # it holds the lock and is reading the checkpoint and the corpus
    t0 = time.perf_counter()
    second = charrnn("train", "--resume", "r", "--max-steps", "40", "--log-every", "1", tmp=tmp)
    second_exit = second.wait()
    refused_after = time.perf_counter() - t0
    frozen.send_signal(signal.SIGCONT)
    frozen_exit = frozen.wait()
    report = {
        "second_exit": second_exit,
        "second_refused_after_s": round(refused_after, 2),
        "second_message": second.stderr.read().strip()[:120],
        "frozen_exit": frozen_exit,
        "final_step": checkpoint_step(run),
        "steps_once": train_steps(run) == list(range(1, 61)),
    }
    together = [charrnn("train", "--resume", "r", "--max-steps", "90", "--log-every", "1", tmp=tmp) for _ in range(2)]
    report["together_exits"] = sorted(p.wait() for p in together)
    report["together_final_step"] = checkpoint_step(run)
    report["together_steps_once"] = train_steps(run) == list(range(1, 91))
    return report


def prepare_kills(tmp: Path, corpus: Path, n: int, seed: int) -> dict:
    """Kill prepares mid-encode; each next prepare must clear the one before's temp folder."""
    import shutil

    rng = random.Random(seed)
    data = tmp / "prep"
    cache = data / "cache"
    temp_seen, left_behind, completed = 0, 0, 0
    for _ in range(n):
        for done in (p for p in cache.glob("[!.]*") if p.is_dir()) if cache.exists() else ():
            shutil.rmtree(done)  # a finished cache: remove it so that the next prepare encodes again
            completed += 1
        proc = charrnn("prepare", str(corpus), "--data-dir", str(data), tmp=tmp)
        while proc.poll() is None and not (cache.exists() and any(p.is_dir() for p in cache.glob(".*"))):
            time.sleep(0.01)  # until this prepare starts encoding into its temp folder
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        temps = [p for p in cache.glob(".*") if p.is_dir()] if cache.exists() else []
        temp_seen += len(temps)
    t0 = time.perf_counter()
    proc = charrnn("prepare", str(corpus), "--data-dir", str(data), tmp=tmp)
    code = proc.wait()
    left_behind = sum(1 for p in cache.glob(".*") if p.is_dir())
    return {
        "kills": n,
        "temp_folders_left_by_kills": temp_seen,
        "prepares_that_finished_before_the_kill": completed,
        "next_prepare_exit": code,
        "next_prepare_s": round(time.perf_counter() - t0, 1),
        "temp_folders_after_next_prepare": left_behind,
        "notes": [line for line in proc.stderr.read().splitlines() if line],
    }


def inflated(tmp: Path, gib: float) -> dict:
    """A real tiny checkpoint whose first storage member is replaced by a deflated run of zeros."""
    sys.path.insert(0, str(ROOT))

    from charrnn.checkpoint import Checkpoint, save_checkpoint
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.data.vocab import build_vocab
    from charrnn.models.charrnn import CharRNN

    vocab = build_vocab("abcdefgh \n")
    cfg = ModelConfig(vocab_size=len(vocab), num_layers=1, hidden_size=8)
    good = tmp / "good.pt"
    save_checkpoint(Checkpoint(cfg, TrainConfig(), vocab, CharRNN(cfg).state_dict()), good)
    bad = tmp / "inflated.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        target = next(n for n in src.namelist() if "/data/" in n)
        for info in src.infolist():
            if info.filename != target:
                dst.writestr(info, src.read(info.filename))
                continue
            member = zipfile.ZipInfo(target)
            member.compress_type = zipfile.ZIP_DEFLATED
            with dst.open(member, "w", force_zip64=True) as out:
                zeros = bytes(2**24)
                for _ in range(int(gib * 2**30) // len(zeros)):
                    out.write(zeros)
    rows = {"file_mb": round(bad.stat().st_size / 1e6, 1), "declared_gib": gib}
    for name, args in (
        ("sample numpy", ["sample", str(bad), "-n", "5"]),
        ("sample torch", ["sample", str(bad), "-n", "5", "--engine", "torch"]),
        ("info", ["info", str(bad)]),
    ):
        t0 = time.perf_counter()
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import resource, runpy, sys; sys.argv = ['charrnn', *sys.argv[1:]];"
                " runpy.run_module('charrnn', run_name='__main__')",
                *args,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        rows[name] = {
            "exit": child.returncode,
            "seconds": round(time.perf_counter() - t0, 2),
            "peak_rss_mb_of_children_so_far": round(peak),
            "stderr": child.stderr.strip()[:160],
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--prepare-kills", type=int, default=8)
    parser.add_argument("--corpus-mb", type=int, default=300)
    parser.add_argument("--inflated-gib", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=["inflated", "kills", "race", "prepare"], help="parts to run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="charrnn-trust-") as name:
        tmp = Path(name)
        small = tmp / "small.txt"
        small.write_text(("To be, or not to be, that is the question.\n" * 400), encoding="utf-8")
        big = tmp / "big.txt"
        write_corpus(big, args.corpus_mb)
        result = {"machine": _machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        for name, job in (
            ("inflated", lambda: inflated(tmp, args.inflated_gib)),
            ("kills", lambda: kills(tmp, small, args.kills, args.seed)),
            ("race", lambda: race(tmp, big)),
            ("prepare", lambda: prepare_kills(tmp, big, args.prepare_kills, args.seed)),
        ):
            if name not in args.only:
                continue
            t0 = time.perf_counter()
            result[name] = job()
            result[name]["wall_s"] = round(time.perf_counter() - t0, 1)
            print(name, json.dumps(result[name]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


def _machine() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
