#!/usr/bin/env bash
# Quickstart: set up, generate the embedded synthetic corpus, train with
# fairseq-train --user-dir, evaluate with fairseq-generate + sacrebleu, and
# print a results table.  Re-running reuses what is already there (data,
# finished checkpoints); delete $QUICKSTART_DIR to start over.
#
# Systems (rows of the table), all on the synthetic low-resource pair lrl->tgt:
#   baseline      supervised Transformer, MAX_UPDATE updates on the bitext
#   baseline_ft   the baseline trained FT_UPDATE more updates on the bitext (same budget as below)
#   bt            online back-translation: forward initialised from the baseline, backward model
#                 (tgt->lrl, MAX_UPDATE updates on the reversed bitext) sampling pseudo-sources, fixed
#   metabt        the same, with the backward model updated by meta back-translation
#
# Knobs (environment): QUICKSTART_DIR (default runs/quickstart), SEED (1),
# MAX_UPDATE, FT_UPDATE (training updates), MAX_TOKENS, RAW_DIR (a corpus in the raw layout
# with lrl-tgt bitext and mono.tgt, instead of the synthetic one).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
export PATH="$ROOT/.venv/bin:$PATH"
PY="$ROOT/.venv/bin/python"
USER_DIR="$ROOT/fairseq_metabt"

RUN="${QUICKSTART_DIR:-$ROOT/runs/quickstart}"
SEED="${SEED:-1}"
MAX_UPDATE="${MAX_UPDATE:-250}"
FT_UPDATE="${FT_UPDATE:-80}"
MAX_TOKENS="${MAX_TOKENS:-2048}"
RAW="${RAW_DIR:-$RUN/raw}"; BIN="$RUN/bin"; RESULTS="$RUN/results"
mkdir -p "$RUN" "$RESULTS"
start=$(date +%s)

step() { echo; echo "=== $* ==="; }

step "1. corpus -> $RAW"
if [ -n "${RAW_DIR:-}" ]; then echo "using the raw corpus $RAW_DIR (docs/data.md layout)"
elif [ -f "$RAW/manifest.json" ]; then echo "reusing $RAW"; else
  "$PY" -m fairseq_metabt.synthetic --preset quickstart --out "$RAW" --seed "$SEED"; fi

step "2. sentencepiece + fairseq-preprocess -> $BIN"
if [ -f "$BIN/prepare.json" ]; then echo "reusing $BIN"; else
  "$PY" scripts/prepare_data.py "$RAW" "$BIN"; fi

COMMON=("$BIN" --user-dir "$USER_DIR" --optimizer adam --adam-betas '(0.9, 0.98)' --lr 1e-3
        --lr-scheduler inverse_sqrt --warmup-updates 100 --clip-norm 1.0
        --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens "$MAX_TOKENS" --seed "$SEED"
        --no-epoch-checkpoints --log-interval 25 --log-format simple --num-workers 0)
if ! "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then COMMON+=(--cpu); fi

# train NAME [fairseq-train args...]: trains into $RUN/NAME (a finished run is reused).
train() {
  local name="$1"; shift
  step "train $name (fairseq-train)"
  fairseq-train "${COMMON[@]}" --save-dir "$RUN/$name" --tensorboard-logdir "$RUN/tensorboard/$name" "$@"
  [ -f "$RUN/$name/checkpoint_best.pt" ] || { echo "training $name produced no checkpoint" >&2; exit 1; }
}
# evaluate NAME: fairseq-generate + sacrebleu on the test set, one row of the table.
evaluate() {
  step "evaluate $1 (fairseq-generate + sacrebleu)"
  "$PY" scripts/evaluate.py "$BIN" --path "$RUN/$1/checkpoint_best.pt" -s lrl -t tgt \
    --json "$RESULTS/$1.json" --output "$RESULTS/$1.generate.txt"
}

LRL_TGT=(-s lrl -t tgt --arch transformer_lowres_small --task translation)
train baseline "${LRL_TGT[@]}" --max-update "$MAX_UPDATE"
evaluate baseline
train baseline_ft "${LRL_TGT[@]}" --max-update "$FT_UPDATE" --finetune-from-model "$RUN/baseline/checkpoint_last.pt"
evaluate baseline_ft

# the backward model tgt->lrl, pre-trained on the reversed bitext (as in the paper)
train backward -s tgt -t lrl --arch transformer_lowres_small --task translation --max-update "$MAX_UPDATE"

METABT=(-s lrl -t tgt --arch dual_transformer_small --task meta_backtranslation --max-update "$FT_UPDATE"
        --forward-init "$RUN/baseline/checkpoint_last.pt" --backward-init "$RUN/backward/checkpoint_best.pt"
        --bt-generation sample --backward-lr 1e-4 --meta-reward cosine)
train bt "${METABT[@]}" --freeze-backward
evaluate bt
train metabt "${METABT[@]}"
evaluate metabt

step "results (test set of the quickstart corpus, $(( $(date +%s) - start ))s)"
"$PY" scripts/results_table.py "$RESULTS"/baseline.json "$RESULTS"/baseline_ft.json "$RESULTS"/bt.json "$RESULTS"/metabt.json
