"""Start-up and memory: `charrnn --help`, time to the first sampled character, and peak RSS of
`charrnn prepare` on a 1 GB generated corpus and of training on it against a 1 MB corpus.

Every figure comes from a fresh `python -m charrnn` process, as a user runs it. The big
corpus (UTF-8 with multi-byte characters) is generated inside a temporary folder and
deleted afterwards.

    python benchmarks/bench_startup_memory.py --gb 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

WORDS = [
    "the",
    "and",
    "of",
    "to",
    "a",
    "in",
    "that",
    "is",
    "was",
    "he",
    "for",
    "it",
    "with",
    "as",
    "his",
    "café",
    "naïve",
    "über",
    "straße",
    "élan",
    "ño",
    "это",
    "слово",
    "中文",
    "字符",
    "—",
    "…",
    "“quoted”",
]


def charrnn(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "charrnn", *args], env=env, capture_output=True, text=True, **kwargs)


def help_seconds(repeats: int, *command: str) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = charrnn(*command, "--help")
        assert proc.returncode == 0, proc.stderr
        times.append(time.perf_counter() - start)
    return times


def first_char_seconds(runs_dir: Path, repeats: int, engine: str = "auto") -> list[float]:
    """Seconds from process start to the first character of `charrnn sample` on stdout."""
    times = []
    env = {**os.environ, "CHARRNN_RUNS_DIR": str(runs_dir)}
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "charrnn", "sample", "big", "--length", "200", "--seed", "1", "--engine", engine],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert proc.stdout is not None
        proc.stdout.read(1)
        times.append(time.perf_counter() - start)
        proc.kill()
        proc.wait()
    return times


def make_run(runs_dir: Path) -> None:
    """A 2x512 LSTM run with random weights (start-up cost does not depend on training)."""
    import torch

    from charrnn.checkpoint import Checkpoint, save_checkpoint
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.data.vocab import build_vocab
    from charrnn.models.charrnn import CharRNN

    vocab = build_vocab("".join(chr(c) for c in range(32, 97)) + "\n")
    cfg = ModelConfig(vocab_size=len(vocab), num_layers=2, hidden_size=512)
    torch.manual_seed(0)
    save_checkpoint(Checkpoint(cfg, TrainConfig(), vocab, CharRNN(cfg).state_dict()), runs_dir / "big" / "best.pt")


def write_corpus(path: Path, n_bytes: int, seed: int = 0) -> None:
    """Random words (some multi-byte) in lines, written 8 MB at a time."""
    rng = np.random.default_rng(seed)
    pieces = np.array([w.encode() for w in WORDS] + [b"\n"] * 3, dtype=object)
    written = 0
    with open(path, "wb") as f:
        while written < n_bytes:
            picks = pieces[rng.integers(0, len(pieces), 1_500_000)]
            block = b" ".join(picks)[: n_bytes - written]
            block = block.decode("utf-8", "ignore").encode()  # never cut a character in two
            f.write(block)
            written += len(block)


def run_measured(args: list[str], env: dict) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of one `python -m charrnn ARGS` child process."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child: become the command, output discarded
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.execve(sys.executable, [sys.executable, "-m", "charrnn", *args], env)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"charrnn {' '.join(args)} failed")
    return usage.ru_maxrss / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="size of the generated corpus")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--startup-only", action="store_true", help="skip the memory part")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict = {"benchmark": "startup_memory", "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        helps = help_seconds(args.repeats)
        report["help_s_median"] = statistics.median(helps)
        report["train_help_s_median"] = statistics.median(help_seconds(args.repeats, "train"))
        make_run(tmp / "runs")
        # Alternating the engines, so that load from other processes hits both alike.
        firsts: dict[str, list[float]] = {"auto": [], "torch": []}
        for _ in range(args.repeats):
            for engine in firsts:
                firsts[engine] += first_char_seconds(tmp / "runs", 1, engine)
        report["sample_first_char_s_median"] = statistics.median(firsts["auto"])
        report["sample_first_char_torch_engine_s_median"] = statistics.median(firsts["torch"])
        print(f"charrnn --help          median {report['help_s_median']:.3f} s  (target < 0.3)")
        print(f"charrnn train --help    median {report['train_help_s_median']:.3f} s  (target < 0.3)")
        print(
            f"sample first character  median {report['sample_first_char_s_median']:.3f} s  (target < 2.5; "
            f"{report['sample_first_char_torch_engine_s_median']:.3f} s with --engine torch)"
        )
        if not args.startup_only:
            env = {**os.environ, "CHARRNN_DATA_DIR": str(tmp / "data"), "CHARRNN_RUNS_DIR": str(tmp / "runs")}
            big, small = tmp / "big.txt", tmp / "small.txt"
            t0 = time.perf_counter()
            write_corpus(big, int(args.gb * 1e9))
            write_corpus(small, 1_000_000, seed=1)
            print(f"generated {big.stat().st_size / 1e6:,.0f} MB in {time.perf_counter() - t0:.0f} s", flush=True)
            rss, seconds = run_measured(["prepare", str(big)], env)
            report["prepare_peak_rss_mb"] = rss
            report["prepare_mb_per_s"] = big.stat().st_size / 1e6 / seconds
            print(
                f"prepare {args.gb:g} GB          peak RSS {rss:.0f} MB (target < 400), "
                f"{report['prepare_mb_per_s']:.1f} MB/s (target >= 30)",
                flush=True,
            )
            train = [
                "--hidden",
                "128",
                "--layers",
                "2",
                "--batch-size",
                "32",
                "--seq-len",
                "100",
                "--max-steps",
                str(args.train_steps),
                "--eval-every",
                str(args.train_steps),
                "--quiet",
                "--device",
                "cpu",
            ]
            rss_big, _ = run_measured(["train", str(big), "--name", "big-corpus", *train], env)
            rss_small, _ = run_measured(["train", str(small), "--name", "small-corpus", *train], env)
            report["train_peak_rss_mb"] = {"1GB": rss_big, "1MB": rss_small, "ratio": rss_big / rss_small}
            print(
                f"train peak RSS          {rss_big:.0f} MB on {args.gb:g} GB vs {rss_small:.0f} MB on 1 MB "
                f"(ratio {rss_big / rss_small:.2f}, target within 0.85-1.15)"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
