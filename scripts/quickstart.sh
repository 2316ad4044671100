#!/usr/bin/env bash
# Quickstart: set up, generate the embedded synthetic corpus, train with
# fairseq-train --user-dir, evaluate with fairseq-generate + sacrebleu, and
# print a results table.  Re-running reuses what is already there (data,
# finished checkpoints); delete $QUICKSTART_DIR to start over.
#
# Knobs (environment): QUICKSTART_DIR (default runs/quickstart), SEED (1),
# MAX_UPDATE (training updates per system), MAX_TOKENS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
export PATH="$ROOT/.venv/bin:$PATH"
PY="$ROOT/.venv/bin/python"
USER_DIR="$ROOT/fairseq_metabt"

RUN="${QUICKSTART_DIR:-$ROOT/runs/quickstart}"
SEED="${SEED:-1}"
MAX_UPDATE="${MAX_UPDATE:-300}"
MAX_TOKENS="${MAX_TOKENS:-4096}"
RAW="$RUN/raw"; BIN="$RUN/bin"; RESULTS="$RUN/results"
mkdir -p "$RUN" "$RESULTS"
start=$(date +%s)

step() { echo; echo "=== $* ==="; }

step "1. synthetic corpus (preset quickstart, seed $SEED) -> $RAW"
if [ -f "$RAW/manifest.json" ]; then echo "reusing $RAW"; else
  "$PY" -m fairseq_metabt.synthetic --preset quickstart --out "$RAW" --seed "$SEED"; fi

step "2. sentencepiece + fairseq-preprocess -> $BIN"
if [ -f "$BIN/prepare.json" ]; then echo "reusing $BIN"; else
  "$PY" scripts/prepare_data.py "$RAW" "$BIN"; fi

COMMON=("$BIN" --user-dir "$USER_DIR" -s lrl -t tgt --arch transformer_lowres_small
        --optimizer adam --adam-betas '(0.9, 0.98)' --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 150
        --clip-norm 1.0 --criterion label_smoothed_cross_entropy --label-smoothing 0.1
        --max-tokens "$MAX_TOKENS" --max-update "$MAX_UPDATE" --seed "$SEED"
        --no-epoch-checkpoints --log-interval 50 --log-format simple --num-workers 0)
if ! "$PY" -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then COMMON+=(--cpu); fi

# train_system NAME [method-specific fairseq-train args...]: trains into $RUN/NAME, evaluates on test.
train_system() {
  local name="$1"; shift
  step "train $name (fairseq-train, $MAX_UPDATE updates)"
  fairseq-train "${COMMON[@]}" --save-dir "$RUN/$name" --tensorboard-logdir "$RUN/tensorboard/$name" "$@"
  [ -f "$RUN/$name/checkpoint_best.pt" ] || { echo "training $name produced no checkpoint" >&2; exit 1; }
  step "evaluate $name (fairseq-generate + sacrebleu)"
  "$PY" scripts/evaluate.py "$BIN" --path "$RUN/$name/checkpoint_best.pt" -s lrl -t tgt \
    --json "$RESULTS/$name.json" --output "$RESULTS/$name.generate.txt"
}

# Systems compared on the quickstart test set; each method adds its row here.
train_system baseline --task translation

step "results (test set of the quickstart corpus, $(( $(date +%s) - start ))s)"
"$PY" scripts/results_table.py "$RESULTS"/*.json
