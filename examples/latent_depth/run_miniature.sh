#!/usr/bin/env bash
# Miniature reproduction of Li et al. (2020), "Deep Transformers with Latent Depth", Tables 2/3 + Fig. 9:
# static shallow vs static deep vs latent deep (K = shallow depth), one-to-many and many-to-one,
# several seeds; BLEU per language (mean ± std) and the per-language layer-selection heatmap.
#
#   bash examples/latent_depth/run_miniature.sh [--raw-dir DIR] [--work-dir DIR] [--seeds "1 2 3"]
#        [--directions "o2m m2o"] [--shallow 2] [--deep 6] [--max-update 1500] [--warmup 300] [--dim 128]
#        [--langs "lrl hrl"] [--pivot tgt] [--sizes SYNTHETIC_SIZES] [--extra-train "fairseq-train args"]
#
# Default data: the synthetic `multilingual` preset (generated into WORK/raw).  A real corpus in the raw
# layout (docs/data.md) with pairs X-PIVOT works unchanged: --raw-dir DIR --langs "x y z" --pivot PIVOT.
# Results: WORK/results.md, WORK/results.json, WORK/heatmap.{o2m,m2o}.png.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"; BIN="$(dirname "$PY")"
RAW=""; WORK="$ROOT/runs/latent_depth_miniature"; SEEDS="1 2 3"; DIRS="o2m m2o"
SHALLOW=2; DEEP=6; MAXUPD=1500; WARMUP=300; DIM=128; LANGS="lrl hrl"; PIVOT="tgt"; SIZES=""; EXTRA_TRAIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --raw-dir) RAW="$2"; shift 2;; --work-dir) WORK="$2"; shift 2;; --seeds) SEEDS="$2"; shift 2;;
    --directions) DIRS="$2"; shift 2;; --shallow) SHALLOW="$2"; shift 2;; --deep) DEEP="$2"; shift 2;;
    --max-update) MAXUPD="$2"; shift 2;; --warmup) WARMUP="$2"; shift 2;; --dim) DIM="$2"; shift 2;; --langs) LANGS="$2"; shift 2;;
    --pivot) PIVOT="$2"; shift 2;; --sizes) SIZES="$2"; shift 2;; --extra-train) EXTRA_TRAIN="$2"; shift 2;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2;;
  esac
done
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
mkdir -p "$WORK"
if [ -z "$RAW" ]; then
  RAW="$WORK/raw"
  if [ ! -f "$RAW/manifest.json" ]; then
    "$PY" -m fairseq_metabt.synthetic --preset multilingual --out "$RAW" --seed 1 \
      --sizes "${SIZES:-train=1000,hrl=4000,unra=200,unrb=200,nsy=200,valid=100,test=200,mono_tgt=200,mono_lrl=200}"
  fi
fi
DATA="$WORK/bin"
[ -f "$DATA/prepare.json" ] || "$PY" "$ROOT/scripts/prepare_data.py" "$RAW" "$DATA" --vocab-size 2000

pairs() {  # o2m: PIVOT-x,...   m2o: x-PIVOT,...
  local out=""; for l in $LANGS; do
    if [ "$1" = o2m ]; then out="$out,$PIVOT-$l"; else out="$out,$l-$PIVOT"; fi; done; echo "${out#,}"; }

sizes() { echo --encoder-embed-dim "$DIM" --decoder-embed-dim "$DIM" --encoder-ffn-embed-dim $((DIM * 2)) \
  --decoder-ffn-embed-dim $((DIM * 2)) --encoder-attention-heads 4 --decoder-attention-heads 4 \
  --encoder-layers "$1" --decoder-layers "$1" --encoder-normalize-before --decoder-normalize-before \
  --share-decoder-input-output-embed --dropout 0.2; }

COMMON=(--optimizer adam --adam-betas "(0.9,0.98)" --lr 1.5e-3 --lr-scheduler inverse_sqrt --warmup-updates "$WARMUP"
        --label-smoothing 0.1 --max-tokens 2048 --max-update "$MAXUPD" --cpu --num-workers 0
        --log-format simple --log-interval 100 --no-progress-bar --ddp-backend legacy_ddp
        --no-epoch-checkpoints --save-interval 100000 --validate-interval 100000 --decoder-langtok)

for dir in $DIRS; do
  LP="$(pairs "$dir")"
  for seed in $SEEDS; do
    for sys in static_shallow static_deep latent_deep; do
      out="$WORK/$dir/$sys/seed$seed"
      [ -f "$out/done" ] && continue
      mkdir -p "$out"
      case "$sys" in
        static_shallow) args=(--task multilingual_translation --arch multilingual_transformer --share-encoders
                              --share-decoders --criterion label_smoothed_cross_entropy $(sizes "$SHALLOW"));;
        static_deep)    args=(--task multilingual_translation --arch multilingual_transformer --share-encoders
                              --share-decoders --criterion label_smoothed_cross_entropy $(sizes "$DEEP"));;
        latent_deep)    args=(--user-dir "$ROOT/fairseq_metabt" --task latent_depth_translation
                              --arch latent_depth_transformer $(sizes "$DEEP") --criterion latent_layers_loss
                              --encoder-latent-layers --decoder-latent-layers
                              --latent-kl-weight 1.0 --latent-kl-anneal-updates $((MAXUPD / 3)) --latent-lk-weight 0.1
                              --latent-eval-select topk --latent-inner-steps 2);;
      esac
      if [ "$sys" = latent_deep ]; then
        if [ "$dir" = o2m ]; then args+=(--decoder-target-layers "$SHALLOW" --encoder-target-layers "$DEEP");
        else args+=(--encoder-target-layers "$SHALLOW" --decoder-target-layers "$DEEP"); fi
      fi
      echo "[miniature] $dir $sys seed $seed" >&2
      "$BIN/fairseq-train" "$DATA" --lang-pairs "$LP" "${args[@]}" "${COMMON[@]}" --seed "$seed" \
        --save-dir "$out" $EXTRA_TRAIN > "$out/train.log" 2>&1
      task=multilingual_translation; [ "$sys" = latent_deep ] && task=latent_depth_translation
      for l in $LANGS; do
        if [ "$dir" = o2m ]; then s="$PIVOT"; t="$l"; else s="$l"; t="$PIVOT"; fi
        "$PY" "$ROOT/scripts/evaluate.py" "$DATA" --path "$out/checkpoint_last.pt" -s "$s" -t "$t" --task "$task" \
          --beam 5 --json "$out/bleu.$s-$t.json" -- --lang-pairs "$LP" --decoder-langtok > "$out/eval.$s-$t.log" 2>&1
      done
      touch "$out/done"
    done
    [ -f "$WORK/heatmap.$dir.png" ] || "$PY" "$ROOT/scripts/plot_latent_layers.py" \
      "$WORK/$dir/latent_deep/seed$seed/checkpoint_last.pt" --out "$WORK/heatmap.$dir.png" \
      --json "$WORK/heatmap.$dir.json" --title "$dir, latent deep ($DEEP layers, K=$SHALLOW), seed $seed"
  done
done

"$PY" - "$WORK" "$DIRS" "$SEEDS" <<'PYEOF'
import glob, json, os, statistics, sys
work, dirs, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
rows, table = {}, ["| direction | system | pair | BLEU mean ± std | seeds |", "| --- | --- | --- | --- | --- |"]
for d in dirs:
    for system in ("static_shallow", "static_deep", "latent_deep"):
        by_pair = {}
        for seed in seeds:
            for f in glob.glob(os.path.join(work, d, system, f"seed{seed}", "bleu.*.json")):
                pair = os.path.basename(f)[len("bleu."):-len(".json")]
                by_pair.setdefault(pair, []).append(json.load(open(f))["bleu"])
        for pair, v in sorted(by_pair.items()):
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            rows[f"{d}/{system}/{pair}"] = {"mean": statistics.mean(v), "std": sd, "n": len(v), "values": v}
            table.append(f"| {d} | {system} | {pair} | {statistics.mean(v):.2f} ± {sd:.2f} | {len(v)} |")
json.dump(rows, open(os.path.join(work, "results.json"), "w"), indent=2)
open(os.path.join(work, "results.md"), "w").write("\n".join(table) + "\n")
print("\n".join(table))
PYEOF
