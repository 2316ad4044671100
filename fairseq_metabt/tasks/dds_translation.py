"""Differentiable Data Selection for multilingual NMT (Wang, Pham, Michel, Anastasopoulos, Carbonell, Neubig; ICML 2020).

Task ``dds_translation`` reads top to bottom against Alg. 2 (``docs/methods/dds.md``):

* data (line 4): n bitexts S_i-T (many-to-one) or T-S_i (one-to-many) share one
  hub language; an epoch visits the distinct hub sentences ("targets") uniformly,
  and the language of each is drawn from ``p(S_i | y; psi)``
  (``data/language_sampler.py``), in ``train_step``, with the current psi.
* training (lines 5–7): each micro-batch is split by language and every group
  is backpropagated once into fairseq's gradient (no extra backward pass); the
  group's share of the gradient, summed over micro-batches and all-reduced over
  workers, updates ``grad[S_i] <- alpha1 grad[S_i] + alpha2 g_i`` in
  ``optimizer_step``.  EMAs are fp32 buffers owned by the task, over all
  trainable parameters, a subset (``--dds-grad-params``) or a fixed count
  sketch (``--dds-grad-sketch-dim``).
* scorer (lines 9–13): every K updates, the dev gradient of the
  ``--dds-dev-lang-pair`` at theta_t, rewards ``r_i = cos(grad[S_i], grad[S])``
  (or dot), and E REINFORCE steps of Adam on B uniformly drawn targets.
* priors: ``--dds-init uniform|datasize|temperature|tcs`` and
  ``--dds-update-scorer false`` give the baselines through the same code.

Scorer, its optimizer, EMAs, rewards and counters go through
``get_checkpoint_dict``/``set_checkpoint_dict``; every random draw is a
function of (seed, update, rank, ...), so a resumed run continues identically
and every worker makes the same scorer decisions.
"""
# no "from __future__ import annotations": fairseq reads the config dataclass field types at runtime
import contextlib
import json
import logging
import math
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

from fairseq_metabt import fileio
from fairseq_metabt.data.language_sampler import LanguageSampledDataset, marginal, seeded_generator
from fairseq_metabt.data.tagging import lang_tag
from fairseq_metabt.errors import UserError, UserFileError
from fairseq_metabt.models.dual_transformer import unwrap
from fairseq_metabt.modules import amp
from fairseq_metabt.modules import gradients as G
from fairseq_metabt.modules.generation import eval_mode, sequence_log_probs
from fairseq_metabt.modules.scorer import LanguageScorer, language_reinforce_loss

logger = logging.getLogger(__name__)

REWARD_CHOICES = ChoiceEnum(["cosine", "dot"])
INIT_CHOICES = ChoiceEnum(["uniform", "datasize", "temperature", "tcs"])
BOOL_CHOICES = ChoiceEnum(["true", "false"])
SAMPLING_CHOICES = ChoiceEnum(["auto", "target", "language"])
LOG_NAME = "dds_log.jsonl"


@dataclass
class DDSTranslationConfig(TranslationConfig):
    seed: int = II("common.seed")
    save_dir: str = II("checkpoint.save_dir")
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
    dds_update_interval: int = field(
        default=50, metadata={"help": "K: updates of the NMT model between two scorer updates (Alg. 2)"}
    )
    dds_scorer_iters: int = field(default=1, metadata={"help": "E: REINFORCE steps of the scorer every K updates"})
    dds_scorer_batch: int = field(
        default=64, metadata={"help": "B: targets sampled uniformly for each scorer step (Alg. 2 line 10)"}
    )
    dds_scorer_lr: float = field(default=1e-4, metadata={"help": "Adam learning rate of the scorer (A.2: 1e-4)"})
    dds_scorer_hidden: int = field(default=64, metadata={"help": "hidden units of the scorer's 2-layer perceptron"})
    dds_alpha1: float = field(default=0.9, metadata={"help": "alpha1: decay of the per-language gradient EMA"})
    dds_alpha2: float = field(default=0.1, metadata={"help": "alpha2: weight of the new gradient in the EMA"})
    dds_reward: REWARD_CHOICES = field(
        default="cosine", metadata={"help": "reward: cosine (paper) or dot product of grad[S_i] and the dev gradient"}
    )
    dds_init: INIT_CHOICES = field(
        default="uniform",
        metadata={"help": "initial p(S_i|y): uniform, datasize (∝ size), temperature (∝ size^(1/T)), or tcs "
                          "(imitate target-conditioned sampling by vocabulary overlap with the dev pair's language)"},
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
        metadata={"help": "subtract the mean reward over the languages trained on before the scorer update (a "
                          "baseline; Alg. 2 has none, and with all-positive cosines its update drifts to uniform)"},
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
        default=None, metadata={"help": f"JSONL of distributions and rewards every K updates (default SAVE_DIR/{LOG_NAME})"}
    )


def _rank() -> int:
    return distributed_utils.get_data_parallel_rank() if distributed_utils.get_data_parallel_world_size() > 1 else 0


def centered(rewards: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Rewards minus their mean over the languages that have one (``seen``); the others stay 0."""
    out = torch.zeros_like(rewards)
    if bool(seen.any()):
        out[seen] = rewards[seen] - rewards[seen].mean()
    return out


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
                        ("--dds-tcs-temperature", cfg.dds_tcs_temperature)):
        if not value > 0:
            raise UserError(f"{name} must be > 0, got {value}")
    if cfg.dds_grad_sketch_dim < 0:
        raise UserError(f"--dds-grad-sketch-dim must be >= 0 (0: no sketch), got {cfg.dds_grad_sketch_dim}")


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
        self.scorer_optimizer = torch.optim.Adam(self.scorer.parameters(), lr=cfg.dds_scorer_lr)
        self.ema: Optional[torch.Tensor] = None  # (n, D) fp32, built at the first update
        self.ema_seen = torch.zeros(n, dtype=torch.bool)
        self.rewards = torch.zeros(n)
        self.scorer_updates = 0
        self.last_update = 0
        self.usage = torch.zeros(n, dtype=torch.float64)  # sentences per language since the last scorer step
        self.pattern_probs: Optional[torch.Tensor] = None
        self._prior_done = False
        self._theta: Optional[List[torch.Tensor]] = None
        self._sketch: Optional[G.CountSketch] = None
        self._shares: Optional[G.GradientShares] = None
        self._pending: Optional[Dict] = None
        self._dev = None

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
        ds = self.train_data
        if ds is not None:
            self.pattern_probs = self.scorer.probs(torch.from_numpy(ds.index.patterns)).detach()

    def language_distribution(self) -> Optional[torch.Tensor]:
        """``E_y p(S_i | y; psi)`` over the training targets: the share of each language in an epoch."""
        ds = self.train_data
        if ds is None or self.pattern_probs is None:
            return None
        return marginal(self.pattern_probs, ds.index.pattern_of)

    # ---- gradient space for the EMAs -----------------------------------------------------------
    def _gradient_space(self, model) -> List[torch.Tensor]:
        if self._theta is None:
            named = G.select_named_params(unwrap(model).named_parameters(), self.cfg.dds_grad_params)
            self._theta = [p for _, p in named]
            d = sum(p.numel() for p in self._theta)
            k = self.cfg.dds_grad_sketch_dim
            self._sketch = G.CountSketch(d, k, seed=self.cfg.seed, device=self._theta[0].device) if k else None
            dim = k or d
            if self.ema is not None:
                self.ema = self.ema.to(self._theta[0].device)
            if not self.updates_scorer:  # a fixed distribution needs no EMAs
                return self._theta
            if self.ema is None or self.ema.shape != (len(self.langs), dim):
                if self.ema is not None:
                    raise UserError(f"the checkpoint's gradient EMAs have shape {tuple(self.ema.shape)}, this run "
                                     f"needs {(len(self.langs), dim)}: keep --dds-grad-params/--dds-grad-sketch-dim")
                self.ema = torch.zeros(len(self.langs), dim, device=self._theta[0].device)
            self._shares = G.GradientShares(self._theta, len(self.langs), self._sketch)
            logger.info("dds: gradient EMAs over %d parameters%s: %.2f MiB", d,
                        f", sketched to {k}" if k else "", self.ema.numel() * 4 / 2**20)
        return self._theta

    # ---- Alg. 2 lines 4–7 -----------------------------------------------------------------------
    @amp.amp_train_step
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if "dds_slots" not in sample:
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
        model.train()
        model.set_num_updates(update_num)
        theta = self._gradient_space(model)
        n = len(self.langs)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if self._pending is None or self._pending["update"] != update_num or amp.starts_update(trainable):
            # a new update (an update skipped or retried by fairseq, on overflow or OOM, leaves nothing behind)
            self._pending = {"update": update_num, "micro": 0,
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
            if not ignore_grad:  # counted in optimizer_step, once the update is taken
                pending["usage"][lang] += float(batch["nsentences"])
            agg_loss += float(loss.detach())
            agg_size += sample_size
            for key, v in log.items():
                agg_log[key] = agg_log.get(key, 0) + v
            agg_log[f"dds_nsent_{self.langs[lang]}"] = 0 if ignore_grad else float(batch["nsentences"])
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
        if not self.updates_scorer:  # a fixed distribution (the baselines) needs no rewards
            optimizer.step()
            self.last_update = update_num + 1
            if (update_num + 1) % self.cfg.dds_update_interval == 0:
                self._scorer_step(model, update_num)
            return
        # Alg. 2 line 7 on the workers' all-reduced per-language gradients (mean per target token)
        grads, ntok = self._shares.shares, pending["ntokens"]
        G.all_reduce_mean_(grads)
        G.all_reduce_mean_(ntok)
        finite = torch.isfinite(grads).all(dim=1).tolist()  # a non-finite share never enters an EMA
        for lang in range(len(self.langs)):
            if ntok[lang] > 0 and finite[lang]:  # g_i: mean gradient per target token of language i
                G.ema_update_(self.ema[lang], grads[lang], self.cfg.dds_alpha1,
                              self.cfg.dds_alpha2 / float(ntok[lang]))
                self.ema_seen[lang] = True
        optimizer.step()  # theta_{t-1} -> theta_t
        self.last_update = update_num + 1
        if (update_num + 1) % self.cfg.dds_update_interval == 0:
            self._scorer_step(model, update_num)

    # ---- Alg. 2 lines 9–13 ----------------------------------------------------------------------
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

    def dev_gradient(self, model, update_num: int) -> torch.Tensor:
        """``grad_theta J(theta_t, D_dev)``, mean NLL per token of one dev batch per worker, all-reduced."""
        ds, batches = self._dev_batches()
        pick = int(torch.randint(len(batches), (1,), generator=seeded_generator(self.cfg.seed, update_num, _rank(), 17)))
        batch = ds.collater([ds[int(i)] for i in batches[pick]])
        if self._theta[0].is_cuda:
            batch = utils.move_to_cuda(batch)
        inner = unwrap(model)
        with eval_mode(inner):
            nll = -sequence_log_probs(inner, batch, self.tgt_dict.pad()).sum() / max(float(batch["ntokens"]), 1.0)
            grads = torch.autograd.grad(nll, self._theta, allow_unused=True)
        flat = G.flatten(grads, self._theta)
        return G.all_reduce_mean_(self._sketch(flat) if self._sketch is not None else flat)

    def compute_rewards(self, dev: torch.Tensor) -> torch.Tensor:
        """``r_i = sim(grad[S_i], grad[S])``; 0 for a language not trained on yet or a degenerate gradient."""
        out = torch.zeros(len(self.langs))
        for lang in range(len(self.langs)):
            if self.ema_seen[lang]:
                r, ok = G.similarity(self.ema[lang], dev, self.cfg.dds_reward)
                out[lang] = float(r) if ok else 0.0
        return out

    def _scorer_step(self, model, update_num: int) -> None:
        if self.updates_scorer:
            self.rewards = self.compute_rewards(self.dev_gradient(model, update_num))
            rewards = centered(self.rewards, self.ema_seen) if self.cfg.dds_reward_centering else self.rewards
            for it in range(self.cfg.dds_scorer_iters):
                gen = seeded_generator(self.cfg.seed, update_num, it, 29)
                avail = self.train_data.sample_targets(self.cfg.dds_scorer_batch, gen)
                loss = language_reinforce_loss(self.scorer, avail, rewards)
                self.scorer_optimizer.zero_grad()
                loss.backward()
                self.scorer_optimizer.step()
        self.scorer_updates += 1
        self._refresh_table()
        usage = self.usage.clone()
        G.all_reduce_mean_(usage)
        self.usage.zero_()
        self._check_replicas()
        self._append_log(update_num + 1, usage)

    def _check_replicas(self) -> None:
        """With several workers the scorer must be identical on every rank: compare checksums."""
        if distributed_utils.get_data_parallel_world_size() <= 1:
            return
        sums = [G.checksum(self.scorer.parameters()), G.checksum([self.ema]) if self.ema is not None else 0.0]
        diff = G.check_replicas(sums, 1e-4, "the DDS scorer or EMAs")
        metrics.log_scalar("dds_replica_diff", diff, weight=1, round=8)

    # ---- observability --------------------------------------------------------------------------
    def log_path(self) -> str:
        return self.cfg.dds_log_file or os.path.join(self.cfg.save_dir, LOG_NAME)

    def _append_log(self, update: int, usage: torch.Tensor) -> None:
        if _rank() != 0:
            return
        dist = self.language_distribution()
        total = float(usage.sum()) or 1.0
        record = {"update": update, "scorer_updates": self.scorer_updates, "langs": self.langs,
                  "dev_pair": "-".join(self.dev_pair), "p": [round(float(x), 6) for x in dist],
                  "reward": [round(float(x), 6) for x in self.rewards],
                  "usage": [round(float(x) / total, 6) for x in usage]}
        path = self.log_path()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_log(self, update: int) -> None:
        """On resume, drop records written after the checkpoint (they will be written again)."""
        path = self.log_path()
        if not os.path.exists(path) or _rank() != 0:
            return
        with open(path) as f:
            keep = [line for line in f if line.strip() and json.loads(line)["update"] <= update]
        fileio.write_text(path, "".join(keep))  # atomic: a crash here must not lose the kept records

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        keys = [f"dds_nsent_{x}" for x in self.langs]
        if not self.langs or not any(k in log for log in logging_outputs for k in keys):
            return
        counts = [sum(float(log.get(k, 0)) for log in logging_outputs) for k in keys]
        total = sum(counts) or 1.0
        dist = self.language_distribution()
        for i, lang in enumerate(self.langs):
            metrics.log_scalar(f"dds_use_{lang}", counts[i] / total, weight=total, round=3)
            if dist is not None:
                metrics.log_scalar(f"dds_p_{lang}", float(dist[i]), weight=1, round=4)
            metrics.log_scalar(f"dds_r_{lang}", float(self.rewards[i]), weight=1, round=4)
        if self.ema is not None:
            metrics.log_scalar("dds_ema_mib", self.ema.numel() * 4 / 2**20, weight=1, round=3)

    # ---- state ----------------------------------------------------------------------------------
    def get_checkpoint_dict(self) -> Dict[str, dict]:
        state = {"langs": list(self.langs), "scorer": self.scorer.state_dict(),
                 "scorer_optimizer": self.scorer_optimizer.state_dict(),
                 "ema": None if self.ema is None else self.ema.detach().cpu().clone(),
                 "ema_seen": self.ema_seen.clone(), "rewards": self.rewards.clone(),
                 "usage": self.usage.clone(), "scorer_updates": self.scorer_updates,
                 "last_update": self.last_update}
        return {self.__class__.__name__: state}

    def set_checkpoint_dict(self, state: Dict) -> None:
        if not state:
            return
        if list(state["langs"]) != list(self.langs):
            raise UserError(f"the checkpoint was trained with languages {state['langs']}, this run has {self.langs}: "
                             "resume with the same --lang-pairs (or start a new --save-dir)")
        self.scorer.load_state_dict(state["scorer"])
        self.scorer_optimizer.load_state_dict(state["scorer_optimizer"])
        if state["ema"] is not None:
            if self.ema is not None and self.ema.shape != state["ema"].shape:
                raise UserError(f"the checkpoint's gradient EMAs have shape {tuple(state['ema'].shape)}, this run "
                                 f"{tuple(self.ema.shape)}: keep --dds-grad-params and --dds-grad-sketch-dim")
            device = self.ema.device if self.ema is not None else "cpu"
            self.ema = state["ema"].to(device).float().clone()
        self.ema_seen = state["ema_seen"].clone().bool()
        self.rewards = state["rewards"].clone()
        self.usage = state["usage"].clone()
        self.scorer_updates = int(state["scorer_updates"])
        self.last_update = int(state["last_update"])
        self._prior_done = True
        self._refresh_table()
        self._truncate_log(self.last_update)
