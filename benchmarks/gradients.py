"""Vanishing gradients, measured: an `rnn` beside an `lstm` trained on the same budget.

Trains a one-layer rnn and a one-layer lstm on task:parity with lines of 20-60 bits (the
same steps, batch, sequence length, width and seed), then measures on fresh parity lines
what `charrnn gradients` shows: the norm of d loss(t) / d state(t-k) for k = 1..K,
averaged over target positions. The rnn's norm falls by orders of magnitude within a few
tens of steps; the lstm's cell carries it much further. Lines of 1-20 bits show less: both
trained models learn to forget at each newline, so neither carries much past a line. Prints a markdown table of the norms at k = 1, 5, 10, 20, 50, 100
and saves every curve as JSON.

    python benchmarks/gradients.py --json benchmarks/results/gradients-2026-12-05.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

SHOWN = (1, 5, 10, 20, 50, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="rnn,lstm", help="Model kinds, comma-separated.")
    parser.add_argument("--steps", type=int, default=600, help="Training steps of each model.")
    parser.add_argument("--hidden", type=int, default=64, help="Units of the one layer.")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--length-min", type=int, default=20, help="Shortest parity line.")
    parser.add_argument("--length-max", type=int, default=60, help="Longest parity line.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-lag", type=int, default=100)
    parser.add_argument("--positions", type=int, default=128, help="Target positions averaged over.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument("--json", type=Path, help="Also save the curves here.")
    args = parser.parse_args()

    import numpy as np
    import torch

    import charrnn
    from charrnn.checkpoint import build_model, load_checkpoint
    from charrnn.data.tasks import generate_task
    from charrnn.neurons.gradients import decay_lag, gradient_norms

    torch.set_num_threads(args.threads)
    # Fresh parity lines (another seed than training's), lengths as trained.
    text = generate_task("task:parity", args.length_min, args.length_max, 50_000, seed=12345)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="charrnn-gradients-") as tmp:
        for kind in args.kinds.split(","):
            t0 = time.perf_counter()
            run = charrnn.train(
                "task:parity",
                name=kind,
                runs_dir=Path(tmp) / "runs",
                data_dir=Path(tmp) / "data",
                auto=False,
                model=kind,
                num_layers=1,
                hidden_size=args.hidden,
                embed_size=16,
                batch_size=args.batch_size,
                seq_len=args.seq_len,
                max_steps=args.steps,
                length_min=args.length_min,
                length_max=args.length_max,
                task_chars=300_000,
                evals=2,
                val_chars=50_000,
                device="cpu",
            )
            trained = time.perf_counter() - t0
            ckpt = load_checkpoint(run.path / "best.pt")
            model = build_model(ckpt)
            ids = np.asarray(ckpt.vocab.encode(text), dtype=np.int64)
            t0 = time.perf_counter()
            report = gradient_norms(model, ids, args.max_lag, args.positions, seed=0)
            measured = time.perf_counter() - t0
            results[kind] = {
                "best_val": run.best_val,
                "train_s": round(trained, 1),
                "gradients_s": round(measured, 2),
                "curves": {name: report.mean(name)[0].tolist() for name in report.values},
            }
            print(f"{kind}: best val {run.best_val:.4f} nats/char, trained {trained:.0f} s, measured {measured:.1f} s")

    shown = [k for k in SHOWN if k <= args.max_lag]
    print()
    print("| model | state | " + " | ".join(f"k={k}" for k in shown) + " | ÷1000 by k |")
    print("|---|---|" + "---|" * (len(shown) + 1))
    for kind, result in results.items():
        for name, curve in result["curves"].items():
            falls = decay_lag(np.asarray(curve), 1000)
            result.setdefault("thousandfold_at", {})[name] = falls
            cells = " | ".join(f"{curve[k - 1]:.1e}" for k in shown)
            print(f"| {kind} | {name} | {cells} | {falls if falls else f'> {args.max_lag}'} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "benchmark": "gradients",
            "date": time.strftime("%Y-%m-%d"),
            "machine": platform.processor() or platform.machine(),
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "corpus": f"task:parity, lengths {args.length_min}-{args.length_max}; measured on 50k fresh characters",
            "results": results,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
