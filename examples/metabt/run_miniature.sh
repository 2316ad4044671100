#!/usr/bin/env bash
# Miniature reproduction of meta back-translation: scripts/quickstart.sh (baseline and backward model trained to
# dev convergence; BT, BT + MLE, BT + MLE with the meta-dev pairs as bitext (bt_mle_dev) and MetaBT
# trained beside the backward model with the baseline's schedule and stopping rule) over five seeds, with Δ and p
# against the baseline paired by seed (against baseline_ft with BT_FORWARD=finetune), and MetaBT against
# bt_mle_dev and BT + MLE. MetaBT's reward reads the meta-dev half of the dev set; every system stops and selects
# on the other half (scripts/split_meta_dev.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# every system, both MLE controls included; with BT_FORWARD=finetune (the set-up of docs/results/metabt.json) the
# forward models are fine-tuned from the baseline at lr 2.5e-4 against baseline_ft
SYSTEMS_DEFAULT="baseline bt bt_mle bt_mle_dev metabt"
[ "${BT_FORWARD:-scratch}" = scratch ] || SYSTEMS_DEFAULT="baseline baseline_ft bt bt_mle bt_mle_dev metabt"
ARGS=(--seeds "1 2 3 4 5" --work-dir "$ROOT/runs/metabt_miniature" --systems "$SYSTEMS_DEFAULT")
export FT_LR="${FT_LR:-2.5e-4}" TITLE="${TITLE:-Meta back-translation, miniature}"
for a in "$@"; do
  if [ "$a" = -h ] || [ "$a" = --help ]; then
    echo "MetaBT miniature: scripts/quickstart.sh with --seeds \"1 2 3 4 5\" --work-dir runs/metabt_miniature,"
    echo "--systems \"$SYSTEMS_DEFAULT\" (baseline_ft too with BT_FORWARD=finetune), FT_LR=2.5e-4 and"
    echo "TITLE=\"Meta back-translation, miniature\" by default."
    echo "Every quickstart flag works here (later flags win):"; echo
    exec bash "$ROOT/scripts/quickstart.sh" --help
  fi
done
exec bash "$ROOT/scripts/quickstart.sh" "${ARGS[@]}" "$@"
