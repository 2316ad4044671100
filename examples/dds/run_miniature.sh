#!/usr/bin/env bash
# Miniature reproduction of DDS for multilingual NMT (Wang et al. 2020, Table 2 and Fig. 4/5):
# uniform, temperature, related, TCS, DDS and TCS+DDS, all through task dds_translation, several seeds;
# BLEU on the LRL test set (mean ± std) and the language-usage plot of TCS+DDS and DDS.
#
#   bash examples/dds/run_miniature.sh [--raw-dir DIR] [--work-dir DIR] [--seeds "1 2 3"]
#        [--langs "lrl hrl unra unrb nsy"] [--lrl lrl] [--related hrl] [--pivot tgt]
#        [--max-update 3000] [--interval 50] [--scorer-lr 1e-4] [--arch transformer_lowres_small]
#        [--systems "uniform temperature related tcs dds tcs_dds"] [--extra-train "fairseq-train args"]
# Extra systems: dds_centered, tcs_dds_centered (--dds-reward-centering, a baseline Alg. 2 does not have).
#
# Default data: the synthetic `multilingual` preset with --multiway (every source language translates a
# subset of one target pool, so targets have 1-5 source languages), generated into WORK/raw.  A real
# corpus in the raw layout (docs/data.md) runs unchanged: --raw-dir DIR --langs "aze tur rus por ces ..."
# --lrl aze --related tur --pivot eng.  Results: WORK/results.md, docs/results.md (section dds-miniature),
# WORK/seedS/SYSTEM/dds_languages.png and examples/dds/language_usage_{tcs_dds,dds}.png (seed of the first run).
# DOCS_RESULTS=FILE writes the table there instead of docs/results.md (e.g. for a smoke run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"; BIN="$(dirname "$PY")"
RAW=""; WORK="$ROOT/runs/dds_miniature"; SEEDS="1 2 3"; LANGS="lrl hrl unra unrb nsy"; LRL=lrl; REL=hrl
PIVOT=tgt; MAXUPD=3000; K=50; SLR=1e-4; ARCH=transformer_lowres_small; EXTRA_TRAIN=""
SYSTEMS="uniform temperature related tcs dds tcs_dds"
while [ $# -gt 0 ]; do
  case "$1" in
    --raw-dir) RAW="$(cd "$2" && pwd)"; shift 2;; --work-dir) WORK="$2"; shift 2;; --seeds) SEEDS="$2"; shift 2;;
    --langs) LANGS="$2"; shift 2;; --lrl) LRL="$2"; shift 2;; --related) REL="$2"; shift 2;;
    --pivot) PIVOT="$2"; shift 2;; --max-update) MAXUPD="$2"; shift 2;; --interval) K="$2"; shift 2;;
    --scorer-lr) SLR="$2"; shift 2;; --arch) ARCH="$2"; shift 2;; --systems) SYSTEMS="$2"; shift 2;;
    --extra-train) EXTRA_TRAIN="$2"; shift 2;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2;;
  esac
done
set -- $SEEDS
[ $# -ge 1 ] || { echo "--seeds needs at least one seed" >&2; exit 2; }
FIRST_SEED="$1"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$WORK"
if [ -z "$RAW" ]; then
  RAW="$WORK/raw"
  [ -f "$RAW/manifest.json" ] || "$PY" -m fairseq_metabt.synthetic --preset multilingual --multiway --out "$RAW" \
    --seed 1 --sizes train=1000,hrl=4000,unra=4000,unrb=4000,nsy=4000,valid=200,test=300,mono_tgt=100,mono_lrl=100,pool=6000
fi
DATA="$WORK/bin"
[ -f "$DATA/prepare.json" ] || "$PY" "$ROOT/scripts/prepare_data.py" "$RAW" "$DATA" --vocab-size 4000

ALL=""; for l in $LANGS; do ALL="$ALL,$l-$PIVOT"; done; ALL="${ALL#,}"
COMMON=(--user-dir "$ROOT/fairseq_metabt" --task dds_translation --dds-dev-lang-pair "$LRL-$PIVOT"
        --arch "$ARCH" --optimizer adam --adam-betas "(0.9,0.98)" --lr 1e-3 --lr-scheduler inverse_sqrt
        --warmup-updates 300 --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens 2048
        --max-update "$MAXUPD" --dds-update-interval "$K" --dds-scorer-lr "$SLR" --cpu --num-workers 0
        --log-format simple --log-interval 100 --no-progress-bar --no-epoch-checkpoints
        --ddp-backend legacy_ddp)

for seed in $SEEDS; do
  for sys in $SYSTEMS; do
    out="$WORK/seed$seed/$sys"
    mkdir -p "$out" "$WORK/seed$seed/results"
    if [ ! -f "$out/done" ]; then
      pairs="$ALL"; args=()
      case "$sys" in
        uniform)     args=(--dds-init uniform --dds-update-scorer false);;
        temperature) args=(--dds-init temperature --dds-temperature 5 --dds-update-scorer false);;
        related)     pairs="$LRL-$PIVOT,$REL-$PIVOT"; args=(--dds-init uniform --dds-update-scorer false);;
        tcs)         args=(--dds-init tcs --dds-update-scorer false);;
        dds)         args=(--dds-init uniform);;
        tcs_dds)     args=(--dds-init tcs);;
        dds_centered)     args=(--dds-init uniform --dds-reward-centering);;  # extra, not in the paper
        tcs_dds_centered) args=(--dds-init tcs --dds-reward-centering);;
        *) echo "unknown system $sys" >&2; exit 2;;
      esac
      echo "[dds miniature] seed $seed: $sys" >&2
      "$BIN/fairseq-train" "$DATA" --lang-pairs "$pairs" "${args[@]}" "${COMMON[@]}" --seed "$seed" \
        --save-dir "$out" $EXTRA_TRAIN > "$out/train.log" 2>&1
      touch "$out/done"
    fi
    [ -f "$WORK/seed$seed/results/$sys.json" ] || "$PY" "$ROOT/scripts/evaluate.py" "$DATA" \
      --path "$out/checkpoint_best.pt" -s "$LRL" -t "$PIVOT" --task dds_translation \
      --json "$WORK/seed$seed/results/$sys.json" >/dev/null
    [ -f "$out/dds_log.jsonl" ] && "$PY" "$ROOT/scripts/plot_dds.py" "$out" --title "$sys, seed $seed" >/dev/null
  done
done
for sys in tcs_dds dds; do
  png="$WORK/seed$FIRST_SEED/$sys/dds_languages.png"
  [ -f "$png" ] && cp "$png" "$ROOT/examples/dds/language_usage_$sys.png"
done
"$PY" "$ROOT/scripts/aggregate_results.py" --runs "$WORK"/seed* --systems $SYSTEMS \
  --title "DDS, miniature (${RAW}), BLEU $LRL-$PIVOT test" \
  --command "bash examples/dds/run_miniature.sh --seeds \"$SEEDS\" --max-update $MAXUPD --interval $K --scorer-lr $SLR --arch $ARCH${EXTRA_TRAIN:+ --extra-train \"$EXTRA_TRAIN\"}" \
  --out "$WORK/results.md" --docs "${DOCS_RESULTS:-$ROOT/docs/results.md}" --section dds-miniature
