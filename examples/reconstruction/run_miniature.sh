#!/usr/bin/env bash
# Miniature reproduction of Niu et al. (2019), Table 2: baseline, HIDDEN, beta = 0, beta = 0.5, both
# directions, several seeds; BLEU mean ± std and ΔBLEU (paired by seed, vs. the baseline) mean ± std.
#
#   bash examples/reconstruction/run_miniature.sh [--raw-dir RAW] [--out OUT] [--seeds "1 2 3"]
#
# Default data: the synthetic `bidirectional` corpus at SIZES (below).  Every seed pre-trains one
# bi-directional model with L_T; the four systems are fine-tuned from it for the same number of updates at
# lr 1e-4 (baseline: L_T alone), as in §4.2, via examples/reconstruction/run.sh.  The scale is set for 2 CPU
# cores; override ARCH, PRETRAIN_UPDATES, FINETUNE_UPDATES, CHECKPOINT_EVERY, SIZES in the environment.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"; [ -x "$PY" ] || PY=python
RAW_ARGS=(); OUT="runs/reconstruction-miniature"; SEEDS="1 2 3"
while [ $# -gt 0 ]; do
  case "$1" in
    --raw-dir) RAW_ARGS=(--raw-dir "$2"); shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --seeds) SEEDS="$2"; shift 2 ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
export ARCH="${ARCH:-transformer_lowres_tiny}" PRETRAIN_UPDATES="${PRETRAIN_UPDATES:-800}"
export FINETUNE_UPDATES="${FINETUNE_UPDATES:-200}" CHECKPOINT_EVERY="${CHECKPOINT_EVERY:-100}"
export SIZES="${SIZES:-train=2000,valid=200,test=200,mono_tgt=10,mono_lrl=10}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
SRC="${SRC:-lrl}"; TGT="${TGT:-tgt}"

for seed in $SEEDS; do
  bash "$ROOT/examples/reconstruction/run.sh" "${RAW_ARGS[@]}" --out "$OUT" --seed "$seed" --variant baseline
  bash "$ROOT/examples/reconstruction/run.sh" "${RAW_ARGS[@]}" --out "$OUT" --seed "$seed" --variant hidden
  bash "$ROOT/examples/reconstruction/run.sh" "${RAW_ARGS[@]}" --out "$OUT" --seed "$seed" --variant stgs --beta 0
  bash "$ROOT/examples/reconstruction/run.sh" "${RAW_ARGS[@]}" --out "$OUT" --seed "$seed" --variant stgs --beta 0.5
done

"$PY" - "$OUT" "$SRC" "$TGT" $SEEDS <<'PYEOF'
import json, os, statistics, sys
out, src, tgt, seeds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
systems = [("pre-trained (L_T)", "pretrain"), ("baseline (L_T fine-tune)", "baseline"), ("HIDDEN", "hidden"),
           ("β = 0", "stgs-beta0"), ("β = 0.5", "stgs-beta0.5")]
dirs = [f"{src}-{tgt}", f"{tgt}-{src}"]
bleu = {(s, d, seed): json.load(open(os.path.join(out, f"seed{seed}", s, f"test.{d}.json")))["bleu"]
        for _, s in systems for d in dirs for seed in seeds}
def ms(xs):
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.2f}"
lines = [f"BLEU on test, {len(seeds)} seeds ({', '.join(seeds)}); Δ: paired with the baseline of the same seed.", "",
         "| system | " + " | ".join(d.replace("-", "→") for d in dirs) + " |", "| --- |" + " --- |" * len(dirs)]
for name, s in systems:
    lines.append(f"| {name} | " + " | ".join(ms([bleu[s, d, k] for k in seeds]) for d in dirs) + " |")
    if s not in ("pretrain", "baseline"):
        lines.append(f"| Δ {name} | " + " | ".join(
            ms([bleu[s, d, k] - bleu["baseline", d, k] for k in seeds]) for d in dirs) + " |")
text = "\n".join(lines)
open(os.path.join(out, "results.md"), "w").write(text + "\n")
print(text)
PYEOF
