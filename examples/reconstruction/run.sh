#!/usr/bin/env bash
# Differentiable round-trip reconstruction (Niu et al., NAACL 2019) — the training recipe of §4.2:
#   1. pre-train a bi-directional tagged Transformer with L_T;
#   2. fine-tune it with L_T + L_R (STGS, beta in {0, 0.5}, tau = 2) from that checkpoint, the learning
#      rate re-initialised to 1e-4 and every other setting inherited;
#   3. evaluate both directions with fairseq-generate + sacrebleu.
#
#   bash examples/reconstruction/run.sh [--raw-dir RAW] [--out OUT] [--seed S] [--variant V] [--beta B]
#
# Without --raw-dir, the synthetic `bidirectional` corpus (lrl<->tgt) is generated.  A real corpus in the
# raw layout (docs/data.md) works unchanged; set SRC/TGT to its language codes.  Fine-tuning --variant:
#   stgs      (default) L_T + L_R, STGS with --beta (default 0.5), tau 2
#   hidden    the contrastive HIDDEN baseline (two hidden-state reconstructors, weights 0.5, 0.5, 1)
#   baseline  L_T alone, same schedule (controls for the extra updates)
# Checkpoints are selected on the dev translation loss (nll_loss) in every stage.
# Scale knobs (environment): ARCH (transformer_lowres_small), PRETRAIN_UPDATES (4000), FINETUNE_UPDATES (2000),
# CHECKPOINT_EVERY (500 updates; the paper: 1000), BATCH (48 sentences), SIZES (synthetic --sizes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"; [ -x "$PY" ] || PY=python
TRAIN="$(dirname "$PY")/fairseq-train"; [ -x "$TRAIN" ] || TRAIN=fairseq-train
RAW=""; OUT="runs/reconstruction"; SEED=1; BETA=0.5; VARIANT=stgs
while [ $# -gt 0 ]; do
  case "$1" in
    --raw-dir) RAW="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --beta) BETA="$2"; shift 2 ;;
    --variant) VARIANT="$2"; shift 2 ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
SRC="${SRC:-lrl}"; TGT="${TGT:-tgt}"; ARCH="${ARCH:-transformer_lowres_small}"
PRETRAIN_UPDATES="${PRETRAIN_UPDATES:-4000}"; FINETUNE_UPDATES="${FINETUNE_UPDATES:-2000}"
EVERY="${CHECKPOINT_EVERY:-500}"; BATCH="${BATCH:-48}"
DEVICE=(); "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || DEVICE=(--cpu)
mkdir -p "$OUT"

if [ -z "$RAW" ]; then
  RAW="$OUT/raw"
  [ -f "$RAW/manifest.json" ] || "$PY" -m fairseq_metabt.synthetic --preset bidirectional --out "$RAW" --seed 1 \
      ${SIZES:+--sizes "$SIZES"}
fi
BIN="$OUT/bin"
[ -f "$BIN/prepare.json" ] || "$PY" "$ROOT/scripts/prepare_data.py" "$RAW" "$BIN"

# §4.2: Adam, lr 1e-3 shrunk by 30% after 4 checkpoints without dev improvement, stop after 10; 48 sentences
# per batch; tied source/target/output embeddings of one bi-directional model.
COMMON=("$BIN" --user-dir "$ROOT/fairseq_metabt" --task bidirectional_translation -s "$SRC" -t "$TGT"
        --share-all-embeddings --optimizer adam --lr-scheduler reduce_lr_on_plateau --lr-shrink 0.7
        --lr-patience 4 --patience 10 --batch-size "$BATCH" --max-tokens 8192 --label-smoothing 0.1
        --save-interval-updates "$EVERY" --validate-interval-updates "$EVERY" --keep-interval-updates 1
        --no-epoch-checkpoints --best-checkpoint-metric nll_loss --seed "$SEED" --ddp-backend legacy_ddp --num-workers 0 --log-format simple
        --log-interval 50 "${DEVICE[@]}")

PRE="$OUT/seed$SEED/pretrain"
[ -f "$PRE/done" ] || { "$TRAIN" "${COMMON[@]}" --arch "$ARCH" --criterion label_smoothed_cross_entropy --lr 1e-3 \
    --max-update "$PRETRAIN_UPDATES" --save-dir "$PRE" && touch "$PRE/done"; }

case "$VARIANT" in
  stgs) NAME="stgs-beta$BETA"; FT=(--arch "$ARCH" --criterion stgs_reconstruction --stgs-beta "$BETA" --stgs-tau 2) ;;
  hidden) NAME="hidden"; FT=(--arch "${ARCH/transformer_lowres/transformer_hidden_reconstruction}"
                             --criterion hidden_reconstruction) ;;
  baseline) NAME="baseline"; FT=(--arch "$ARCH" --criterion label_smoothed_cross_entropy) ;;
  *) echo "--variant must be stgs, hidden or baseline, got $VARIANT" >&2; exit 2 ;;
esac
FINE="$OUT/seed$SEED/$NAME"
# --finetune-from-model resets optimizer, lr schedule, meters and data loader; on a re-run it is ignored
# and training resumes from $FINE/checkpoint_last.pt.  HIDDEN's new reconstructors start from their
# initialisation (the pre-trained model is a plain Transformer).
[ -f "$FINE/done" ] || { "$TRAIN" "${COMMON[@]}" "${FT[@]}" --lr 1e-4 --max-update "$FINETUNE_UPDATES" \
    --finetune-from-model "$PRE/checkpoint_best.pt" --save-dir "$FINE" && touch "$FINE/done"; }

for dir in "$PRE" "$FINE"; do
  for pair in "$SRC $TGT" "$TGT $SRC"; do
    set -- $pair
    [ -f "$dir/test.$1-$2.json" ] || "$PY" "$ROOT/scripts/evaluate.py" "$BIN" --path "$dir/checkpoint_best.pt" \
        -s "$1" -t "$2" --task bidirectional_translation --beam 5 --json "$dir/test.$1-$2.json"
  done
done
