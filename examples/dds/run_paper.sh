#!/usr/bin/env bash
# DDS for multilingual NMT at the paper's scale (Wang et al. 2020, Table 1 right, A.2): the TED talks corpus of
# Qi et al. (2018) as distributed (all_talks_{train,dev,test}.tsv), all languages of a preset into English, one
# model per low-resource language whose dev set the scorer optimises; uniform, temperature, related, TCS, DDS and
# TCS+DDS trained to dev convergence under the evidence protocol, scored on the LRL's test set, compared with
# uniform (DDS with related, TCS+DDS with TCS), and printed beside the paper's BLEU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RECIPE_USAGE='DDS, the paper'"'"'s TED setting: which source languages help each low-resource language?

  bash examples/dds/run_paper.sh --ted-dir DIR [--preset ted8-related|ted8-diverse] [--lrls "aze bel glg slk"]
       [--systems "uniform temperature related tcs dds tcs_dds"] [paper-scale flags] [shared flags]

--ted-dir holds all_talks_{train,dev,test}.tsv (ted_talks.tar.gz unpacked; nothing is downloaded); they are
converted once into WORK/raw (scripts/prepare_public.py; --raw-dir takes an already converted corpus instead).
Every language of --preset (ted8-related: aze bel glg slk + tur rus por ces, the paper'"'"'s; ted8-diverse: bos
mar hin mkd ell bul fra kor) translates into eng; each language of --lrls (default: the first four of the
preset) gets its own runs with --dds-dev-lang-pair LRL-eng. `related` (the LRL and its related HRL only) exists
for ted8-related. Model: the paper'"'"'s 1-layer LSTM, hidden 512, embeddings 128, dropout 0.3 (ARCH=NAME in the
environment trains a fairseq architecture instead); Adam lr 1e-3 without decay (A.2), 4,096 tokens per update.
The scorer: the plugin'"'"'s defaults (objective kl, lambda 0.1, psi lr 1e-4 as A.2, E = 100 steps of B = 160
targets, fresh per-language gradients, cosine reward; docs/methods/dds.md explains why kl and not Alg. 2 as
written), updated every 20,000 training sentences as the authors'"'"' dds_tcs.sh. Early stopping: dev loss of
LRL-eng every --validate-every updates (default 2000), patience 10, cap --max-update (100,000 ~ the paper'"'"'s 20
epochs). Results: WORK/results/summary.json, the table, the paper'"'"'s Table 1 beside ours.'
SRC=aze; TGT=eng; RELATED=""; SEEDS="1"; WORK_DIR="$ROOT/runs/dds_paper"
PATIENCE=10; VALIDATE_EVERY=2000; MAX_UPDATE=100000
# shellcheck source=../../scripts/recipe_lib.sh
source "$ROOT/scripts/recipe_lib.sh"
paper_parse "$@"
TED_DIR=""; PRESET=ted8-related; LRLS=""; SYSTEMS="uniform temperature related tcs dds tcs_dds"
recipe_options --ted-dir TED_DIR --preset PRESET --lrls LRLS --systems SYSTEMS
recipe_check_systems "uniform temperature related tcs dds tcs_dds"
recipe_require_systems "uniform, the control of every comparison" uniform
read -r -a LANGS <<< "$(paper_preset_langs "$PRESET")"
[ -n "$LRLS" ] || LRLS="${LANGS[*]:0:4}"
for l in $LRLS; do
  [[ " ${LANGS[*]} " == *" $l "* ]] || recipe_die "--lrls: $l is not a language of --preset $PRESET (${LANGS[*]})"
done
paper_ted_corpus "$TED_DIR" "$PRESET"
paper_prepare
ALL=""; for l in "${LANGS[@]}"; do ALL="$ALL,$l-$TGT"; done; ALL="${ALL#,}"
hrl_of() { "$PY" -c 'import sys; from fairseq_metabt.data.public_corpora import RELATED_HRL as R; print(R.get(sys.argv[1], ""))' "$1"; }
# `related` (the LRL and its related HRL only) needs that HRL, which only the ted8-related couples define
for l in $LRLS; do
  if [ -z "$(hrl_of "$l")" ] && [[ " $SYSTEMS " == *" related "* ]]; then
    echo "no related high-resource language for $l: the system related is left out"
    SYSTEMS="$(echo " $SYSTEMS " | sed 's/ related / /')"; SYSTEMS="$(echo $SYSTEMS)"
  fi
done

MAX_TOKENS=4096
# A.2: a 1-layer LSTM of hidden size 512 on both sides, word embeddings of size 128, dropout 0.3 (fairseq's
# `lstm` with attention). ARCH (environment) picks another fairseq architecture instead, e.g. the Transformer
# of examples/dds/README.md (transformer_iwslt_de_en).
if [ -n "${ARCH:-}" ]; then MODEL=(--arch "$ARCH" --dropout 0.3)
else MODEL=(--arch lstm --encoder-layers 1 --decoder-layers 1 --encoder-hidden-size 512 --decoder-hidden-size 512
            --encoder-embed-dim 128 --decoder-embed-dim 128 --decoder-out-embed-dim 128 --dropout 0.3); fi
SCORER=(--dds-update-unit sentences --dds-update-interval 20000)
if [ "$PAPER_DRY_RUN" = 1 ]; then  # the same kind of network, small, and a scorer update at the first update
  if [ -n "${ARCH:-}" ]; then MODEL=(--arch transformer_lowres_tiny)
  else MODEL+=(--encoder-hidden-size 32 --decoder-hidden-size 32 --encoder-embed-dim 16 --decoder-embed-dim 16
               --decoder-out-embed-dim 16); fi
  SCORER=(--dds-update-interval 1 --dds-scorer-iters 2)
fi
# shellcheck disable=SC2207
DEVICE=($(paper_device_flags 4096 "$MAX_TOKENS"))
COMMON=("$BIN" --user-dir "$USER_DIR" --task dds_translation "${MODEL[@]}" --optimizer adam --lr 1e-3
        --lr-scheduler fixed --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens "$MAX_TOKENS"
        "${SCORER[@]}" "${DEVICE[@]}" --num-workers 0 --log-format simple --log-interval 100 --no-progress-bar
        --ddp-backend legacy_ddp)

dds_system() {  # LRL SYSTEM SEED: train to convergence, score LRL-eng
  local lrl="$1" sys="$2" seed="$3" out="$WORK_DIR/seed$3/$1/$2" pairs="$ALL" args=() hrl
  case "$sys" in
    uniform)     args=(--dds-init uniform --dds-update-scorer false) ;;
    temperature) args=(--dds-init temperature --dds-temperature 5 --dds-update-scorer false) ;;
    related)     hrl="$(hrl_of "$lrl")"; pairs="$lrl-$TGT,$hrl-$TGT"; args=(--dds-init uniform --dds-update-scorer false) ;;
    tcs)         args=(--dds-init tcs --dds-update-scorer false) ;;
    dds)         args=(--dds-init uniform) ;;
    tcs_dds)     args=(--dds-init tcs) ;;
  esac
  ev_train "$out" "${COMMON[@]}" --lang-pairs "$pairs" --dds-dev-lang-pair "$lrl-$TGT" "${args[@]}" --seed "$seed" || return $?
  ev_eval "$sys" "$seed" "$out" "$BIN" "$lrl" "$TGT" --task dds_translation || return $?
}
for lrl in $LRLS; do for seed in $SEEDS; do for sys in $SYSTEMS; do
  ev_pool_run "$lrl.seed$seed.$sys" dds_system "$lrl" "$sys" "$seed"
done; done; done
ev_pool_wait
recipe_also dds:related tcs_dds:tcs tcs_dds:related
# shellcheck disable=SC2086
ev_compare --control uniform --systems $SYSTEMS --same-schedule $SYSTEMS "${ALSO[@]+"${ALSO[@]}"}" \
  --title "DDS, the paper's TED setting ($PRESET into $TGT; test BLEU of each LRL: $LRLS)" \
  --corpus "TED talks (Qi et al. 2018), preset $PRESET, from ${TED_DIR:-$RAW}"
paper_report dds "$PRESET"
