#!/usr/bin/env bash
# Every recurrent kind at about 1.05M parameters, the same CPU time on tiny-shakespeare, then parity
# accuracy per length after the same time on task:parity. Usage: bash benchmarks/compare_kinds.sh CORPUS OUTDIR
# Settings by environment: LM_BUDGET, TASK_BUDGET, SEQ, LR, LENGTH_MAX (defaults below).
set -eu
CORPUS=$1; OUT=$2
LM_BUDGET=${LM_BUDGET:-150s}; TASK_BUDGET=${TASK_BUDGET:-60s}; SEQ=${SEQ:-32}; LR=${LR:-5e-3}; LENGTH_MAX=${LENGTH_MAX:-10}
mkdir -p "$OUT"
for spec in lstm:252 gru:288 rnn:496 peephole-lstm:252 gf-rnn:408 gf-gru:268 gf-lstm:236; do
  kind=${spec%%:*}; hidden=${spec##*:}
  # --no-auto: the embedding stays as wide as the hidden layer, so the parameter counts above hold.
  python -m charrnn train "$CORPUS" --name "lm-$kind" --model "$kind" --layers 2 --hidden "$hidden" --no-auto \
    --batch-size 32 --seq-len "$SEQ" --lr "$LR" --time-budget "$LM_BUDGET" --evals 1 \
    --runs-dir "$OUT/runs" --data-dir "$OUT/data" --quiet
  python -m charrnn train task:parity --name "par-$kind" --model "$kind" --layers 2 --hidden "$hidden" --no-auto \
    --length-max "$LENGTH_MAX" --batch-size 32 --seq-len "$SEQ" --lr "$LR" --time-budget "$TASK_BUDGET" --evals 1 \
    --runs-dir "$OUT/runs" --data-dir "$OUT/data" --quiet
  python -m charrnn eval "par-$kind" task:parity --lengths 5,10,20,40 --examples 300 --json --runs-dir "$OUT/runs" > "$OUT/parity-$kind.json"
done
python -m charrnn runs --runs-dir "$OUT/runs"
