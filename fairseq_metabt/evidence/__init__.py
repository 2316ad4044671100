"""The evidence protocol: how every recipe of the project compares systems.

A comparison counts only when every system has converged on the dev set and the
difference is paired by seed with a significance test. This package is the one
place where that protocol is written down; ``scripts/quickstart.sh`` and every
``examples/*/run_miniature.sh`` call it through ``python -m fairseq_metabt.evidence``:

* :mod:`.convergence` — ``train``: ``fairseq-train`` with early stopping on the dev set
  (the same patience, validation interval and best-checkpoint metric for every system of
  a comparison), an update cap only as a safety net, and a record of whether the run
  converged or hit its cap (``SAVE_DIR/convergence.json``);
* :mod:`.significance` — paired tests on the test hypotheses with sacrebleu's own paired
  approximate randomisation / bootstrap (nothing re-implemented);
* :mod:`.summary` — ``evaluate`` records a scored system, ``compare`` writes
  ``WORK/summary.json`` and a table with mean ± std, Δ paired by seed, p and convergence,
  and ``docs`` regenerates ``docs/results.md`` from ``docs/results/*.json``.
"""
