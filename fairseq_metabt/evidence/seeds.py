"""Seed-level uncertainty of a paired difference, and the verdict read from it.

The pooled sacrebleu test (:mod:`.significance`) resamples *sentences* only: with one test set
shared by every seed it cannot see how much the difference moves from one training seed to the
next, which on small corpora is often the larger part. Here the mean paired difference over seeds,

    Δ̄ = (1/n) Σ_s [score(system_s) − score(control_s)],

gets a 95 % interval with both sources of variance (a two-component random-effects interval):

* **seeds**: the per-seed differences Δ_s scatter around the true mean with the training-seed
  variance; its share of Var(Δ̄) is s²/n, with s² the unbiased sample variance of the Δ_s;
* **sentences**: the test set is itself a sample of sentences. Its share is the variance of Δ̄
  over bootstrap resamples of the test sentences (the same resampled indices for every seed when
  the seeds share one test set, as the seeds of a recipe do; independent resamples when they do
  not), each resample scored with sacrebleu's own corpus BLEU/chrF from its sufficient statistics.

    SE² = s²/n + Var_boot(Δ̄*),        interval = Δ̄ ± t_{n−1, 0.975} · SE

Student's t with n − 1 degrees of freedom keeps the interval honest with the three to five seeds
a recipe trains (a percentile bootstrap over three seeds has only ten distinct resamples and is far
too narrow). One seed gives no seed-level interval at all: its verdict is ``level``.

The **verdict** is ``better`` / ``worse`` only when the interval excludes 0, else ``level``.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from fairseq_metabt.errors import UserError

CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 1000
BETTER, WORSE, LEVEL = "better", "worse", "level"
METHOD = ("mean paired Δ over seeds ± t(n−1) · SE, SE² = seed variance / n + sentence-bootstrap variance "
          "(sacrebleu corpus scores of resampled test sentences)")
METHOD_SEEDS_ONLY = ("mean paired Δ over seeds ± t(n−1) · s/√n from the kept per-seed scores only: the "
                     "hypotheses were not kept, so the sentence component is missing (narrower than the full "
                     "interval)")


def _metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF

    return {"bleu": BLEU, "chrf": CHRF}[name]()


def sentence_stats(hyps: Sequence[str], refs: Sequence[str], metric: str) -> np.ndarray:
    """Per-sentence sufficient statistics of sacrebleu's corpus ``metric`` (rows add up to the corpus)."""
    from fairseq_metabt.evidence.significance import quiet_sacrebleu

    m = _metric(metric)
    with quiet_sacrebleu():
        return np.asarray(m._extract_corpus_statistics(list(hyps), [list(refs)]), dtype=np.float64)


def corpus_score(stats: np.ndarray, metric: str, _cache: Dict[str, object] = {}) -> float:
    """sacrebleu's corpus score from summed sufficient statistics (the way its own tests score resamples)."""
    m = _cache.get(metric)
    if m is None:
        m = _cache[metric] = _metric(metric)
    return float(m._compute_score_from_stats(stats.sum(0)).score)


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student-t quantile t_{df, (1+confidence)/2}."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def verdict(lo: Optional[float], hi: Optional[float]) -> str:
    """``better`` when the interval lies above 0, ``worse`` below 0, else ``level``."""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return LEVEL
    if lo > 0:
        return BETTER
    if hi < 0:
        return WORSE
    return LEVEL


def interval(deltas: Sequence[float], sentence_var: Optional[float] = 0.0,
             confidence: float = CONFIDENCE) -> Dict[str, object]:
    """The interval of the mean of per-seed ``deltas`` (module docstring) and its verdict.

    ``sentence_var`` is the test-sentence share of Var(Δ̄); ``None`` when it could not be measured
    (hypotheses not kept), which is recorded in ``method``."""
    d = [float(x) for x in deltas]
    if not d:
        raise UserError("no paired seed to compare", "score the system and its control on the same seeds")
    n = len(d)
    mean = sum(d) / n
    out: Dict[str, object] = {"n_seeds": n, "mean": round(mean, 3), "per_seed": [round(x, 3) for x in d],
                              "confidence": confidence,
                              "method": METHOD if sentence_var is not None else METHOD_SEEDS_ONLY}
    if n < 2:
        out.update(lo=None, hi=None, se=None, verdict=LEVEL, why="one seed: no seed-level interval")
        return out
    seed_var = sum((x - mean) ** 2 for x in d) / (n - 1) / n
    se = math.sqrt(seed_var + (sentence_var or 0.0))
    half = t_quantile(n - 1, confidence) * se
    lo, hi = mean - half, mean + half
    out.update(lo=round(lo, 3), hi=round(hi, 3), se=round(se, 4), se_seeds=round(math.sqrt(seed_var), 4),
               se_sentences=None if sentence_var is None else round(math.sqrt(sentence_var), 4),
               verdict=verdict(lo, hi))
    return out


def sentence_variance(stats_pairs: List[Tuple[np.ndarray, np.ndarray]], metric: str, shared: bool,
                      n_resamples: int = DEFAULT_RESAMPLES, seed: int = 12345) -> float:
    """Var over sentence resamples of Δ̄* = mean_s [score(system_s[idx]) − score(control_s[idx])].

    ``stats_pairs`` holds per seed the (control, system) per-sentence statistics; ``shared`` says the
    seeds share one test set, so one resample of sentence indices serves every seed."""
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for b in range(n_resamples):
        idx = rng.integers(0, len(stats_pairs[0][0]), len(stats_pairs[0][0])) if shared else None
        total = 0.0
        for c, s in stats_pairs:
            i = idx if shared else rng.integers(0, len(c), len(c))
            total += corpus_score(s[i], metric) - corpus_score(c[i], metric)
        means[b] = total / len(stats_pairs)
    return float(means.var(ddof=1))


def seed_level(per_seed: Sequence[Tuple[Sequence[str], Sequence[str], Sequence[str]]], metric: str = "bleu",
               n_resamples: int = DEFAULT_RESAMPLES, seed: int = 12345,
               confidence: float = CONFIDENCE) -> Dict[str, object]:
    """Interval and verdict of ``system − control`` from ``(control_hyps, system_hyps, refs)`` per seed."""
    if not per_seed:
        raise UserError("no paired seed to compare", "score the system and its control on the same seeds")
    pairs, deltas = [], []
    for c_h, s_h, refs in per_seed:
        if not (len(c_h) == len(s_h) == len(refs)) or not refs:
            raise UserError(f"a seed's hypotheses and references differ in length or are empty: {len(c_h)}, "
                            f"{len(s_h)}, {len(refs)}", "re-score the seed with `python -m fairseq_metabt.evidence "
                            "evaluate`")
        c, s = sentence_stats(c_h, refs, metric), sentence_stats(s_h, refs, metric)
        pairs.append((c, s))
        deltas.append(corpus_score(s, metric) - corpus_score(c, metric))
    shared = all(list(r) == list(per_seed[0][2]) for _, _, r in per_seed)
    identical = all(list(c) == list(s) for c, s, _ in per_seed)
    var = 0.0 if identical else sentence_variance(pairs, metric, shared, n_resamples, seed)
    out = interval(deltas, var, confidence)
    out["shared_test_set"] = shared
    out["resamples"] = n_resamples
    return out
