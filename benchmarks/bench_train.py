"""Training throughput: charrnn's own loop against a bare nn.LSTM loop, same sizes, same run.

The bare loop is the reference of ../shared/REFERENCE.md: embedding -> fused
multi-layer nn.LSTM -> linear, AdamW, global-norm clipping, random tokens, no
data pipeline, no logging. charrnn's loop is the real Trainer: memory-mapped
corpus, stream batcher, carried state, schedule, clipping, NaN guard, progress
events, metrics.jsonl, a checkpoint at the start and the end. Both run in
alternating rounds; each figure is the median chars/s over the steady-state
steps of its rounds, and the ratio is taken within this run.

    python benchmarks/bench_train.py --sizes 2x512,2x128 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.corpus import prepare
from charrnn.rundir import RunPaths
from charrnn.training.loop import Trainer

VOCAB = 65


class BareLM(nn.Module):
    def __init__(self, layers: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden)
        self.rnn = nn.LSTM(hidden, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, x, state):
        out, state = self.rnn(self.embed(x), state)
        return self.head(out), state


def bare_rates(
    layers: int, hidden: int, batch: int, seq: int, steps: int, device: torch.device, precision: str = "fp32"
) -> list[float]:
    """chars/s of each timed step of the bare loop (after 3 warm-up steps)."""
    torch.manual_seed(0)
    model = BareLM(layers, hidden).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    h = torch.zeros(layers, batch, hidden, device=device)
    state = (h, h.clone())
    rates = []
    for i in range(steps + 3):
        x = torch.randint(0, VOCAB, (batch, seq), device=device)
        y = torch.randint(0, VOCAB, (batch, seq), device=device)
        start = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            logits, state = model(x, state)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state = tuple(s.detach() for s in state)
        loss.item()  # one sync per step, as a logging loop would have
        if i >= 3:
            rates.append(batch * seq / (time.perf_counter() - start))
    return rates


def charrnn_rates(
    corpus: Path, layers: int, hidden: int, batch: int, seq: int, steps: int, device: str, precision: str = "fp32"
) -> list[float]:
    """chars/s between consecutive per-step events of the real Trainer (after 3 warm-up steps)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(corpus, Path(tmp) / "data")
        mcfg = ModelConfig(vocab_size=len(data.vocab), num_layers=layers, hidden_size=hidden)
        tcfg = TrainConfig(
            batch_size=batch,
            seq_len=seq,
            max_steps=steps + 3,
            eval_every=10**9,
            log_every=1,
            device=device,
            val_frac=0.01,
            val_chars=batch * seq + 1,
            precision=precision,
        )
        stamps: list[float] = []

        def on_event(event: dict) -> None:
            if event["event"] == "train":
                stamps.append(time.perf_counter())

        info = {"path": str(corpus), "sha256": data.sha256, "encoding": "utf-8", "chars": len(data.tokens)}
        Trainer(mcfg, tcfg, data, RunPaths(Path(tmp) / "run"), info, on_event=on_event).run()
    gaps = np.diff(stamps[2:])
    return [batch * seq / g for g in gaps]


def make_corpus(path: Path, chars: int) -> None:
    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(bytes(range(32, 32 + VOCAB)), dtype=np.uint8)
    path.write_bytes(alphabet[rng.integers(0, VOCAB, chars)].tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2x512,2x128", help="LAYERSxHIDDEN, comma separated")
    parser.add_argument("--batch", default="64,64", help="batch size per size")
    parser.add_argument("--seq", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="fp32 and/or bf16, comma separated (bf16: CUDA)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec, batch in zip(args.sizes.split(","), [int(b) for b in args.batch.split(",")]):
            layers, hidden = (int(v) for v in spec.split("x"))
            corpus = Path(tmp) / f"random-{batch}.txt"
            make_corpus(corpus, batch * args.seq * (args.steps + 6) * 2)
            for precision in args.precision.split(","):
                bare, ours = [], []
                for _ in range(args.rounds):
                    bare += bare_rates(layers, hidden, batch, args.seq, args.steps, device, precision)
                    ours += charrnn_rates(corpus, layers, hidden, batch, args.seq, args.steps, args.device, precision)
                row = {
                    "size": spec,
                    "batch": batch,
                    "seq": args.seq,
                    "precision": precision,
                    "bare_chars_per_s": statistics.median(bare),
                    "charrnn_chars_per_s": statistics.median(ours),
                }
                row["ratio"] = row["charrnn_chars_per_s"] / row["bare_chars_per_s"]
                results.append(row)
                print(
                    f"{spec:>7} B={batch:<4} {precision} bare {row['bare_chars_per_s']:>12,.0f}  charrnn "
                    f"{row['charrnn_chars_per_s']:>12,.0f} chars/s  ratio {row['ratio']:.3f}",
                    flush=True,
                )
    report = {
        "benchmark": "train",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
