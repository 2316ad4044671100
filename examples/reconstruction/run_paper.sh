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
paper_parse "$@"
WMT_DIR=""; WMT_PRESET=wmt18-tr-en; SYSTEMS="baseline hidden stgs-beta0 stgs-beta0.5"
recipe_options --wmt-dir WMT_DIR --wmt-preset WMT_PRESET --systems SYSTEMS
recipe_check_systems "baseline hidden stgs-beta*" "baseline, hidden, stgs-betaB"
recipe_require_systems "baseline, the control of every comparison" baseline
paper_corpus "$WMT_DIR" "--wmt-dir DIR (the WMT18 tr-en files)" \
  --dataset wmt --wmt-dir "$WMT_DIR" --preset "$WMT_PRESET" --src "$SRC" --tgt "$TGT"
paper_prepare
ARCH="${ARCH:-transformer_lowres_small}"; [ "$PAPER_DRY_RUN" = 1 ] && ARCH=transformer_lowres_tiny
TAU=2
# shellcheck disable=SC2207
DEVICE=($(paper_device_flags 1 1))
COMMON=("$BIN" --user-dir "$USER_DIR" --task bidirectional_translation -s "$SRC" -t "$TGT" --share-all-embeddings
        --optimizer adam --lr-scheduler plateau_updates --lr-shrink 0.7 --lr-patience 4 --batch-size 48
        --max-tokens 8192 --label-smoothing 0.1 --ddp-backend legacy_ddp --num-workers 0 --log-format simple
        --log-interval 100 "${DEVICE[@]}")
# the pre-training of every seed, then every fine-tune, and the table (recipe_lib.sh, as the miniature)
reconstruction_run "Differentiable reconstruction (STGS), the paper's Table 2 setting ($SRC<->$TGT)" \
  "${WMT_DIR:-$RAW} (WMT preset $WMT_PRESET)"
paper_report reconstruction material+wmt18
