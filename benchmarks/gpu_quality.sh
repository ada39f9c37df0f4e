#!/usr/bin/env bash
# GPU quality per time budget (issue 9) and bf16 training throughput (issue 5), in one go.
# Usage: CORPUS=path/to/tinyshakespeare.txt OUT=results/ bash benchmarks/gpu_quality.sh
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
CORPUS=${CORPUS:-.gpu/tinyshakespeare.txt}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
echo "== quality: 60 s budget, defaults and single changes"
python3 benchmarks/quality.py --corpus "$CORPUS" --budgets 60s --keep "$OUT/runs" \
  --variant "no weight drop|--weight-drop 0" \
  --variant "per-step dropout, no weight drop|--dropout-mask per-step --weight-drop 0" \
  --variant "fp32|--precision fp32" \
  --variant "2x1536|--hidden 1536" \
  --json "$OUT/quality-gpu.json" --markdown "$OUT/quality-gpu.md" | grep -v '^{'
if [ -n "${BF16_BENCH:-}" ]; then
  echo "== bf16 vs fp32 training throughput"
  timeout 100 python3 benchmarks/bench_train.py --device cuda --sizes 2x1024,2x512 --batch 128,256 --seq 256 \
    --steps 15 --rounds 2 --precision fp32,bf16 --json "$OUT/train-bf16.json" | grep -v '^{'
fi
# the defaults run: its log, config and a sample (its 2x1024 weights are too big to bring back)
RUN=$(ls -d "$OUT"/runs/q-60s-0-* | head -1)
cp "$RUN/metrics.jsonl" "$OUT/gpu60-defaults-metrics.jsonl"; cp "$RUN/config.json" "$OUT/gpu60-defaults-config.json"
echo "== sample from the defaults run (best.pt, temp 0.8, seed 1)"
python3 -m charrnn sample "$RUN/best.pt" --temp 0.8 --seed 1 --length 700 | tee "$OUT/gpu60-sample.txt"
rm -rf "$OUT/runs"
ls -la "$OUT"
