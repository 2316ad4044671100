#!/bin/bash
# Set-up probes for wake-sleep on the catalog kit (seed 1): iteration 1's forward model (= offline back-translation)
# on B + the wake pseudo pairs, (scratch) from random initialisation with iteration 0's schedule (lr 2e-3, warm-up
# 100), or (continue_hi) continued from the converged iteration-0 model at iteration 0's lr (the paper keeps one lr),
# against the recipe's continued training at LR_ITER 2.5e-4. up_cont / up_cont_hi: the same with the real pairs
# upsampled 11x (about as many as the 22,014 pseudo pairs). The command is iteration 0 forward's own (its
# convergence.json) with the wake data and a new save dir. Worktree wt_q (892fbca).   bash probe_ws.sh VARIANT
V=$1
cd /work/wt_q; export PYTHONPATH=/work/wt_q OMP_NUM_THREADS=1
W=/work/runs/wake_sleep_catalog_s1; P=/work/runs/probe_ws_$V; mkdir -p $P
while [ ! -f $W/seed1/iter1/wake-data/done ] || [ ! -f $W/seed1/iter0/forward/done ]; do sleep 30; done
CMD=$(.venv/bin/python - "$V" <<'PY'
import json, shlex, sys
c = json.load(open("/work/runs/wake_sleep_catalog_s1/seed1/iter0/forward/convergence.json"))["command"]
a = shlex.split(c)
a[1] = "/work/runs/wake_sleep_catalog_s1/seed1/iter1/wake-data"
# the evidence-protocol flags are added back by `evidence train`
for flag, n in (("--patience", 1), ("--validate-interval-updates", 1), ("--save-interval-updates", 1),
                ("--keep-interval-updates", 1), ("--validate-interval", 1), ("--save-interval", 1),
                ("--no-epoch-checkpoints", 0), ("--max-update", 1), ("--max-epoch", 1),
                ("--best-checkpoint-metric", 1), ("--save-dir", 1)):
    if flag in a:
        j = a.index(flag); del a[j:j + 1 + n]
v = sys.argv[1]
if v.startswith("continue") or v.startswith("up_cont"):
    a += ["--finetune-from-model", "/work/runs/wake_sleep_catalog_s1/seed1/iter0/forward/checkpoint_best.pt"]
if v == "up_cont":  # the recipe's continued-training schedule (LR_ITER 2.5e-4, WARMUP_ITER 50)
    a[a.index("--lr") + 1] = "2.5e-4"; a[a.index("--warmup-updates") + 1] = "50"
if v.startswith("up_"):  # real pairs upsampled to about the pseudo pairs' number (2,000 x 11 vs 22,014)
    a[a.index("--upsample-primary") + 1] = "11"
print(shlex.join(a[1:]))
PY
)
echo "command: $CMD" > $P/command.txt
eval .venv/bin/python -m fairseq_metabt.evidence train --save-dir $P/forward --patience 5 --validate-every 50 \
  --max-update 10000 -- $CMD > $P/protocol.log 2>&1
echo "probe_ws_$V train rc $? $(date)" >> /work/runs/queue.log
for s in valid test; do
  .venv/bin/python scripts/evaluate.py $W/bin --path $P/forward/checkpoint_best.pt -s gl -t en --subset $s --beam 5 \
    --json $P/$s.json --hyps $P/$s.hyp
done
echo "probe_ws_$V eval rc $? $(date)" >> /work/runs/queue.log
