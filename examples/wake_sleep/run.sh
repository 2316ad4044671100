#!/usr/bin/env bash
# Wake-sleep back-translation, offline: Alg. 1 of Cotterell & Kreutzer (2018) with fairseq's own CLIs.
#
#   bash examples/wake_sleep/run.sh [--raw-dir RAW] --iterations I [--out OUT] [--seed S] [--control]
#
# Iteration 0: the forward (SRC->TGT) and backward (TGT->SRC) models by MLE on the bitext B.
# Iteration i = 1..I:
#   wake  (lines 2-6):  fairseq-generate back-translates all of mono.TGT with the backward model of
#                       iteration i-1 (greedy = the Viterbi approximation, Sec. 3.4); the forward model
#                       continues training on B + the back-translated pairs, early stopping on dev;
#   sleep (lines 7-11): the new forward model translates all of mono.SRC (p(x) is the empirical source
#                       monotext, Sec. 3.3); the backward model continues training on reversed B + the
#                       dreamt pairs, early stopping on dev.
# Iteration 1 is therefore standard back-translation (its sleep phase only prepares iteration 2).
# --control also trains the iteration-0 models further on B alone, I times with the same schedule
# (rows controlI): the supervised baseline with the same number of updates.
# Each model is evaluated (dev and test BLEU, scripts/evaluate.py) after its iteration; OUT/seedS/results.tsv
# collects iteration, direction, dev/test BLEU and the pseudo bitext's size and mean length.
# Each test score is also recorded in OUT/evals.json (systems iterI and controlI, one pair per direction) for
# `python -m fairseq_metabt.evidence compare` (run_miniature.sh does this).
# Every stage leaves a marker, so a re-run resumes at the first unfinished stage (an interrupted
# fairseq-train resumes from its checkpoint_last.pt).
#
# Without --raw-dir the synthetic `domain` corpus is generated: out-of-domain bitext, in-domain dev/test
# and in-domain monotext on both sides (the paper's TED setting).  A real corpus in the raw layout
# (docs/data.md) needs train/valid/test.SRC-TGT.* and mono.SRC, mono.TGT; set SRC/TGT to its codes.
# Scale knobs (environment): ARCH (transformer_lowres_small), MLE_UPDATES (3000), ITER_UPDATES (1500, the most
# updates per direction and iteration), VALID_EVERY (200 updates), PATIENCE (5 validations), MAX_TOKENS (4096),
# LR (5e-4), WARMUP (400 updates, iteration 0), LR_ITER (2e-4, continued training), WARMUP_ITER (100 updates),
# UPSAMPLE (auto: each stage on B ∪ pseudo pairs repeats B round(pseudo pairs / |B|) times, at least once, so an
# epoch holds about as many real pairs as pseudo ones; an integer: that factor; 1: plain concatenation),
# LR_SHRINK (0.5) and LR_PATIENCE (2): --lr-scheduler plateau_updates multiplies the lr by LR_SHRINK after every
# LR_PATIENCE validations without a new best, so every stage anneals before PATIENCE stops it; BEAM (5, evaluation),
# GEN_MAX_TOKENS (8192), EVAL_SUBSETS ("valid test"; empty: no evaluation), SIZES (synthetic --sizes);
# DROPOUT, ATTENTION_DROPOUT, ACTIVATION_DROPOUT (the architecture's when unset), LABEL_SMOOTHING (0.1) and
# VOCAB_SIZE (prepare_data.py's 4,000 when unset; used only when OUT/bin is not prepared yet)
# (run_miniature.sh sets the low-resource regularisation, scripts/recipe_lib.sh recipe_lowres).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"; [ -x "$PY" ] || PY=python
BINDIR="$(dirname "$PY")"
TRAIN="$BINDIR/fairseq-train"; [ -x "$TRAIN" ] || TRAIN=fairseq-train
GENERATE="$BINDIR/fairseq-generate"; [ -x "$GENERATE" ] || GENERATE=fairseq-generate
PREPROCESS="$BINDIR/fairseq-preprocess"; [ -x "$PREPROCESS" ] || PREPROCESS=fairseq-preprocess
RAW=""; OUT="runs/wake_sleep"; SEED=1; ITERATIONS=""; CONTROL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --raw-dir) RAW="$2"; shift 2 ;;
    --iterations) ITERATIONS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --control) CONTROL=1; shift ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
if ! [[ "$ITERATIONS" =~ ^[0-9]+$ ]] || [ "$ITERATIONS" -lt 1 ]; then
  echo "--iterations must be an integer >= 1, got '${ITERATIONS}' (iteration 1 is standard back-translation;" \
       "iteration 0, MLE, always runs)" >&2
  exit 2
fi
SRC="${SRC:-lrl}"; TGT="${TGT:-tgt}"; ARCH="${ARCH:-transformer_lowres_small}"
MLE_UPDATES="${MLE_UPDATES:-3000}"; ITER_UPDATES="${ITER_UPDATES:-1500}"; VALID_EVERY="${VALID_EVERY:-200}"
PATIENCE="${PATIENCE:-5}"; MAX_TOKENS="${MAX_TOKENS:-4096}"; LR="${LR:-5e-4}"; LR_ITER="${LR_ITER:-2e-4}"
WARMUP="${WARMUP:-400}"; WARMUP_ITER="${WARMUP_ITER:-100}"; LR_SHRINK="${LR_SHRINK:-0.5}"; LR_PATIENCE="${LR_PATIENCE:-2}"
UPSAMPLE="${UPSAMPLE:-auto}"
if ! [[ "$UPSAMPLE" =~ ^(auto|[1-9][0-9]*)$ ]]; then
  echo "UPSAMPLE must be 'auto' or a positive integer (how many times B is repeated beside the pseudo pairs)," \
       "got '$UPSAMPLE'" >&2
  exit 2
fi
BEAM="${BEAM:-5}"; GEN_MAX_TOKENS="${GEN_MAX_TOKENS:-8192}"; EVAL_SUBSETS="${EVAL_SUBSETS-valid test}"
DEVICE=(); "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || DEVICE=(--cpu)
mkdir -p "$OUT"

if [ -z "$RAW" ]; then
  RAW="$OUT/raw"
  [ -f "$RAW/manifest.json" ] || "$PY" -m fairseq_metabt.synthetic --preset domain --out "$RAW" --seed 1 \
      ${SIZES:+--sizes "$SIZES"}
fi
for lang in "$SRC" "$TGT"; do
  if [ ! -s "$RAW/mono.$lang" ]; then
    side=$([ "$lang" = "$TGT" ] && echo "target monotext M_T, back-translated in the wake phase" \
                                || echo "source monotext M_S, translated in the sleep phase")
    echo "wake-sleep needs $side: $RAW/mono.$lang is missing or empty; add it to the raw directory" >&2
    exit 2
  fi
done
BIN="$OUT/bin"
[ -f "$BIN/prepare.json" ] || "$PY" "$ROOT/scripts/prepare_data.py" "$RAW" "$BIN" ${VOCAB_SIZE:+--vocab-size "$VOCAB_SIZE"}
RUN="$OUT/seed$SEED"
mkdir -p "$RUN"

COMMON=(--user-dir "$ROOT/fairseq_metabt" --task translation --arch "$ARCH" --share-decoder-input-output-embed
        --optimizer adam --adam-betas "(0.9, 0.98)" --clip-norm 1.0 --criterion label_smoothed_cross_entropy
        --label-smoothing "${LABEL_SMOOTHING:-0.1}" ${DROPOUT:+--dropout "$DROPOUT"}
        ${ATTENTION_DROPOUT:+--attention-dropout "$ATTENTION_DROPOUT"}
        ${ACTIVATION_DROPOUT:+--activation-dropout "$ACTIVATION_DROPOUT"} --max-tokens "$MAX_TOKENS"
        --seed "$SEED" --num-workers 0 --log-format simple --log-interval 50 "${DEVICE[@]}")

# train DIR DATA S T MAX_UPDATE [INIT [UPSAMPLE]]: one direction, trained to dev convergence under the evidence
# protocol (python -m fairseq_metabt.evidence train: early stopping after PATIENCE validations every VALID_EVERY
# updates, MAX_UPDATE only a safety cap; DIR/convergence.json says whether it converged); continued from INIT if
# given; B repeated UPSAMPLE times beside DATA's train1, the pseudo pairs (fairseq's default -1 would break the
# concatenation)
train() {
  local dir="$1" data="$2" s="$3" t="$4" max="$5" init="${6:-}" ups="${7:-1}"
  [ -f "$dir/done" ] && return 0
  mkdir -p "$dir"
  local plateau=(--lr-scheduler plateau_updates --lr-shrink "$LR_SHRINK" --lr-patience "$LR_PATIENCE")
  local schedule=(--lr "$LR" --warmup-updates "$WARMUP" "${plateau[@]}")
  # continued training: optimizer and schedule re-initialised; fairseq ignores --finetune-from-model
  # when $dir/checkpoint_last.pt exists, i.e. an interrupted stage resumes
  [ -n "$init" ] && schedule=(--lr "$LR_ITER" --warmup-updates "$WARMUP_ITER" "${plateau[@]}"
                              --finetune-from-model "$init")
  echo "training $s->$t in $dir (log: $dir/train.log)"
  "$PY" -m fairseq_metabt.evidence train --save-dir "$dir" --patience "$PATIENCE" --validate-every "$VALID_EVERY" \
      --max-update "$max" -- "$data" -s "$s" -t "$t" "${COMMON[@]}" "${schedule[@]}" --upsample-primary "$ups" \
      > "$dir/protocol.log" 2>&1 || { tail -40 "$dir/protocol.log" >&2; exit 1; }
  tail -1 "$dir/protocol.log"
  grep -E "valid on 'valid' subset" "$dir/train.log" | tail -1 || true
  touch "$dir/done"
}

# evaluate DIR S T ITERATION DIRECTION [PSEUDO_JSON]: dev and test BLEU, one results.tsv row
evaluate() {
  local dir="$1" s="$2" t="$3" it="$4" direction="$5" pseudo="${6:-}"
  local system="iter$it"; [[ "$it" == control* ]] && system="$it"
  for subset in $EVAL_SUBSETS; do
    [ -f "$dir/$subset.json" ] && continue
    if [ "$subset" = test ]; then  # recorded for the paired comparison (python -m fairseq_metabt.evidence compare)
      "$PY" -m fairseq_metabt.evidence evaluate "$BIN" --work-dir "$OUT" --system "$system" --seed "$SEED" \
        --save-dir "$dir" --path "$dir/checkpoint_best.pt" -s "$s" -t "$t" --beam "$BEAM" >/dev/null
      cp "$OUT/seed$SEED/eval/$system.$s-$t.json" "$dir/test.json"
    else
      "$PY" "$ROOT/scripts/evaluate.py" "$BIN" --path "$dir/checkpoint_best.pt" \
        -s "$s" -t "$t" --subset "$subset" --beam "$BEAM" --json "$dir/$subset.json" >/dev/null
    fi
  done
  "$PY" - "$dir" "$it" "$direction" "$s-$t" "$pseudo" "$RUN/results.tsv" <<'EOF'
import json, os, sys
d, it, direction, pair, pseudo, out = sys.argv[1:]
dev, test = ((json.load(open(os.path.join(d, f"{s}.json"))) if os.path.exists(os.path.join(d, f"{s}.json"))
              else {"bleu": "-"}) for s in ("valid", "test"))
p = json.load(open(pseudo)) if pseudo else {"pairs": 0, "mean_len": 0.0}
rows = [l for l in open(out)] if os.path.exists(out) else ["iteration\tdirection\tpair\tdev_bleu\ttest_bleu\tpseudo_pairs\tpseudo_mean_len\n"]
rows = [r for r in rows if not r.startswith(f"{it}\t{direction}\t")]
rows.append(f"{it}\t{direction}\t{pair}\t{dev['bleu']}\t{test['bleu']}\t{p['pairs']}\t{p['mean_len']}\n")
open(out, "w").writelines(rows)
print(f"iteration {it} {direction} ({pair}): dev BLEU {dev['bleu']}, test BLEU {test['bleu']}, pseudo pairs {p['pairs']}")
EOF
}

# pseudo IT PHASE MODEL GEN_FROM GEN_TO: translate all of mono.GEN_FROM with MODEL, binarise the pseudo bitext
# (generated GEN_TO side, real GEN_FROM side) together with B into $RUN/iterIT/PHASE-data
pseudo() {
  local it="$1" phase="$2" model="$3" from="$4" to="$5"
  local dir="$RUN/iter$it/$phase-data"
  [ -f "$dir/done" ] && return 0
  rm -rf "$dir"; mkdir -p "$dir/gen" "$dir/text"
  # the whole monotext as the test split of FROM-TO (the TO side a dummy copy), for fairseq-generate
  local abs_bin; abs_bin="$(cd "$BIN" && pwd)"
  for side in "$from" "$to"; do
    cp "$BIN/dict.txt" "$dir/gen/dict.$side.txt"
    for ext in bin idx; do ln -s "$abs_bin/mono.$from.$ext" "$dir/gen/test.$from-$to.$side.$ext"; done
  done
  "$GENERATE" "$dir/gen" --user-dir "$ROOT/fairseq_metabt" --path "$model" -s "$from" -t "$to" --gen-subset test \
    --beam 1 --max-len-a 1.2 --max-len-b 10 --max-tokens "$GEN_MAX_TOKENS" --required-batch-size-multiple 1 \
    "${DEVICE[@]}" > "$dir/generate.log"
  grep -E "^Translated|Generate test" "$dir/generate.log" || true
  "$PY" "$ROOT/examples/wake_sleep/pseudo_bitext.py" pairs "$dir/generate.log" "$BIN/spm/mono.$from" \
    "$dir/text/train" "$to" "$from" > "$dir/pseudo.json"
  # the pseudo bitext as train1: fairseq's translation task trains on train + train1 (B ∪ pseudo)
  "$PREPROCESS" --source-lang "$SRC" --target-lang "$TGT" --trainpref "$dir/text/train" --destdir "$dir/bin1" \
    --srcdict "$BIN/dict.txt" --tgtdict "$BIN/dict.txt" --workers 1 > "$dir/preprocess.log" 2>&1
  for lang in "$SRC" "$TGT"; do
    cp "$BIN/dict.txt" "$dir/dict.$lang.txt"
    for ext in bin idx; do
      mv "$dir/bin1/train.$SRC-$TGT.$lang.$ext" "$dir/train1.$SRC-$TGT.$lang.$ext"
      for split in train valid test; do
        ln -sf "$(cd "$BIN" && pwd)/$split.$SRC-$TGT.$lang.$ext" "$dir/$split.$SRC-$TGT.$lang.$ext"
      done
    done
  done
  echo "iteration $it $phase pseudo bitext: $(cat "$dir/pseudo.json")"
  touch "$dir/done"
}

# upsample DATA_DIR: B's repeat factor beside DATA_DIR's pseudo pairs (UPSAMPLE; auto: pseudo_bitext.py upsample,
# their ratio to |B|, rounded, at least 1)
upsample() {
  if [ "$UPSAMPLE" != auto ]; then echo "$UPSAMPLE"; return; fi
  "$PY" "$ROOT/examples/wake_sleep/pseudo_bitext.py" upsample "$1/pseudo.json" "$BIN/spm/train.$SRC-$TGT.$SRC"
}

# iteration 0: MLE on B, both directions
FWD="$RUN/iter0/forward"; BWD="$RUN/iter0/backward"
train "$FWD" "$BIN" "$SRC" "$TGT" "$MLE_UPDATES"
train "$BWD" "$BIN" "$TGT" "$SRC" "$MLE_UPDATES"
evaluate "$FWD" "$SRC" "$TGT" 0 forward
evaluate "$BWD" "$TGT" "$SRC" 0 backward

for ((i = 1; i <= ITERATIONS; i++)); do
  echo "=== wake-sleep iteration $i of $ITERATIONS ==="
  # wake: x~ = q_phi(y) for y in M_T (backward model of iteration i-1); theta on B ∪ B_back
  pseudo "$i" wake "$BWD/checkpoint_best.pt" "$TGT" "$SRC"
  NEW_FWD="$RUN/iter$i/forward"
  UPS=$(upsample "$RUN/iter$i/wake-data")  # a plain assignment, so a failure stops the script (set -e)
  train "$NEW_FWD" "$RUN/iter$i/wake-data" "$SRC" "$TGT" "$ITER_UPDATES" "$FWD/checkpoint_best.pt" "$UPS"
  evaluate "$NEW_FWD" "$SRC" "$TGT" "$i" forward "$RUN/iter$i/wake-data/pseudo.json"
  # sleep: y~ = p_theta(x~) for x~ in M_S (the forward model just trained); phi on reversed B ∪ B_dreamt
  pseudo "$i" sleep "$NEW_FWD/checkpoint_best.pt" "$SRC" "$TGT"
  NEW_BWD="$RUN/iter$i/backward"
  UPS=$(upsample "$RUN/iter$i/sleep-data")  # a plain assignment, so a failure stops the script (set -e)
  train "$NEW_BWD" "$RUN/iter$i/sleep-data" "$TGT" "$SRC" "$ITER_UPDATES" "$BWD/checkpoint_best.pt" "$UPS"
  evaluate "$NEW_BWD" "$TGT" "$SRC" "$i" backward "$RUN/iter$i/sleep-data/pseudo.json"
  FWD="$NEW_FWD"; BWD="$NEW_BWD"
done
if [ "$CONTROL" = 1 ]; then
  # supervised control: the iteration-0 models trained further on B alone, with the same per-iteration
  # schedule and budget, so gains over it are the pseudo data's and not the extra updates'
  CF="$RUN/iter0/forward"; CB="$RUN/iter0/backward"
  for ((i = 1; i <= ITERATIONS; i++)); do
    train "$RUN/control$i/forward" "$BIN" "$SRC" "$TGT" "$ITER_UPDATES" "$CF/checkpoint_best.pt"
    evaluate "$RUN/control$i/forward" "$SRC" "$TGT" "control$i" forward
    train "$RUN/control$i/backward" "$BIN" "$TGT" "$SRC" "$ITER_UPDATES" "$CB/checkpoint_best.pt"
    evaluate "$RUN/control$i/backward" "$TGT" "$SRC" "control$i" backward
    CF="$RUN/control$i/forward"; CB="$RUN/control$i/backward"
  done
fi
echo "results: $RUN/results.tsv"
column -t -s $'\t' "$RUN/results.tsv" || cat "$RUN/results.tsv"
