#!/usr/bin/env bash
# Miniature reproduction of Niu et al. (2019), Table 2, through the evidence protocol: one bi-directional
# model pre-trained with L_T to dev convergence, then baseline (L_T), HIDDEN, STGS beta = 0 and beta = 0.5
# (tau = 2) fine-tuned from it with one schedule and stopping rule; both directions, several seeds; BLEU/chrF
# with Δ and p against the L_T fine-tuning baseline, paired by seed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RECIPE_USAGE='Reconstruction miniature: does differentiable round-trip reconstruction help a bi-directional model?

  bash examples/reconstruction/run_miniature.sh [shared flags] [--arch transformer_lowres_small] [--batch 48]
       [--systems "baseline hidden stgs-beta0 stgs-beta0.5"] [--tau 2]

Default data: the synthetic `bidirectional` corpus (corpus seed 1; SIZES in the environment overrides
train=2000,valid=200,test=1000). Pre-training: Adam lr 1e-3; fine-tuning: lr 1e-4 (the paper, §4.2). Both
reduce the lr x0.7 on a dev plateau (the paper'"'"'s rule) with `--lr-scheduler plateau_updates --lr-patience 2`:
fairseq'"'"'s reduce_lr_on_plateau steps only at epoch ends, so with validation every V updates it never fires.
Checkpoints are selected on the dev translation nll_loss. The pre-trained model is also scored (system `pretrain`); `baseline` continuing it
on L_T alone is the convergence check. Results: WORK/results/summary.json (one table per direction).
Model (environment knobs, recorded): --arch or ARCH (transformer_lowres_small), DROPOUT (0.3), ATTENTION_DROPOUT
(0.1), ACTIVATION_DROPOUT (0.1), LABEL_SMOOTHING (0.2), VOCAB_SIZE (2000): regularised for 2,000 pairs. The kept
synthetic table was made with the former default (transformer_lowres_tiny, dropout 0.1, label smoothing 0.1,
4,000 pieces), which over-fits 2,000 real pairs (docs/catalog_corpus.md).'
SRC=lrl; TGT=tgt; RELATED=""; SEEDS="1 2 3"; WORK_DIR="$ROOT/runs/reconstruction_miniature"
PATIENCE=5; VALIDATE_EVERY=100; MAX_UPDATE=20000; METRIC=nll_loss
# shellcheck source=../../scripts/recipe_lib.sh
source "$ROOT/scripts/recipe_lib.sh"
recipe_parse "$@"
recipe_lowres  # ARCH, LOWRES_REG, VOCAB_SIZE (recipe_lib.sh)
BATCH=48; TAU=2; SYSTEMS="baseline hidden stgs-beta0 stgs-beta0.5"
set -- "${RECIPE_ARGS[@]+"${RECIPE_ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH="$2"; shift 2;; --batch) BATCH="$2"; shift 2;; --systems) SYSTEMS="$2"; shift 2;;
    --tau) TAU="$2"; shift 2;;
    *) recipe_unknown "$1";;
  esac
done
recipe_corpus 1 bidirectional "${SIZES:-train=2000,valid=200,test=1000,mono_tgt=10,mono_lrl=10}"
BIN="$WORK_DIR/bin"
recipe_prepare "$RAW" "$BIN" --vocab-size "$VOCAB_SIZE"

COMMON=("$BIN" --user-dir "$USER_DIR" --task bidirectional_translation -s "$SRC" -t "$TGT" --share-all-embeddings
        --optimizer adam --lr-scheduler plateau_updates --lr-shrink 0.7 --lr-patience 2 --batch-size "$BATCH"
        --max-tokens 8192 "${LOWRES_REG[@]}" --ddp-backend legacy_ddp --num-workers 0 --log-format simple
        --log-interval 50 $(recipe_cpu_flag))
for sys in $SYSTEMS; do
  case "$sys" in baseline|hidden|stgs-beta*) ;; *) recipe_die "unknown system $sys (baseline, hidden, stgs-betaB)" ;; esac
done
# pre-training of every seed, then every fine-tune (JOBS at a time), and the table (recipe_lib.sh)
reconstruction_run "Differentiable reconstruction (STGS), miniature Table 2 ($SRC<->$TGT)" \
  "${RAW_DIR:-synthetic bidirectional preset, corpus seed 1}"
