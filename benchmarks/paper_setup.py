"""The gated-feedback paper's character-level set-up, scaled down: stacked vs gated-feedback.

Chung et al. (2015) train on enwik8 with the 205 most frequent characters plus one unknown
symbol, a 90/5/5 split, and report test bits/char. Here the corpus is the one at hand
(../shared/corpora/tinyshakespeare.txt, or a file given with --corpus), with `--max-vocab`
scaled to it, the same split, and a 2-layer model of each kind at about equal parameters trained
for the same number of optimizer steps (so a busy machine changes the wall time, not the
result). The best checkpoint (by validation) is scored on the test part with
`Model.evaluate_split("test")`, i.e. `charrnn eval RUN --split test`.

    python benchmarks/paper_setup.py                   # 4 kinds x 1,000 steps, 2x128 lstm size
    python benchmarks/paper_setup.py --quick           # 60 steps each: shows that it runs

Prints a markdown table and writes benchmarks/results/paper-setup-<date>.json. On a machine
shared with other jobs, run it with OMP_NUM_THREADS=1: two torch threads on two busy cores
stalled for tens of seconds at a time (2026-12-05: 180 steps in 197 s with 2 threads, 1,000
in 49 s with one).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import charrnn
from charrnn.config import ModelConfig
from charrnn.limits import parameter_count

KINDS = ("lstm", "gf-lstm", "gru", "gf-gru")
LAYERS = 2
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora" / "tinyshakespeare.txt"


def matched_hidden(kind: str, target: int, vocab: int) -> int:
    """The hidden size whose parameter count is closest to `target`."""

    def count(h: int) -> int:
        return parameter_count(ModelConfig(vocab_size=vocab, model=kind, num_layers=LAYERS, hidden_size=h))

    return min(range(8, 1025), key=lambda h: abs(count(h) - target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=SHARED, help="text file (default: tiny-shakespeare)")
    parser.add_argument("--max-vocab", type=int, default=50, help="most frequent characters kept (+1 unknown)")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per kind")
    parser.add_argument("--hidden", type=int, default=128, help="lstm hidden size; other kinds match its parameters")
    parser.add_argument("--quick", action="store_true", help="60 steps per kind, 2x64")
    args = parser.parse_args()
    if not args.corpus.is_file():
        raise SystemExit(f"no corpus at {args.corpus}: give one with --corpus")
    if args.quick:
        args.steps, args.hidden = 60, 64
    vocab = args.max_vocab + 1
    target = parameter_count(ModelConfig(vocab_size=vocab, model="lstm", num_layers=LAYERS, hidden_size=args.hidden))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            hidden = matched_hidden(kind, target, vocab)
            start = time.perf_counter()
            done = charrnn.train(
                str(args.corpus),
                name=kind,
                runs_dir=Path(tmp) / "runs",
                data_dir=Path(tmp) / "data",
                max_vocab=args.max_vocab,
                split="90/5/5",
                model=kind,
                num_layers=LAYERS,
                hidden_size=hidden,
                batch_size=32,
                seq_len=64,
                lr=3e-3,
                max_steps=args.steps,
                evals=5,
                seed=1,
                auto=False,
            )
            wall = time.perf_counter() - start
            model = charrnn.load(done.path, engine="torch")
            test = model.evaluate_split("test", data_dir=Path(tmp) / "data")
            rows.append(
                {
                    "kind": kind,
                    "hidden": hidden,
                    "params": parameter_count(model.config),
                    "steps": done.result.step,
                    "best_val_bpc": done.best_val / math.log(2),
                    "test_bpc": test / math.log(2),
                    "wall_s": round(wall, 1),
                }
            )
            print(rows[-1], flush=True)
    print("\n| kind | hidden | params | steps | best val bits/char | test bits/char | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['kind']} | {r['hidden']} | {r['params']:,} | {r['steps']} | {r['best_val_bpc']:.3f} "
            f"| {r['test_bpc']:.3f} | {r['wall_s']} |"
        )
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = Path(__file__).resolve().parent / "results" / f"paper-setup-{date}{'-quick' if args.quick else ''}.json"
    meta = {"date": date, "machine": platform.processor() or platform.machine(), "corpus": args.corpus.name}
    settings = {"max_vocab": args.max_vocab, "split": "90/5/5", "steps": args.steps, "batch": 32, "seq_len": 64}
    out.write_text(json.dumps({**meta, **settings, "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
