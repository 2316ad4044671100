#!/usr/bin/env bash
# Latent depth at the paper's scale (Li et al. 2020, multilingual experiments, App. C): the TED talks corpus of
# Qi et al. (2018) as distributed, eight languages with English, one-to-many and many-to-one; static (K layers),
# static deep and latent deep (deep, K layers kept per language) trained to dev convergence under the evidence
# protocol, BLEU per language with verdicts against static deep, and the paper's figures beside ours.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RECIPE_USAGE='Latent depth, the paper'"'"'s multilingual TED setting: does a deep model with per-language layer
selection beat static depth?

  bash examples/latent_depth/run_paper.sh --ted-dir DIR [--preset ted8-related|ted8-diverse]
       [--directions "o2m m2o"] [--systems "static static_deep latent_deep"] [--shallow 6] [--deep 12]
       [paper-scale flags] [shared flags]

--ted-dir holds all_talks_{train,dev,test}.tsv (nothing is downloaded; converted once into WORK/raw; --raw-dir
takes a converted corpus). o2m: eng -> each language of --preset, the decoder gated; m2o: each -> eng, the
encoder gated (the language-specific side; the shared side stays static). Systems: static (--shallow layers on
both sides), static_deep (--deep on both sides), latent_deep (--deep on both sides, the language-specific side
gated with L_K at K = --shallow on the utilisation averaged over languages; each language keeps its layers with
q > 0.5, the network it trains once the gates are hard) and, on request, latent_lang (L_K per language: K
layers for every language). Model: pre-norm, dim 512, ffn 1024, 4 heads (App. C.2'"'"'s deep width), shared
decoder input/output embeddings; Adam, lr 1.5e-3 after 8,000 warm-up updates (C.2), 4,096 tokens per language
and update; the lr halves after 2 validations without a new best (plateau_updates) so each run anneals before
--patience stops it. Latent: beta 1 and lambda 0.1 (C.2), KL anneal over 4,000 updates (the gates relaxed
meanwhile: the model'"'"'s default --latent-soft-updates), inner steps I = 2 (Table 10), gate logits at their own
lr 0.01, aggregated-posterior prior (Sec. 5). Early stopping on dev nll_loss every --validate-every (1000)
updates, patience 5, cap --max-update 40,000 (the paper: 14k updates, last checkpoint). Results:
WORK/results/summary.json (one table per pair), and the paper'"'"'s figures (App. B.2 Table 10, dev BLEU of
M2O-Diverse: the only BLEU of the paper in shared/papers) beside ours.'
SRC=aze; TGT=eng; RELATED=""; SEEDS="1"; WORK_DIR="$ROOT/runs/latent_depth_paper"
PATIENCE=5; VALIDATE_EVERY=1000; MAX_UPDATE=40000; METRIC=nll_loss
# shellcheck source=../../scripts/recipe_lib.sh
source "$ROOT/scripts/recipe_lib.sh"
paper_parse "$@"
TED_DIR=""; PRESET=ted8-related; DIRS="o2m m2o"; SYSTEMS="static static_deep latent_deep"; SHALLOW=6; DEEP=12
recipe_options --ted-dir TED_DIR --preset PRESET --directions DIRS --systems SYSTEMS --shallow SHALLOW --deep DEEP
recipe_check_systems "static static_deep latent_deep latent_lang"
for d in $DIRS; do case "$d" in o2m|m2o) ;; *) recipe_die "--directions takes o2m and/or m2o, got $d" ;; esac; done
[[ "$SHALLOW" =~ ^[1-9][0-9]*$ && "$DEEP" =~ ^[1-9][0-9]*$ && "$SHALLOW" -lt "$DEEP" ]] ||
  recipe_die "--shallow and --deep take integers with shallow < deep, got $SHALLOW and $DEEP"
read -r -a LANGS <<< "$(paper_preset_langs "$PRESET")"
paper_ted_corpus "$TED_DIR" "$PRESET"
paper_prepare

DIM=512; WARMUP="$(paper_warmup 8000)"; ANNEAL=4000
if [ "$PAPER_DRY_RUN" = 1 ]; then DIM=32; SHALLOW=1; DEEP=2; ANNEAL=1; fi
pairs() {  # o2m: eng-x,...   m2o: x-eng,...
  local out="" l; for l in "${LANGS[@]}"; do
    if [ "$1" = o2m ]; then out="$out,$TGT-$l"; else out="$out,$l-$TGT"; fi; done; echo "${out#,}"; }
sizes() { echo --encoder-embed-dim "$DIM" --decoder-embed-dim "$DIM" --encoder-ffn-embed-dim $((DIM * 2)) \
  --decoder-ffn-embed-dim $((DIM * 2)) --encoder-attention-heads 4 --decoder-attention-heads 4 \
  --encoder-layers "$1" --decoder-layers "$1" --encoder-normalize-before --decoder-normalize-before \
  --share-decoder-input-output-embed --dropout 0.1; }
# shellcheck disable=SC2207
DEVICE=($(paper_device_flags 4096 4096))
COMMON=(--optimizer adam --adam-betas "(0.9,0.98)" --lr 1.5e-3 --lr-scheduler plateau_updates --lr-shrink 0.5
        --lr-patience 2 --warmup-updates "$WARMUP" --label-smoothing 0.1 --max-tokens 4096 "${DEVICE[@]}"
        --num-workers 0 --log-format simple --log-interval 100 --no-progress-bar --ddp-backend legacy_ddp
        --decoder-langtok)

latent_system() {  # DIRECTION SEED SYSTEM: train to convergence, score every pair of the direction
  local dir="$1" seed="$2" sys="$3" LP out args task l s t
  LP="$(pairs "$dir")"; out="$WORK_DIR/seed$seed/$dir/$sys"
  case "$sys" in
    static|static_deep)
      args=(--task multilingual_translation --arch multilingual_transformer --share-encoders --share-decoders
            --criterion label_smoothed_cross_entropy)
      # shellcheck disable=SC2207
      if [ "$sys" = static ]; then args+=($(sizes "$SHALLOW")); else args+=($(sizes "$DEEP")); fi ;;
    latent_deep|latent_lang)
      # shellcheck disable=SC2207
      args=(--task latent_depth_translation --arch latent_depth_transformer $(sizes "$DEEP")
            --criterion latent_layers_loss --latent-kl-weight 1 --latent-kl-anneal-updates "$ANNEAL"
            --latent-lk-weight 0.1 --latent-prior aggregated --latent-inner-steps 2 --latent-gate-lr 0.01)
      if [ "$dir" = o2m ]; then args+=(--decoder-latent-layers --decoder-target-layers "$SHALLOW" --decoder-latent-select threshold)
      else args+=(--encoder-latent-layers --encoder-target-layers "$SHALLOW" --encoder-latent-select threshold); fi
      [ "$sys" = latent_lang ] && args+=(--latent-lk-utilisation language) ;;
  esac
  ev_train "$out" "$BIN" --user-dir "$USER_DIR" --lang-pairs "$LP" "${args[@]}" "${COMMON[@]}" --seed "$seed" || return $?
  task=multilingual_translation; [[ "$sys" == latent_* ]] && task=latent_depth_translation
  for l in "${LANGS[@]}"; do
    if [ "$dir" = o2m ]; then s="$TGT"; t="$l"; else s="$l"; t="$TGT"; fi
    ev_eval "$sys" "$seed" "$out" "$BIN" "$s" "$t" --task "$task" -- --lang-pairs "$LP" --decoder-langtok || return $?
  done
}
for dir in $DIRS; do for seed in $SEEDS; do for sys in $SYSTEMS; do
  ev_pool_run "$dir.seed$seed.$sys" latent_system "$dir" "$seed" "$sys"
done; done; done
ev_pool_wait
CONTROL=static_deep; [[ " $SYSTEMS " == *" static_deep "* ]] || CONTROL="${SYSTEMS%% *}"
recipe_also latent_deep:static latent_lang:static latent_lang:latent_deep
# shellcheck disable=SC2086
ev_compare --control "$CONTROL" --systems $SYSTEMS --same-schedule $SYSTEMS "${ALSO[@]+"${ALSO[@]}"}" \
  --title "Latent depth, the paper's TED setting ($PRESET; static $SHALLOW / deep $DEEP / latent, K = $SHALLOW)" \
  --corpus "TED talks (Qi et al. 2018), preset $PRESET, from ${TED_DIR:-$RAW}"
paper_report latent_depth "$PRESET"
