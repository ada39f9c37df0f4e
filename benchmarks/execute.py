"""task:execute (Learning to Execute): lstm, gru, gf-lstm and gf-gru at about equal
parameters and equal CPU time, per difficulty level.

For each level (digits, nesting) and kind: train a fresh 2-layer run on task:execute
(curriculum mixed) for the same time budget, with the hidden size chosen so the
parameter count is closest to the lstm's; then score greedy exact match and
teacher-forced character accuracy at that level (charrnn.training.execute_eval).
Prints a markdown table and writes benchmarks/results/execute-<date>.json.

    python benchmarks/execute.py                 # full: 75 s per kind, 2 levels (~11 min on 2 cores)
    python benchmarks/execute.py --quick         # 10 s per kind, one level: shows it works
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import charrnn
from charrnn.checkpoint import build_model, load_checkpoint
from charrnn.config import ModelConfig
from charrnn.data.tasks import task_vocab
from charrnn.limits import parameter_count
from charrnn.training.execute_eval import execute_accuracy

KINDS = ("lstm", "gru", "gf-lstm", "gf-gru")
LAYERS = 2


def matched_hidden(kind: str, target: int, vocab: int) -> int:
    """The hidden size whose parameter count is closest to `target`."""

    def count(h: int) -> int:
        return parameter_count(ModelConfig(vocab_size=vocab, model=kind, num_layers=LAYERS, hidden_size=h))

    return min(range(8, 513), key=lambda h: abs(count(h) - target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="75s", help="training time per kind and level")
    parser.add_argument("--levels", default="2x1,3x2", help="DIGITSxNESTING, comma-separated")
    parser.add_argument("--hidden", type=int, default=128, help="lstm hidden size; other kinds match its parameters")
    parser.add_argument("--examples", type=int, default=200, help="scored programs per level")
    parser.add_argument("--quick", action="store_true", help="10 s per kind, level 2x1, 20 examples")
    args = parser.parse_args()
    if args.quick:
        args.budget, args.levels, args.examples, args.hidden = "10s", "2x1", 20, 64
    levels = [tuple(int(v) for v in level.split("x")) for level in args.levels.split(",")]
    vocab = len(task_vocab("task:execute").chars)
    target = parameter_count(ModelConfig(vocab_size=vocab, model="lstm", num_layers=LAYERS, hidden_size=args.hidden))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for digits, nesting in levels:
            for kind in KINDS:
                hidden = matched_hidden(kind, target, vocab)
                start = time.perf_counter()
                done = charrnn.train(
                    "task:execute",
                    name=f"{kind}-{digits}x{nesting}",
                    runs_dir=Path(tmp) / "runs",
                    data_dir=Path(tmp) / "data",
                    length_min=1,
                    length_max=digits,
                    nesting=nesting,
                    curriculum="mixed",
                    task_chars=2_000_000,
                    model=kind,
                    num_layers=LAYERS,
                    hidden_size=hidden,
                    time_budget=args.budget,
                    auto=False,
                )
                wall = time.perf_counter() - start
                ckpt = load_checkpoint(done.run.best)
                score = execute_accuracy(build_model(ckpt), ckpt.vocab, [(digits, nesting)], args.examples, seed=0)
                rows.append(
                    {
                        "digits": digits,
                        "nesting": nesting,
                        "kind": kind,
                        "hidden": hidden,
                        "params": parameter_count(ckpt.model_config),
                        "steps": done.result.step,
                        "wall_s": round(wall, 1),
                        **score[(digits, nesting)],
                    }
                )
                print(rows[-1], flush=True)
    print("\n| digits | nesting | kind | hidden | params | steps | exact match | char accuracy |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['digits']} | {r['nesting']} | {r['kind']} | {r['hidden']} | {r['params']:,} | {r['steps']} "
            f"| {r['exact']:.3f} | {r['char']:.3f} |"
        )
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = Path(__file__).resolve().parent / "results" / f"execute-{date}{'-quick' if args.quick else ''}.json"
    meta = {"date": date, "machine": platform.processor() or platform.machine(), "budget": args.budget}
    out.write_text(json.dumps({**meta, "examples": args.examples, "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
