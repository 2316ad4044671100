#!/usr/bin/env bash
# Miniature reproduction of wake-sleep back-translation (Cotterell & Kreutzer 2018, Table 1 shape):
# iterations 0 (MLE), 1 (= back-translation), 2 and 3, both directions, several training seeds, and the
# supervised control (controlI: the MLE models trained further on the bitext alone, same schedule and
# number of updates as iterations 1..I); test BLEU mean ± std per system.
#
#   bash examples/wake_sleep/run_miniature.sh [--raw-dir DIR] [--seeds "1 2 3"] [--out DIR] [--iterations 3]
#
# --raw-dir: a corpus in the raw layout (docs/data.md) with train/valid/test.SRC-TGT.* and mono.SRC,
# mono.TGT.  Default: the synthetic `domain` corpus (out-of-domain bitext, in-domain dev/test and
# in-domain monotext on both sides: the paper's TED setting), generated once with corpus seed 1 at
# SIZES (default train=2000,valid=200,test=200,mono_tgt=4000,mono_lrl=4000); the seeds vary training.
# Each seed runs examples/wake_sleep/run.sh (same commands, same knobs: ARCH, MLE_UPDATES, ITER_UPDATES,
# VALID_EVERY, LR, WARMUP, LR_ITER, PATIENCE, ... in the environment; miniature defaults: transformer_lowres_tiny,
# 2000 / 1000 updates, lr 1e-3 / 5e-4) in OUT/seedS; every stage is resumable.  The table goes
# to OUT/results.md and into docs/results.md (section wake_sleep-miniature).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"; [ -x "$PY" ] || PY=python
RAW=""; SEEDS="1 2 3"; OUT="$ROOT/runs/wake_sleep_miniature"; ITERATIONS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --raw-dir) RAW="$(cd "$2" && pwd)"; shift 2 ;;
    --seeds) SEEDS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --iterations) ITERATIONS="$2"; shift 2 ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
set -- $SEEDS
[ $# -ge 1 ] || { echo "--seeds needs at least one seed" >&2; exit 2; }
mkdir -p "$OUT"
RAW_ARG="$RAW"
if [ -z "$RAW" ]; then
  RAW="$OUT/raw"
  [ -f "$RAW/manifest.json" ] || "$PY" -m fairseq_metabt.synthetic --preset domain --out "$RAW" --seed 1 \
      --sizes "${SIZES:-train=2000,valid=200,test=200,mono_tgt=4000,mono_lrl=4000}"
fi
export ARCH="${ARCH:-transformer_lowres_tiny}" MLE_UPDATES="${MLE_UPDATES:-2000}" ITER_UPDATES="${ITER_UPDATES:-1000}"
export VALID_EVERY="${VALID_EVERY:-200}" LR="${LR:-1e-3}" WARMUP="${WARMUP:-200}" LR_ITER="${LR_ITER:-5e-4}"
KNOBS="ARCH=$ARCH MLE_UPDATES=$MLE_UPDATES ITER_UPDATES=$ITER_UPDATES VALID_EVERY=$VALID_EVERY LR=$LR WARMUP=$WARMUP"
KNOBS="$KNOBS LR_ITER=$LR_ITER${EVAL_SUBSETS+ EVAL_SUBSETS=\"$EVAL_SUBSETS\"}"
[ -z "$RAW_ARG" ] && [ -n "${SIZES:-}" ] && KNOBS="$KNOBS SIZES=$SIZES"
SRC="${SRC:-lrl}"; TGT="${TGT:-tgt}"
systems=()
for ((i = 0; i <= ITERATIONS; i++)); do systems+=("iter$i-forward" "iter$i-backward"); done
for ((i = 1; i <= ITERATIONS; i++)); do systems+=("control$i-forward" "control$i-backward"); done
for seed in $SEEDS; do
  echo "=== seed $seed ==="
  bash "$ROOT/examples/wake_sleep/run.sh" --raw-dir "$RAW" --out "$OUT" --seed "$seed" --iterations "$ITERATIONS" \
    --control
  # results/SYSTEM.json per seed, the layout scripts/aggregate_results.py reads
  mkdir -p "$OUT/seed$seed/results"
  for ((i = 0; i <= ITERATIONS; i++)); do
    for direction in forward backward; do
      cp "$OUT/seed$seed/iter$i/$direction/test.json" "$OUT/seed$seed/results/iter$i-$direction.json"
      [ "$i" -eq 0 ] || cp "$OUT/seed$seed/control$i/$direction/test.json" \
          "$OUT/seed$seed/results/control$i-$direction.json"
    done
  done
done
runs=(); for seed in $SEEDS; do runs+=("$OUT/seed$seed"); done
"$PY" "$ROOT/scripts/aggregate_results.py" --runs "${runs[@]}" --systems "${systems[@]}" \
  --title "Wake-sleep back-translation, miniature (${RAW_ARG:-synthetic domain}; forward = $SRC->$TGT, backward = $TGT->$SRC)" \
  --command "$KNOBS bash examples/wake_sleep/run_miniature.sh ${RAW_ARG:+--raw-dir $RAW_ARG }--seeds \"$SEEDS\" --iterations $ITERATIONS" \
  --out "$OUT/results.md" --docs "$ROOT/docs/results.md" --section wake_sleep-miniature
