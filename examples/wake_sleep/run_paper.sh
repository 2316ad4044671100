#!/usr/bin/env bash
# Wake-sleep back-translation at the paper's scale (Cotterell & Kreutzer 2018, Table 1): the TED setting (WMT'17
# de-en bitext, the IWSLT'14 TED dev/test sets, each side of the TED training data as monotext) or the WMT setting
# (WMT'17 bitext, newstest dev/test, sampled news-crawl monotext), from the files as distributed. Iterations 0-3
# of Alg. 1 (examples/wake_sleep/run.sh) with the supervised control, every stage to dev convergence, verdicts
# paired by seed and the paper's Table 1 beside ours.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RECIPE_USAGE='Wake-sleep, the paper'"'"'s settings: do iterated back-translation and dreamt pairs beat back-translation?

  bash examples/wake_sleep/run_paper.sh --setting ted --wmt-dir DIR --iwslt-dir DIR [--wmt-train corpus.tc]
  bash examples/wake_sleep/run_paper.sh --setting wmt --wmt-dir DIR --mono-src FILE --mono-tgt FILE
       [--wmt-preset wmt17-en-de] [--mono-lines N] [--iterations 3] [paper-scale flags] [shared flags]

Languages: --src en --tgt de by default (both directions are trained and scored: SRC->TGT is the forward model,
TGT->SRC the backward one). ted: train = the WMT bitext of --wmt-dir (files --wmt-train, default corpus.tc: the
WMT'"'"'17 preprocessed release), dev/test = IWSLT'"'"'14'"'"'s (fairseq'"'"'s split of --iwslt-dir, the unpacked de-en
release), monotext = the two sides of the IWSLT training text (the paper: 153k sentences). wmt: train/dev/test
from --wmt-preset'"'"'s files (wmt17-en-de: corpus.tc, newstest2016, newstest2017), monotext --mono-src/--mono-tgt,
--mono-lines N lines drawn of each (default: every line; the paper: 500k). Nothing is downloaded; the conversion goes to WORK/raw
(--raw-dir takes a converted corpus with mono.SRC and mono.TGT). Each seed runs examples/wake_sleep/run.sh (Alg. 1:
greedy back-translation of the whole monotext per phase, beam 10 at test time as the paper) with --control;
its fairseq-train calls get the paper-scale device flags. Model: ARCH (default transformer, i.e. Transformer-Base;
the paper: a GRU encoder-decoder of 1024); Adam lr 5e-4 after 4,000 warm-up updates for iteration 0, 1e-4 (the
paper'"'"'s rate) after 1,000 for every later stage, halved after 2 validations without a new best; 8,192 tokens per
update. Early stopping every --validate-every (2000) updates, patience 5; --max-update caps each stage (300,000).
Results: WORK/results/summary.json, the table (iterI vs controlI and vs iter(I-1) per direction) and the paper'"'"'s
Table 1 beside ours.'
SRC=en; TGT=de; RELATED=""; SEEDS="1"; WORK_DIR="$ROOT/runs/wake_sleep_paper"
PATIENCE=5; VALIDATE_EVERY=2000; MAX_UPDATE=300000
# shellcheck source=../../scripts/recipe_lib.sh
source "$ROOT/scripts/recipe_lib.sh"
paper_parse "$@"
SETTING=ted; WMT_DIR=""; IWSLT_DIR=""; WMT_TRAIN=corpus.tc; WMT_PRESET=wmt17-en-de; MONO_SRC=""; MONO_TGT=""
MONO_LINES=""; ITERATIONS=3
recipe_options --setting SETTING --wmt-dir WMT_DIR --iwslt-dir IWSLT_DIR --wmt-train WMT_TRAIN \
  --wmt-preset WMT_PRESET --mono-src MONO_SRC --mono-tgt MONO_TGT --mono-lines MONO_LINES --iterations ITERATIONS
[[ "$ITERATIONS" =~ ^[1-9][0-9]*$ ]] || recipe_die "--iterations takes an integer >= 1, got '$ITERATIONS'"
if paper_needs_conversion "$WMT_DIR" "--wmt-dir DIR (the WMT bitext)"; then
  case "$SETTING" in
    ted)
      [ -n "$IWSLT_DIR" ] || recipe_die "--setting ted needs --iwslt-dir DIR (the IWSLT'14 release: TED dev/test and monotext)"
      paper_convert --dataset iwslt14 --iwslt-dir "$IWSLT_DIR" --src "$SRC" --tgt "$TGT" --train-as mono
      paper_convert --append --dataset wmt --wmt-dir "$WMT_DIR" --src "$SRC" --tgt "$TGT" --train "$WMT_TRAIN" ;;
    wmt)
      [ -n "$MONO_SRC" ] && [ -n "$MONO_TGT" ] ||
        recipe_die "--setting wmt needs --mono-src FILE and --mono-tgt FILE (monolingual news of $SRC and $TGT)"
      paper_convert --dataset wmt --wmt-dir "$WMT_DIR" --preset "$WMT_PRESET" --src "$SRC" --tgt "$TGT" \
        --mono "$SRC=$MONO_SRC" --mono "$TGT=$MONO_TGT" ${MONO_LINES:+--mono-lines "$MONO_LINES"} ;;
    *) recipe_die "--setting takes ted or wmt, got '$SETTING'" ;;
  esac
fi
paper_prepare

# examples/wake_sleep/run.sh takes its scale from the environment; its fairseq-train calls (through
# `$PYTHON -m fairseq_metabt.evidence train`) get the device flags from a wrapper of the interpreter
export SRC TGT PATIENCE VALID_EVERY="$VALIDATE_EVERY" MLE_UPDATES="$MAX_UPDATE" ITER_UPDATES="$MAX_UPDATE"
export ARCH="${ARCH:-transformer}" MAX_TOKENS="${MAX_TOKENS:-8192}" LR="${LR:-5e-4}" WARMUP="$(paper_warmup 4000)"
export LR_ITER="${LR_ITER:-1e-4}" WARMUP_ITER="$(paper_warmup 1000)" BEAM="${BEAM:-10}"
if [ "$PAPER_DRY_RUN" = 1 ]; then ARCH=transformer_lowres_tiny; MAX_TOKENS=2048; EVAL_SUBSETS=test; export EVAL_SUBSETS; fi
# shellcheck disable=SC2207
DEVICE=($(paper_device_flags 8192 "$MAX_TOKENS"))
WRAP="$WORK_DIR/python_with_device_flags"
{ echo '#!/usr/bin/env bash'
  echo '# written by examples/wake_sleep/run_paper.sh: fairseq-train under the evidence protocol gets the device flags'
  printf 'if [ "${1:-}" = -m ] && [ "${2:-}" = fairseq_metabt.evidence ] && [ "${3:-}" = train ]; then exec %q "$@"' "$PY"
  printf ' %q' "${DEVICE[@]}"; echo '; fi'
  printf 'exec %q "$@"\n' "$PY"; } > "$WRAP"
chmod +x "$WRAP"
for seed in $SEEDS; do
  ev_pool_run "seed$seed" env PYTHON="$WRAP" bash "$ROOT/examples/wake_sleep/run.sh" --raw-dir "$RAW" \
    --out "$WORK_DIR" --seed "$seed" --iterations "$ITERATIONS" --control
done
ev_pool_wait
CORPUS="$SETTING: WMT bitext from $WMT_DIR"
[ -z "$IWSLT_DIR" ] || CORPUS+=", IWSLT'14 dev/test and monotext from $IWSLT_DIR"
wake_sleep_compare \
  "Wake-sleep back-translation, the paper's $SETTING setting ($SRC->$TGT forward, $TGT->$SRC backward)" \
  "${RAW_DIR:-$CORPUS}"
paper_report wake_sleep "$SETTING"
