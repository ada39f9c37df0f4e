"""Does weight averaging earn its place? One `charrnn train --time-budget X` with the defaults,
and beside the trained weights, averages of them scored on the same validation split.

The run is a normal `charrnn train` (a child process, timed from outside) with the trainer
patched to keep, from half-way through the time budget on, exponential moving averages of
the weights (decays 0.99 and 0.998 per step) and a uniform average of the weights from 75% of
the budget on (stochastic weight averaging with the run's own cosine schedule), each updated
every 4th step. After the run each average is loaded into the model and scored on the whole
validation split exactly as the run scores itself. The averaging costs the steps of the second
half three foreach lerps every 4th step (a 2x768 model: about 2% of the step time on the CPU),
so the run itself is close to the defaults' own.

    python benchmarks/weight_averaging.py --budget 10m --runs 3 --json benchmarks/results/averaging.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"
DECAYS = (0.99, 0.998)  # per step
EMA_FROM, SWA_FROM = 0.5, 0.75  # fractions of the run's progress
EVERY = 4  # averages are updated every EVERY steps (an EMA with decay d**EVERY): less memory traffic


def child(out: Path, argv: list[str]) -> None:
    """Run `charrnn train argv` in this process with the averages kept; write them to `out`."""
    import torch

    from charrnn.cli import app
    from charrnn.training import loop
    from charrnn.training.evaluate import evaluate

    original = loop.Trainer._run

    def run(self: Any) -> Any:
        params = list(self.model.parameters())
        emas: dict[float, list[torch.Tensor]] = {}
        swa: list[torch.Tensor] = []
        count = 0
        step = self.optimizer.step

        def averaged_step(*args: Any, **kwargs: Any) -> Any:
            nonlocal count
            result = step(*args, **kwargs)
            progress = self.progress()
            if self.step % EVERY:
                return result
            with torch.no_grad():
                now = [p.detach() for p in params]
                if progress >= EMA_FROM:
                    for d in DECAYS:
                        if d in emas:
                            torch._foreach_lerp_(emas[d], now, 1.0 - d**EVERY)
                        else:
                            emas[d] = [p.clone() for p in now]
                if progress >= SWA_FROM:
                    count += 1
                    if count == 1:
                        swa.extend(p.clone() for p in now)
                    else:
                        torch._foreach_lerp_(swa, now, 1.0 / count)
            return result

        self.optimizer.step = averaged_step
        result = original(self)
        trained = [p.detach().clone() for p in params]
        scores: dict[str, float] = {"final": self.last_val, "best": self.best_val}
        candidates = {f"ema {d}": w for d, w in emas.items()} | ({"swa": swa} if swa else {})
        for name, weights in candidates.items():
            with torch.no_grad():
                torch._foreach_copy_(params, weights)
            t0 = time.perf_counter()
            scores[name] = evaluate(self.model, self.val_tokens, self.cfg.val_streams, loop.VAL_CHUNK, self.device)
            scores[f"{name} seconds"] = time.perf_counter() - t0
        with torch.no_grad():
            torch._foreach_copy_(params, trained)
        scores["steps"] = self.step
        scores["swa_steps"] = count
        out.write_text(json.dumps(scores))
        return result

    loop.Trainer._run = run
    app(["train", *argv], standalone_mode=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--budget", default="10m")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child is not None:
        child(args.child, rest)
        return
    if not args.corpus.is_file():
        sys.exit(f"error: no corpus at {args.corpus}: pass --corpus FILE.")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            out = Path(tmp) / f"scores-{i}.json"
            cmd = [sys.executable, __file__, "--child", str(out), str(args.corpus), "--time-budget", args.budget,
                   "--name", f"avg{i}", "--runs-dir", f"{tmp}/runs", "--data-dir", f"{tmp}/data", "--quiet"]  # fmt: skip
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            wall = time.perf_counter() - t0
            if proc.returncode != 0 or not out.is_file():
                sys.exit(f"error: run {i} failed: {proc.stderr.strip()[-400:]}")
            row = json.loads(out.read_text()) | {"wall_s": wall}
            rows.append(row)
            names = ["final", "best", *(f"ema {d}" for d in DECAYS), "swa"]
            print(f"run {i}: " + ", ".join(f"{n} {row[n]:.4f}" for n in names if n in row), flush=True)
    names = [n for n in rows[0] if not n.endswith("seconds") and n not in ("steps", "swa_steps", "wall_s")]
    print(f"\n{args.budget}, {len(rows)} runs; median best val (nats/char) and median gain over the run's best:")
    for n in names:
        gains = [r["best"] - r[n] for r in rows]
        print(f"  {n:<10} {statistics.median(r[n] for r in rows):.4f}  {statistics.median(gains):+.4f}")
    if args.json is not None:
        info = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": platform.processor() or platform.machine(),
            "budget": args.budget,
            "runs": rows,
        }
        args.json.write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
