#!/usr/bin/env bash
# Probe: iteration 2 of wake-sleep (seed SEED) retrained from the same iteration-1 models on the same wake/sleep
# data with one change, the stage's lr (recipe: 2e-3, iteration 0's). Same stopping rule; scored like the recipe.
set -euo pipefail
SEED=$1; LR=$2
export OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
W=/work/runs/wake_sleep_catalog_s$SEED; P=/work/runs/probe_ws_iter2/s$SEED
mkdir -p $P
for d in forward backward; do
  save=$P/iter2_lr$LR/$d; mkdir -p $P/iter2_lr$LR
  [ -f $save/test.json ] && continue
  args=$($PY - $W/seed$SEED/iter2/$d/convergence.json $LR $save <<'PYEOF'
import json, shlex, sys
cmd = shlex.split(json.load(open(sys.argv[1]))["command"])[1:]
cmd = cmd[:cmd.index("--patience")]
cmd[cmd.index("--lr") + 1] = sys.argv[2]
cmd = [a.replace("/work/wt_ws/", "/work/main/") for a in cmd]
print(shlex.join(cmd))
PYEOF
)
  eval "$PY -m fairseq_metabt.evidence train --save-dir $save --patience 5 --validate-every 50 --max-update 10000 --metric loss -- $args" > $save.log 2>&1
  if [ $d = forward ]; then s=gl; t=en; else s=en; t=gl; fi
  $PY /work/main/scripts/evaluate.py $W/bin --path $save/checkpoint_best.pt -s $s -t $t --subset valid --beam 5 --json $save/valid.json > /dev/null
  $PY -m fairseq_metabt.evidence evaluate $W/bin --work-dir $P/work --system iter2_lr$LR --seed $SEED --save-dir $save --path $save/checkpoint_best.pt -s $s -t $t --beam 5 > /dev/null
  cp $P/work/seed$SEED/eval/iter2_lr$LR.$s-$t.json $save/test.json
done
echo done
