"""What bf16 and int8 sampling weights cost in quality: val loss of a trained run per weight mode.

Scores the validation split (the last --val-frac of the corpus, as training
uses) through the very step function that samples, for fp32, bf16 and int8
weights on torch's fast step and for fp32 and int8 on the NumPy engine (what
`charrnn sample` runs on a CPU), and checks that a fixed seed gives the same
sample twice per mode. Every row cuts the text into the same --streams streams.

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
from charrnn.data.corpus import prepare, split
from charrnn.sample import numpy_engine as npsample
from charrnn.sample import numpy_int8 as npint8
from charrnn.sample.fast_step import available_weight_modes, build_stepper
from charrnn.sample.torch_engine import generate, score_with_stepper


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
    cfg = SampleConfig(length=300, seed=42)

    def record(mode: str, nats: float, seconds: float, one: str, two: str) -> None:
        rows.append(
            {
                "weights": mode,
                "val_nats": nats,
                "val_bits": nats / 0.6931471805599453,
                "seconds": seconds,
                "repeatable": one == two,
                "sample": "ROMEO:" + one,
            }
        )
        print(f"{mode:>10}: val {nats:.5f} nats/char  ({seconds:.1f}s)  repeatable={one == two}", flush=True)

    for mode in available_weight_modes(torch.device("cpu")):
        stepper = build_stepper(model, mode)
        start = time.perf_counter()
        nats = score_with_stepper(stepper, model, val, args.streams)
        seconds = time.perf_counter() - start
        one = generate(model, ckpt.vocab, "ROMEO:", cfg, lambda c: None, build_stepper(model, mode))
        two = generate(model, ckpt.vocab, "ROMEO:", cfg, lambda c: None, build_stepper(model, mode))
        record(mode, nats, seconds, one, two)
    for mode in ("fp32", "int8") if npint8.available() else ("fp32",):
        loaded = npsample.load(args.checkpoint, mode)
        if loaded is None:
            break  # a kind the NumPy engine does not serve
        net = loaded[0]
        start = time.perf_counter()
        nats = npsample.score(net, val, args.streams, 256)
        seconds = time.perf_counter() - start
        one = npsample.generate(net, ckpt.vocab, "ROMEO:", cfg, lambda c: None)
        two = npsample.generate(npsample.load(args.checkpoint, mode)[0], ckpt.vocab, "ROMEO:", cfg, lambda c: None)
        record(f"numpy-{mode}", nats, seconds, one, two)
    base = rows[0]["val_nats"]
    for row in rows:
        row["delta_vs_fp32"] = row["val_nats"] - base
    report = {
        "benchmark": "quant_quality",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(args.checkpoint),
        "val_chars": int(len(val)),
        "results": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    for row in rows:
        print(f"--- {row['weights']} (delta {row['delta_vs_fp32']:+.4f})\n{row['sample']}\n")


if __name__ == "__main__":
    main()
