"""What DDS shows of itself (``dds_translation``): the JSONL log of every scorer update and the metrics
of ``reduce_metrics``.  Kept apart from the task so that ``tasks/dds_translation.py`` reads as Alg. 2.

* The log (``--dds-log-file``, default ``SAVE_DIR/dds_log.jsonl``; read by ``scripts/plot_dds.py``): one
  record per scorer update -- p, rewards, which were valid or stale, the sentences each language got,
  entropy and KL of p(.|y) to the prior, the reward spread.  Written by rank 0 only, atomically (a torn
  line is impossible; one from an older version is skipped on reading).  A fresh run sets an earlier run's
  log aside (``PATH.prevK``); a resumed run drops the records written after its checkpoint.
* Metrics: sentences per language, p, rewards, entropy, KL, EMA memory, valid rewards, non-finite updates.
"""
import json
import logging
import os
from typing import Dict, List

import numpy as np
import torch
from fairseq import metrics

from fairseq_metabt import fileio
from fairseq_metabt.modules.dds_rewards import reward_spread
from fairseq_metabt.modules.scorer import distribution_stats

logger = logging.getLogger(__name__)

LOG_NAME = "dds_log.jsonl"


def log_path(cfg) -> str:
    """``--dds-log-file``, or ``SAVE_DIR/dds_log.jsonl``."""
    return cfg.dds_log_file or os.path.join(cfg.save_dir, LOG_NAME)


def read_log(path: str) -> List[Dict]:
    """The log's records; a torn line (a run killed while writing) is skipped, not fatal."""
    out, torn = [], 0
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                torn += 1
    if torn:
        logger.warning("dds: skipped %d unreadable line(s) of %s", torn, path)
    return out


def write_log(path: str, records: List[Dict]) -> None:
    """Atomically (a temporary file beside the log, then a rename over it): a crash never tears it."""
    fileio.write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def append_record(path: str, record: Dict, fresh: bool) -> None:
    """Add ``record``; the first record of a ``fresh`` (not resumed) run sets an earlier run's log aside."""
    if fresh:
        kept = fileio.set_aside(path)
        if kept:
            logger.warning("dds: %s belongs to an earlier run; moved to %s", path, kept)
    write_log(path, read_log(path) + [record])


def truncate_log(path: str, update: int) -> None:
    """On resume, drop records written after the checkpoint (they will be written again)."""
    if os.path.exists(path):
        write_log(path, [r for r in read_log(path) if int(r.get("update", 0)) <= update])


def pattern_weights(ds) -> torch.Tensor:
    """Each availability pattern's share of the training targets."""
    counts = np.bincount(ds.index.pattern_of, minlength=len(ds.index.patterns))
    return torch.from_numpy(counts / counts.sum())


def scorer_stats(task) -> Dict[str, float]:
    """Mean entropy of p(.|y) and its KL to the prior over the targets (nats), and the reward spread:
    std of the valid rewards across languages vs the gap between the best and their mean."""
    ds = task.train_data
    out = {}
    if ds is not None and task.pattern_probs is not None:
        with torch.no_grad():
            prior = task.prior_scorer.probs(torch.from_numpy(ds.index.patterns))
        out["entropy"], out["kl_prior"] = distribution_stats(task.pattern_probs, prior, pattern_weights(ds))
    out["reward_std"], out["reward_gap"] = reward_spread(task.rewards, task.reward_valid)
    return out


def scorer_record(task, update: int, usage: torch.Tensor, learned: bool) -> Dict:
    """The log record of the scorer update after update ``update`` (``usage``: sentences per language since
    the previous one, over all workers)."""
    dist = task.language_distribution()
    total = float(usage.sum()) or 1.0
    record = {"update": update, "scorer_updates": task.scorer_updates, "langs": task.langs,
              "dev_pair": "-".join(task.dev_pair), "p": [round(float(x), 6) for x in dist],
              "reward": [round(float(x), 6) for x in task.rewards],
              "valid": [bool(x) for x in task.reward_valid], "stale": [bool(x) for x in task.stale],
              "learned": bool(learned), "usage": [round(float(x) / total, 6) for x in usage]}
    record.update({k: round(v, 6) for k, v in task.stats.items()})
    return record


def log_metrics(task, logging_outputs) -> None:
    """The task's part of ``reduce_metrics``: host-side figures only (p, rewards and the scorer statistics
    are CPU tensors computed at the scorer updates; the sentence counts are the step's own numbers)."""
    keys = [f"dds_nsent_{x}" for x in task.langs]
    if not task.langs or not any(k in log for log in logging_outputs for k in keys):
        return
    counts = [sum(float(log.get(k, 0)) for log in logging_outputs) for k in keys]
    total = sum(counts) or 1.0
    dist = task.language_distribution()
    for i, lang in enumerate(task.langs):
        metrics.log_scalar(f"dds_use_{lang}", counts[i] / total, weight=total, round=3)
        if dist is not None:
            metrics.log_scalar(f"dds_p_{lang}", float(dist[i]), weight=1, round=4)
        metrics.log_scalar(f"dds_r_{lang}", float(task.rewards[i]), weight=1, round=4)
    stats = task.stats
    if "entropy" in stats:
        metrics.log_scalar("dds_entropy", stats["entropy"], weight=1, round=4)
        metrics.log_scalar("dds_kl_prior", stats["kl_prior"], weight=1, round=4)
    if task.updates_scorer:
        metrics.log_scalar("dds_ema_mib", task.memory_bytes() / 2**20, weight=1, round=3)
        metrics.log_scalar("dds_valid", float(task.reward_valid.sum()), weight=1, round=1)
        metrics.log_scalar("dds_reward_std", stats["reward_std"], weight=1, round=4)
        metrics.log_scalar("dds_reward_gap", stats["reward_gap"], weight=1, round=4)
    if task.nonfinite_updates:
        metrics.log_scalar("dds_nonfinite", float(task.nonfinite_updates), weight=1, round=1)
