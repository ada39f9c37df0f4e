#!/usr/bin/env bash
# Every recurrent kind at about 1.05M parameters, the same CPU time on tiny-shakespeare, then parity
# accuracy per length after the same time on task:parity. Usage: bash benchmarks/compare_kinds.sh CORPUS OUTDIR
set -eu
CORPUS=$1; OUT=$2; LM_BUDGET=${LM_BUDGET:-60s}; TASK_BUDGET=${TASK_BUDGET:-40s}
mkdir -p "$OUT"
for spec in lstm:252 gru:288 rnn:496 peephole-lstm:252 gf-rnn:408 gf-gru:268 gf-lstm:236; do
  kind=${spec%%:*}; hidden=${spec##*:}
  python -m charrnn train "$CORPUS" --name "lm-$kind" --model "$kind" --layers 2 --hidden "$hidden" \
    --batch-size 32 --seq-len 100 --lr 3e-3 --time-budget "$LM_BUDGET" --eval-every 1000000 \
    --runs-dir "$OUT/runs" --data-dir "$OUT/data" --quiet
  python -m charrnn train task:parity --name "par-$kind" --model "$kind" --layers 2 --hidden "$hidden" \
    --length-max 20 --batch-size 32 --seq-len 100 --lr 3e-3 --time-budget "$TASK_BUDGET" --eval-every 1000000 \
    --runs-dir "$OUT/runs" --data-dir "$OUT/data" --quiet
  python -m charrnn eval "par-$kind" task:parity --lengths 5,10,20,40 --examples 300 --json --runs-dir "$OUT/runs" > "$OUT/parity-$kind.json"
done
python -m charrnn runs --runs-dir "$OUT/runs"
