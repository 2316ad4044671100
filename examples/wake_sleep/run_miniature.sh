#!/usr/bin/env bash
# Miniature reproduction of wake-sleep back-translation (Cotterell & Kreutzer 2018, Table 1 shape) through the
# evidence protocol: iterations 0 (MLE), 1 (= back-translation), 2 and 3, both directions, several seeds, and the
# supervised control (controlI: the MLE models trained further on the bitext alone, I times, with the same
# schedule); every stage trained to dev convergence; BLEU/chrF with Δ and p paired by seed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RECIPE_USAGE='Wake-sleep miniature: do iterated back-translation and dreamt pairs beat the supervised control?

  bash examples/wake_sleep/run_miniature.sh [shared flags] [--iterations 3]

Default data: the synthetic `domain` corpus (out-of-domain bitext, in-domain dev/test and in-domain monotext on
both sides: the paper'"'"'s TED setting), corpus seed 1, SIZES (environment) default
train=2000,valid=200,test=1000,mono_tgt=4000,mono_lrl=4000. With --raw-dir, the corpus needs
train/valid/test.SRC-TGT.* and mono.SRC, mono.TGT. Each seed runs examples/wake_sleep/run.sh (knobs in the
environment: ARCH, DROPOUT, ATTENTION_DROPOUT, ACTIVATION_DROPOUT, LABEL_SMOOTHING, VOCAB_SIZE, LR, WARMUP, LR_ITER,
WARMUP_ITER, UPSAMPLE, LR_SHRINK, LR_PATIENCE, MAX_TOKENS, BEAM; miniature defaults transformer_lowres_small
regularised for 2,000 pairs (dropout 0.3, attention and activation dropout 0.1, label smoothing 0.2, 2,000
pieces; the kept synthetic table used the former transformer_lowres_tiny at dropout 0.1, label smoothing 0.1,
4,000 pieces, which over-fits 2,000 real pairs: docs/catalog_corpus.md), 2048 tokens, lr 2e-3 with 100 warm-up
updates for iteration 0 and again for every later stage (LR_ITER, WARMUP_ITER: the paper keeps one lr), the lr
halved after every 2 validations without a new best, the real pairs repeated to about the pseudo pairs'"'"' number
(UPSAMPLE auto; the kept synthetic table continued at 2.5e-4 with 50 warm-up updates on plain concatenation,
which lost BLEU to iteration 0 on real text: docs/catalog_corpus.md). Seeds run in parallel lanes (JOBS,
default: the number of cores; logs in WORK/logs/seedS.log).
Systems iterI and controlI, one table per direction (SRC-TGT: forward, TGT-SRC: backward), Δ and p against
control of the last iteration, and iterI vs controlI for every I. Results: WORK/results/summary.json.'
SRC=lrl; TGT=tgt; RELATED=""; SEEDS="1 2 3"; WORK_DIR="$ROOT/runs/wake_sleep_miniature"
PATIENCE=5; VALIDATE_EVERY=50; MAX_UPDATE=10000
# shellcheck source=../../scripts/recipe_lib.sh
source "$ROOT/scripts/recipe_lib.sh"
recipe_parse "$@"
ITERATIONS=3
set -- "${RECIPE_ARGS[@]+"${RECIPE_ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --iterations) ITERATIONS="$2"; shift 2 ;;
    --out) WORK_DIR="$2"; shift 2 ;;  # old name of --work-dir
    *) recipe_unknown "$1" ;;
  esac
done
recipe_corpus 1 domain "${SIZES:-train=2000,valid=200,test=1000,mono_tgt=4000,mono_lrl=4000}"
# the binarised corpus once, before the seeds' lanes start (run.sh reuses it)
recipe_lowres  # ARCH, the regularisation and VOCAB_SIZE (recipe_lib.sh)
recipe_prepare "$RAW" "$WORK_DIR/bin" --vocab-size "$VOCAB_SIZE"
export SRC TGT PATIENCE VALID_EVERY="$VALIDATE_EVERY" MLE_UPDATES="$MAX_UPDATE" ITER_UPDATES="$MAX_UPDATE"
export ARCH DROPOUT ATTENTION_DROPOUT ACTIVATION_DROPOUT LABEL_SMOOTHING
export MAX_TOKENS="${MAX_TOKENS:-2048}" LR="${LR:-2e-3}" WARMUP="${WARMUP:-100}"
# every later stage restarts iteration 0's schedule: continuing at 2.5e-4 on B plus 11 times as many pseudo
# pairs cost 1.5 BLEU on real text (docs/catalog_corpus.md, "wake-sleep's continued training")
export LR_ITER="${LR_ITER:-$LR}" WARMUP_ITER="${WARMUP_ITER:-$WARMUP}" UPSAMPLE="${UPSAMPLE:-auto}"
for seed in $SEEDS; do
  ev_pool_run "seed$seed" bash "$ROOT/examples/wake_sleep/run.sh" --raw-dir "$RAW" --out "$WORK_DIR" --seed "$seed" \
    --iterations "$ITERATIONS" --control
done
ev_pool_wait
# iterI vs controlI, iterI vs iter(I-1) and controlI vs control(I-1) for every I (recipe_lib.sh)
wake_sleep_compare "Wake-sleep back-translation, miniature ($SRC->$TGT forward, $TGT->$SRC backward)" \
  "${RAW_DIR:-synthetic domain preset, corpus seed 1}"
