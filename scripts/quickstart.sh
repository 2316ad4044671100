#!/usr/bin/env bash
# Quickstart, the project's main job: set up, generate the embedded synthetic corpus, train every system to
# dev convergence with fairseq-train --user-dir, score with fairseq-generate + sacrebleu, and print a table
# with Δ and p against the control, paired by seed (the evidence protocol, docs/data.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RECIPE_USAGE='Quickstart: does back-translation, and does meta back-translation, help on this corpus?

  bash scripts/quickstart.sh [shared flags] [--systems "baseline bt_mle_dev metabt"] [--meta-dev PREFIX]

Default corpus: the synthetic `domain` preset (corpus seed 1): 2,000 out-of-domain SRC-TGT training pairs,
in-domain dev (300) and test (1,000) sets, and 4,000 in-domain TGT sentences of monolingual text -- the
low-resource setting in which back-translation is expected to help. With --raw-dir, your corpus needs
train/valid/test.SRC-TGT.* and mono.TGT (docs/data.md).

Dev sets: MetaBT learns from a dev set (its reward), so it gets one that no system selects on. The SRC-TGT dev
set is cut by line parity (scripts/split_meta_dev.py, into WORK/raw_split): lines 1, 3, 5, ... are the
selection dev set (`valid`: early stopping, the plateau lr and checkpoint choice of EVERY system), lines
2, 4, 6, ... the meta-dev set (`metadev`: the MetaBT reward, and extra bitext of bt_mle_dev); no system stops or
selects on `metadev`. --meta-dev PREFIX takes the meta-dev pairs from PREFIX.SRC/PREFIX.TGT instead and
keeps the whole dev set for selection. The split is recorded in WORK/bin/prepare.json and with the corpus in
summary.json.

Systems (all SRC->TGT except backward):
  baseline     plain fairseq `translation`, trained to dev convergence (early stopping)
  (backward    TGT->SRC, trained the same way: the back-translation model of bt, bt_mle, bt_mle_dev,
               metabt, metabt_dev and metabt_sent; trained whenever one of them is listed, or `backward` is)
  then, beside the converged backward model, each forward model trained from scratch with the schedule and
  stopping rule of the baseline (as in the paper; BT_FORWARD=finetune: from the baseline instead, lr FT_LR,
  warm-up FT_WARMUP, against baseline_ft); the control is baseline:
  baseline_ft  the baseline continued on the bitext alone (lr FT_LR, warm-up FT_WARMUP): the control with
               BT_FORWARD=finetune, and its convergence check; not run by default
  bt           back-translation: pseudo-sources sampled by the frozen backward model (--freeze-backward); not
               run by default
  bt_mle       the same, with the backward model also trained by MLE on the bitext (--meta-weight 0); not run
               by default: it separates the meta reward from MLE on the backward model
  bt_mle_dev   bt_mle with the meta-dev pairs added to the bitext of both models (--extra-bitext-subsets
               metadev): the control that sees the same labelled data as metabt, the strongest one
  metabt       meta back-translation: the backward model trained by the meta reward (on metadev) + MLE
  metabt_dev   metabt with the meta-dev pairs also added to the bitext of both models, as bt_mle_dev has them:
               against bt_mle_dev it measures the meta reward alone (same labelled data, used the same way);
               not run by default
  metabt_sent  metabt with one reward per pseudo-sentence (--meta-reward-granularity sentence, Taylor trick)
               instead of one per batch: against metabt it measures the reward granularity alone; not run
               by default
Default systems: baseline bt_mle_dev metabt (chosen to keep the run short on 2 free cores; --systems must
include the control, baseline, or baseline_ft with BT_FORWARD=finetune; list bt and bt_mle in --systems to add
them, one more run each). The table names the control of each Δ: baseline in the table, and under it metabt
against bt_mle_dev (and against bt_mle when both run),
metabt_dev against bt_mle_dev and metabt, and metabt_sent against metabt and bt_mle, when they run.
Independent trainings run JOBS at a time (default: one per core, one thread each); each system is scored
as soon as it has converged. Logs: WORK/logs/. Results: WORK/results/summary.json (Δ and p against
the control, metabt against bt_mle_dev / bt_mle / bt) and the printed table.
Knobs (environment): ARCH (transformer_lowres_small; the BT systems use its dual_transformer twin),
DROPOUT (0.3), ATTENTION_DROPOUT (0.1), ACTIVATION_DROPOUT (0.1), LABEL_SMOOTHING (0.2) and VOCAB_SIZE (2000,
the joint sentencepiece vocabulary) for every system; MAX_TOKENS (2048), LR (2e-3), WARMUP (100) for
the baseline, the backward model and, by default, every BT system; BT_FORWARD (scratch: the forward model of each BT
system from random initialisation; finetune: from the converged baseline, the set-up of the synthetic MetaBT
tables kept before 2026-12-06, which held BT to +0.1 BLEU on the gl-en catalog kit where BT from scratch gained
+2); FT_MAX_TOKENS (MAX_TOKENS), FT_LR (1e-3), FT_WARMUP (50) for fine-tuning; SIZES (synthetic
sizes); JOBS (cores); TITLE (the table title, followed by the pair; default "Quickstart: back-translation and
meta back-translation"). The regularised small model is the default because the former one (tiny, dropout 0.1,
label smoothing 0.1, 4,000 pieces) over-fits 2,000 real pairs (1.8 BLEU on the gl-en catalog kit against 7.6;
docs/catalog_corpus.md); the synthetic MetaBT tables kept before 2026-12-06 used it (their knobs are recorded).'
SRC=lrl; TGT=tgt; RELATED=""; SEEDS="1"; WORK_DIR="$ROOT/runs/quickstart"
PATIENCE=5; VALIDATE_EVERY=50; MAX_UPDATE=8000
# shellcheck source=recipe_lib.sh
source "$ROOT/scripts/recipe_lib.sh"
recipe_parse "$@"
metabt_mode  # BT_FORWARD: where each BT system's forward model starts, and the control (METABT_CONTROL)
metabt_default_systems baseline bt_mle_dev metabt
META_DEV=""
set -- "${RECIPE_ARGS[@]+"${RECIPE_ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --systems|--meta-dev) [ $# -ge 2 ] || recipe_die "$1 needs a value (see --help)" ;;&
    --systems) SYSTEMS="$2"; shift 2 ;;
    --meta-dev) d="$(cd "$(dirname "$2")" 2>/dev/null && pwd)" || recipe_die \
                  "--meta-dev $2: no directory $(dirname "$2") (give the prefix of files PREFIX.$SRC, PREFIX.$TGT)"
                META_DEV="$d/$(basename "$2")"; shift 2 ;;
    *) recipe_unknown "$1" ;;
  esac
done
recipe_check_systems "backward $METABT_SYSTEMS" "choose from $METABT_SYSTEMS"
# every Δ of the table is against the control: refuse before training, not at the summary after it
metabt_require_control
bash "$ROOT/scripts/setup_env.sh"
PY="$ROOT/.venv/bin/python"; export PATH="$ROOT/.venv/bin:$PATH"
MAX_TOKENS="${MAX_TOKENS:-2048}"; LR="${LR:-2e-3}"; WARMUP="${WARMUP:-100}"
FT_MAX_TOKENS="${FT_MAX_TOKENS:-$MAX_TOKENS}"; FT_LR="${FT_LR:-1e-3}"; FT_WARMUP="${FT_WARMUP:-50}"
LR_PATIENCE="${LR_PATIENCE:-2}"
recipe_lowres  # ARCH, the regularisation (LOWRES_REG) and VOCAB_SIZE for 2,000 training pairs
SIZES="${SIZES:-train=2000,valid=300,test=1000,mono_tgt=4000,mono_lrl=500}"
start=$(date +%s)

recipe_corpus 1 domain "$SIZES"
recipe_meta_dev_split "$RAW" "$SRC" "$TGT" "$META_DEV"  # RAW: the corpus with valid (selection) + metadev
BIN="$WORK_DIR/bin"
recipe_prepare "$RAW" "$BIN" --vocab-size "$VOCAB_SIZE"
CPU="$(recipe_cpu_flag)"

COMMON=("$BIN" --user-dir "$USER_DIR" --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 1.0
        --criterion label_smoothed_cross_entropy "${LOWRES_REG[@]}"
        --log-interval 50 --log-format simple --num-workers 0 $CPU)
# plateau_updates: the lr halves after every LR_PATIENCE validations without a new best, so each run anneals
# before --patience stops it (fairseq_metabt/lr_schedulers/plateau_updates.py)
PLATEAU=(--lr-scheduler plateau_updates --lr-shrink 0.5 --lr-patience "$LR_PATIENCE")
PRETRAIN=(--max-tokens "$MAX_TOKENS" --lr "$LR" --warmup-updates "$WARMUP" "${PLATEAU[@]}")
FINETUNE=(--max-tokens "$FT_MAX_TOKENS" --lr "$FT_LR" --warmup-updates "$FT_WARMUP" "${PLATEAU[@]}")
SINGLE=(--arch "$ARCH")
BT=(-s "$SRC" -t "$TGT" --task meta_backtranslation --arch dual_transformer_"${ARCH#transformer_lowres_}"
    --bt-generation sample --backward-lr 1e-4 --meta-reward cosine)

# one job = train one system to dev convergence, then score its best checkpoint at once (recipe_lib.sh):
# stage 1, pre-training: both directions to dev convergence (JOBS of them at a time)
metabt_pretrain
# stage 2, every BT system beside the converged backward model (its forward model from scratch, or fine-tuned
# from the baseline with BT_FORWARD=finetune) and baseline_ft: one schedule and stopping rule for the control and
# every method (the slowest systems start first, so the lanes finish together)
metabt_stage2

metabt_compare "bt_mle_dev bt_mle bt" "${TITLE:-Quickstart: back-translation and meta back-translation} ($SRC->$TGT)" \
  "${RAW_DIR:-synthetic domain preset, corpus seed 1, $SIZES}; $META_DEV_NOTE"
echo "quickstart finished in $(( $(date +%s) - start ))s; summary: $WORK_DIR/results/summary.json"
