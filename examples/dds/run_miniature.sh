#!/usr/bin/env bash
# Miniature reproduction of DDS for multilingual NMT (Wang et al. 2020, Table 2 and Fig. 4/5) through the
# evidence protocol: uniform, temperature, related, TCS, DDS, TCS+DDS and fixed_order (a fixed ranking), all
# through task dds_translation, each trained to dev convergence (early stopping), several seeds; BLEU/chrF on
# the SRC-TGT test set with Δ and p against `uniform` (and DDS against related and fixed_order, TCS+DDS against
# TCS), paired by seed, and the language-usage plot of TCS+DDS and DDS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RECIPE_USAGE='DDS miniature: which source languages help the low-resource pair?

  bash examples/dds/run_miniature.sh [shared flags] [--interval 50] [--scorer-lr 1e-4]
       [--arch transformer_lowres_small] [--systems "uniform temperature related tcs dds tcs_dds fixed_order"]
       [--related-lang hrl] [--objective kl|centered|alg2|exact] [--kl-weight 0.1] [--fixed-order L1,L2,...]
       [--extra-train "fairseq-train args"]

--src is the low-resource source language whose SRC-TGT dev set DDS optimises; --related lists the other source
languages (all translating into --tgt); --related-lang names the one the `related` system adds (default: the
first of --related). Default data: the synthetic `multilingual` preset with --multiway (generated into
WORK/raw/seed1). dds and tcs_dds update the scorer with --objective (default kl: the expected reward minus
--kl-weight times KL(p || prior), which keeps p a weighting; centered: the kept 2026-12-01 run'"'"'s objective;
alg2 = Alg. 2 as written; exact), from update WARMUP on, at psi lr 1e-4 (A.2); extra systems dds_centered,
tcs_dds_centered, dds_alg2, tcs_dds_alg2 use those objectives. fixed_order: every target draws the first
available language of a ranking fixed from the start (--dds-init order), the control for "the scorer becomes
a fixed ranking"; --fixed-order gives the ranking (default on the synthetic preset: lrl,hrl,unrb,nsy,unra, the
order the kept DDS runs settled on; on other data the ranking by vocabulary overlap with --src). Old flags --lrl,
--pivot, --langs are accepted as aliases. Results: WORK/results/summary.json, the table,
WORK/results/scorer.{md,json} (what the learned scorers did over the seeds: scripts/dds_report.py) and
WORK/seedS/SYSTEM/dds_languages.png (those of the kept run: examples/dds/language_usage_{tcs_dds,dds}.png).
Every system trains at lr LR (2e-3) after WARMUP (200) updates and halves it after LR_PATIENCE (2) validations
without a new best dev score (--lr-scheduler plateau_updates), so each run anneals before --patience stops it.
Model: --arch transformer_lowres_small (2+2 layers, dim 128): on the real catalog corpus the tiny model (dim 64)
left 2.6 BLEU of the related system on the table at the same wall time (docs/catalog_corpus.md); the kept
synthetic table (docs/results/dds.json) was trained with --arch transformer_lowres_tiny. Validation every 50
updates keeps a run on a 2-core machine; a GPU run would use the paper'"'"'s scorer settings (docs/methods/dds.md).
Knobs (environment): LR, WARMUP, LR_PATIENCE, SIZES (synthetic sizes).'
SRC=lrl; TGT=tgt; RELATED="hrl,unra,unrb,nsy"; SEEDS="1 2 3"; WORK_DIR="$ROOT/runs/dds_miniature"
PATIENCE=5; VALIDATE_EVERY=50; MAX_UPDATE=8000
# shellcheck source=../../scripts/recipe_lib.sh
source "$ROOT/scripts/recipe_lib.sh"
recipe_parse "$@"
K=50; SLR=1e-4; ARCH=transformer_lowres_small; EXTRA_TRAIN=""; REL=""; OBJECTIVE=kl; KLW=0.1; ORDER=""
SYSTEMS="uniform temperature related tcs dds tcs_dds fixed_order"
set -- "${RECIPE_ARGS[@]+"${RECIPE_ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --interval) K="$2"; shift 2;; --objective) OBJECTIVE="$2"; shift 2;; --scorer-lr) SLR="$2"; shift 2;; --arch) ARCH="$2"; shift 2;;
    --systems) SYSTEMS="$2"; shift 2;; --extra-train) EXTRA_TRAIN="$2"; shift 2;; --related-lang) REL="$2"; shift 2;;
    --kl-weight) KLW="$2"; shift 2;; --fixed-order) ORDER="$2"; shift 2;;
    --lrl) SRC="$2"; shift 2;; --pivot) TGT="$2"; shift 2;;
    --langs) read -r -a L <<< "$2"; SRC="${L[0]}"; RELATED="$(IFS=,; echo "${L[*]:1}")"; RELATED_LIST=("${L[@]:1}"); shift 2;;
    *) recipe_unknown "$1";;
  esac
done
[ ${#RELATED_LIST[@]} -ge 1 ] || recipe_die "DDS needs other source languages: --related L1,L2,..."
REL="${REL:-${RELATED_LIST[0]}}"
# fixed_order's ranking: given, or on the synthetic preset's languages the order the kept DDS runs settled on
# (docs/results_legacy.md), or else the task's default (vocabulary overlap with SRC, SRC first)
if [ -z "$ORDER" ] && [ -z "$RAW_DIR" ] && [ "$SRC,$RELATED" = "lrl,hrl,unra,unrb,nsy" ]; then ORDER="lrl,hrl,unrb,nsy,unra"; fi
ORDER_ARGS=(--dds-init order); [ -z "$ORDER" ] || ORDER_ARGS+=(--dds-order "$ORDER")
[ -n "$RAW_DIR" ] && for l in "${RELATED_LIST[@]}"; do recipe_check_pair "$RAW_DIR" "$l" "$TGT"; done
set -- $SEEDS; FIRST_SEED="$1"
recipe_corpus 1 multilingual \
  "${SIZES:-train=1000,hrl=4000,unra=4000,unrb=4000,nsy=4000,valid=200,test=1000,mono_tgt=100,mono_lrl=100,pool=7000}" --multiway
DATA="$WORK_DIR/bin"
recipe_prepare "$RAW" "$DATA" --vocab-size 4000

# the scorer learns after the warm-up (cosines carry no information while the lr ramps up), from fresh
# per-language gradients against the whole dev set (the defaults of --dds-grad-source/--dds-reward)
LEARN=(--dds-start-update "${WARMUP:-200}")
ALL="$SRC-$TGT"; for l in "${RELATED_LIST[@]}"; do ALL="$ALL,$l-$TGT"; done
COMMON=("$DATA" --user-dir "$USER_DIR" --task dds_translation --dds-dev-lang-pair "$SRC-$TGT"
        --arch "$ARCH" --optimizer adam --adam-betas "(0.9,0.98)" --lr "${LR:-2e-3}"
        --lr-scheduler plateau_updates --lr-shrink 0.5 --lr-patience "${LR_PATIENCE:-2}" --warmup-updates "${WARMUP:-200}"
        --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens 2048
        --dds-update-interval "$K" --dds-scorer-lr "$SLR" --dds-scorer-kl-weight "$KLW" $(recipe_cpu_flag) --num-workers 0
        --log-format simple --log-interval 100 --no-progress-bar --ddp-backend legacy_ddp)

dds_system() {  # SYSTEM SEED: train to convergence, score, plot the language usage
  local sys="$1" seed="$2" out="$WORK_DIR/seed$2/$1" pairs="$ALL" args=()
  case "$sys" in
    uniform)     args=(--dds-init uniform --dds-update-scorer false);;
    temperature) args=(--dds-init temperature --dds-temperature 5 --dds-update-scorer false);;
    related)     pairs="$SRC-$TGT,$REL-$TGT"; args=(--dds-init uniform --dds-update-scorer false);;
    tcs)         args=(--dds-init tcs --dds-update-scorer false);;
    dds)         args=(--dds-init uniform "${LEARN[@]}" --dds-scorer-objective "$OBJECTIVE");;
    tcs_dds)     args=(--dds-init tcs "${LEARN[@]}" --dds-scorer-objective "$OBJECTIVE");;
    fixed_order) args=("${ORDER_ARGS[@]}" --dds-update-scorer false);;
    dds_centered) args=(--dds-init uniform "${LEARN[@]}" --dds-scorer-objective centered);;  # the kept run's
    tcs_dds_centered) args=(--dds-init tcs "${LEARN[@]}" --dds-scorer-objective centered);;
    dds_alg2)    args=(--dds-init uniform "${LEARN[@]}" --dds-scorer-objective alg2);;  # Alg. 2 as written
    tcs_dds_alg2) args=(--dds-init tcs "${LEARN[@]}" --dds-scorer-objective alg2);;
  esac
  # shellcheck disable=SC2086
  ev_train "$out" "${COMMON[@]}" --lang-pairs "$pairs" "${args[@]}" --seed "$seed" $EXTRA_TRAIN || return $?
  ev_eval "$sys" "$seed" "$out" "$DATA" "$SRC" "$TGT" --task dds_translation || return $?
  if [ -f "$out/dds_log.jsonl" ]; then "$PY" "$ROOT/scripts/plot_dds.py" "$out" --title "$sys, seed $seed" >/dev/null; fi
}
for sys in $SYSTEMS; do
  case "$sys" in uniform|temperature|related|tcs|dds|tcs_dds|fixed_order|dds_centered|tcs_dds_centered|dds_alg2|tcs_dds_alg2) ;;
    *) recipe_die "unknown system $sys (see --help)";; esac
done
# every (system, seed) is independent: JOBS of them at a time
for seed in $SEEDS; do for sys in $SYSTEMS; do ev_pool_run "seed$seed.$sys" dds_system "$sys" "$seed"; done; done
ev_pool_wait
# the plots stay in the work directory: a recipe that wrote into the checkout would leave its tree dirty, and
# every later run's provenance would say "uncommitted changes"
for sys in tcs_dds dds; do
  png="$WORK_DIR/seed$FIRST_SEED/$sys/dds_languages.png"
  if [ -f "$png" ]; then echo "language usage of $sys, seed $FIRST_SEED: $png"; fi
done
# DDS and TCS+DDS against the rules that could explain their gain: related, the fixed ranking; TCS+DDS against TCS
recipe_also dds:related dds:fixed_order tcs_dds:tcs tcs_dds:related tcs_dds:fixed_order
# shellcheck disable=SC2086
ev_compare --control uniform --systems $SYSTEMS --same-schedule $SYSTEMS "${ALSO[@]+"${ALSO[@]}"}" \
  --title "DDS, miniature: $SRC-$TGT test, sources $SRC,$RELATED" \
  --corpus "${RAW_DIR:-synthetic multilingual preset --multiway, corpus seed 1}"
# what the learned scorers did over the seeds (rewards, p per language, entropy, KL to the prior): the table's
# reading, in WORK/results/scorer.{md,json}
learned=()
for sys in $SYSTEMS; do case "$sys" in *dds*) for seed in $SEEDS; do learned+=("$WORK_DIR/seed$seed/$sys"); done;; esac; done
if [ ${#learned[@]} -gt 0 ]; then
  echo; echo "=== what the scorer learned (scripts/dds_report.py) ==="
  "$PY" "$ROOT/scripts/dds_report.py" "${learned[@]}" --json "$WORK_DIR/results/scorer.json" \
    | tee "$WORK_DIR/results/scorer.md"
fi
