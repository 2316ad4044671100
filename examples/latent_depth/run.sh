#!/usr/bin/env bash
# Train, evaluate, prune and plot a latent-depth multilingual model (Li et al. 2020) on a prepared corpus.
#
#   bash examples/latent_depth/run.sh BIN_DIR SAVE_DIR [o2m|m2o] "lrl hrl ..." [PIVOT=tgt] [extra fairseq-train args]
#
# o2m: PIVOT -> each language, decoder latent layers selected per target language (K = 6 of 12 on average);
# m2o: each language -> PIVOT, encoder latent layers selected per source language (K = 6 of 12 on average).
# Only the language-specific side is gated (Tables 2/3 of the paper; gating the shared side too left its gates
# near q = 0.5 in the miniature, so training dropped its layers at random while evaluation kept them).
# BIN_DIR comes from scripts/prepare_data.py.  Gates are relaxed during the KL anneal and straight-through 0/1
# afterwards (the model's default --latent-soft-updates), so each language trains the layers it keeps.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"; BIN="$(dirname "$PY")"
DATA="$1"; SAVE="$2"; DIR="${3:-o2m}"; LANGS="${4:-lrl hrl}"; PIVOT="${5:-tgt}"; shift $(( $# < 5 ? $# : 5 ))
LP=""; for l in $LANGS; do if [ "$DIR" = o2m ]; then LP="$LP,$PIVOT-$l"; else LP="$LP,$l-$PIVOT"; fi; done; LP="${LP#,}"
# Evaluation keeps the layers with q > 0.5, the network each language trains once the gates are hard. L_K on the
# utilisation averaged over languages fixes only the average depth at K, so a language may keep more or fewer
# than K layers: top-K selection (the earlier setting) would then evaluate a network training never ran.
if [ "$DIR" = o2m ]; then K=(--decoder-latent-layers --decoder-target-layers 6 --decoder-latent-select threshold)
else K=(--encoder-latent-layers --encoder-target-layers 6 --encoder-latent-select threshold); fi

"$BIN/fairseq-train" "$DATA" --user-dir "$ROOT/fairseq_metabt" \
  --task latent_depth_translation --lang-pairs "$LP" --decoder-langtok \
  --arch latent_depth_transformer_base "${K[@]}" \
  --criterion latent_layers_loss --label-smoothing 0.1 \
  --latent-kl-weight 0.1 --latent-kl-anneal-updates 3500 --latent-prior aggregated --latent-lk-weight 0.1 \
  --latent-inner-steps 2 --latent-gate-lr 0.01 \
  --optimizer adam --adam-betas "(0.9,0.98)" --lr 1.5e-3 --lr-scheduler inverse_sqrt --warmup-updates 8000 \
  --max-tokens 4096 --max-update 14000 --ddp-backend legacy_ddp --save-dir "$SAVE" "$@"

for l in $LANGS; do
  if [ "$DIR" = o2m ]; then s="$PIVOT"; t="$l"; else s="$l"; t="$PIVOT"; fi
  "$PY" "$ROOT/scripts/evaluate.py" "$DATA" --path "$SAVE/checkpoint_last.pt" -s "$s" -t "$t" \
    --task latent_depth_translation --json "$SAVE/bleu.$s-$t.json" -- --lang-pairs "$LP" --decoder-langtok
done
"$PY" "$ROOT/scripts/prune_latent_depth.py" "$SAVE/checkpoint_last.pt" --out-dir "$SAVE/pruned" --force
"$PY" "$ROOT/scripts/plot_latent_layers.py" "$SAVE/checkpoint_last.pt" --out "$SAVE/layers.png" --json "$SAVE/layers.json"
