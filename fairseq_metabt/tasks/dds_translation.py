"""Differentiable Data Selection for multilingual NMT (Wang, Pham, Michel, Anastasopoulos, Carbonell, Neubig; ICML 2020).

Task ``dds_translation`` reads top to bottom against Alg. 2 (``docs/methods/dds.md``):

* data (line 4): n bitexts S_i-T (many-to-one) or T-S_i (one-to-many) share one
  hub language; an epoch visits the distinct hub sentences ("targets") uniformly,
  and the language of each is drawn from ``p(S_i | y; psi)``
  (``data/language_sampler.py``), in ``train_step``, with the current psi.
* training (line 5): each micro-batch is split by language and every group is
  backpropagated into fairseq's gradient.
* rewards (lines 7–8), every K updates (or K sentences): the dev gradient of
  the training criterion over the ``--dds-dev-lang-pair``'s dev set at
  theta_t, and by default each language's gradient on a fresh batch of the
  training batch's size (MultiDDS; ``--dds-grad-source ema``: token-matched
  EMAs of each group's share of the training gradient, ``modules/dds_rewards.py``);
  ``r_i`` = cosine, dot, or cosine after Adam's step scale (A.1).
* scorer (lines 9–13), from ``--dds-start-update`` on: E Adam steps of the
  objective ``--dds-scorer-objective`` (``modules/scorer.update_scorer``): by
  default ``kl``, the expected reward minus ``--dds-scorer-kl-weight`` times
  KL(p || prior), whose maximiser ``p ∝ prior exp(r / lambda)`` keeps p a
  weighting; or Alg. 2 as written, centred within each availability set, or
  the exact expected reward (``kl`` and ``exact`` over every availability
  pattern, the others on B uniformly drawn targets).
* priors: ``--dds-init uniform|datasize|temperature|tcs|order`` and
  ``--dds-update-scorer false`` give the baselines through the same code
  (``order``: a fixed ranking, the first available language of ``--dds-order``).

Scorer, its optimizer, EMAs, rewards and counters go through
``get_checkpoint_dict``/``set_checkpoint_dict``; every random draw is a
function of (seed, update, rank, ...), so a resumed run continues identically
and every worker makes the same scorer decisions.
"""
# no "from __future__ import annotations": fairseq reads the config dataclass field types at runtime
import contextlib
import copy
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from fairseq import metrics, utils
from fairseq.data import data_utils
from fairseq.dataclass import ChoiceEnum
from fairseq.distributed import utils as distributed_utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask, load_langpair_dataset
from omegaconf import II, open_dict

from fairseq_metabt import validate
from fairseq_metabt.data.language_sampler import LanguageSampledDataset, marginal, seeded_generator
from fairseq_metabt.data.tagging import lang_tag
from fairseq_metabt.errors import UserError, UserFileError
from fairseq_metabt.models.dual_transformer import unwrap
from fairseq_metabt.modules import amp, dds_log, ddp
from fairseq_metabt.modules import gradients as G
from fairseq_metabt.modules.dds_rewards import LanguageGradientEMA, adam_step_scale, language_reward
from fairseq_metabt.modules.generation import eval_mode
from fairseq_metabt.modules.scorer import DEFAULT_KL_WEIGHT, DEFAULT_OBJECTIVE, LanguageScorer, update_scorer

logger = logging.getLogger(__name__)

REWARD_CHOICES = ChoiceEnum(["cosine", "dot", "adam"])
OBJECTIVE_CHOICES = ChoiceEnum(["kl", "alg2", "centered", "exact"])
GRAD_SOURCE_CHOICES = ChoiceEnum(["fresh", "ema"])
GRAD_MODE_CHOICES = ChoiceEnum(["train", "eval"])
UNIT_CHOICES = ChoiceEnum(["updates", "sentences"])
INIT_CHOICES = ChoiceEnum(["uniform", "datasize", "temperature", "tcs", "order"])
ORDER_GAP = 20.0  # --dds-init order: log-weight step between two ranks (the next language gets e^-20 ≈ 2e-9)
BOOL_CHOICES = ChoiceEnum(["true", "false"])
SAMPLING_CHOICES = ChoiceEnum(["auto", "target", "language"])


@dataclass
class DDSTranslationConfig(TranslationConfig):
    seed: int = II("common.seed")
    save_dir: str = II("checkpoint.save_dir")
    ddp_backend: str = II("distributed_training.ddp_backend")
    distributed_world_size: int = II("distributed_training.distributed_world_size")
    log_interval: int = II("common.log_interval")
    lang_pairs: Optional[str] = field(
        default=None,
        metadata={"help": "comma-separated training pairs sharing one side: S1-T,S2-T,... (many-to-one) or "
                          "T-S1,T-S2,... (one-to-many); not needed to generate with -s/-t"},
    )
    dds_dev_lang_pair: Optional[str] = field(
        default=None, metadata={"help": "the low-resource pair whose dev set is D_dev (default: the first pair)"}
    )
    dds_dev_subset: str = field(default="valid", metadata={"help": "split of the dev pair used as D_dev"})
    dds_dev_max_tokens: int = field(default=2048, metadata={"help": "tokens per dev batch for the dev gradient"})
    dds_dev_max_batches: int = field(
        default=0, metadata={"help": "bound on the dev batches averaged into grad J(theta_t, D_dev) at each scorer "
                                     "update (a seeded random subset when the dev set has more); 0: the whole dev set"}
    )
    dds_update_interval: int = field(
        default=50, metadata={"help": "K: updates (or sentences, see --dds-update-unit) between two scorer updates"}
    )
    dds_update_unit: UNIT_CHOICES = field(
        default="updates", metadata={"help": "unit of K: updates, or training sentences over all workers (the "
                                             "authors' DataSelection code counts sentences)"}
    )
    dds_start_update: int = field(
        default=0, metadata={"help": "no scorer update before this update (learning-rate warm-up, when gradient "
                                     "directions carry little information)"}
    )
    dds_scorer_iters: int = field(
        default=100, metadata={"help": "E: Adam steps of the scorer at each scorer update (authors' scripts: 100)"}
    )
    dds_scorer_batch: int = field(
        default=160, metadata={"help": "B: targets sampled uniformly for each scorer step (Alg. 2 line 10; "
                                       "authors' scripts: 160)"}
    )
    dds_scorer_lr: float = field(default=1e-4, metadata={"help": "Adam learning rate of the scorer (A.2: 1e-4)"})
    dds_scorer_hidden: int = field(
        default=32, metadata={"help": "hidden units of the scorer's 2-layer perceptron (authors' scripts: 32)"}
    )
    dds_scorer_objective: OBJECTIVE_CHOICES = field(
        default=DEFAULT_OBJECTIVE,
        metadata={"help": "kl: the expected reward minus lambda KL(p || prior) over all availability patterns, "
                          "maximised by p ∝ prior exp(r / lambda): a weighting that noise cannot saturate; alg2: "
                          "Alg. 2 line 11 as written (acts as p ∝ r); centered: rewards minus their mean within each "
                          "target's availability set (a shared reward keeps the prior; saturates into a ranking); "
                          "exact: the expected reward sum_i p(S_i|y) r_i over all patterns (kl with lambda = 0)"},
    )
    dds_scorer_kl_weight: float = field(
        default=DEFAULT_KL_WEIGHT,
        metadata={"help": "lambda of --dds-scorer-objective kl: a reward gap g over the p-weighted mean multiplies "
                          "a language's odds by exp(g / lambda) relative to the prior (0.1: a cosine gap of 0.1 "
                          "gives a factor e)"},
    )
    dds_grad_source: GRAD_SOURCE_CHOICES = field(
        default="fresh",
        metadata={"help": "fresh: at each scorer update, every language's gradient on a fresh batch of the training "
                          "batch's size (MultiDDS; n extra backward passes every K); ema: token-matched EMAs of the "
                          "training gradient's per-language shares (Alg. 2 line 7; stale languages get no reward)"},
    )
    dds_grad_mode: GRAD_MODE_CHOICES = field(
        default="train",
        metadata={"help": "mode of the probe and dev gradients: train (dropout, the training criterion, as the "
                          "training gradient) or eval (no dropout; still the training criterion)"},
    )
    dds_probe_tokens: int = field(
        default=0, metadata={"help": "target tokens of each language's fresh batch; 0: those of the last training "
                                     "batch on this worker"}
    )
    dds_alpha1: float = field(
        default=0.9, metadata={"help": "alpha1: decay of the per-language gradient EMA (per update at uniform "
                                       "sampling; counted in tokens)"}
    )
    dds_alpha2: float = field(
        default=0.1, metadata={"help": "alpha2: weight of the new gradient in the EMA (cancels in the token-matched "
                                       "EMA's mean; kept for the interface)"}
    )
    dds_reward: REWARD_CHOICES = field(
        default="cosine",
        metadata={"help": "reward: cosine (the paper's implementation), dot (Eq. 13), or adam (cosine after Adam's "
                          "per-coordinate step scale, appendix Eq. 17)"}
    )
    dds_init: INIT_CHOICES = field(
        default="uniform",
        metadata={"help": "initial p(S_i|y): uniform, datasize (∝ size), temperature (∝ size^(1/T)), tcs "
                          "(imitate target-conditioned sampling by vocabulary overlap with the dev pair's language), "
                          "or order (a fixed ranking: each target draws the first available language of --dds-order)"},
    )
    dds_order: Optional[str] = field(
        default=None,
        metadata={"help": "--dds-init order: comma-separated ranking of all languages, best first (default: by "
                          "vocabulary overlap with the dev pair's language, the dev language first)"},
    )
    dds_temperature: float = field(default=5.0, metadata={"help": "T of --dds-init temperature"})
    dds_tcs_temperature: float = field(
        default=0.1, metadata={"help": "sharpness of the TCS heuristic: q ∝ exp(overlap / tau)"}
    )
    dds_update_scorer: BOOL_CHOICES = field(
        default="true",
        metadata={"help": "false: keep the initial distribution fixed (the baselines); no EMAs, dev gradients or "
                          "rewards are computed then"}
    )
    dds_reward_centering: bool = field(
        default=False,
        metadata={"help": "same as --dds-scorer-objective centered (rewards centred within each availability set)"},
    )
    dds_grad_params: Optional[str] = field(
        default=None, metadata={"help": "regular expression: keep EMAs only for the parameters whose name matches"}
    )
    dds_grad_sketch_dim: int = field(
        default=0, metadata={"help": "k > 0: keep EMAs as a fixed random projection (count sketch) to k dimensions"}
    )
    dds_sampling: SAMPLING_CHOICES = field(
        default="auto",
        metadata={"help": "target: uniform targets, language from p(S_i|y) (needs shared targets); language: one "
                          "distribution over languages; auto: target when some target has two languages"},
    )
    dds_log_file: Optional[str] = field(
        default=None,
        metadata={"help": f"JSONL of distributions and rewards every K updates (default SAVE_DIR/{dds_log.LOG_NAME})"}
    )


def _rank() -> int:
    return distributed_utils.get_data_parallel_rank() if distributed_utils.get_data_parallel_world_size() > 1 else 0


def parse_lang_pairs(text: str) -> List[Tuple[str, str]]:
    pairs = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        src, sep, tgt = item.partition("-")
        if not sep or not src or not tgt or "-" in tgt or src == tgt:
            raise UserError(f"--lang-pairs entry {item!r}: write SRC-TGT with two different languages")
        pairs.append((src, tgt))
    if len(set(pairs)) != len(pairs):
        raise UserError(f"--lang-pairs lists a pair twice: {text}")
    if not pairs:
        raise UserError("--lang-pairs is empty: give the training pairs, e.g. lrl-tgt,hrl-tgt")
    return pairs


def hub_of(pairs: List[Tuple[str, str]]) -> Tuple[str, bool]:
    """The shared language and whether it is the target side (many-to-one)."""
    if len({t for _, t in pairs}) == 1:
        return pairs[0][1], True
    if len({s for s, _ in pairs}) == 1:
        return pairs[0][0], False
    raise UserError("dds_translation needs pairs sharing one language: all into one target (many-to-one) or all "
                     "from one source (one-to-many); got " + ",".join(f"{s}-{t}" for s, t in pairs))


def check_dds_config(cfg) -> None:
    """One clear error per bad setting."""
    for name, value in (("--dds-dev-max-batches", cfg.dds_dev_max_batches),
                        ("--dds-start-update", cfg.dds_start_update),
                        ("--dds-probe-tokens", cfg.dds_probe_tokens)):
        if value < 0:
            raise UserError(f"{name} must be >= 0, got {value}")
    for name, value in (("--dds-update-interval (K)", cfg.dds_update_interval),
                        ("--dds-scorer-iters (E)", cfg.dds_scorer_iters),
                        ("--dds-scorer-batch (B)", cfg.dds_scorer_batch),
                        ("--dds-dev-max-tokens", cfg.dds_dev_max_tokens),
                        ("--dds-scorer-hidden", cfg.dds_scorer_hidden)):
        if value <= 0:
            raise UserError(f"{name} must be a positive integer, got {value}")
    for name, value in (("--dds-alpha1", cfg.dds_alpha1), ("--dds-alpha2", cfg.dds_alpha2)):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{name} must be in [0, 1], got {value}")
    for name, value in (("--dds-scorer-lr", cfg.dds_scorer_lr), ("--dds-temperature", cfg.dds_temperature),
                        ("--dds-tcs-temperature", cfg.dds_tcs_temperature),
                        ("--dds-scorer-kl-weight", cfg.dds_scorer_kl_weight)):
        if not value > 0:
            raise UserError(f"{name} must be > 0, got {value}")
    if cfg.dds_order and cfg.dds_init != "order":
        raise UserError(f"--dds-order ranks the languages of --dds-init order; this run has --dds-init "
                         f"{cfg.dds_init}: add --dds-init order or drop --dds-order")
    if cfg.dds_grad_sketch_dim < 0:
        raise UserError(f"--dds-grad-sketch-dim must be >= 0 (0: no sketch), got {cfg.dds_grad_sketch_dim}")
    if cfg.dds_grad_sketch_dim and cfg.dds_grad_source != "ema":
        raise UserError("--dds-grad-sketch-dim bounds the EMAs of --dds-grad-source ema; fresh gradients keep no "
                         "EMA (use --dds-grad-params to restrict them), so drop the sketch or choose ema")
    if cfg.dds_grad_source == "ema" and getattr(cfg, "dds_update_scorer", "true") == "true":
        ddp.refuse_pytorch_ddp(cfg, "dds_translation --dds-grad-source ema",
                               "each language's share of the gradient is read between backward passes, and torch's "
                               "DDP all-reduces inside the last one, so the last language's share would hold every "
                               "worker's gradient (use --dds-grad-source fresh with pytorch_ddp)")
    if cfg.dds_grad_sketch_dim and cfg.dds_reward == "adam":
        raise UserError("--dds-reward adam scales each coordinate by Adam's step size, which a count sketch mixes: "
                         "drop --dds-grad-sketch-dim or choose --dds-reward cosine")


@register_task("dds_translation", dataclass=DDSTranslationConfig)
class DDSTranslationTask(TranslationTask):
    """Multilingual translation whose language sampling is learned by DDS (Alg. 2)."""

    cfg: DDSTranslationConfig

    @classmethod
    def setup_task(cls, cfg: DDSTranslationConfig, **kwargs):
        if cfg.lang_pairs:
            pairs = parse_lang_pairs(cfg.lang_pairs)
            dev = cls._dev_pair(cfg, pairs)
            if cfg.source_lang is None and cfg.target_lang is None:
                with open_dict(cfg):
                    cfg.source_lang, cfg.target_lang = dev
        return super().setup_task(cfg, **kwargs)

    @staticmethod
    def _dev_pair(cfg, pairs: List[Tuple[str, str]]) -> Tuple[str, str]:
        if not cfg.dds_dev_lang_pair:
            return pairs[0]
        src, _, tgt = cfg.dds_dev_lang_pair.partition("-")
        if (src, tgt) not in pairs:
            raise UserError(f"--dds-dev-lang-pair {cfg.dds_dev_lang_pair} is not among --lang-pairs "
                             f"{cfg.lang_pairs}: D_dev must be one of the training pairs (the low-resource one)")
        return src, tgt

    def __init__(self, cfg: DDSTranslationConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        check_dds_config(cfg)
        validate.config(cfg)  # the component's own messages first; then finite and in range
        self.pairs: List[Tuple[str, str]] = parse_lang_pairs(cfg.lang_pairs) if cfg.lang_pairs else []
        self.hub, self.hub_is_target = hub_of(self.pairs) if self.pairs else (None, True)
        self.langs = [s if self.hub_is_target else t for s, t in self.pairs]  # the side DDS chooses
        self.dev_pair = self._dev_pair(cfg, self.pairs) if self.pairs else None
        if not self.hub_is_target:
            missing = [lang_tag(x) for x in self.langs if lang_tag(x) not in src_dict.indices]
            if missing:
                raise UserError(f"one-to-many training tags the source with the target language, but the dictionary "
                                 f"lacks {', '.join(missing)}; prepare the data with scripts/prepare_data.py")
        n = max(len(self.langs), 1)
        self.scorer = LanguageScorer(n, cfg.dds_scorer_hidden, seed=cfg.seed)
        self.prior_scorer = self._frozen(self.scorer)  # p0 of the kl objective: psi right after the prior
        self.scorer_optimizer = torch.optim.Adam(self.scorer.parameters(), lr=cfg.dds_scorer_lr)
        self.ema: Optional[LanguageGradientEMA] = None  # --dds-grad-source ema, built at the first update
        self._ema_state: Optional[Dict] = None  # restored before the EMA exists
        self.rewards = torch.zeros(n)
        self.reward_valid = torch.zeros(n, dtype=torch.bool)  # which rewards the scorer may use
        self.stale = torch.zeros(n, dtype=torch.bool)  # EMA path: no token since the previous scorer update
        self.scorer_updates = 0
        self.last_update = 0
        self.last_scorer_update = 0  # update after which the scorer last ran
        self.sentences_since = 0.0  # --dds-update-unit sentences: sentences since the last scorer update
        self.nonfinite_updates = 0  # updates whose gradient shares were not finite (never folded in)
        self._resumed = False  # a resumed run continues its log; a fresh one starts a new log
        self._criterion = None
        self._batch_tokens = 0  # target tokens of the last training micro-batch (the probe's size)
        self._group_tokens = 0  # its largest language group: the probe runs in chunks no larger (memory)
        self._scorer_bytes = 0  # transient buffers of the last scorer update (dev, probe, step scale)
        self.usage = torch.zeros(n, dtype=torch.float64)  # sentences per language since the last scorer step
        self.pattern_probs: Optional[torch.Tensor] = None
        self.stats: Dict[str, float] = {}  # entropy, KL to the prior, reward spread: refreshed with p (dds_log)
        self._prior_done = False
        self._theta: Optional[List[torch.Tensor]] = None
        self._sketch: Optional[G.CountSketch] = None
        self._shares: Optional[G.GradientShares] = None
        self._pending: Optional[Dict] = None
        self._dev = None
        self._model = self._optimizer = None  # set during a scorer update only

    @staticmethod
    def _frozen(scorer: LanguageScorer) -> LanguageScorer:
        out = copy.deepcopy(scorer)
        for p in out.parameters():
            p.requires_grad_(False)
        return out

    @property
    def updates_scorer(self) -> bool:
        return self.cfg.dds_update_scorer == "true"

    # ---- data -----------------------------------------------------------------------------------
    def _pair_dataset(self, split: str, src: str, tgt: str, shuffle: bool = True, prepend=None):
        data_path = utils.split_paths(self.cfg.data)[0]
        found = [os.path.join(data_path, f"{split}.{a}-{b}.{src}.idx") for a, b in ((src, tgt), (tgt, src))]
        if not any(os.path.exists(f) for f in found):
            raise UserFileError(
                f"language pair {src}-{tgt} has no {split} data: neither {found[0]} nor {found[1]} exists. "
                f"Add {split}.{src}-{tgt}.* to the raw corpus and run scripts/prepare_data.py, or drop the pair.")
        return load_langpair_dataset(
            data_path, split, src, self.src_dict, tgt, self.tgt_dict, combine=False,
            dataset_impl=self.cfg.dataset_impl, upsample_primary=1,
            left_pad_source=self.cfg.left_pad_source, left_pad_target=self.cfg.left_pad_target,
            max_source_positions=self.cfg.max_source_positions, max_target_positions=self.cfg.max_target_positions,
            shuffle=shuffle, prepend_bos_src=prepend)

    def _source_tag(self, src: str, tgt: str, pairs: List[Tuple[str, str]]) -> Optional[int]:
        """One-to-many: the target-language tag put before every source sentence."""
        if pairs:
            hub, hub_is_target = hub_of(pairs)
            if not hub_is_target and src == hub:
                return self.src_dict.index(lang_tag(tgt))
        return None

    def load_dataset(self, split, epoch=1, combine=False, task_cfg=None, **kwargs):
        if split != self.cfg.train_subset or not self.pairs:
            src, tgt = self.cfg.source_lang, self.cfg.target_lang
            # fairseq-generate passes the checkpoint's task config: without --lang-pairs on its command line,
            # the training run's pairs still say whether sources need a target-language tag (one-to-many)
            saved = getattr(task_cfg, "lang_pairs", None) if task_cfg is not None else None
            pairs = self.pairs or (parse_lang_pairs(saved) if saved else [])
            self.datasets[split] = self._pair_dataset(split, src, tgt, shuffle=split != "test",
                                                      prepend=self._source_tag(src, tgt, pairs))
            return
        parts = []
        for (src, tgt), lang in zip(self.pairs, self.langs):
            ds = self._pair_dataset(split, src, tgt)
            if len(ds) == 0:
                raise UserError(f"language {lang} has no {split} data ({split}.{src}-{tgt} is empty): add "
                                 "sentences or remove the pair from --lang-pairs")
            parts.append(ds)
        prefix = None if self.hub_is_target else [self.src_dict.index(lang_tag(x)) for x in self.langs]
        ds = LanguageSampledDataset(self.langs, parts, self.hub_is_target, mode=self.cfg.dds_sampling,
                                    source_prefix=prefix)
        logger.info("dds: %d targets over %s (%s mode; %.1f%% of targets in two or more languages)",
                    len(ds), ",".join(self.langs), ds.index.mode, 100 * ds.index.multiway_fraction)
        self.datasets[split] = ds
        if not self._prior_done:
            self._apply_prior(ds)
            self._prior_done = True
        self._refresh_table()

    @property
    def train_data(self) -> Optional[LanguageSampledDataset]:
        ds = self.datasets.get(self.cfg.train_subset)
        return ds if isinstance(ds, LanguageSampledDataset) else None

    # ---- priors ---------------------------------------------------------------------------------
    def _apply_prior(self, ds: LanguageSampledDataset) -> None:
        sizes = torch.tensor(ds.language_sizes(), dtype=torch.float64)
        init = self.cfg.dds_init
        if init == "uniform":
            self.scorer.set_prior([0.0] * len(self.langs))
        elif init == "datasize":
            self.scorer.set_prior(sizes.log().tolist())
        elif init == "temperature":
            self.scorer.set_prior((sizes.log() / self.cfg.dds_temperature).tolist())
        elif init == "tcs":
            overlap = self.vocabulary_overlap(ds)
            q = torch.softmax(torch.tensor(overlap) / self.cfg.dds_tcs_temperature, 0)
            patterns = torch.from_numpy(ds.index.patterns)
            kl = self.scorer.imitate(patterns, q.expand(len(patterns), -1).clone())
            logger.info("dds: TCS prior from vocabulary overlap %s (imitation KL %.4f)",
                        dict(zip(self.langs, [round(o, 3) for o in overlap])), kl)
        elif init == "order":
            order = self.language_order(ds)
            rank = {lang: k for k, lang in enumerate(order)}
            self.scorer.set_prior([-ORDER_GAP * rank[lang] for lang in self.langs])
            logger.info("dds: fixed order %s (each target draws its first available language)", " > ".join(order))
        self.prior_scorer.load_state_dict(self.scorer.state_dict())

    def language_order(self, ds: LanguageSampledDataset) -> List[str]:
        """``--dds-order`` checked against the languages, or by default the ranking by vocabulary overlap with
        the dev pair's language (itself first: its overlap is 1), ties in ``--lang-pairs`` order."""
        if self.cfg.dds_order:
            order = [x.strip() for x in self.cfg.dds_order.split(",") if x.strip()]
            if sorted(order) != sorted(self.langs):
                raise UserError(f"--dds-order {self.cfg.dds_order} must rank every language of --lang-pairs exactly "
                                 f"once: {','.join(self.langs)}")
            return order
        overlap = self.vocabulary_overlap(ds)
        return [self.langs[i] for i in sorted(range(len(self.langs)), key=lambda i: (-overlap[i], i))]

    def vocabulary_overlap(self, ds: LanguageSampledDataset) -> List[float]:
        """TCS heuristic: the share of a language's token types also used by the dev pair's language."""
        def types(pair) -> set:
            side = pair.src if self.hub_is_target else pair.tgt
            return set(np.unique(np.concatenate([np.asarray(side[i]) for i in range(len(side))])).tolist())

        vocab = [types(p) - set(range(self.src_dict.nspecial)) for p in ds.pairs]
        lrl = vocab[self.pairs.index(self.dev_pair)]
        return [len(v & lrl) / max(len(v), 1) for v in vocab]

    @torch.no_grad()
    def _refresh_table(self) -> None:
        """p(S_i | y) for every availability pattern, and the statistics logged until psi next changes."""
        ds = self.train_data
        if ds is not None:
            self.pattern_probs = self.scorer.probs(torch.from_numpy(ds.index.patterns)).detach()
        self.stats = dds_log.scorer_stats(self)

    def language_distribution(self) -> Optional[torch.Tensor]:
        """``E_y p(S_i | y; psi)`` over the training targets: the share of each language in an epoch."""
        ds = self.train_data
        if ds is None or self.pattern_probs is None:
            return None
        return marginal(self.pattern_probs, ds.index.pattern_of)

    # ---- gradient space --------------------------------------------------------------------------
    def _gradient_space(self, model) -> List[torch.Tensor]:
        if self._theta is None:
            named = G.select_named_params(unwrap(model).named_parameters(), self.cfg.dds_grad_params)
            self._theta = [p for _, p in named]
            d = sum(p.numel() for p in self._theta)
            if not self.updates_scorer:  # a fixed distribution needs no gradients
                return self._theta
            if self.cfg.dds_grad_source == "fresh":
                logger.info("dds: per-language gradients over %d parameters on a fresh batch per language every "
                            "K (%s mode, %s reward)", d, self.cfg.dds_grad_mode, self.cfg.dds_reward)
                return self._theta
            k = self.cfg.dds_grad_sketch_dim
            self._sketch = G.CountSketch(d, k, seed=self.cfg.seed, device=self._theta[0].device) if k else None
            self.ema = LanguageGradientEMA(len(self.langs), k or d, self.cfg.dds_alpha1, device=self._theta[0].device)
            if self._ema_state is not None:
                self.ema.load_state_dict(self._ema_state)
                self._ema_state = None
            self._shares = G.GradientShares(self._theta, len(self.langs), self._sketch)
            logger.info("dds: gradient EMAs over %d parameters%s: %.2f MiB with the shares", d,
                        f", sketched to {k}" if k else "", self.memory_bytes() / 2**20)
        return self._theta

    def memory_bytes(self) -> int:
        """Everything DDS keeps beside fairseq: EMAs, gradient shares and their mark, the sketch's hash,
        and the transient dev/probe gradients of the last scorer update."""
        total = self._scorer_bytes
        for part in (self.ema, self._shares, self._sketch):
            total += part.nbytes() if part is not None else 0
        return total

    # ---- Alg. 2 lines 4–7 -----------------------------------------------------------------------
    @amp.amp_train_step
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if "dds_slots" not in sample:
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
        model.train()
        model.set_num_updates(update_num)
        theta = self._gradient_space(model)
        self._criterion = criterion
        n = len(self.langs)
        # fairseq clears .grad when an update (or its retry after an overflow or OOM) starts: nothing left behind
        trainable = [p for p in model.parameters() if p.requires_grad]
        if self._pending is None or self._pending["update"] != update_num or amp.starts_update(trainable):
            self._pending = {"update": update_num, "micro": 0, "nsentences": 0.0,
                             "ntokens": torch.zeros(n, dtype=torch.float64, device=theta[0].device),
                             "usage": torch.zeros(n, dtype=torch.float64)}
            if self._shares is not None:
                self._shares.reset()
        pending = self._pending
        gen = seeded_generator(self.cfg.seed, update_num, _rank(), pending["micro"])
        pending["micro"] += 1
        slots = sample["dds_slots"].cpu().numpy()
        ds = self.train_data
        chosen = ds.choose_languages(slots, self.pattern_probs, gen)
        batches = ds.assemble(slots, chosen)

        # every key on every worker, even for a language absent here: fairseq sums logs across workers by key
        agg_loss, agg_size, agg_log = 0.0, 0, {f"dds_nsent_{x}": 0.0 for x in self.langs}
        if self._shares is not None:
            self._shares.mark()
        scale = G.loss_scale(optimizer)
        batch_tokens, group_tokens = 0, 0
        for k, (lang, batch) in enumerate(batches.items()):
            if self._theta[0].is_cuda:
                batch = utils.move_to_cuda(batch)
            last = k == len(batches) - 1
            sync_off = not last and hasattr(model, "no_sync") and distributed_utils.get_data_parallel_world_size() > 1
            with model.no_sync() if sync_off else contextlib.nullcontext():
                loss, sample_size, log = criterion(model, batch)
                if ignore_grad:
                    loss = loss * 0
                optimizer.backward(loss)
            if not ignore_grad and self._shares is not None:
                # this language's share of the gradient: the real training gradient, no extra backward pass
                self._shares.capture(lang, scale)
                pending["ntokens"][lang] += float(batch["ntokens"])
            if not ignore_grad:  # usage counted in optimizer_step, once the update is taken
                pending["usage"][lang] += float(batch["nsentences"])
                pending["nsentences"] += float(batch["nsentences"])
                batch_tokens += int(batch["ntokens"])
                group_tokens = max(group_tokens, int(batch["ntokens"]))
            agg_loss = agg_loss + loss.detach()  # a tensor: no host sync per language group (fairseq drops it)
            agg_size += sample_size
            for key, v in log.items():
                agg_log[key] = agg_log.get(key, 0) + v
            agg_log[f"dds_nsent_{self.langs[lang]}"] = 0 if ignore_grad else float(batch["nsentences"])
        if batch_tokens:
            self._batch_tokens, self._group_tokens = batch_tokens, group_tokens
        return agg_loss, agg_size, agg_log

    def optimizer_step(self, optimizer, model, update_num):
        if self.train_data is None or self._pending is None or self._pending["update"] != update_num:
            optimizer.step()
            return
        pending, self._pending = self._pending, None
        if amp.update_skipped(optimizer):  # --amp overflow: fairseq retries the batch or drops it
            optimizer.step()  # the scaler skips the step and lowers its scale; no EMA, usage or scorer step
            return
        self.usage += pending["usage"]
        if self.ema is not None:
            # Alg. 2 line 7 on the workers' all-reduced per-language gradient sums, at theta_{t-1}
            grads, ntok = self._shares.shares, pending["ntokens"]
            G.all_reduce_mean_(grads)
            G.all_reduce_mean_(ntok)
            if not self.ema.update(grads, ntok, update_num):  # a non-finite share never enters an EMA
                self.nonfinite_updates += 1
        optimizer.step()  # theta_{t-1} -> theta_t
        self.last_update = update_num + 1
        if self._scorer_due(pending):
            self._scorer_step(model, update_num, optimizer)

    def _scorer_due(self, pending: Dict) -> bool:
        """Every K updates, or every K training sentences over all workers (``--dds-update-unit``)."""
        if self.cfg.dds_update_unit == "updates":
            return self.last_update % self.cfg.dds_update_interval == 0
        sent = torch.tensor([pending["nsentences"]], dtype=torch.float64, device=self._theta[0].device)
        G.all_reduce_mean_(sent)
        self.sentences_since += float(sent) * distributed_utils.get_data_parallel_world_size()
        if self.sentences_since < self.cfg.dds_update_interval:
            return False
        self.sentences_since = 0.0
        return True

    # ---- Alg. 2 lines 8–13 ----------------------------------------------------------------------
    def _dev_batches(self):
        if self._dev is None:
            src, tgt = self.dev_pair
            ds = self._pair_dataset(self.cfg.dds_dev_subset, src, tgt, shuffle=False,
                                    prepend=self._source_tag(src, tgt, self.pairs))
            batches = data_utils.batch_by_size(ds.ordered_indices(), ds.num_tokens,
                                               max_tokens=self.cfg.dds_dev_max_tokens)
            if not batches:
                raise UserError(f"--dds-dev-subset {self.cfg.dds_dev_subset} of {src}-{tgt} has no usable example")
            self._dev = (ds, batches)
        return self._dev

    def _mean_gradient(self, batches: List[Dict]) -> torch.Tensor:
        """``grad`` of the training criterion's loss per ``sample_size`` (per token) over ``batches`` on this
        worker, pooled over all workers (sums and sizes all-reduced), in ``--dds-grad-mode``; the
        criterion and model are fairseq's own, so this is the training objective, and under ``--amp`` it
        runs in autocast with fairseq's loss scale, as the training step does."""
        inner = unwrap(self._model)
        theta = self._theta
        optimizer = self._optimizer
        scale = G.loss_scale(optimizer)
        total = torch.zeros(sum(p.numel() for p in theta), device=theta[0].device)
        size = torch.zeros(1, dtype=torch.float64, device=theta[0].device)
        mode = eval_mode(inner) if self.cfg.dds_grad_mode == "eval" else contextlib.nullcontext()
        with mode:
            for batch in batches:
                if theta[0].is_cuda:
                    batch = utils.move_to_cuda(batch)
                with amp.autocast(optimizer, theta):
                    loss, sample_size, _ = self._criterion(inner, batch)
                grads = list(torch.autograd.grad(loss * scale if scale != 1.0 else loss, theta, allow_unused=True))
                # added parameter by parameter into the running total (no flat copy of the gradient), each
                # parameter's gradient released once added: at most total + one gradient's worth at a time
                offset = 0
                for k, p in enumerate(theta):
                    if grads[k] is not None:
                        total[offset:offset + p.numel()].add_(grads[k].detach().reshape(-1).float(),
                                                              alpha=1.0 / scale)
                        grads[k] = None
                    offset += p.numel()
                size += float(sample_size)
        G.all_reduce_mean_(total)
        G.all_reduce_mean_(size)
        return total / float(size) if float(size) > 0 else total

    def dev_gradient(self, update_num: int) -> torch.Tensor:
        """``grad_theta J(theta_t, D_dev)``: the training criterion per token over the dev set (at most
        ``--dds-dev-max-batches`` batches, a seeded subset), its batches shared out over the workers."""
        ds, batches = self._dev_batches()
        order = list(range(len(batches)))
        cap = self.cfg.dds_dev_max_batches
        if cap and cap < len(batches):
            perm = torch.randperm(len(batches), generator=seeded_generator(self.cfg.seed, update_num, 17))
            order = sorted(perm[:cap].tolist())
        world = distributed_utils.get_data_parallel_world_size()
        mine = order[_rank()::world]
        return self._mean_gradient([ds.collater([ds[int(i)] for i in batches[b]]) for b in mine])

    def language_gradient(self, lang: int, update_num: int) -> torch.Tensor:
        """Language ``lang``'s gradient on a fresh batch of the training batch's size (MultiDDS's probe):
        every language averages the same number of target tokens, whatever p samples."""
        ds = self.train_data
        tokens = self.cfg.dds_probe_tokens or self._batch_tokens or self.cfg.dds_dev_max_tokens
        gen = seeded_generator(self.cfg.seed, update_num, _rank(), 37, lang)
        slots = ds.language_batch_slots(lang, tokens, gen)
        # backpropagated in chunks of about a training step's language group: about the same peak memory
        sizes = ds.pairs[lang].tgt_sizes[ds.index.table[slots, lang]]
        chunk = max(self._group_tokens, int(sizes.max()))
        cuts = np.flatnonzero(np.diff(np.cumsum(sizes) // chunk)) + 1
        pieces = [part for part in np.split(slots, cuts) if len(part)]
        return self._mean_gradient([ds.assemble(part, np.full(len(part), lang))[lang] for part in pieces])

    def _scorer_step(self, model, update_num: int, optimizer) -> None:
        learn = self.updates_scorer and self.last_update >= self.cfg.dds_start_update
        if learn:
            self._model, self._optimizer = model, optimizer
            # dropout in train mode draws from torch's generator: seed it by the update (resume, workers)
            with utils.set_torch_seed(int(seeded_generator(self.cfg.seed, update_num, _rank(), 41).initial_seed()
                                          % 2**31)):
                self._compute_rewards(update_num, optimizer)
            self._model = self._optimizer = None
            objective = "centered" if self.cfg.dds_reward_centering else self.cfg.dds_scorer_objective
            ds = self.train_data

            def targets(it: int):
                if objective in ("exact", "kl"):  # every availability pattern, weighted by its share of the targets
                    return torch.from_numpy(ds.index.patterns), dds_log.pattern_weights(ds)
                gen = seeded_generator(self.cfg.seed, update_num, it, 29)
                return ds.sample_targets(self.cfg.dds_scorer_batch, gen), None

            update_scorer(self.scorer, self.scorer_optimizer, self.rewards, self.reward_valid, objective,
                          self.cfg.dds_scorer_iters, targets, prior=self.prior_scorer,
                          kl_weight=self.cfg.dds_scorer_kl_weight)
        self.scorer_updates += 1
        self.last_scorer_update = self.last_update
        self._refresh_table()
        usage = self.usage.clone()
        G.all_reduce_mean_(usage)
        self.usage.zero_()
        self._check_replicas()
        if _rank() == 0:
            record = dds_log.scorer_record(self, self.last_update, usage, learn)
            dds_log.append_record(dds_log.log_path(self.cfg), record, fresh=not self._resumed)
        self._resumed = True  # a fresh run starts a fresh log (an earlier one set aside), then appends

    def _compute_rewards(self, update_num: int, optimizer) -> None:
        """Alg. 2 line 8: ``r_i = sim(grad[S_i], grad J(theta_t, D_dev))`` for every language."""
        n = len(self.langs)
        dev = self.dev_gradient(update_num)
        step_scale = adam_step_scale(optimizer, self._theta) if self.cfg.dds_reward == "adam" else None
        adam = int(step_scale is not None)
        # the peak of this scorer update's transient fp32 vectors of D = |theta| coordinates: fresh
        # gradients hold the dev gradient, the running total and one backward's gradients (3 D; + the
        # step scale with the adam reward); the EMA path the dev gradient and one language's mean, or
        # while the dev gradient is taken its running total and one backward's gradients (2 D; + the
        # step scale and the scaled mean with adam)
        self._scorer_bytes = ((2 + 2 * adam) if self.ema is not None else (3 + adam)) * dev.numel() * 4
        if self.ema is not None:
            if self._sketch is not None:
                dev = self._sketch(dev)
            self.stale = self.ema.stale(self.last_scorer_update)
            self.rewards, self.reward_valid = self.ema.rewards(dev, self.cfg.dds_reward, step_scale,
                                                               stale_after=self.last_scorer_update)
            return
        rewards, valid = torch.zeros(n), torch.zeros(n, dtype=torch.bool)
        for lang in range(n):
            rewards[lang], valid[lang] = language_reward(self.language_gradient(lang, update_num), dev,
                                                         self.cfg.dds_reward, step_scale)
        self.rewards, self.reward_valid = rewards, valid

    def _check_replicas(self) -> None:
        """With several workers the scorer must be identical on every rank: compare checksums."""
        if distributed_utils.get_data_parallel_world_size() <= 1:
            return
        sums = [G.checksum(self.scorer.parameters()), G.checksum([self.ema.sums]) if self.ema is not None else 0.0]
        diff = G.check_replicas(sums, 1e-4, "the DDS scorer or EMAs")
        metrics.log_scalar("dds_replica_diff", diff, weight=1, round=8)

    # ---- observability (modules/dds_log.py) ------------------------------------------------------
    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        dds_log.log_metrics(self, logging_outputs)

    # ---- state ----------------------------------------------------------------------------------
    def get_checkpoint_dict(self) -> Dict[str, dict]:
        ema = self.ema.state_dict() if self.ema is not None else self._ema_state
        state = {"langs": list(self.langs), "scorer": self.scorer.state_dict(),
                 "prior_scorer": self.prior_scorer.state_dict(),
                 "scorer_optimizer": self.scorer_optimizer.state_dict(), "ema": ema,
                 "rewards": self.rewards.clone(), "reward_valid": self.reward_valid.clone(),
                 "stale": self.stale.clone(), "usage": self.usage.clone(), "scorer_updates": self.scorer_updates,
                 "last_update": self.last_update, "last_scorer_update": self.last_scorer_update,
                 "sentences_since": self.sentences_since, "nonfinite_updates": self.nonfinite_updates}
        return {self.__class__.__name__: state}

    def set_checkpoint_dict(self, state: Dict) -> None:
        if not state:
            return
        if list(state["langs"]) != list(self.langs):
            raise UserError(f"the checkpoint was trained with languages {state['langs']}, this run has {self.langs}: "
                             "resume with the same --lang-pairs (or start a new --save-dir)")
        self.scorer.load_state_dict(state["scorer"])
        if "prior_scorer" in state:
            self.prior_scorer.load_state_dict(state["prior_scorer"])
        else:  # a checkpoint of an older version: the scorer as saved becomes the kl objective's anchor
            logger.warning("dds: the checkpoint holds no prior scorer (older version); the kl objective anchors "
                           "to the scorer as saved")
            self.prior_scorer.load_state_dict(state["scorer"])
        self.scorer_optimizer.load_state_dict(state["scorer_optimizer"])
        ema = state.get("ema")
        if isinstance(ema, dict):
            if self.ema is not None:
                self.ema.load_state_dict(ema)
            else:
                self._ema_state = ema
        elif ema is not None:
            logger.warning("dds: the checkpoint holds per-update EMAs of an older version; the token-matched EMAs "
                           "start afresh")
        self.rewards = state["rewards"].clone()
        self.reward_valid = state.get("reward_valid", state.get("ema_seen", self.reward_valid)).clone().bool()
        self.stale = state.get("stale", self.stale).clone().bool()
        self.usage = state["usage"].clone()
        self.scorer_updates = int(state["scorer_updates"])
        self.last_update = int(state["last_update"])
        self.last_scorer_update = int(state.get("last_scorer_update", 0))
        self.sentences_since = float(state.get("sentences_since", 0.0))
        self.nonfinite_updates = int(state.get("nonfinite_updates", 0))
        self._prior_done = True
        self._resumed = True
        self._refresh_table()
        if _rank() == 0:  # records written after the checkpoint will be written again
            dds_log.truncate_log(dds_log.log_path(self.cfg), self.last_update)
