"""Paired significance of a system against its control, with sacrebleu's own tests.

The test statistic and the resampling are sacrebleu's (``sacrebleu.significance.PairedTest``):
nothing here re-implements them. Seeds are pooled by concatenating each seed's test set, the
system's and the control's hypotheses of the *same* seed side by side, so the pairing is by
seed and by sentence.
"""
import contextlib
import logging
from typing import Dict, Iterator, List, Sequence, Tuple

from fairseq_metabt.errors import UserError

DEFAULT_TEST = "ar"  # paired approximate randomisation (two-sided); "bs" = paired bootstrap resampling
DEFAULT_SAMPLES = 2000


@contextlib.contextmanager
def quiet_sacrebleu() -> Iterator[None]:
    """Silence sacrebleu's per-call tokenisation warnings (e.g. " ." endings of synthetic text), which would
    otherwise flood the table once per scored resample."""
    sb_log = logging.getLogger("sacrebleu")
    level = sb_log.level
    sb_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        sb_log.setLevel(level)


def paired_test(control: Sequence[str], system: Sequence[str], refs: Sequence[str], test_type: str = DEFAULT_TEST,
                n_samples: int = DEFAULT_SAMPLES, seed: int = 12345) -> Dict[str, Dict[str, float]]:
    """``{"bleu": {...}, "chrf": {...}}`` with the system's score, the control's score and the p-value
    of the paired test of the system against the control (sacrebleu ``PairedTest``)."""
    import os

    import sacrebleu
    from sacrebleu.significance import PairedTest

    if not (len(control) == len(system) == len(refs)):
        raise UserError(f"paired test needs equally many hypotheses and references: control {len(control)}, "
                         f"system {len(system)}, references {len(refs)}")
    if not refs:
        raise UserError("paired test on an empty test set")
    # sacrebleu seeds its resampling from SACREBLEU_SEED (default 12345): pin it so p is reproducible.
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        with quiet_sacrebleu():
            metrics = {"bleu": sacrebleu.metrics.BLEU(), "chrf": sacrebleu.metrics.CHRF()}
            test = PairedTest([("baseline", list(control)), ("system", list(system))], metrics, [list(refs)],
                              test_type=test_type, n_samples=n_samples)
            _, scores = test()
    finally:
        if old is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = old
    out: Dict[str, Dict[str, float]] = {}
    # sacrebleu names the columns after its metrics ("BLEU", "chrF2"), in the order given
    for name, column in zip(metrics, [k for k in scores if k != "System"]):
        base, sys_res = scores[column][0], scores[column][1]
        out[name] = {"control": float(base.score), "system": float(sys_res.score),
                     "p": float(sys_res.p_value) if sys_res.p_value is not None else float("nan")}
    return out


def pooled(pairs: List[Tuple[Sequence[str], Sequence[str], Sequence[str]]], **kw) -> Dict[str, Dict[str, float]]:
    """The paired test over several seeds: ``pairs`` holds ``(control, system, refs)`` per seed."""
    control: List[str] = []
    system: List[str] = []
    refs: List[str] = []
    for c, s, r in pairs:
        if not (len(c) == len(s) == len(r)):
            raise UserError(f"a seed's hypotheses and references differ in length: {len(c)}, {len(s)}, {len(r)}")
        control += list(c)
        system += list(s)
        refs += list(r)
    return paired_test(control, system, refs, **kw)
