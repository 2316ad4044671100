#!/usr/bin/env bash
# Differentiable reconstruction (Niu et al. 2019, §4, Table 2) on its public language pair: WMT18 Turkish<->English
# as distributed (the preprocessed "corpus", newsdev2016, newstest2017), through the evidence protocol: one
# bi-directional model pre-trained with L_T to dev convergence, then baseline (L_T), HIDDEN, STGS beta = 0 and
# beta = 0.5 fine-tuned from it; both directions, BLEU with verdicts against the L_T fine-tuning and the paper's
# Table 2 beside ours.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RECIPE_USAGE='STGS reconstruction, the paper'"'"'s setting on WMT18 tr<->en: does round-trip reconstruction help?

  bash examples/reconstruction/run_paper.sh --wmt-dir DIR [--wmt-preset wmt18-tr-en]
       [--systems "baseline hidden stgs-beta0 stgs-beta0.5"] [paper-scale flags] [shared flags]

--wmt-dir holds the WMT18 preprocessed tr-en files (corpus.tc.{tr,en}[.gz], newsdev2016.tc.*, newstest2017.tc.*;
other names: scripts/prepare_public.py --train/--valid/--test through --raw-dir); nothing is downloaded. The
paper'"'"'s other pairs (sw, tl, so from IARPA MATERIAL) are not public; any pair in the raw layout runs with
--raw-dir DIR --src L1 --tgt L2. §4.2: Adam, 48 sentences per batch (per GPU), lr 1e-3 for L_T pre-training and
1e-4 for fine-tuning, x0.7 after 4 checkpoints without a dev improvement, stop after 10 (here: --patience 10,
--lr-scheduler plateau_updates --lr-patience 4), a checkpoint every 1000 updates, all embeddings tied; STGS
tau = 2. Model: ARCH (default transformer_lowres_small; the paper: a 1-layer bi-LSTM of 512 in Sockeye);
HIDDEN uses its transformer_hidden_reconstruction twin. Checkpoints are selected on dev nll_loss. Results:
WORK/results/summary.json (one table per direction) and Table 2'"'"'s TR<->EN row beside ours.'
SRC=tr; TGT=en; RELATED=""; SEEDS="1"; WORK_DIR="$ROOT/runs/reconstruction_paper"
PATIENCE=10; VALIDATE_EVERY=1000; MAX_UPDATE=300000; METRIC=nll_loss
# shellcheck source=../../scripts/recipe_lib.sh
source "$ROOT/scripts/recipe_lib.sh"
RECIPE_USAGE+=$'\n\n'"$PAPER_SHARED_HELP"
recipe_parse "$@"
paper_parse
WMT_DIR=""; WMT_PRESET=wmt18-tr-en; SYSTEMS="baseline hidden stgs-beta0 stgs-beta0.5"
set -- "${RECIPE_ARGS[@]+"${RECIPE_ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --wmt-dir|--wmt-preset|--systems) [ $# -ge 2 ] || recipe_die "$1 needs a value (see --help)" ;;&
    --wmt-dir) WMT_DIR="$2"; shift 2 ;;
    --wmt-preset) WMT_PRESET="$2"; shift 2 ;;
    --systems) SYSTEMS="$2"; shift 2 ;;
    *) recipe_unknown "$1" ;;
  esac
done
for sys in $SYSTEMS; do
  case "$sys" in baseline|hidden|stgs-beta*) ;; *) recipe_die "--systems: unknown system $sys (baseline, hidden, stgs-betaB)" ;; esac
done
[[ " $SYSTEMS " == *" baseline "* ]] || recipe_die "--systems must include baseline, the control of every comparison"
if [ -n "$RAW_DIR" ]; then RAW="$RAW_DIR"
else
  [ -n "$WMT_DIR" ] || recipe_die "give --wmt-dir DIR (the WMT18 tr-en files) or --raw-dir (a converted corpus)"
  paper_convert --dataset wmt --wmt-dir "$WMT_DIR" --preset "$WMT_PRESET" --src "$SRC" --tgt "$TGT"
fi
BIN="$WORK_DIR/bin"
recipe_prepare "$RAW" "$BIN" --vocab-size 32000
ARCH="${ARCH:-transformer_lowres_small}"; [ "$PAPER_DRY_RUN" = 1 ] && ARCH=transformer_lowres_tiny
# shellcheck disable=SC2207
DEVICE=($(paper_device_flags 1 1))
COMMON=("$BIN" --user-dir "$USER_DIR" --task bidirectional_translation -s "$SRC" -t "$TGT" --share-all-embeddings
        --optimizer adam --lr-scheduler plateau_updates --lr-shrink 0.7 --lr-patience 4 --batch-size 48
        --max-tokens 8192 --label-smoothing 0.1 --ddp-backend legacy_ddp --num-workers 0 --log-format simple
        --log-interval 100 "${DEVICE[@]}")
rec_system() {  # SYSTEM SEED: pre-train, or fine-tune from the pre-trained model; then score both directions
  local sys="$1" seed="$2" run="$WORK_DIR/seed$2" FT
  case "$sys" in
    pretrain) ev_train "$run/pretrain" "${COMMON[@]}" --arch "$ARCH" --criterion label_smoothed_cross_entropy \
                --lr 1e-3 --seed "$seed" ;;
    *) case "$sys" in
         baseline) FT=(--arch "$ARCH" --criterion label_smoothed_cross_entropy) ;;
         hidden) FT=(--arch "${ARCH/transformer_lowres/transformer_hidden_reconstruction}" --criterion hidden_reconstruction) ;;
         stgs-beta*) FT=(--arch "$ARCH" --criterion stgs_reconstruction --stgs-beta "${sys#stgs-beta}" --stgs-tau 2) ;;
       esac
       ev_train "$run/$sys" "${COMMON[@]}" "${FT[@]}" --lr 1e-4 --seed "$seed" \
         --finetune-from-model "$run/pretrain/checkpoint_best.pt" ;;
  esac
  ev_eval "$sys" "$seed" "$run/$sys" "$BIN" "$SRC" "$TGT" --task bidirectional_translation
  ev_eval "$sys" "$seed" "$run/$sys" "$BIN" "$TGT" "$SRC" --task bidirectional_translation
}
for seed in $SEEDS; do ev_pool_run "seed$seed.pretrain" rec_system pretrain "$seed"; done
ev_pool_wait
for sys in $SYSTEMS; do for seed in $SEEDS; do ev_pool_run "seed$seed.$sys" rec_system "$sys" "$seed"; done; done
ev_pool_wait
# shellcheck disable=SC2086
ev_compare --control baseline --systems pretrain $SYSTEMS --precondition baseline:pretrain --same-schedule $SYSTEMS \
  --title "Differentiable reconstruction (STGS), the paper's Table 2 setting ($SRC<->$TGT)" \
  --corpus "${WMT_DIR:-$RAW} (WMT preset $WMT_PRESET)"
paper_report reconstruction material+wmt18
