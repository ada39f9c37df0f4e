"""Run every benchmark in one go and print one table plus one JSON document.

Each benchmark runs as its own process (as a user would run it) and writes its
JSON; this script gathers the ratios that the issues set targets for.

    python benchmarks/run_all.py --out benchmarks/results/cpu.json          # CPU, ~10 minutes
    python benchmarks/run_all.py --quick                                       # smaller, ~3 minutes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, json_path: Path, *args: str) -> dict:
    cmd = [sys.executable, str(HERE / script), "--json", str(json_path), *args]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(json_path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the combined JSON here")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and a 0.2 GB corpus")
    args = parser.parse_args()
    rounds = ["--rounds", "2"] if args.quick else ["--rounds", "3"]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        results = {
            "train": run(
                "bench_train.py",
                t / "train.json",
                "--sizes",
                "2x512,2x128",
                "--batch",
                "64,64",
                "--steps",
                "8" if args.quick else "15",
                *rounds,
            ),
            "sampling": run(
                "bench_sampling.py",
                t / "sampling.json",
                "--kinds",
                "lstm,gru,rnn",
                "--rounds",
                "6" if args.quick else "12",
            ),
            "recurrent": run("bench_recurrent.py", t / "recurrent.json", "--rounds", "2" if args.quick else "3"),
            "startup_memory": run("bench_startup_memory.py", t / "sm.json", "--gb", "0.2" if args.quick else "1"),
        }
    rows = []
    for r in results["train"]["results"]:
        rows.append((f"train {r['size']} B={r['batch']} vs bare nn.LSTM", f"{r['ratio']:.2f}x", ">= 0.90x"))
    for r in results["recurrent"]["results"]:
        if r.get("target"):
            rows.append((f"train {r['kind']} vs fused LSTM", f"{r['ratio_vs_lstm']:.2f}x", f">= {r['target']}x"))
    for r in results["sampling"]["results"]:
        q, at = r["ratios"], f"sample {r['kind']} B={r['streams']}"
        if r["streams"] == 1:
            rows.append((f"{at}: numpy engine vs naive", f"{q['numpy/naive']:.1f}x", ">= 5x (lstm)"))
            rows.append((f"{at}: numpy engine vs memory-bound limit", f"{q['numpy/limit']:.2f}x", ">= 0.9x"))
            if r["kind"] == "lstm" and "numpy-int8/fp32" in q:  # what `sample --weights int8` runs
                rows.append(
                    (
                        f"{at}: int8 vs naive / vs torch fp32 / vs numpy fp32",
                        f"{q['numpy-int8/naive']:.1f}x / {q['numpy-int8/fp32']:.2f}x / {q['numpy-int8/numpy']:.2f}x",
                        ">= 20x / >= 4x / -",
                    )
                )
            if r["kind"] == "lstm" and "int8/fp32" in q:
                rows.append((f"{at}: torch's fbgemm int8 vs torch fp32", f"{q['int8/fp32']:.2f}x", "-"))
        else:
            rows.append((f"{at}: numpy engine vs naive", f"{q['numpy/naive']:.2f}x", ">= 1.5x"))
    sm = results["startup_memory"]
    rows += [
        ("charrnn --help", f"{sm['help_s_median']:.2f} s", "< 0.3 s"),
        ("sample: first character", f"{sm['sample_first_char_s_median']:.2f} s", "< 2.5 s"),
        ("prepare peak RSS", f"{sm['prepare_peak_rss_mb']:.0f} MB", "< 400 MB"),
        ("prepare speed", f"{sm['prepare_mb_per_s']:.1f} MB/s", ">= 30 MB/s"),
        ("train peak RSS, big / 1 MB corpus", f"{sm['train_peak_rss_mb']['ratio']:.2f}", "0.85-1.15"),
    ]
    width = max(len(r[0]) for r in rows)
    print("\n" + "benchmark".ljust(width) + "  measured      target")
    for name, value, target in rows:
        print(f"{name.ljust(width)}  {value:<12}  {target}")
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "results": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"date": report["date"], "summary": rows}))


if __name__ == "__main__":
    main()
