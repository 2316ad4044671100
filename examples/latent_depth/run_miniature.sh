#!/usr/bin/env bash
# Miniature reproduction of Li et al. (2020), "Deep Transformers with Latent Depth", Tables 2/3 + Fig. 9, through
# the evidence protocol: static shallow, static K, static deep vs latent deep (K = shallow depth), one-to-many and
# many-to-one, each system trained to dev convergence, several seeds; BLEU/chrF per language with Δ and p against
# static_deep, paired by seed, and the per-language layer-selection heatmap.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RECIPE_USAGE='Latent-depth miniature: does a deep model with learned, per-language layer selection beat static depth?

  bash examples/latent_depth/run_miniature.sh [shared flags] [--directions "o2m m2o"] [--shallow 2] [--deep 4]
       [--warmup 200] [--dim 128] [--vocab-size 2000] [--sizes SYNTHETIC_SIZES] [--extra-train "fairseq-train args"]
       [--latent-extra "args for the latent systems only"]
       [--systems "static_shallow static_k static_deep latent_deep"]   (also: latent_lang)

Languages: --src and the --related languages are the many side, --tgt the pivot (o2m: TGT -> each, m2o: each ->
TGT). Default data: the synthetic `multilingual` preset (generated into WORK/raw/seed1). Old flags --langs and
--pivot are accepted as aliases. Results: WORK/results/summary.json (one table per pair),
WORK/heatmap.{o2m,m2o}[.latent_lang].seedS.{png,json} (each seed: gate probabilities and selected layers per
language) and WORK/heatmap.{o2m,m2o}.png (the first seed of latent_deep).
Systems: static_shallow (--shallow layers on both sides), static_deep (--deep on both sides), static_k (the shape
of the pruned latent model: --deep layers on the shared side, --shallow on the language-specific side, i.e. the
decoder for o2m and the encoder for m2o) and latent_deep (--deep on both sides, the language-specific side gated,
L_K holding the layers kept, averaged over languages, at K = --shallow; each language keeps its layers with
q > 0.5). latent_lang, on request, is latent_deep with L_K on the utilisation of each language
(--latent-lk-utilisation language): every language keeps K layers, the gates choose which; against latent_deep
it measures what letting languages keep different depths is worth. latent_deep is scored twice: as trained
(gates in eval mode) and as `latent_pruned`, the plain Transformer per language that keeps only the layers its
gates select (scripts/prune_latent_depth.py), which must score the same. static_k is the control for
"learned selection from a deep model" against "training the K-layer network directly".
Every system trains at lr LR (1.5e-3) after --warmup updates and halves it after LR_PATIENCE (2) validations
without a new best dev score (--lr-scheduler plateau_updates), so each run anneals before --patience stops it.
Model size: --dim 128 (ffn 256, 4 heads) and --deep 4. On the real catalog kit dim 64, the shape of the kept
synthetic run (docs/results/indicative/latent_depth.json, made with --dim 64), ended at dev nll_loss 4.34 and
9.5 BLEU gl-en where dim 128 reached 3.29 and 18.0 (static_deep, m2o, seed 1, the same 2,000 pieces:
docs/catalog_corpus.md); it costs 1.2 s per update with a core to itself (dim 64: 0.65 s with 3 trainings on
2 cores); a multilingual update is one batch of every pair. dim 128 with 6 layers took 1.3-3.4 s per update
there: larger shapes are for a GPU.
--vocab-size: the joint sentencepiece vocabulary of every language (one dictionary for the shared model).
Knobs (environment): LR, LR_PATIENCE, GATE_UPDATES (200: relaxed gates and the KL anneal, then L_K'"'"'s ramp).'
SRC=lrl; TGT=tgt; RELATED="hrl"; SEEDS="1 2 3"; WORK_DIR="$ROOT/runs/latent_depth_miniature"
PATIENCE=5; VALIDATE_EVERY=50; MAX_UPDATE=10000; METRIC=nll_loss
# shellcheck source=../../scripts/recipe_lib.sh
source "$ROOT/scripts/recipe_lib.sh"
recipe_parse "$@"
DIRS="o2m m2o"; SHALLOW=2; DEEP=4; WARMUP=200; SYSTEMS="static_shallow static_k static_deep latent_deep"; DIM=128; VOCAB=2000; SIZES=""; EXTRA_TRAIN=""; LATENT_EXTRA=""
set -- "${RECIPE_ARGS[@]+"${RECIPE_ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --directions|--shallow|--deep|--warmup|--dim|--vocab-size|--sizes|--extra-train|--latent-extra|--systems|--pivot|--langs)
      [ $# -ge 2 ] || recipe_die "$1 needs a value (see --help)" ;;&
    --directions) DIRS="$2"; shift 2;; --shallow) SHALLOW="$2"; shift 2;; --deep) DEEP="$2"; shift 2;;
    --warmup) WARMUP="$2"; shift 2;; --dim) DIM="$2"; shift 2;; --vocab-size) VOCAB="$2"; shift 2;;
    --sizes) SIZES="$2"; shift 2;;
    --extra-train) EXTRA_TRAIN="$2"; shift 2;; --latent-extra) LATENT_EXTRA="$2"; shift 2;; --systems) SYSTEMS="$2"; shift 2;;
    --pivot) TGT="$2"; shift 2;;
    --langs) read -r -a L <<< "$2"; SRC="${L[0]}"; RELATED_LIST=("${L[@]:1}"); RELATED="$(IFS=,; echo "${L[*]:1}")"; shift 2;;
    *) recipe_unknown "$1";;
  esac
done
LANGS="$SRC ${RELATED_LIST[*]+"${RELATED_LIST[*]}"}"
[ -n "$RAW_DIR" ] && for l in "${RELATED_LIST[@]+"${RELATED_LIST[@]}"}"; do recipe_check_pair "$RAW_DIR" "$l" "$TGT"; done
recipe_corpus 1 multilingual \
  "${SIZES:-train=1000,hrl=4000,unra=200,unrb=200,nsy=200,valid=200,test=1000,mono_tgt=200,mono_lrl=200}"
DATA="$WORK_DIR/bin"
recipe_prepare "$RAW" "$DATA" --vocab-size "$VOCAB"

pairs() {  # o2m: TGT-x,...   m2o: x-TGT,...
  local out=""; for l in $LANGS; do
    if [ "$1" = o2m ]; then out="$out,$TGT-$l"; else out="$out,$l-$TGT"; fi; done; echo "${out#,}"; }

sizes() { echo --encoder-embed-dim "$DIM" --decoder-embed-dim "$DIM" --encoder-ffn-embed-dim $((DIM * 2)) \
  --decoder-ffn-embed-dim $((DIM * 2)) --encoder-attention-heads 4 --decoder-attention-heads 4 \
  --encoder-layers "$1" --decoder-layers "$1" --encoder-normalize-before --decoder-normalize-before \
  --share-decoder-input-output-embed --dropout 0.2; }

COMMON=(--optimizer adam --adam-betas "(0.9,0.98)" --lr "${LR:-1.5e-3}" --lr-scheduler plateau_updates --lr-shrink 0.5
        --lr-patience "${LR_PATIENCE:-2}" --warmup-updates "$WARMUP"
        --label-smoothing 0.1 --max-tokens 2048 $(recipe_cpu_flag) --num-workers 0
        --log-format simple --log-interval 100 --no-progress-bar --ddp-backend legacy_ddp --decoder-langtok)
# The gates' schedule has to finish while the model is still learning: early stopping ends a run a few
# hundred updates after its best dev score, and the dev score is that of the selected network. So relaxed gates
# and the KL anneal last GATE_UPDATES updates, L_K ramps up over the next GATE_UPDATES (lambda = 1), and the
# gate logits move at lr 0.03: the utilisation reaches K early and the network trained is the one evaluated.
# (With a 1000-update anneal and lambda = 0.1, L_K arrived after the dev score had peaked: the run stopped at
# update 1300 with the decoder still using 3.5 of 4 layers in training and 2 in evaluation.)
GATE_UPDATES="${GATE_UPDATES:-200}"
latent_system() {  # DIRECTION SEED SYSTEM: train to convergence, score every pair of the direction
  local dir="$1" seed="$2" sys="$3" LP out args task l s t
  LP="$(pairs "$dir")"; out="$WORK_DIR/seed$seed/$dir/$sys"
  case "$sys" in
    static_shallow) args=(--task multilingual_translation --arch multilingual_transformer --share-encoders
                          --share-decoders --criterion label_smoothed_cross_entropy $(sizes "$SHALLOW"));;
    static_deep)    args=(--task multilingual_translation --arch multilingual_transformer --share-encoders
                          --share-decoders --criterion label_smoothed_cross_entropy $(sizes "$DEEP"));;
    static_k)       args=(--task multilingual_translation --arch multilingual_transformer --share-encoders
                          --share-decoders --criterion label_smoothed_cross_entropy $(sizes "$DEEP"))
                    # the pruned latent model's shape: K layers on the language-specific side (later flag wins)
                    if [ "$dir" = o2m ]; then args+=(--decoder-layers "$SHALLOW"); else args+=(--encoder-layers "$SHALLOW"); fi;;
    latent_deep|latent_lang)
                    args=(--task latent_depth_translation --arch latent_depth_transformer $(sizes "$DEEP")
                          --criterion latent_layers_loss
                          --latent-kl-weight 0.1 --latent-kl-anneal-updates "$GATE_UPDATES" --latent-lk-weight 1
                          --latent-soft-updates "$GATE_UPDATES" --latent-gate-lr 0.03 --latent-inner-steps 2
                          --latent-prior uniform $LATENT_EXTRA)
                    # latent layers on the language-specific side only (the decoder for o2m, the encoder for
                    # m2o, as in the paper's Tables 2/3); the shared side stays static: gating it too drops
                    # its layers at random in training (q near 0.5). Inference keeps the layers with q > 0.5:
                    # L_K on the aggregated utilisation fixes only the average depth at K, so a language may
                    # keep more or fewer (m2o seed 1: 3 and 1), and top-K would evaluate a network training
                    # never ran
                    if [ "$dir" = o2m ]; then args+=(--decoder-latent-layers --decoder-target-layers "$SHALLOW"
                                                     --decoder-latent-select threshold);
                    else args+=(--encoder-latent-layers --encoder-target-layers "$SHALLOW"
                                --encoder-latent-select threshold); fi
                    # latent_lang: L_K on the batch language's own q, so every language keeps K layers
                    [ "$sys" = latent_lang ] && args+=(--latent-lk-utilisation language);;
  esac
  # shellcheck disable=SC2086
  ev_train "$out" "$DATA" --user-dir "$USER_DIR" --lang-pairs "$LP" "${args[@]}" "${COMMON[@]}" --seed "$seed" $EXTRA_TRAIN || return $?
  task=multilingual_translation; [[ "$sys" == latent_* ]] && task=latent_depth_translation
  # the pruned model: one plain Transformer per language with only the layers its gates select
  if [ "$sys" = latent_deep ]; then "$PY" "$ROOT/scripts/prune_latent_depth.py" "$out/checkpoint_best.pt" \
    --out-dir "$out/pruned" --data "$DATA" --force || return $?; fi
  for l in $LANGS; do
    if [ "$dir" = o2m ]; then s="$TGT"; t="$l"; else s="$l"; t="$TGT"; fi
    ev_eval "$sys" "$seed" "$out" "$DATA" "$s" "$t" --task "$task" -- --lang-pairs "$LP" --decoder-langtok || return $?
    [ "$sys" = latent_deep ] || continue
    "$PY" -m fairseq_metabt.evidence evaluate "$DATA" --work-dir "$WORK_DIR" --system latent_pruned --seed "$seed" \
      --save-dir "$out" --path "$out/pruned/checkpoint.$l.pt" -s "$s" -t "$t" --task "$task" -- --lang-pairs "$LP" --decoder-langtok || return $?
  done
}
for sys in $SYSTEMS; do
  case "$sys" in static_shallow|static_k|static_deep|latent_deep|latent_lang) ;; *) recipe_die "unknown system $sys (see --help)";; esac
done
# every (direction, seed, system) is independent: JOBS of them at a time, the deep ones first
for dir in $DIRS; do for seed in $SEEDS; do for sys in latent_deep latent_lang static_deep static_k static_shallow; do
  [[ " $SYSTEMS " == *" $sys "* ]] || continue
  ev_pool_run "$dir.seed$seed.$sys" latent_system "$dir" "$seed" "$sys"
done; done; done
ev_pool_wait
set -- $SEEDS
for dir in $DIRS; do  # the layer-selection heatmap of every seed's latent model; the first seed's also unsuffixed
  for seed in $SEEDS; do for sys in latent_deep latent_lang; do
    ckpt="$WORK_DIR/seed$seed/$dir/$sys/checkpoint_best.pt"
    [ -f "$ckpt" ] || continue
    name="$WORK_DIR/heatmap.$dir.seed$seed"; [ "$sys" = latent_lang ] && name="$WORK_DIR/heatmap.$dir.latent_lang.seed$seed"
    [ "$ckpt" -nt "$name.json" ] && "$PY" "$ROOT/scripts/plot_latent_layers.py" "$ckpt" --out "$name.png" \
      --json "$name.json" --title "$dir, $sys ($DEEP layers, K=$SHALLOW), seed $seed"
    if [ "$seed" = "$1" ] && [ "$sys" = latent_deep ]; then
      cp "$name.png" "$WORK_DIR/heatmap.$dir.png"; cp "$name.json" "$WORK_DIR/heatmap.$dir.json"; fi
  done; done
done
CMP=$SYSTEMS
[[ " $SYSTEMS " == *" latent_deep "* ]] && CMP="$CMP latent_pruned"
# the latent systems against each smaller static model, and per-language depth against a fixed K per language
recipe_also latent_deep:static_k latent_deep:static_shallow latent_lang:static_k latent_lang:latent_deep
# shellcheck disable=SC2086
ev_compare --control static_deep --systems $CMP "${ALSO[@]+"${ALSO[@]}"}" --same-schedule $SYSTEMS \
  --title "Latent depth, miniature: static shallow ($SHALLOW) / static K / static deep ($DEEP) / latent deep (K = $SHALLOW)" \
  --corpus "${RAW_DIR:-synthetic multilingual preset, corpus seed 1}"
