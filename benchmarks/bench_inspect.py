"""Inspection throughput: `cells`, `inspect` and `gates` over a book against a bare forward pass.

A book-sized text (../shared/corpora/tinyshakespeare.txt repeated to --mb megabytes when
present, else generated dialogue) goes through a random-weight LSTM (2x512 by default),
cut into --batch-size parallel streams of 256-step chunks as the commands cut it. Methods:

    forward   the model's own inference forward (embedding -> fused nn.LSTM layers -> head)
              over the same chunks under torch.inference_mode: the baseline
    cells     charrnn.neurons.reports.scan_cells, --feature inside-quotes, every kind
              (what `charrnn cells RUN FILE` runs, feature computed included), in --precision
              (auto, as the commands: int8 or bf16 products where the CPU has them)
    cells-fp32, cells-bf16, cells-int8   the same in each precision
    cells-cell  the same with --kind cell
    inspect   inspect_units with --layer/--unit given: one pass, one unit recorded
    inspect-top  inspect_units choosing the most varying unit: two passes on a long text
    gates     count_gates (gate saturation)
    old-cells what `cells` computed before issue 24: every kind stepped by hand, one addmm and a
              dozen small operations per step, statistics in float64 NumPy on (M, L*U) copies

Methods alternate, in an order reversed every round, so bursts of load from other
processes hit them alike; figures are medians over rounds, each ratio the median of
per-round ratios against `forward` (1.0 = as fast as the bare forward pass).

    python benchmarks/bench_inspect.py --mb 3 --rounds 1 --json inspect.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from charrnn.checkpoint import Checkpoint
from charrnn.config import ModelConfig, TrainConfig
from charrnn.data.vocab import build_vocab
from charrnn.models.charrnn import CharRNN
from charrnn.neurons.activations import encode_text, plan_streams
from charrnn.neurons.features import FEATURES, compute_feature
from charrnn.neurons.precision import resolve_precision
from charrnn.neurons.reports import count_gates, inspect_units, scan_cells

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"


def book(megabytes: float) -> str:
    """A text of about `megabytes` million characters, with quotations and paragraphs."""
    n = int(megabytes * 1_000_000)
    if CORPUS.exists():
        base = CORPUS.read_text(encoding="utf-8")
    else:
        rng = np.random.default_rng(0)
        words = "the a man woman said house door night old little went came saw".split()
        parts = []
        for _ in range(20_000):
            line = " ".join(rng.choice(words, rng.integers(4, 12)))
            parts.append(f'"{line.capitalize()}," he said.' if rng.random() < 0.3 else line.capitalize() + ".")
            parts.append("\n\n" if rng.random() < 0.2 else " ")
        base = "".join(parts)
    return (base * (n // len(base) + 1))[:n]


def forward(model: CharRNN, ids: np.ndarray, streams: int, chunk_len: int = 256) -> None:
    """The bare inference forward over the text in the commands' layout."""
    n = len(ids)
    seg = -(-n // streams)
    grid = np.zeros(streams * seg, dtype=np.int64)
    grid[:n] = ids
    tokens = torch.from_numpy(grid.reshape(streams, seg))
    with torch.inference_mode():
        state = model.init_state(streams)
        for start in range(0, seg, chunk_len):
            _, state = model(tokens[:, start : start + chunk_len], state)


def old_step_layer(layer: torch.nn.LSTM, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple:
    """The former per-step LSTM activations (charrnn before issue 24), every kind kept."""
    w_ih, w_hh = layer.weight_ih_l0, layer.weight_hh_l0
    xw = torch.nn.functional.linear(x, w_ih, layer.bias_ih_l0) + layer.bias_hh_l0
    w_hh_t, (B, T, _), H = w_hh.t(), x.shape, w_hh.shape[1]
    acts = {k: x.new_empty(B, T, H) for k in ("input", "forget", "output", "cell", "hidden")}
    for t in range(T):
        z = torch.addmm(xw[:, t], h, w_hh_t)
        s = torch.sigmoid(z)
        i, f, o = s[:, :H], s[:, H : 2 * H], s[:, 3 * H :]
        c = f * c + i * torch.tanh(z[:, 2 * H : 3 * H])
        h = o * torch.tanh(c)
        acts["input"][:, t], acts["forget"][:, t], acts["output"][:, t], acts["cell"][:, t] = i, f, o, c
        acts["hidden"][:, t] = h
    return acts["hidden"], h, c, acts


def old_cells(model: CharRNN, ids: np.ndarray, feature: np.ndarray, streams: int, chunk_len: int = 256) -> None:
    """The former `cells` pass: old_step_layer for every layer, float64 co-moments per kind."""
    n = len(ids)
    seg = -(-n // streams)
    grid = np.zeros(streams * seg, dtype=np.int64)
    grid[:n] = ids
    tokens = torch.from_numpy(grid.reshape(streams, seg))
    positions = np.arange(streams * seg).reshape(streams, seg)
    hs, cs = [[s[i] for i in range(len(s))] for s in model.init_state(streams)]
    sums: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, seg, chunk_len):
            x = model.embed(tokens[:, start : start + chunk_len])
            per_layer = []
            for li, layer in enumerate(model.stack.layers):
                x, hs[li], cs[li], acts = old_step_layer(layer, x, hs[li], cs[li])
                per_layer.append(acts)
            pos = positions[:, start : start + chunk_len].reshape(-1)
            keep = pos < n
            y = feature[pos[keep]].astype(np.float64)
            for k in per_layer[0]:
                v = torch.stack([a[k] for a in per_layer]).reshape(len(per_layer), -1, per_layer[0][k].shape[-1])
                xm = v.numpy()[:, keep].transpose(1, 0, 2).reshape(int(keep.sum()), -1).astype(np.float64)
                xc, yc = xm - xm.mean(0), y - y.mean()
                sums.setdefault(k, []).append(xc.T @ yc + (xc * xc).sum(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=3.0, help="text size in millions of characters")
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="parallel streams, as --batch-size")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--methods", default="forward,cells,cells-cell,inspect,inspect-top,gates,old-cells")
    parser.add_argument("--precision", default="auto", help="of cells, cells-cell, inspect*, gates (as --precision)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    text = book(args.mb)
    vocab = build_vocab(text)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(vocab), model="lstm", num_layers=args.num_layers, hidden_size=args.hidden_size)
    model = CharRNN(cfg).eval()
    ckpt = Checkpoint(cfg, TrainConfig(), vocab, model.state_dict())
    _, ids = encode_text(text, vocab)
    B = args.batch_size
    p = resolve_precision(model, args.precision)
    methods: dict[str, Callable[[], object]] = {
        "forward": lambda: forward(model, ids, plan_streams(len(ids), B)),
        "cells": lambda: scan_cells(ckpt, model, text, batch_size=B, precision=p),
        "cells-cell": lambda: scan_cells(ckpt, model, text, kind="cell", batch_size=B, precision=p),
        "inspect": lambda: inspect_units(ckpt, model, text, layer=1, unit=0, batch_size=B, precision=p),
        "inspect-top": lambda: inspect_units(ckpt, model, text, batch_size=B, precision=p),
        "gates": lambda: count_gates(ckpt, model, text, batch_size=B, precision=p),
        "cells-fp32": lambda: scan_cells(ckpt, model, text, batch_size=B, precision="fp32"),
        "cells-bf16": lambda: scan_cells(ckpt, model, text, batch_size=B, precision="bf16"),
        "cells-int8": lambda: scan_cells(ckpt, model, text, batch_size=B, precision="int8"),
        "old-cells": lambda: old_cells(model, ids, compute_feature(text, "inside-quotes"), plan_streams(len(ids), B)),
    }
    chosen = [m for m in args.methods.split(",") if m in methods]
    t0 = time.perf_counter()
    for name in FEATURES:
        compute_feature(text, name)
    feature_s = time.perf_counter() - t0
    seconds: dict[str, list[float]] = {m: [] for m in chosen}
    for r in range(args.rounds):
        for m in chosen if r % 2 == 0 else chosen[::-1]:
            start = time.perf_counter()
            methods[m]()
            seconds[m].append(time.perf_counter() - start)
            print(f"round {r} {m}: {seconds[m][-1]:.1f} s", flush=True)
    n = len(text)
    rows = {}
    for m in chosen:
        s = statistics.median(seconds[m])
        ratio = (
            statistics.median(f / t for f, t in zip(seconds["forward"], seconds[m])) if "forward" in seconds else None
        )
        rows[m] = {"seconds": s, "chars_per_s": n / s, "vs_forward": ratio}
    print(f"\n{n} characters, lstm {args.num_layers}x{args.hidden_size}, {plan_streams(n, B)} streams, "
          f"{torch.get_num_threads()} threads, precision {p}; all six features: {feature_s:.1f} s")  # fmt: skip
    print(f"{'method':<12} {'seconds':>8} {'chars/s':>9} {'vs forward':>10}")
    for m, row in rows.items():
        ratio = f"{row['vs_forward']:.2f}" if row["vs_forward"] is not None else "-"
        print(f"{m:<12} {row['seconds']:>8.1f} {row['chars_per_s']:>9.0f} {ratio:>10}")
    if args.json is not None:
        info = {"machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                time.gmtime()), "chars": n, "args": {k: str(v) for k, v in vars(args).items()},
                "feature_seconds": feature_s, "methods": rows, "raw": seconds}  # fmt: skip
        args.json.write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
