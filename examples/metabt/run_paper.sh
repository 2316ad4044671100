#!/usr/bin/env bash
# Meta back-translation at the paper's scale (Pham et al. 2021, A.2) on a public corpus as distributed: IWSLT'14
# de-en (the XML/TAGS release) or WMT-style pairs (WMT'14 En-De by default), plus monolingual target text; the
# quickstart's systems (baseline and backward model to dev convergence, then BT, BT + MLE with the meta-dev pairs
# and MetaBT beside the backward model, their forward models from scratch with the baseline's schedule; BT_FORWARD)
# under the evidence protocol.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RECIPE_USAGE='MetaBT, the paper'"'"'s settings on IWSLT'"'"'14 or WMT: does meta back-translation beat back-translation?

  bash examples/metabt/run_paper.sh --iwslt-dir DIR --mono FILE [--src de --tgt en]           # IWSLT'"'"'14 de->en
  bash examples/metabt/run_paper.sh --wmt-dir DIR [--wmt-preset wmt14-en-de] --mono FILE      # WMT'"'"'14 en->de
       [--mono-lines N] [--systems "baseline bt bt_mle_dev metabt"] [paper-scale flags] [shared flags]

--iwslt-dir: the unpacked IWSLT'"'"'14 release (train.tags.de-en.*, IWSLT14.TED*.xml; fairseq'"'"'s split). --wmt-dir:
WMT files named as --wmt-preset (scripts/prepare_public.py: wmt14-en-de = europarl-v7 + commoncrawl +
news-commentary-v9, newstest2013 dev, newstest2014 test). --mono FILE: monolingual text of --tgt (plain, .gz
or .sgm; --mono-lines N keeps N lines drawn with seed 1), back-translated by every BT system. Nothing is
downloaded; the conversion goes to WORK/raw (--raw-dir takes a converted corpus with mono.TGT instead).
The dev set is cut by line parity into the selection dev set (every system'"'"'s early stopping) and the meta-dev
set (MetaBT'"'"'s reward, bt_mle_dev'"'"'s extra bitext), as in the quickstart. Model: Transformer-Base per direction
with all embeddings shared (A.2) on WMT (transformer_wmt_en_de / dual_transformer_base); the IWSLT size
(dim 512, ffn 1024, 4 heads: the paper'"'"'s multilingual model) on IWSLT. Adam (0.9, 0.98), lr 7e-4 after 4,000
warm-up updates (fine-tuning, for baseline_ft and BT_FORWARD=finetune: lr 1e-4 after 1,000); 32,768 target
tokens per update (--update-freq fills it on fewer GPUs; the paper: 2,048 sentences forward, 1,024 backward); the
lr halves after 2 validations without a new
best. Early stopping: dev loss every --validate-every (2000) updates, patience 5, cap --max-update (200,000, the
paper'"'"'s training length). Results: WORK/results/summary.json and the table (the paper'"'"'s appendix, the only
part in shared/papers, reports no BLEU to print beside ours).'
SRC=de; TGT=en; RELATED=""; SEEDS="1"; WORK_DIR="$ROOT/runs/metabt_paper"
PATIENCE=5; VALIDATE_EVERY=2000; MAX_UPDATE=200000
# shellcheck source=../../scripts/recipe_lib.sh
source "$ROOT/scripts/recipe_lib.sh"
SRC_SET=""; for a in "$@"; do [ "$a" = --src ] && SRC_SET=1; done
paper_parse "$@"
IWSLT_DIR=""; WMT_DIR=""; WMT_PRESET=wmt14-en-de; MONO=""; MONO_LINES=""
metabt_mode  # BT_FORWARD (scratch, the paper's A.2: the forward model from random initialisation) and the control
metabt_default_systems baseline bt bt_mle_dev metabt
recipe_options --iwslt-dir IWSLT_DIR --wmt-dir WMT_DIR --wmt-preset WMT_PRESET --mono MONO --mono-lines MONO_LINES \
  --systems SYSTEMS
recipe_check_systems "$METABT_SYSTEMS"
recipe_require_systems "baseline (the control, and with BT_FORWARD=finetune the start of every fine-tuning)" baseline
metabt_require_control
MONO_ARGS=(); [ -z "$MONO" ] || MONO_ARGS=(--mono "$TGT=$MONO" ${MONO_LINES:+--mono-lines "$MONO_LINES"})
if [ -n "$RAW_DIR" ]; then RAW="$RAW_DIR"; SETTING=raw
elif [ -n "$IWSLT_DIR" ] && [ -z "$WMT_DIR" ]; then
  [ -n "$MONO" ] || recipe_die "give --mono FILE, monolingual $TGT text to back-translate (IWSLT has none)"
  paper_convert --dataset iwslt14 --iwslt-dir "$IWSLT_DIR" --src "$SRC" --tgt "$TGT" "${MONO_ARGS[@]}"; SETTING=iwslt14
elif [ -n "$WMT_DIR" ] && [ -z "$IWSLT_DIR" ]; then
  [ -n "$MONO" ] || recipe_die "give --mono FILE, monolingual $TGT text to back-translate (e.g. WMT news crawl)"
  # the preset's languages unless --src/--tgt were given (the recipe's own defaults are IWSLT's de-en)
  if [ -z "$SRC_SET" ]; then
    read -r SRC TGT < <("$PY" -c 'import sys; sys.path.insert(0, sys.argv[2]); from prepare_public import WMT_PRESETS as W
p = W.get(sys.argv[1]); print(p["src"], p["tgt"]) if p else sys.exit("fairseq-metabt: error: unknown --wmt-preset "
    + sys.argv[1] + " (choose one of " + ", ".join(W) + ")")' "$WMT_PRESET" "$ROOT/scripts") || exit 2
    MONO_ARGS=(--mono "$TGT=$MONO" ${MONO_LINES:+--mono-lines "$MONO_LINES"})
  fi
  paper_convert --dataset wmt --wmt-dir "$WMT_DIR" --preset "$WMT_PRESET" --src "$SRC" --tgt "$TGT" "${MONO_ARGS[@]}"
  SETTING=wmt
else recipe_die "give one of --iwslt-dir DIR and --wmt-dir DIR (the downloaded corpus), or --raw-dir"
fi
recipe_meta_dev_split "$RAW" "$SRC" "$TGT"   # RAW: the corpus with valid (selection) + metadev
paper_prepare

if [ "$SETTING" = wmt ]; then SINGLE=(--arch transformer_wmt_en_de); DUAL=(--arch dual_transformer_base)
else  # the IWSLT size (A.2's multilingual model): dim 512, ffn 1024, 4 heads, 6 + 6 layers
  SIZE=(--encoder-ffn-embed-dim 1024 --decoder-ffn-embed-dim 1024 --encoder-attention-heads 4 --decoder-attention-heads 4)
  SINGLE=(--arch transformer_iwslt_de_en --share-all-embeddings); DUAL=(--arch dual_transformer_base "${SIZE[@]}")
fi
MAX_TOKENS=4096; LR=7e-4; FT_LR=1e-4; WARMUP="$(paper_warmup 4000)"; FT_WARMUP="$(paper_warmup 1000)"
if [ "$PAPER_DRY_RUN" = 1 ]; then
  SINGLE=(--arch transformer_lowres_tiny); DUAL=(--arch dual_transformer_tiny)
fi
# shellcheck disable=SC2207
DEVICE=($(paper_device_flags 32768 "$MAX_TOKENS"))
COMMON=("$BIN" --user-dir "$USER_DIR" --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 1.0
        --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens "$MAX_TOKENS" "${DEVICE[@]}"
        --log-interval 100 --log-format simple --num-workers 0 --lr-scheduler plateau_updates --lr-shrink 0.5
        --lr-patience 2)
PRETRAIN=(--lr "$LR" --warmup-updates "$WARMUP")
FINETUNE=(--lr "$FT_LR" --warmup-updates "$FT_WARMUP")
BT=(-s "$SRC" -t "$TGT" --task meta_backtranslation "${DUAL[@]}" --bt-generation sample --backward-lr 1e-4
    --meta-reward cosine --ddp-backend legacy_ddp)

# the quickstart's two stages (recipe_lib.sh): both directions to dev convergence, then every BT system
metabt_pretrain
metabt_stage2
metabt_compare "bt_mle_dev bt_mle bt" "MetaBT, the paper's settings ($SETTING, $SRC->$TGT)" \
  "${IWSLT_DIR:-${WMT_DIR:-$RAW}} ($SETTING); mono.$TGT from ${MONO:-the raw directory}; $META_DEV_NOTE"
paper_report metabt any
