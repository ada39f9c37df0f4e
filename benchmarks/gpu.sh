#!/usr/bin/env bash
# The GPU figures of the README, in one go on a CUDA machine (as run on the lent H100/H200).
# Usage: CORPUS=path/to/tinyshakespeare.txt OUT=results/ bash benchmarks/gpu.sh
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
CORPUS=${CORPUS:-data/tinyshakespeare.txt}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
echo "== start-up"; for i in 1 2 3 4 5; do /usr/bin/time -f "help %e s" python3 -m charrnn --help >/dev/null; done
echo "== training throughput vs bare nn.LSTM"
python3 benchmarks/bench_train.py --device cuda --sizes 2x512,2x512,2x128 --batch 64,256,64 --steps 40 --rounds 3 --json "$OUT/train.json" | grep -v '^{'
echo "== sampling"
timeout 120 python3 benchmarks/bench_sampling.py --device cuda --kinds lstm --rounds 8 --json "$OUT/sample.json" | tail -12
echo "== recurrent kinds"
timeout 90 python3 benchmarks/bench_recurrent.py --device cuda --rounds 5 --json "$OUT/recurrent.json" | tail -10
echo "== quality: 2x512 on tiny-shakespeare, 90 s"
python3 -m charrnn train "$CORPUS" --name gpu512 --hidden 512 --layers 2 --batch-size 64 --seq-len 100 \
  --dropout 0.25 --lr 3e-3 --time-budget 90s --eval-every 300 --runs-dir "$OUT/runs" --data-dir /tmp/data --quiet
python3 -m charrnn runs --runs-dir "$OUT/runs"
echo "== quality: 2x1024 on tiny-shakespeare, 60 s"
python3 -m charrnn train "$CORPUS" --name gpu1024 --hidden 1024 --layers 2 --batch-size 128 --seq-len 256 \
  --dropout 0.5 --lr 2e-3 --time-budget 60s --eval-every 50 --runs-dir "$OUT/runs" --data-dir /tmp/data --quiet
python3 -m charrnn runs --runs-dir "$OUT/runs"
echo "== sample on cuda, time to first character"
/usr/bin/time -f "sample total %e s" python3 -m charrnn sample gpu512 --runs-dir "$OUT/runs" --device cuda --length 400 --seed 1
# Weights-only copies small enough to bring back (optimizer state dropped).
python3 - "$OUT" <<'PY'
import sys
from pathlib import Path
from charrnn.checkpoint import load_checkpoint, save_checkpoint
out = Path(sys.argv[1])
for name in ("gpu512", "gpu1024"):
    run = out / "runs" / name
    if (run / "best.pt").is_file():
        ckpt = load_checkpoint(run / "best.pt")
        ckpt.optimizer_state = None
        ckpt.hidden = None
        save_checkpoint(ckpt, out / f"{name}-best.pt")
        (out / f"{name}-metrics.jsonl").write_text((run / "metrics.jsonl").read_text())
PY
rm -rf "$OUT/runs"
ls -la "$OUT"
