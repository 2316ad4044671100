#!/bin/bash
# Is STGS's BLEU loss on the catalog kit the brevity penalty? (its outputs are 0.78-0.83 of the reference
# length against L_T fine-tuning's 0.84-0.88, with higher n-gram precisions). Decode the selection dev set at
# --lenpen 1.0 and 1.5 and the test set at 1.5 for every seed's baseline / stgs-beta0 / stgs-beta0.5, both directions.
export OMP_NUM_THREADS=1
cd /work/main; export PYTHONPATH=/work/main
O=/work/runs/probe_rec_lenpen; mkdir -p $O
for k in 1 2 3; do W=/work/runs/reconstruction_catalog_s$k
  for sys in baseline stgs-beta0 stgs-beta0.5; do
    for d in gl-en en-gl; do s=${d%-*}; t=${d#*-}
      for lp in 1.0 1.5; do
        f=$O/s$k.$sys.$d.valid.lp$lp
        [ -s $f.json ] || .venv/bin/python scripts/evaluate.py $W/bin --path $W/seed$k/$sys/checkpoint_best.pt -s $s -t $t --task bidirectional_translation --subset valid --json $f.json --hyps $f.hyp -- --lenpen $lp --both-directions-splits train > $f.log 2>&1 || echo "FAILED $f"
      done
      f=$O/s$k.$sys.$d.test.lp1.5
      [ -s $f.json ] || .venv/bin/python scripts/evaluate.py $W/bin --path $W/seed$k/$sys/checkpoint_best.pt -s $s -t $t --task bidirectional_translation --subset test --json $f.json --hyps $f.hyp -- --lenpen 1.5 --both-directions-splits train > $f.log 2>&1 || echo "FAILED $f"
    done
  done
done
echo "probe_rec_lenpen rc $? $(date)" >> /work/runs/queue.log
