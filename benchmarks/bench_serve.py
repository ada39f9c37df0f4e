"""`charrnn serve` under load: requests per second and p50/p99 latency, 1 and 8 clients.

The script makes its own model: a 2x256 LSTM trained briefly (--train-time) on
../shared/corpora/tinyshakespeare.txt when that file exists, else untrained weights over
a-z and a few marks. It starts `python -m charrnn serve` on a free loopback port (a
separate process, as in use) with each --workers, then for each client count runs that many
threads, each sending POST /generate for 200 characters (temperature 0.8, a new seed per
request) back to back for --seconds. Latency is one request's wall time as the client
sees it. The baseline, measured in the same run: `Model.generate` of 200 characters in
this process, no HTTP, one at a time. The clients share the machine with the server.

    python benchmarks/bench_serve.py --json benchmarks/results/serve-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `charrnn serve` sets it

import httpx  # noqa: E402

import charrnn  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"
LENGTH = 200


def make_model(folder: Path, train_time: str) -> tuple[Path, str]:
    """A 2x256 LSTM checkpoint in `folder` and how it was made."""
    if CORPUS.is_file():
        result = charrnn.train(
            CORPUS,
            name="bench-serve",
            runs_dir=folder / "runs",
            data_dir=folder / "data",
            model="lstm",
            num_layers=2,
            hidden_size=256,
            time_budget=train_time,
            device="cpu",
        )
        return Path(result.path), f"2x256 lstm trained {train_time} on tinyshakespeare"
    import torch

    from charrnn.checkpoint import Checkpoint, save_checkpoint
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.data.vocab import build_vocab
    from charrnn.models.charrnn import CharRNN

    torch.manual_seed(0)
    vocab = build_vocab("abcdefghijklmnopqrstuvwxyz .,;:!?\n")
    cfg = ModelConfig(vocab_size=len(vocab), model="lstm", num_layers=2, hidden_size=256)
    path = folder / "lstm-2x256.pt"
    save_checkpoint(Checkpoint(cfg, TrainConfig(), vocab, CharRNN(cfg).state_dict()), path)
    return path, "2x256 lstm, untrained weights (no tinyshakespeare.txt found)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(path: Path, port: int, workers: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "charrnn", "serve", str(path), "--port", str(port), "--workers", str(workers)]
    process = subprocess.Popen([*cmd, "--queue", "64"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health").raise_for_status()
            return process
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("charrnn serve did not start")
            time.sleep(0.2)


def load(url: str, clients: int, seconds: float) -> dict:
    """`clients` threads posting back to back for `seconds`: rate and latency quantiles."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(index: int) -> None:
        seed = index * 1_000_000
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.perf_counter() < stop_at:
                seed += 1
                start = time.perf_counter()
                response = http.post("/generate", json={"length": LENGTH, "seed": seed})
                took = time.perf_counter() - start
                assert response.status_code == 200, response.text
                with lock:
                    latencies.append(took)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(ordered),
        "requests_per_s": len(ordered) / wall,
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def baseline(path: Path, seconds: float) -> float:
    """Median seconds of Model.generate(200 characters) in this process: no HTTP, no queue."""
    model = charrnn.load(path)
    model.generate(length=LENGTH, seed=0)
    times, stop_at, seed = [], time.perf_counter() + seconds, 0
    while time.perf_counter() < stop_at:
        seed += 1
        start = time.perf_counter()
        model.generate(length=LENGTH, seed=seed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="charrnn serve --workers, each in turn")
    parser.add_argument("--seconds", type=float, default=10.0, help="load per client count")
    parser.add_argument("--train-time", default="60s", help="training time of the model")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        path, made = make_model(Path(tmp), args.train_time)
        base = baseline(path, args.seconds / 2)
        rows = []
        for workers in args.workers:
            port = free_port()
            server = start_server(path, port, workers)
            try:
                url = f"http://127.0.0.1:{port}"
                engine = httpx.get(f"{url}/info").json()["engine"]
                load(url, workers, 1.0)  # warm-up: every worker's model loaded
                rows += [{"workers": workers, **load(url, clients, args.seconds)} for clients in (1, 8)]
            finally:
                server.terminate()
                server.wait(10)

    for row in rows:
        row["p50_over_baseline"] = row["p50_ms"] / (1000 * base)
    result = {
        "benchmark": "serve",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "model": made,
        "engine": engine,
        "length": LENGTH,
        "seconds_per_row": args.seconds,
        "baseline_generate_ms": 1000 * base,
        "rows": rows,
    }
    print(f"{made}; engine {engine}; {LENGTH} characters per answer")
    print(f"baseline: Model.generate in-process, median {1000 * base:.1f} ms\n")
    print("| --workers | clients | requests/s | p50 ms | p99 ms | p50 / baseline |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['workers']} | {row['clients']} | {row['requests_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} "
            f"| {row['p50_over_baseline']:.2f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
