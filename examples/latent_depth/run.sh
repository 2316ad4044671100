#!/usr/bin/env bash
# Train, evaluate, prune and plot a latent-depth multilingual model (Li et al. 2020) on a prepared corpus.
#
#   bash examples/latent_depth/run.sh BIN_DIR SAVE_DIR [o2m|m2o] "lrl hrl ..." [PIVOT=tgt] [extra fairseq-train args]
#
# o2m: PIVOT -> each language, decoder latent layers selected per target language (K = 6 of 12);
# m2o: each language -> PIVOT, encoder latent layers selected per source language (K = 6 of 12);
# both sides are gated in both directions.  BIN_DIR comes from scripts/prepare_data.py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"; BIN="$(dirname "$PY")"
DATA="$1"; SAVE="$2"; DIR="${3:-o2m}"; LANGS="${4:-lrl hrl}"; PIVOT="${5:-tgt}"; shift $(( $# < 5 ? $# : 5 ))
LP=""; for l in $LANGS; do if [ "$DIR" = o2m ]; then LP="$LP,$PIVOT-$l"; else LP="$LP,$l-$PIVOT"; fi; done; LP="${LP#,}"
# top-K selection on the side whose depth is language-specific; the other side selects by threshold
if [ "$DIR" = o2m ]; then K=(--decoder-target-layers 6 --decoder-latent-select topk --encoder-latent-select threshold)
else K=(--encoder-target-layers 6 --encoder-latent-select topk --decoder-latent-select threshold); fi

"$BIN/fairseq-train" "$DATA" --user-dir "$ROOT/fairseq_metabt" \
  --task latent_depth_translation --lang-pairs "$LP" --decoder-langtok \
  --arch latent_depth_transformer_base --encoder-latent-layers --decoder-latent-layers "${K[@]}" \
  --criterion latent_layers_loss --label-smoothing 0.1 \
  --latent-kl-weight 0.1 --latent-kl-anneal-updates 3500 --latent-prior aggregated --latent-lk-weight 0.1 \
  --latent-inner-steps 2 --latent-soft-updates 1400 --latent-gate-lr 0.01 \
  --optimizer adam --adam-betas "(0.9,0.98)" --lr 1.5e-3 --lr-scheduler inverse_sqrt --warmup-updates 8000 \
  --max-tokens 4096 --max-update 14000 --ddp-backend legacy_ddp --save-dir "$SAVE" "$@"

for l in $LANGS; do
  if [ "$DIR" = o2m ]; then s="$PIVOT"; t="$l"; else s="$l"; t="$PIVOT"; fi
  "$PY" "$ROOT/scripts/evaluate.py" "$DATA" --path "$SAVE/checkpoint_last.pt" -s "$s" -t "$t" \
    --task latent_depth_translation --json "$SAVE/bleu.$s-$t.json" -- --lang-pairs "$LP" --decoder-langtok
done
"$PY" "$ROOT/scripts/prune_latent_depth.py" "$SAVE/checkpoint_last.pt" --out-dir "$SAVE/pruned" --force
"$PY" "$ROOT/scripts/plot_latent_layers.py" "$SAVE/checkpoint_last.pt" --out "$SAVE/layers.png" --json "$SAVE/layers.json"
