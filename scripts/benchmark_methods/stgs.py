"""STGS round-trip reconstruction (L_T + L_R) vs. L_T alone: same task, model, data and batches.

    python scripts/benchmark.py --method stgs [--updates 60] [--arch transformer_lowres_small]

Both systems train the bi-directional tagged task (``bidirectional_translation``,
lrl↔tgt of the synthetic ``bidirectional`` preset) with ``--arch`` and
``--share-all-embeddings``:

* ``baseline``: ``label_smoothed_cross_entropy`` (L_T only — the pre-training
  objective and the fine-tuning baseline);
* ``method``: ``stgs_reconstruction`` with λ = 1, τ = 2, β = ``STGS_BETA``
  (default 0.5) and the default length cap (1.2·src_len + 10): an extra
  free-running decoding pass with incremental state and a teacher-forced
  reconstruction pass per batch.

The cost of the method grows with the sampled length; the method's log
(``stgs.method.log``) reports it as ``sample_len``.
"""
import os
from typing import Dict, List

from benchmark import USER_DIR, BenchmarkMethod, common_args


def build(bin_dir: str, args) -> Dict[str, List[str]]:
    shared = common_args(bin_dir, args) + [
        "--user-dir", USER_DIR, "--task", "bidirectional_translation", "--arch", args.arch,
        "--share-all-embeddings", "--ddp-backend", "legacy_ddp",
    ]
    method = shared + ["--criterion", "stgs_reconstruction", "--stgs-beta", os.environ.get("STGS_BETA", "0.5"),
                       "--stgs-tau", "2"]
    return {"method": method, "baseline": shared}


METHOD = BenchmarkMethod(build, preset="bidirectional", sizes="train=2000,valid=100,test=100,mono_tgt=10,mono_lrl=10")
