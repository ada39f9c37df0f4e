"""The planner on a tiny and a huge corpus: what it chooses, and that the run ends well.

Generates a 100 KB and a 100 MB English-like text (words drawn from tiny-shakespeare when it is
beside the project, else from a fixed list), runs `charrnn train FILE --time-budget X` with no
other flag on each, and prints the plan, the wall time, the peak RSS and the best validation.
The corpora are written to a temporary folder and deleted afterwards.

    python benchmarks/plan_sanity.py --budget 60s --json benchmarks/results/plan-sanity.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"


def write_corpus(path: Path, size: int, seed: int = 0) -> None:
    """Lines of 4-12 random words, written in 1 MB pieces."""
    if SHARED_CORPUS.is_file():
        words = sorted(set(re.findall(r"[A-Za-z']+", SHARED_CORPUS.read_text(encoding="utf-8"))))
    else:
        words = "the king and queen of a land where all men speak in verse to their lords".split()
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            lines = []
            for _ in range(20_000):
                lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + ".")
            piece = "\n".join(lines)[: size - written] + "\n"
            f.write(piece)
            written += len(piece.encode("utf-8"))


def run(corpus: Path, budget: str, tmp: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        str(corpus),
        "--time-budget",
        budget,
        "--name",
        corpus.stem,
        "--runs-dir",
        str(tmp / "runs"),
        "--data-dir",
        str(tmp / "data"),
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    plan = [line for line in proc.stderr.splitlines() if line.startswith(("plan:", "  "))]
    row = {
        "corpus": corpus.name,
        "bytes": corpus.stat().st_size,
        "budget": budget,
        "exit": proc.returncode,
        "wall_s": round(wall, 1),
        "peak_rss_mb_so_far": round(peak_mb),
        "plan": plan,
    }
    if proc.returncode == 0:
        events = [json.loads(x) for x in (tmp / "runs" / corpus.stem / "metrics.jsonl").read_text().splitlines()]
        evals = [e for e in events if e["event"] == "eval"]
        row["best_val"] = min(e["val_loss"] for e in evals)
        row["end"] = next(e for e in reversed(events) if e["event"] == "end")
    else:
        row["stderr"] = proc.stderr[-800:]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="60s")
    parser.add_argument("--sizes", default="100000,100000000", help="corpus sizes in bytes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for size in (int(s) for s in args.sizes.split(",")):
            corpus = tmp / f"words-{size}.txt"
            write_corpus(corpus, size)
            rows.append(run(corpus, args.budget, tmp))
            corpus.unlink()
            print(json.dumps(rows[-1], indent=1), flush=True)
    if args.json:
        args.json.write_text(
            json.dumps({"benchmark": "plan_sanity", "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
