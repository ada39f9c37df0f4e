"""Validation loss per time budget: `charrnn train CORPUS --time-budget X` with the defaults
(and, for the ablation, the defaults with one technique switched), one run after another.

Each run is a fresh `charrnn` process, timed from outside (wall time includes start-up,
corpus preparation and the speed probe). The table gives the best validation loss on
the whole val split in nats/char and bits/char, when it was reached, and what the planner
chose. Results go to a JSON file and a markdown table.

    python benchmarks/quality.py --budgets 100s,10m --json benchmarks/results/quality-cpu.json
    python benchmarks/quality.py --budgets 10m --variant "no dropout|--dropout 0 --weight-drop 0"
    python benchmarks/quality.py --budgets 100s,10m --runs 3 --record benchmarks/RESULTS.md

`--record` writes the median and spread of each (budget, variant) into the table between the
QUALITY_BEGIN and QUALITY_END marks of that file, one row per machine class, budget and variant
(a new run replaces its row, the other rows stay).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPUS = ROOT.parent / "shared" / "corpora" / "tinyshakespeare.txt"


def run_once(corpus: Path, budget: str, flags: list[str], runs_dir: Path, name: str, data_dir: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        str(corpus),
        "--time-budget",
        budget,
        "--name",
        name,
        "--runs-dir",
        str(runs_dir),
        "--data-dir",
        str(data_dir),
        "--quiet",
        *flags,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"budget": budget, "flags": flags, "error": proc.stderr.strip()[-500:], "wall_s": wall}
    run = runs_dir / name
    config = json.loads((run / "config.json").read_text())
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [e for e in events if e["event"] == "eval"]
    best = min(evals, key=lambda e: e["val_loss"])
    end = next((e for e in reversed(events) if e["event"] == "end"), {})
    model, train = config["model"], config["train"]
    return {
        "budget": budget,
        "flags": flags,
        "wall_s": round(wall, 1),
        "best_val": best["val_loss"],
        "best_bpc": best["val_loss"] / math.log(2),
        "best_at_s": best["time"],
        "best_step": best["step"],
        "steps": end.get("step"),
        "stop": end.get("reason"),
        "epochs": round(end.get("step", 0) / max(config["steps_per_epoch"], 1), 2),
        "evals": [(e["time"], round(e["val_loss"], 4)) for e in evals],
        "config": f"{model['num_layers']}x{model['hidden_size']} {model['model']}, embed {model['embed_size']}, "
        f"B={train['batch_size']} T={train['seq_len']}, lr {train['lr']:g}, dropout {model['dropout']:g} "
        f"({model['dropout_mask']}), weight drop {model['weight_drop']:g}, {train['precision']}",
        "plan": config["corpus"].get("plan"),
        "device": config["device"],
    }


def sgemm_gflops(n: int = 2048, reps: int = 5) -> float:
    """This machine's fp32 matmul speed right now, in a fresh process as training sees it.

    Shared machines vary by a third from hour to hour; a fixed-time result reads only
    beside the speed it ran at.
    """
    code = (
        "import time, torch; a = torch.randn({n}, {n}); a @ a; t = time.perf_counter()\n"
        "for _ in range({reps}): a @ a\n"
        "print(2 * {n} ** 3 * {reps} / (time.perf_counter() - t) / 1e9)"
    ).format(n=n, reps=reps)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return round(float(out), 1)


def _shown_path(path: Path) -> str:
    """The corpus path relative to the repository (results are committed), else its name."""
    try:
        return os.path.relpath(path.resolve(), ROOT)
    except ValueError:
        return path.name


QUALITY_BEGIN = "<!-- quality.py --record: begin -->"
QUALITY_END = "<!-- quality.py --record: end -->"
QUALITY_HEAD = [
    "| machine | budget | variant | runs | median best val (nats/char) | spread | median steps | date (UTC) |",
    "|---|---|---|---:|---:|---|---:|---|",
]


def machine_class() -> str:
    """The CPU as the issues name it: model, cores, and the matrix instructions that matter here."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = " ".join(value.split())
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    if "amx_bf16" in flags:
        isa = "AMX"
    elif "avx512_bf16" in flags:
        isa = "AVX-512 BF16, no AMX"
    else:
        isa = "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name}, {os.cpu_count()} cores, {isa}"


def summary_rows(rows: list[dict], machine: str, day: str) -> dict[tuple[str, str, str], str]:
    """(machine, budget, variant) -> one table row: median and spread of the runs' best val."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if "error" not in r:
            groups.setdefault((r["budget"], r["variant"]), []).append(r)
    table = {}
    for (budget, variant), runs in groups.items():
        vals = sorted(r["best_val"] for r in runs)
        steps = sorted(r["steps"] or 0 for r in runs)
        spread = f"{vals[0]:.4f}–{vals[-1]:.4f}" if len(vals) > 1 else "one run"
        table[(machine, budget, variant)] = (
            f"| {machine} | {budget} | {variant} | {len(vals)} | {statistics.median(vals):.4f} | {spread} | "
            f"{statistics.median(steps):,.0f} | {day} |"
        )
    return table


def record(path: Path, rows: list[dict], machine: str, day: str) -> None:
    """Put the summary rows into the marked table of `path`, replacing rows of the same key."""
    text = path.read_text(encoding="utf-8")
    if QUALITY_BEGIN not in text or QUALITY_END not in text:
        sys.exit(f"{path} has no {QUALITY_BEGIN} ... {QUALITY_END} block to record into")
    head, rest = text.split(QUALITY_BEGIN, 1)
    block, tail = rest.split(QUALITY_END, 1)
    kept = {}
    for line in block.strip().splitlines()[len(QUALITY_HEAD) :]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        kept[(cells[0], cells[1], cells[2])] = line
    kept.update(summary_rows(rows, machine, day))
    body = "\n".join(QUALITY_HEAD + [kept[k] for k in sorted(kept)])
    path.write_text(f"{head}{QUALITY_BEGIN}\n{body}\n{QUALITY_END}{tail}", encoding="utf-8")


def markdown(rows: list[dict]) -> str:
    lines = [
        "| budget | variant | best val nats/char | bits/char | reached at | wall | epochs | stop | configuration |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['budget']} | {r['variant']} | error | | | {r['wall_s']:.0f} s | | | {r['error'][:80]} |"
            )
            continue
        lines.append(
            f"| {r['budget']} | {r['variant']} | {r['best_val']:.4f} | {r['best_bpc']:.4f} | "
            f"{r['best_at_s']:.0f} s | {r['wall_s']:.0f} s | {r['epochs']} | {r['stop']} | {r['config']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=SHARED_CORPUS)
    parser.add_argument("--budgets", default="100s,10m", help="comma separated durations")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="'name|flags' run besides the defaults (repeatable); 'defaults|' is always first",
    )
    parser.add_argument("--no-defaults", action="store_true", help="run only the variants")
    parser.add_argument("--keep", type=Path, help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each budget and variant")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--record", type=Path, help="record medians in this file's marked table (RESULTS.md)")
    args = parser.parse_args()
    if not args.corpus.is_file():
        sys.exit(f"corpus {args.corpus} not found: pass --corpus (tiny-shakespeare is expected beside the project)")
    variants = ([] if args.no_defaults else [("defaults", [])]) + [
        (v.split("|", 1)[0].strip(), shlex.split(v.split("|", 1)[1])) for v in args.variant
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = args.keep or Path(tmp) / "runs"
        for budget in [b for b in args.budgets.split(",") for _ in range(args.runs)]:
            for i, (label, flags) in enumerate(variants):
                gflops = sgemm_gflops()
                row = {
                    "variant": label,
                    "sgemm_gflops_before": gflops,
                    **run_once(
                        args.corpus, budget, flags, runs_dir, f"q-{budget}-{i}-{int(time.time())}", Path(tmp) / "data"
                    ),
                }
                rows.append(row)
                shown = {
                    k: row.get(k)
                    for k in (
                        "budget",
                        "variant",
                        "best_val",
                        "best_bpc",
                        "best_at_s",
                        "wall_s",
                        "stop",
                        "config",
                        "error",
                        "sgemm_gflops_before",
                    )
                }
                print(json.dumps(shown), flush=True)
    report = {
        "benchmark": "quality",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_class(),
        "cpus": os.cpu_count(),
        "corpus": _shown_path(args.corpus),
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    table = markdown(rows)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.record:
        record(args.record, rows, report["machine"], report["date"][:10])
    print(table)


if __name__ == "__main__":
    main()
