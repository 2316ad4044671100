#!/usr/bin/env bash
# Miniature reproduction of meta back-translation: supervised baseline, back-translation with the
# fixed pre-trained backward model, and MetaBT, over several seeds; BLEU mean ± std.
#
#   bash examples/metabt/run_miniature.sh [--raw-dir DIR] [--seeds "1 2 3"] [--out DIR]
#                                         [--max-update N] [--ft-update M]
#
# --raw-dir: a corpus in the raw layout (docs/data.md) with train/valid/test.lrl-tgt.* and
# mono.tgt (default: the synthetic quickstart corpus of each seed).  Each seed runs
# scripts/quickstart.sh (same systems, same commands) in OUT/seedS; the table goes to
# OUT/results.md and into docs/results.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RAW_DIR=""; SEEDS="1 2 3"; OUT="$ROOT/runs/metabt_miniature"; MAXU=""; FTU=""
while [ $# -gt 0 ]; do
  case "$1" in
    --raw-dir) RAW_DIR="$(cd "$2" && pwd)"; shift 2 ;;
    --seeds) SEEDS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --max-update) MAXU="$2"; shift 2 ;;
    --ft-update) FTU="$2"; shift 2 ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
set -- $SEEDS
[ $# -ge 1 ] || { echo "--seeds needs at least one seed" >&2; exit 2; }
mkdir -p "$OUT"
for seed in $SEEDS; do
  echo "=== seed $seed ==="
  QUICKSTART_DIR="$OUT/seed$seed" SEED="$seed" RAW_DIR="$RAW_DIR" \
    ${MAXU:+MAX_UPDATE=$MAXU} ${FTU:+FT_UPDATE=$FTU} bash "$ROOT/scripts/quickstart.sh"
done
"$ROOT/.venv/bin/python" "$ROOT/scripts/aggregate_results.py" --runs "$OUT"/seed* \
  --systems baseline baseline_ft bt metabt --title "Meta back-translation, miniature (${RAW_DIR:-synthetic quickstart})" \
  --command "bash examples/metabt/run_miniature.sh ${RAW_DIR:+--raw-dir $RAW_DIR }--seeds \"$SEEDS\"${MAXU:+ --max-update $MAXU}${FTU:+ --ft-update $FTU}" \
  --out "$OUT/results.md" --docs "$ROOT/docs/results.md" --section metabt-miniature
