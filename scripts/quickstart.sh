#!/usr/bin/env bash
# Quickstart, the project's main job: set up, generate the embedded synthetic corpus, train every system to
# dev convergence with fairseq-train --user-dir, score with fairseq-generate + sacrebleu, and print a table
# with Δ and p against the control, paired by seed (the evidence protocol, docs/data.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RECIPE_USAGE='Quickstart: does back-translation, and does meta back-translation, help on this corpus?

  bash scripts/quickstart.sh [shared flags] [--systems "baseline baseline_ft bt bt_mle metabt"]

Default corpus: the synthetic `domain` preset (corpus seed 1): 2,000 out-of-domain SRC-TGT training pairs,
in-domain dev (300) and test (1,000) sets, and 20,000 in-domain TGT sentences of monolingual text -- the
low-resource setting in which back-translation is expected to help. With --raw-dir, your corpus needs
train/valid/test.SRC-TGT.* and mono.TGT (docs/data.md).

Systems (all SRC->TGT except backward):
  baseline     plain fairseq `translation`, trained to dev convergence (early stopping)
  (backward    TGT->SRC, trained the same way: the back-translation model of bt, bt_mle and metabt;
               trained whenever one of them is listed, or when `backward` is)
  then, each fine-tuned from baseline with ONE schedule and stopping rule (lr 5e-4, warm-up 50):
  baseline_ft  the baseline continued on the bitext alone: the control, and the convergence check
  bt           back-translation: pseudo-sources sampled by the frozen backward model (--freeze-backward)
  bt_mle       the same, with the backward model also trained by MLE on the bitext (--meta-weight 0)
  metabt       meta back-translation: the backward model trained by the meta reward + MLE
Results: WORK/results/summary.json (Δ and p against baseline_ft) and the printed table.
Knobs (environment): ARCH (transformer_lowres_small), MAX_TOKENS (4096), SIZES (synthetic sizes), WARMUP (100,
pre-training), FT_WARMUP (50, fine-tuning).'
SRC=lrl; TGT=tgt; RELATED=""; SEEDS="1"; WORK_DIR="$ROOT/runs/quickstart"
PATIENCE=4; VALIDATE_EVERY=50; MAX_UPDATE=6000
# shellcheck source=recipe_lib.sh
source "$ROOT/scripts/recipe_lib.sh"
recipe_parse "$@"
SYSTEMS="baseline baseline_ft bt bt_mle metabt"
set -- "${RECIPE_ARGS[@]+"${RECIPE_ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --systems) SYSTEMS="$2"; shift 2 ;;
    *) recipe_unknown "$1" ;;
  esac
done
bash "$ROOT/scripts/setup_env.sh"
PY="$ROOT/.venv/bin/python"; export PATH="$ROOT/.venv/bin:$PATH"
ARCH="${ARCH:-transformer_lowres_small}"; MAX_TOKENS="${MAX_TOKENS:-4096}"
SIZES="${SIZES:-train=2000,valid=300,test=1000,mono_tgt=20000,mono_lrl=500}"
start=$(date +%s)
has() { [[ " $SYSTEMS " == *" $1 "* ]]; }

recipe_corpus 1 domain "$SIZES"
BIN="$WORK_DIR/bin"
recipe_prepare "$RAW" "$BIN"
CPU="$(recipe_cpu_flag)"

COMMON=("$BIN" --user-dir "$USER_DIR" --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 1.0
        --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens "$MAX_TOKENS"
        --log-interval 50 --log-format simple --num-workers 0 $CPU)
PRETRAIN=(--lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates "${WARMUP:-100}")
FINETUNE=(--lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates "${FT_WARMUP:-50}")
BT=(-s "$SRC" -t "$TGT" --task meta_backtranslation --arch dual_transformer_"${ARCH#transformer_lowres_}"
    --bt-generation sample --backward-lr 1e-4 --meta-reward cosine)

for seed in $SEEDS; do
  run="$WORK_DIR/seed$seed"
  # pre-training: both directions to dev convergence
  ev_train "$run/baseline" "${COMMON[@]}" "${PRETRAIN[@]}" --seed "$seed" --task translation -s "$SRC" -t "$TGT" --arch "$ARCH"
  if has backward || has bt || has bt_mle || has metabt; then
    ev_train "$run/backward" "${COMMON[@]}" "${PRETRAIN[@]}" --seed "$seed" --task translation -s "$TGT" -t "$SRC" --arch "$ARCH"
  fi
  INIT=(--forward-init "$run/baseline/checkpoint_best.pt" --backward-init "$run/backward/checkpoint_best.pt")
  # fine-tuning: one schedule and stopping rule for the control and every method
  if has baseline_ft; then ev_train "$run/baseline_ft" "${COMMON[@]}" "${FINETUNE[@]}" --seed "$seed" --task translation \
    -s "$SRC" -t "$TGT" --arch "$ARCH" --finetune-from-model "$run/baseline/checkpoint_best.pt"; fi
  if has bt; then ev_train "$run/bt" "${COMMON[@]}" "${FINETUNE[@]}" --seed "$seed" "${BT[@]}" "${INIT[@]}" --freeze-backward; fi
  if has bt_mle; then ev_train "$run/bt_mle" "${COMMON[@]}" "${FINETUNE[@]}" --seed "$seed" "${BT[@]}" "${INIT[@]}" --meta-weight 0; fi
  if has metabt; then ev_train "$run/metabt" "${COMMON[@]}" "${FINETUNE[@]}" --seed "$seed" "${BT[@]}" "${INIT[@]}"; fi
  for sys in baseline baseline_ft bt bt_mle metabt; do
    if has "$sys"; then ev_eval "$sys" "$seed" "$run/$sys" "$BIN" "$SRC" "$TGT"; fi
  done
done

ROWS=(); for sys in baseline baseline_ft bt bt_mle metabt; do has "$sys" && ROWS+=("$sys"); done
ALSO=(); if has metabt && has bt_mle; then ALSO=(--also metabt:bt_mle); fi
ev_compare --control baseline_ft --systems "${ROWS[@]}" --precondition baseline_ft:baseline \
  --same-schedule baseline_ft bt bt_mle metabt "${ALSO[@]+"${ALSO[@]}"}" \
  --title "Quickstart: back-translation and meta back-translation ($SRC->$TGT)" \
  --corpus "${RAW_DIR:-synthetic domain preset, corpus seed 1, $SIZES}" \
  --command "bash scripts/quickstart.sh --seeds \"$SEEDS\"${RAW_DIR:+ --raw-dir $RAW_DIR --src $SRC --tgt $TGT}"
echo "quickstart finished in $(( $(date +%s) - start ))s; summary: $WORK_DIR/results/summary.json"
