"""What bf16 and int8 sampling weights cost in quality: val loss of a trained run per weight mode.

Scores the validation split (the last --val-frac of the corpus, as training
uses) through the very step function that samples, for fp32, bf16 and int8
weights, and checks that a fixed seed gives the same sample twice per mode.

    python benchmarks/bench_quant_quality.py checkpoints/RUN/best.pt tinyshakespeare.txt --json q.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from charrnn.checkpoint import build_model, load_checkpoint
from charrnn.config import SampleConfig
from charrnn.corpus import prepare, split
from charrnn.fastpath import available_weight_modes, build_stepper
from charrnn.sampling import generate, score_with_stepper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--val-frac", type=float, default=0.1)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    model = build_model(ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare(args.corpus, Path(tmp))
        _, val = split(data.tokens, args.val_frac)
        val = val.copy()
    rows = []
    for mode in available_weight_modes(torch.device("cpu")):
        stepper = build_stepper(model, mode)
        start = time.perf_counter()
        nats = score_with_stepper(stepper, model, val, args.streams)
        seconds = time.perf_counter() - start
        cfg = SampleConfig(length=300, seed=42)
        one = generate(model, ckpt.vocab, "ROMEO:", cfg, lambda c: None, build_stepper(model, mode))
        two = generate(model, ckpt.vocab, "ROMEO:", cfg, lambda c: None, build_stepper(model, mode))
        rows.append({"weights": mode, "val_nats": nats, "val_bits": nats / 0.6931471805599453,
                     "seconds": seconds, "repeatable": one == two, "sample": "ROMEO:" + one})
        print(f"{mode:>5}: val {nats:.4f} nats/char  ({seconds:.1f}s)  repeatable={one == two}", flush=True)
    base = rows[0]["val_nats"]
    for row in rows:
        row["delta_vs_fp32"] = row["val_nats"] - base
    report = {"benchmark": "quant_quality", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "checkpoint": str(args.checkpoint), "val_chars": int(len(val)), "results": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    for row in rows:
        print(f"--- {row['weights']} (delta {row['delta_vs_fp32']:+.4f})\n{row['sample']}\n")


if __name__ == "__main__":
    main()
