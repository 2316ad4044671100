"""Meta back-translation (Pham, Wang, Yang, Neubig; ICLR 2021).

One fairseq update ``t`` of task ``meta_backtranslation``
(``docs/methods/metabt.md``; the steps of ``shared/papers/metabt_notes.md``):

1. ``train_step``: the backward model P(x|y; psi) samples pseudo-sources
   ``x_hat`` for a batch of target monolingual text ``y'`` (step 1); the forward
   model P(y|x; theta) backpropagates its loss on the real bitext batch (exactly
   the plain translation baseline's batch, normalised as the baseline's) and,
   on top of it, on the pseudo pairs (``--pseudo-weight`` times their own
   per-token mean), and ``g = grad_theta l(x_hat, y'; theta_{t-1})`` is kept
   (its share of the accumulated gradient); the backward model backpropagates
   its MLE loss on the reversed bitext into psi's own gradient buffers.  The pseudo pairs' forward/backward
   and log q run in length-sorted chunks (``--pseudo-chunk-tokens``; each pass sorted by its own target: y'
   for theta, x_hat for psi): y' are drawn at random, not length-bucketed as the bitext, and the sums over
   sentences are the same without the padding.
2. fairseq all-reduces, scales and clips theta's gradient; then
   ``optimizer_step`` updates theta to theta_t (Eq. 10/18, step 2),
3. computes the dev gradient ``d = grad_theta J_dev(theta_t)`` at the
   *updated* forward model (Eq. 13, step 3),
4. the reward ``r = d . g`` or ``cos(d, g)`` (Eq. 17, step 4; per sentence
   ``g_i`` is the gradient of sentence i's own per-token mean loss, by the
   Taylor trick of DDS Eq. 7 or by double backward, so a sentence's reward is on
   the scale of the batch's), optionally with ``g`` preconditioned by Adam's
   second moments, ``h(g) = g / (sqrt(v_hat) + eps)`` (Eq. 18),
5. and updates psi with ``-(r - b) grad log P(x_hat | y'; psi_{t-1})`` plus the
   MLE gradient, using the backward model's own optimizer, and the
   moving-average baseline ``b`` (step 5).

Steps 3-4 (g, d, h, the rewards) live in ``modules/metabt_rewards.py``; the ``phase(...)`` blocks are timers
for ``scripts/benchmark.py --profile`` (no-ops unless ``METABT_PHASES`` is set).

Everything happens inside one fairseq update, so the reward is computed at the
updated theta_t, never before it and with no delay; psi is not touched by
fairseq's optimizer (its parameters are excluded from it), so the
log-probabilities kept from step 1 are still those of psi_{t-1}, taken under
the distribution the sample was drawn from (temperature, top-k/top-p, EOS rules).

Controls, flags of this one task: ``--freeze-backward`` (online BT),
``--meta-weight 0`` (BT + psi trained by MLE only: isolates the meta reward),
and the default (MetaBT).
"""
# no "from __future__ import annotations": fairseq reads the config dataclass field types at runtime
import contextlib
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
from fairseq import metrics, utils
from fairseq.data import ConcatDataset, LanguagePairDataset, data_utils
from fairseq.dataclass import ChoiceEnum
from fairseq.distributed import utils as distributed_utils
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask, load_langpair_dataset
from omegaconf import II

from fairseq_metabt import validate
from fairseq_metabt.checkpoints import initialise_directions
from fairseq_metabt.data.batches import pair_batch, reversed_batch, source_input, strip_padding
from fairseq_metabt.data.mono import load_mono_dataset, mono_prefix
from fairseq_metabt.data.on_top import BitextWithMonoDataset, pseudo_loss_scale
from fairseq_metabt.data.tagging import lang_tag, missing_tags
from fairseq_metabt.errors import UserError, UserFileError
from fairseq_metabt.models.dual_transformer import DualTransformerModel, unwrap
from fairseq_metabt.modules import amp, ddp
from fairseq_metabt.modules import gradients as G
from fairseq_metabt.modules import metabt_rewards as R
from fairseq_metabt.modules.generation import (
    GenerationSettings, InStepGenerator, eval_mode, packed_loss_input, sampling_log_probs,
)
from fairseq_metabt.modules.length_chunks import pair_chunks
from fairseq_metabt.modules.phases import phase, start_update
from fairseq_metabt.modules.reinforce import MovingAverageBaseline, policy_gradient_loss

logger = logging.getLogger(__name__)

GENERATION_CHOICES = ChoiceEnum(["sample", "greedy", "beam"])
MONO_CHOICES = ChoiceEnum(["mono", "related", "both"])
REWARD_CHOICES = ChoiceEnum(["cosine", "dot"])
GRANULARITY_CHOICES = ChoiceEnum(["batch", "sentence"])
SENTENCE_METHOD_CHOICES = ChoiceEnum(["taylor", "double_backward"])


@dataclass
class MetaBacktranslationConfig(TranslationConfig):
    seed: int = II("common.seed")
    fp16: bool = II("common.fp16")
    bf16: bool = II("common.bf16")
    ddp_backend: str = II("distributed_training.ddp_backend")
    valid_subset: str = II("dataset.valid_subset")
    distributed_world_size: int = II("distributed_training.distributed_world_size")
    log_interval: int = II("common.log_interval")
    mono_data: Optional[str] = field(
        default=None,
        metadata={"help": "prefix of the binarised target monolingual data (default: DATA/mono.TGT, "
                          "as written by scripts/prepare_data.py)"},
    )
    related_lang_pairs: Optional[str] = field(
        default=None,
        metadata={"help": "comma-separated related pairs S'-T (e.g. hrl-tgt) whose bitext the forward model "
                          "also trains on (the paper's multilingual setting); the backward model then reads "
                          "the tag of the language to produce (__S__ / __S'__) before its input"},
    )
    mono_sources: MONO_CHOICES = field(
        default="mono",
        metadata={"help": "where target monolingual sentences come from: mono.TGT, the target side of the "
                          "related pairs, or both"},
    )
    meta_dev_subset: str = field(
        default="valid",
        metadata={"help": "split whose gradient drives the meta reward (D_dev); give it a split of its own "
                          "(the recipes: metadev, scripts/split_meta_dev.py), not the --valid-subset that "
                          "early stopping and checkpoint choice read"},
    )
    extra_bitext_subsets: Optional[str] = field(
        default=None,
        metadata={"help": "comma-separated SRC-TGT subsets (e.g. metadev) added to the training bitext of both "
                          "models: the forward model's batches and the backward model's MLE (the bt_mle_dev "
                          "control: BT + MLE with the meta-dev pairs as labelled data)"},
    )
    meta_dev_max_tokens: int = field(
        default=2048, metadata={"help": "tokens per dev batch for the dev gradient d"}
    )
    pseudo_weight: float = field(
        default=1.0,
        metadata={"help": "weight w of the pseudo pairs in the forward update: the loss is the bitext's per-token "
                          "mean (as the translation baseline's) plus w times the pseudo pairs' own per-token "
                          "mean (per-sentence means with --sentence-avg); pseudo pairs come on top of the "
                          "bitext batch, one per bitext sentence"},
    )
    pseudo_chunk_tokens: int = field(
        default=1024,
        metadata={"help": "padded tokens per length-sorted chunk in which the pseudo pairs' forward/backward and "
                          "log q are computed (the same sums, less padding: y' are drawn at random, not "
                          "length-bucketed as the bitext); 0: the whole pseudo batch at once"},
    )
    bt_generation: GENERATION_CHOICES = field(
        default="sample", metadata={"help": "how the backward model produces pseudo-sources"}
    )
    bt_beam: int = field(default=5, metadata={"help": "beam size for --bt-generation beam"})
    bt_temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    bt_sampling_topk: int = field(default=-1, metadata={"help": "sample from the k most likely tokens (-1: all)"})
    bt_sampling_topp: float = field(default=-1.0, metadata={"help": "nucleus sampling mass (-1: off)"})
    bt_max_len_a: float = field(default=1.2, metadata={"help": "pseudo-source length limit a*len(y')+b: a"})
    bt_max_len_b: int = field(default=10, metadata={"help": "pseudo-source length limit a*len(y')+b: b"})
    freeze_backward: bool = field(
        default=False,
        metadata={"help": "keep the backward model fixed: online back-translation with the same models, "
                          "data and sampling as MetaBT (its baseline)"},
    )
    meta_reward: REWARD_CHOICES = field(
        default="cosine", metadata={"help": "reward: cosine or dot product of dev and pseudo-pair gradients"}
    )
    meta_reward_granularity: GRANULARITY_CHOICES = field(
        default="batch",
        metadata={"help": "one reward per batch, or one per sentence: the alignment of d with the gradient "
                          "of the sentence's own per-token mean loss, normalised like the batch reward (a "
                          "batch of identical sentences gets the batch reward for each)"},
    )
    meta_sentence_method: SENTENCE_METHOD_CHOICES = field(
        default="taylor",
        metadata={"help": "per-sentence rewards: first-order Taylor trick (2 forwards, DDS Eq. 7) or exact "
                          "double backward"},
    )
    meta_taylor_eps: float = field(
        default=1e-2, metadata={"help": "step length of the Taylor trick along d (divided by ||d||)"}
    )
    meta_reward_precondition: bool = field(
        default=False,
        metadata={"help": "optimizer-aware reward (Eq. 18): align d with Adam's preconditioned step "
                          "h(g) = g / (sqrt(v_hat) + eps) instead of g (needs --optimizer adam)"},
    )
    meta_baseline_decay: float = field(
        default=0.9, metadata={"help": "moving-average baseline b <- decay*b + (1-decay)*r"}
    )
    meta_weight: float = field(
        default=1.0,
        metadata={"help": "weight of the REINFORCE term for the backward model; 0: the backward model is trained "
                          "by MLE only (the BT + MLE control; no dev gradient or reward is computed)"},
    )
    backward_mle_weight: float = field(
        default=1.0, metadata={"help": "weight of the backward model's MLE loss on the reversed bitext"}
    )
    backward_lr: float = field(default=1e-4, metadata={"help": "learning rate of the backward model (Adam)"})
    backward_adam_betas: str = field(default="(0.9, 0.98)", metadata={"help": "Adam betas of the backward model"})
    backward_clip_norm: float = field(
        default=1.0, metadata={"help": "clip the backward model's gradient norm (0: off)"}
    )
    forward_init: Optional[str] = field(
        default=None, metadata={"help": "initialise the forward model from this transformer checkpoint"}
    )
    backward_init: Optional[str] = field(
        default=None,
        metadata={"help": "initialise the backward model from this transformer checkpoint (target->source; "
                          "the paper pre-trains it to convergence)"},
    )


@register_task("meta_backtranslation", dataclass=MetaBacktranslationConfig)
class MetaBacktranslationTask(TranslationTask):
    """Forward and backward Transformers trained together by meta back-translation."""

    cfg: MetaBacktranslationConfig

    def __init__(self, cfg: MetaBacktranslationConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        self._check_config(cfg)
        validate.config(cfg, vocab=len(src_dict))  # the component's own messages first; then finite and in range
        self.baseline = MovingAverageBaseline(cfg.meta_baseline_decay)
        self.backward_optimizer: Optional[torch.optim.Optimizer] = None
        self._psi_scaler: Optional[torch.amp.GradScaler] = None  # psi's loss scale under --amp on CUDA
        self._psi_scaler_state: Optional[Dict] = None  # from a checkpoint, until the scaler is built
        self._generator: Optional[InStepGenerator] = None
        # state of the update in progress, rebuilt from nothing at its first micro-batch
        self._pending: List[Dict] = []  # per micro-batch: pseudo batch, g share, log-probs
        self._pending_update: Optional[int] = None
        self._psi_mle_tokens = 0.0
        self._criterion = None
        self._dev_batches: Optional[List[np.ndarray]] = None
        # multilingual setting: the language of each bitext part, for psi's tags
        self._bitext_langs: List[str] = [cfg.source_lang]
        self._bitext_offsets = np.zeros(0, dtype=np.int64)
        self.meta_steps = 0

    @property
    def meta_active(self) -> bool:
        """psi gets the REINFORCE term (MetaBT); False for the BT and BT + MLE controls."""
        return not self.cfg.freeze_backward and self.cfg.meta_weight > 0

    @property
    def psi_tagged(self) -> bool:
        """With related pairs, psi learns T -> S and T -> S': its input starts with the tag of the language to produce."""
        return bool(self.cfg.related_lang_pairs)

    @staticmethod
    def _check_config(cfg: MetaBacktranslationConfig) -> None:
        GenerationSettings(cfg.bt_generation, cfg.bt_beam, cfg.bt_temperature)  # validates
        if cfg.bt_generation != "sample" and cfg.meta_weight > 0 and not cfg.freeze_backward:
            raise UserError(f"--bt-generation {cfg.bt_generation} with the meta reward on: REINFORCE needs "
                            "pseudo-sources sampled from the backward model (on-policy)",
                            "use --bt-generation sample, or --meta-weight 0 / --freeze-backward for the BT controls")
        if not cfg.freeze_backward:
            amp.refuse_half_precision(cfg, "meta_backtranslation", "the backward model has its own fp32 optimizer, "
                                      "and fairseq would cast it to half precision (or pass --freeze-backward)")
        if not 0.0 <= cfg.meta_baseline_decay < 1.0:
            raise UserError(f"--meta-baseline-decay must be in [0, 1), got {cfg.meta_baseline_decay}")
        for name in ("pseudo_weight", "meta_weight", "backward_mle_weight", "backward_lr", "backward_clip_norm"):
            if getattr(cfg, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
        if cfg.pseudo_weight == 0 and cfg.meta_weight > 0 and not cfg.freeze_backward:
            raise UserError("--pseudo-weight 0 leaves the forward model untouched by the pseudo pairs, so the meta "
                             "reward is meaningless: use --pseudo-weight > 0, or --meta-weight 0 / --freeze-backward")
        if cfg.meta_taylor_eps <= 0:
            raise UserError(f"--meta-taylor-eps must be > 0, got {cfg.meta_taylor_eps}")
        if cfg.pseudo_chunk_tokens < 0:
            raise UserError(f"--pseudo-chunk-tokens must be >= 0, got {cfg.pseudo_chunk_tokens}")
        if cfg.meta_dev_max_tokens < 1:
            raise UserError(f"--meta-dev-max-tokens must be >= 1, got {cfg.meta_dev_max_tokens}")

    def _check_ddp_backend(self) -> None:
        """Refuse DDP backends that cannot work, before training starts.

        pytorch_ddp expects every parameter it wraps to get a gradient in every backward pass and
        all-reduces inside ``backward()``, which this task calls several times per micro-batch (psi,
        the dev gradient): refused with several workers by the plugin's shared check
        (:func:`ddp.refuse_pytorch_ddp`).  FSDP shards the parameters the reward reads whole (refused
        even with one worker), and any other backend with several workers is refused too.  legacy_ddp
        all-reduces once, when fairseq asks, which is what the task is built on."""
        ddp.refuse_pytorch_ddp(self.cfg, "meta_backtranslation", "it calls backward() several times per "
                               "micro-batch (psi, the dev gradient), and torch's DDP all-reduces inside each one")
        backend, world = ddp.backend_and_world(self.cfg)
        if backend is None:  # a config outside fairseq-train (no distributed_training to read): nothing to check
            return
        if backend == "fully_sharded" or (world > 1 and backend not in ("legacy_ddp", "no_c10d")):
            raise UserError(f"meta_backtranslation needs --ddp-backend legacy_ddp (got --ddp-backend {backend} "
                             f"with {world} worker(s)); scripts/train_ddp.sh passes it")

    # ---- data -----------------------------------------------------------------------------
    def _mono_prefix(self) -> str:
        return mono_prefix(self.cfg.data, self.cfg.target_lang, self.cfg.mono_data)

    def _valid_subsets(self) -> List[str]:
        try:
            return [v for v in str(self.cfg.valid_subset).split(",") if v]
        except Exception:  # a config outside fairseq-train (no dataset.valid_subset to read)
            return []

    def _extra_bitexts(self) -> List[LanguagePairDataset]:
        """The --extra-bitext-subsets pairs (SRC-TGT, either stored direction), refused when a selection split."""
        out = []
        data_path = utils.split_paths(self.cfg.data)[0]
        src, tgt = self.cfg.source_lang, self.cfg.target_lang
        for sub in filter(None, (x.strip() for x in (self.cfg.extra_bitext_subsets or "").split(","))):
            if sub in self._valid_subsets() or sub == self.cfg.train_subset:
                raise UserError(f"--extra-bitext-subsets {sub}: that split is already "
                                f"{'the training data' if sub == self.cfg.train_subset else '--valid-subset'}; "
                                "training on the split that early stopping and checkpoint choice read would "
                                "select on training data", "give a split of its own, e.g. metadev")
            if not any(os.path.exists(os.path.join(data_path, f"{sub}.{a}-{b}.{src}.idx"))
                       for a, b in ((src, tgt), (tgt, src))):
                raise UserFileError(f"--extra-bitext-subsets {sub}: {data_path}/{sub}.{src}-{tgt}.{src}.bin/.idx "
                                    "not found", "prepare it with scripts/split_meta_dev.py and "
                                    "scripts/prepare_data.py, or drop it")
            out.append(load_langpair_dataset(
                data_path, sub, src, self.src_dict, tgt, self.tgt_dict, combine=False,
                dataset_impl=self.cfg.dataset_impl, upsample_primary=1,
                left_pad_source=self.cfg.left_pad_source, left_pad_target=self.cfg.left_pad_target,
                max_source_positions=self.cfg.max_source_positions,
                max_target_positions=self.cfg.max_target_positions))
        return out

    @staticmethod
    def _concat_bitext(parts: List[LanguagePairDataset], src_dict, tgt_dict, cfg) -> LanguagePairDataset:
        return LanguagePairDataset(
            ConcatDataset([d.src for d in parts]), np.concatenate([d.src_sizes for d in parts]), src_dict,
            ConcatDataset([d.tgt for d in parts]), np.concatenate([d.tgt_sizes for d in parts]), tgt_dict,
            left_pad_source=cfg.left_pad_source, left_pad_target=cfg.left_pad_target)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch, combine, **kwargs)
        if split != self.cfg.train_subset:
            return
        bitext = self.datasets[split]
        extra = self._extra_bitexts()
        if extra:
            # more SRC-TGT pairs (e.g. the meta-dev set): in theta's batches and, reversed, in psi's MLE
            logger.info("training bitext: %d pairs of %s + %s pairs of --extra-bitext-subsets %s", len(bitext), split,
                        " + ".join(str(len(d)) for d in extra), self.cfg.extra_bitext_subsets)
            bitext = self._concat_bitext([bitext] + extra, self.src_dict, self.tgt_dict, self.cfg)
        related = self._related_bitexts(split)
        if related:
            # the multilingual setting: the forward model also trains on S'-T (one joint dictionary)
            parts = [bitext] + related
            bitext = self._concat_bitext(parts, self.src_dict, self.tgt_dict, self.cfg)
            self._bitext_offsets = np.cumsum([len(d) for d in parts])
            missing = missing_tags(self.src_dict, self._bitext_langs)
            if missing:
                raise UserError(f"--related-lang-pairs: the backward model reads language tags, but the dictionary "
                                 f"lacks {missing}; prepare the data with scripts/prepare_data.py (it adds a tag "
                                 "for every language of the raw directory)")
        targets = []
        if self.cfg.mono_sources in ("mono", "both"):
            targets.append(self._load_mono())
        if self.cfg.mono_sources in ("related", "both"):
            if not related:
                raise UserError("--mono-sources related/both takes targets from the related pairs' bitext: "
                                 "pass --related-lang-pairs too")
            targets += [d.tgt for d in related]
        mono = targets[0] if len(targets) == 1 else ConcatDataset(targets)
        mono_pairs = LanguagePairDataset(mono, mono.sizes, self.tgt_dict, left_pad_source=self.cfg.left_pad_source)
        # batches are the bitext's own (as --task translation makes them); y' comes on top of them
        self.datasets[split] = BitextWithMonoDataset(bitext, {"mono": mono_pairs}, self.cfg.seed)

    def _load_mono(self):
        return load_mono_dataset(self._mono_prefix(), self.tgt_dict, self.cfg.dataset_impl, self.cfg.target_lang,
                                 "meta_backtranslation needs target monolingual data")

    def _related_bitexts(self, split: str) -> List[LanguagePairDataset]:
        """Training bitext of each pair in --related-lang-pairs (S'-T, same target as the main pair)."""
        out = []
        self._bitext_langs = [self.cfg.source_lang]  # the source language of each bitext part, in order
        data_path = utils.split_paths(self.cfg.data)[0]
        for pair in filter(None, (self.cfg.related_lang_pairs or "").split(",")):
            src, _, tgt = pair.strip().partition("-")
            if tgt != self.cfg.target_lang or not src or src == self.cfg.source_lang:
                raise UserError(f"--related-lang-pairs {pair!r}: each pair must be S'-{self.cfg.target_lang} with a "
                                 f"source other than {self.cfg.source_lang}")
            prefix = os.path.join(data_path, f"{split}.{src}-{tgt}.{src}")
            if not os.path.exists(prefix + ".idx"):
                raise UserFileError(f"--related-lang-pairs {pair}: {prefix}.bin/.idx not found; prepare the "
                                        f"{split}.{src}-{tgt}.* files with scripts/prepare_data.py")
            out.append(load_langpair_dataset(
                data_path, split, src, self.src_dict, tgt, self.tgt_dict, combine=False,
                dataset_impl=self.cfg.dataset_impl, upsample_primary=1,
                left_pad_source=self.cfg.left_pad_source, left_pad_target=self.cfg.left_pad_target,
                max_source_positions=self.cfg.max_source_positions,
                max_target_positions=self.cfg.max_target_positions))
            self._bitext_langs.append(src)
        return out

    def _load_dev_batches(self) -> List[np.ndarray]:
        split = self.cfg.meta_dev_subset
        data_path = utils.split_paths(self.cfg.data)[0]
        src, tgt = self.cfg.source_lang, self.cfg.target_lang
        prefix = os.path.join(data_path, f"{split}.{src}-{tgt}.{src}")
        if split in self._valid_subsets():
            logger.warning("--meta-dev-subset %s is also a --valid-subset: the meta reward learns from the split "
                           "that early stopping and checkpoint choice read; give it a split of its own "
                           "(scripts/split_meta_dev.py)", split)
        if not any(os.path.exists(os.path.join(data_path, f"{split}.{a}-{b}.{src}.idx"))
                   for a, b in ((src, tgt), (tgt, src))):
            raise UserFileError(
                f"--meta-dev-subset {split}: {prefix}.bin/.idx not found. The meta reward needs a dev set "
                f"of {src}-{tgt}; prepare one (valid.{src}-{tgt}.*) or choose another split."
            )
        ds = load_langpair_dataset(
            data_path, split, src, self.src_dict, tgt, self.tgt_dict, combine=False,
            dataset_impl=self.cfg.dataset_impl, upsample_primary=1,
            left_pad_source=self.cfg.left_pad_source, left_pad_target=self.cfg.left_pad_target,
            max_source_positions=self.cfg.max_source_positions, max_target_positions=self.cfg.max_target_positions,
            shuffle=False,
        )
        self._dev_dataset = ds
        batches = data_utils.batch_by_size(ds.ordered_indices(), ds.num_tokens,
                                           max_tokens=self.cfg.meta_dev_max_tokens)
        if not batches:
            raise UserError(f"--meta-dev-subset {split} has no usable examples")
        return batches

    def dev_batch(self, update_num: int) -> Dict:
        """The dev batch of this update and rank: a function of (seed, update, rank) only, so a
        resumed run sees the same dev batches without extra checkpoint state."""
        if self._dev_batches is None:
            self._dev_batches = self._load_dev_batches()
        rank = distributed_utils.get_data_parallel_rank() if distributed_utils.get_data_parallel_world_size() > 1 else 0
        rng = np.random.RandomState((self.cfg.seed * 7919 + update_num * 131 + rank) % 2**32)
        idx = self._dev_batches[rng.randint(len(self._dev_batches))]
        return self._dev_dataset.collater([self._dev_dataset[i] for i in idx])

    # ---- model ----------------------------------------------------------------------------
    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if not isinstance(model, DualTransformerModel):
            raise UserError(
                "meta_backtranslation needs a forward and a backward model: use --arch dual_transformer_tiny, "
                f"dual_transformer_small or dual_transformer_base (got {type(model).__name__})"
            )
        if not from_checkpoint:
            self._check_ddp_backend()
        initialise_directions(model, self, self.cfg.forward_init, self.cfg.backward_init, from_checkpoint)
        # psi is trained by this task's own optimizer, never by fairseq's: keeping its parameters
        # out of requires_grad excludes them from fairseq's optimizer, gradient clipping and all-reduce.
        psi = list(model.backward_model.parameters())
        for p in psi:
            p.requires_grad_(False)
        betas = parse_betas(self.cfg.backward_adam_betas, "--backward-adam-betas")
        self.backward_optimizer = torch.optim.Adam(psi, lr=self.cfg.backward_lr, betas=betas)
        self._generator = None
        return model

    @contextlib.contextmanager
    def _psi_trainable(self, dual: DualTransformerModel):
        params = list(dual.backward_model.parameters())
        for p in params:
            p.requires_grad_(True)
        try:
            yield params
        finally:
            for p in params:
                p.requires_grad_(False)

    def _sampler(self, dual: DualTransformerModel) -> InStepGenerator:
        if self._generator is None or self._generator.model is not dual.backward_model:
            c = self.cfg
            settings = GenerationSettings(c.bt_generation, c.bt_beam, c.bt_temperature, c.bt_sampling_topk,
                                          c.bt_sampling_topp, c.bt_max_len_a, c.bt_max_len_b)
            self._generator = InStepGenerator(dual.backward_model, self.src_dict, settings)
        return self._generator

    @staticmethod
    def _theta(dual: DualTransformerModel) -> List[torch.Tensor]:
        return [p for p in dual.parameters() if p.requires_grad]

    def _scaler(self, optimizer, dual: DualTransformerModel) -> torch.amp.GradScaler:
        """psi's loss scaler: its losses come from fp16 autocast under --amp on CUDA, like theta's."""
        if self._psi_scaler is None:
            self._psi_scaler = amp.grad_scaler(optimizer, dual.backward_model)
            if self._psi_scaler_state and self._psi_scaler.is_enabled():
                self._psi_scaler.load_state_dict(self._psi_scaler_state)
        return self._psi_scaler

    # ---- psi's inputs (tagged in the multilingual setting) -----------------------------------
    def _psi_sources(self, rows: List[torch.Tensor], langs: List[str]) -> List[torch.Tensor]:
        """psi's input rows: ``__L__ y`` (L the language psi must produce) when tagged, else ``y``."""
        if not self.psi_tagged:
            return list(rows)
        return [torch.cat([row.new_tensor([self.src_dict.index(lang_tag(lang))]), row])
                for row, lang in zip(rows, langs)]

    def _bitext_lang(self, ids: torch.Tensor) -> List[str]:
        """The source language of each bitext example (its part of the concatenated bitext)."""
        if not len(self._bitext_offsets):
            return [self.cfg.source_lang] * len(ids)
        part = np.searchsorted(self._bitext_offsets, ids.cpu().numpy(), side="right")
        return [self._bitext_langs[int(k)] for k in part]

    def psi_reversed_batch(self, bitext: Dict) -> Dict:
        """psi's MLE batch: the reversed bitext (y -> x), each y tagged with its x's language when tagged."""
        pad, eos = self.src_dict.pad(), self.src_dict.eos()
        if not self.psi_tagged:
            return reversed_batch(bitext, pad, eos)
        sources = strip_padding(bitext["net_input"]["src_tokens"], pad)
        targets = self._psi_sources(strip_padding(bitext["target"], pad), self._bitext_lang(bitext["id"]))
        return pair_batch(targets, sources, pad, eos, ids=bitext["id"].tolist())

    # ---- step 1: sampling, forward losses, backward MLE -------------------------------------
    def _start_update(self, dual: DualTransformerModel, update_num: int) -> None:
        """Forget whatever an earlier, unfinished update left (psi's MLE gradient, pending pseudo data).

        Called at the first micro-batch of every update, which is recognised by fairseq's trainer
        having cleared theta's gradients (it does so before the first micro-batch of an update and
        after an OOM, and an update skipped for OOM or an fp16/AMP overflow is retried or followed by
        a new one that starts that way); a new update number is the fallback sign."""
        self._pending = []
        self._pending_update = update_num
        self._psi_mle_tokens = 0.0
        for p in dual.backward_model.parameters():
            p.grad = None

    @amp.amp_train_step
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        dual = unwrap(model)
        model.train()
        model.set_num_updates(update_num)
        theta = self._theta(dual)
        start_update(update_num)
        if amp.starts_update(theta) or update_num != self._pending_update:
            self._start_update(dual, update_num)
        self._criterion = criterion
        bitext, mono = sample["bitext"], sample["mono"]
        pad, eos = self.src_dict.pad(), self.src_dict.eos()
        cuda = bitext["target"].is_cuda
        log: Dict[str, float] = {}

        # Step 1: pseudo-sources x_hat ~ P(x | y'; psi_{t-1})
        y_rows = strip_padding(mono["net_input"]["src_tokens"], pad)
        psi_rows = self._psi_sources(y_rows, [self.cfg.source_lang] * len(y_rows))
        psi_input = source_input(psi_rows, pad, left_pad=self.cfg.left_pad_source)
        sampler = self._sampler(dual)
        with phase("generation"):
            x_hat = sampler(psi_input)
        max_len = sampler.max_len(psi_input["src_tokens"])
        keep = [i for i, x in enumerate(x_hat) if x.numel() > 1]  # [eos] alone is an empty pseudo-source
        log["pseudo_empty"] = len(x_hat) - len(keep)
        log["pseudo_count"] = len(keep)
        log["pseudo_len_sum"] = float(sum(x_hat[i].numel() - 1 for i in keep))
        # every worker sends the same keys, with zeros when its branch below does not run (a dummy batch, no
        # kept pseudo pair): fairseq all-reduces the logging outputs key by key and a missing key aborts it
        log.update(pseudo_nll=0.0, pseudo_loss=0.0, pseudo_ntokens=0.0, bwd_mle_loss=0.0, bwd_ntokens=0.0)

        # the bitext part: the baseline's loss on the baseline's batch, normalised by its sample size
        with phase("theta_bitext_forward"):
            loss_b, sample_size, logging_output = criterion(model, bitext)
        total_loss = loss_b.detach()
        log["bitext_loss"], log["bitext_ntokens"] = float(loss_b.detach()), float(bitext["ntokens"])
        pending = {"update": update_num, "pseudo": None}
        if keep and not ignore_grad:
            # the pseudo part, on top: w times its own per-token mean (pseudo_loss_scale), in length-sorted
            # chunks (the same sum: y' are not length-bucketed, so one padded batch would mostly be padding)
            pseudo = pair_batch([x_hat[i] for i in keep], [y_rows[i] for i in keep], pad, eos, ids=keep)
            pseudo = utils.move_to_cuda(pseudo) if cuda else pseudo
            chunks = pair_chunks(keep, x_hat, y_rows, self.cfg.pseudo_chunk_tokens)
            pseudo_size = pseudo["nsentences"] if getattr(criterion, "sentence_avg", False) else pseudo["ntokens"]
            scale = pseudo_loss_scale(self.cfg.pseudo_weight, sample_size, pseudo_size)
            # theta's gradient before this micro-batch: none at the first one (fairseq's zero_grad sets
            # .grad to None), so the copy and the subtraction are only paid with --update-freq > 1
            fresh = all(p.grad is None for p in theta)
            before = G.flat_grad(theta) if scale > 0 and self.meta_active and not fresh else None
            loss_p, nll_p = self._pseudo_forward_backward(model, criterion, optimizer, x_hat, y_rows, chunks, scale)
            log["pseudo_nll"] = nll_p
            log["pseudo_loss"], log["pseudo_ntokens"] = loss_p, float(pseudo["ntokens"])
            if scale > 0:
                if self.meta_active:
                    with phase("pseudo_gradient_copy"):
                        # g: this micro-batch's share of the accumulated gradient, unscaled (a sum over its tokens)
                        g = G.flat_grad(theta)
                        if before is not None:
                            g.sub_(before)
                        g.div_(scale * G.loss_scale(optimizer))
                    pending.update(pseudo=pseudo, g=g, ntokens=float(pseudo["ntokens"]))
                total_loss = total_loss + scale * loss_p
            if self.meta_active:
                # log q(x_hat | y'; psi_{t-1}) under the distribution that drew x_hat (temperature, top-k/p,
                # EOS rules), in the mode that sampled it; kept with its graph for step 5
                with phase("psi_logprob_forward"):
                    pending["logp"] = self._log_q(dual, psi_rows, x_hat, pair_chunks(
                        keep, psi_rows, x_hat, self.cfg.pseudo_chunk_tokens), max_len, pseudo["id"])

        if ignore_grad:
            loss_b = loss_b * 0
        with phase("theta_bitext_backward"):
            optimizer.backward(loss_b)

        # the backward model's MLE on the reversed bitext, into psi's own gradient buffers (a sum over
        # tokens; optimizer_step divides by the update's token count)
        if not self.cfg.freeze_backward and not ignore_grad and self.cfg.backward_mle_weight > 0:
            rev = self.psi_reversed_batch(bitext)
            rev = utils.move_to_cuda(rev) if cuda else rev
            with phase("psi_mle"), self._psi_trainable(dual):
                mle, _, _ = criterion(dual.backward_model, rev)
                self._scaler(optimizer, dual).scale(mle).backward()
            self._psi_mle_tokens += float(rev["ntokens"])
            log["bwd_mle_loss"], log["bwd_ntokens"] = float(mle.detach()), float(rev["ntokens"])
        self._pending.append(pending)

        logging_output = dict(logging_output)
        logging_output["loss"] = float(total_loss)
        logging_output["sample_size"] = sample_size
        for k, v in log.items():
            logging_output["mbt_" + k] = v
        return total_loss, sample_size, logging_output

    def _pseudo_forward_backward(self, model, criterion, optimizer, x_hat: List[torch.Tensor],
                                 y_rows: List[torch.Tensor], chunks: List[List[int]], scale: float) -> tuple:
        """theta's loss on the pseudo pairs (x_hat_i, y'_i), chunk by chunk, each chunk's ``scale`` times its
        token-summed loss backpropagated into theta's gradient (their sum is the whole batch's); returns the
        summed loss and NLL (floats, for the logs).  ``scale == 0``: forward only, for the logs."""
        pad, eos = self.src_dict.pad(), self.src_dict.eos()
        dual, cuda = unwrap(model), x_hat[0].is_cuda
        loss_sum, nll_sum = 0.0, 0.0
        for chunk in chunks:
            part = pair_batch([x_hat[i] for i in chunk], [y_rows[i] for i in chunk], pad, eos, ids=chunk)
            part = utils.move_to_cuda(part) if cuda else part
            with phase("theta_pseudo_forward"), torch.set_grad_enabled(scale > 0):
                net_output, loss_sample = packed_loss_input(model, dual, part, pad, criterion)
                per_tok, nll_tok = criterion.compute_loss(dual, net_output, loss_sample, reduce=False)
                loss = per_tok.sum()
            if scale > 0:
                with phase("theta_pseudo_backward"):
                    optimizer.backward(loss * scale)
            loss_sum += float(loss.detach())
            nll_sum += float(nll_tok.detach().sum())
        return loss_sum, nll_sum

    def _log_q(self, dual: DualTransformerModel, psi_rows: List[torch.Tensor], x_hat: List[torch.Tensor],
               chunks: List[List[int]], max_len: int, order_ids: torch.Tensor) -> torch.Tensor:
        """log q(x_hat_i | y'_i; psi) (Eq. 8's policy log-probability, with its graph), computed chunk by
        chunk and returned in the order of ``order_ids`` (the pseudo batch's ids)."""
        pad, eos = self.src_dict.pad(), self.src_dict.eos()
        ids, parts = [], []
        with self._psi_trainable(dual), eval_mode(dual.backward_model):
            for chunk in chunks:
                back = pair_batch([psi_rows[i] for i in chunk], [x_hat[i] for i in chunk], pad, eos, ids=chunk)
                back = utils.move_to_cuda(back) if x_hat[0].is_cuda else back
                parts.append(sampling_log_probs(dual.backward_model, back, self._sampler(dual).settings, pad, eos,
                                                max_len))
                ids += back["id"].tolist()
        logp = torch.cat(parts)
        position = {int(i): k for k, i in enumerate(ids)}
        return logp[[position[int(i)] for i in order_ids.tolist()]]

    # ---- steps 2-5: update theta, dev gradient, reward, update psi ----------------------------
    def optimizer_step(self, optimizer, model, update_num):
        dual = unwrap(model)
        if self.cfg.freeze_backward or amp.update_skipped(optimizer):
            with phase("theta_step"):
                optimizer.step()  # under --amp overflow: the scaler skips theta's step and lowers its scale
            self._start_update(dual, None)  # fairseq retries the batch or drops it: no reward, no psi step
            return
        pending = [p for p in self._pending if p.get("g") is not None]
        mle_tokens = self._psi_mle_tokens
        self._pending, self._pending_update, self._psi_mle_tokens = [], None, 0.0
        theta = self._theta(dual)
        psi = list(dual.backward_model.parameters())
        # psi's MLE gradient as a per-token mean over the update's reversed bitext (all micro-batches)
        if mle_tokens > 0:
            with torch.no_grad():
                for p in psi:
                    if p.grad is not None:
                        p.grad.mul_(self.cfg.backward_mle_weight / mle_tokens)
        if not self.meta_active:  # BT + MLE: psi by MLE only
            with phase("theta_step"):
                optimizer.step()
            with phase("psi_step"):
                self._step_backward(psi, self._scaler(optimizer, dual))
            self.meta_steps += 1
            if G.log_due(update_num, self.cfg):  # fp64 checksums and an all-reduce: at the log interval
                self._check_replicas(theta, psi)
            return

        # g over all micro-batches and workers, normalised per pseudo token
        with phase("reward"):
            g, have_pseudo = R.pseudo_gradient(pending, theta)
        sentence = self.cfg.meta_reward_granularity == "sentence"
        theta_prev = [p.detach().clone() for p in theta] if sentence and pending else None

        # Step 2: theta_{t-1} -> theta_t (fairseq's optimizer; psi is not among its parameters)
        with phase("theta_step"):
            optimizer.step()

        # Step 3: d = grad_theta J_dev(theta_t), at the updated forward model
        with phase("dev_gradient"):
            d = self._dev_gradient(dual, theta, update_num)
            G.all_reduce_mean_(d)
        with phase("reward"):
            h = R.adam_preconditioner(optimizer, theta) if self.cfg.meta_reward_precondition else None

            # Step 4: rewards
            rewards, ok = self.rewards(dual, theta, theta_prev, pending, g, d, h) if have_pseudo else (None, False)
            n_local = sum(len(p["logp"]) for p in pending)
            stats, skipped, mean_r = R.reward_stats(rewards, ok, n_local)

        # Step 5: psi <- psi - lr * [-(r - b) grad log q(x_hat|y'; psi) + MLE gradient]
        meta_loss = 0.0
        if not skipped and pending:
            with phase("psi_reinforce_backward"):
                advantages = self.baseline.advantage(rewards) if sentence else self.baseline.advantage(
                    torch.tensor(mean_r))
                with self._psi_trainable(dual):
                    offset = 0
                    loss = 0.0
                    for p in pending:
                        n = len(p["logp"])
                        a = advantages[offset:offset + n] if sentence else advantages.expand(n)
                        offset += n
                        loss = loss + policy_gradient_loss(p["logp"], a.to(p["logp"].device))
                    # mean over this worker's sentences; _step_backward averages over workers
                    loss = loss * (self.cfg.meta_weight / max(n_local, 1))
                    self._scaler(optimizer, dual).scale(loss).backward()
                    meta_loss = float(loss.detach())
        metrics.log_scalar("reward_skipped", float(skipped), weight=1, round=3)
        if not skipped:
            self.baseline.update(mean_r)
        else:
            logger.warning("update %d: no usable meta reward (empty pseudo batch, zero-norm or non-finite "
                           "gradient); the backward model gets only its MLE gradient", update_num)
        with phase("psi_step"):
            self._step_backward(psi, self._scaler(optimizer, dual))
        self.meta_steps += 1

        with phase("logging"):
            if not skipped:
                var = max(float(stats[1] / stats[2]) - mean_r ** 2, 0.0) if stats[2] > 0 else 0.0
                metrics.log_scalar("reward", mean_r, weight=1, round=4)
                if sentence:
                    metrics.log_scalar("reward_std", math.sqrt(var), weight=1, round=4)
                metrics.log_scalar("meta_loss", meta_loss, weight=1, round=4)
            metrics.log_scalar("baseline", self.baseline.value, weight=1, round=4)
            if have_pseudo:
                cos, cos_ok = G.similarity(d, g, "cosine")
                if cos_ok:
                    metrics.log_scalar("similarity", float(cos), weight=1, round=4)
        if G.log_due(update_num, self.cfg):  # fp64 checksums and an all-reduce: at the log interval
            with phase("checksums"):
                self._check_replicas(theta, psi)

    @staticmethod
    def _check_replicas(theta: List[torch.Tensor], psi: List[torch.Tensor]) -> None:
        """With several workers, both models must stay identical on every rank: compare checksums."""
        if distributed_utils.get_data_parallel_world_size() <= 1:
            return
        diff = G.check_replicas([G.checksum(theta), G.checksum(psi)], 1e-3, "forward/backward model replicas")
        metrics.log_scalar("replica_diff", diff, weight=1, round=6)

    def _dev_gradient(self, dual: DualTransformerModel, theta: List[torch.Tensor], update_num: int) -> torch.Tensor:
        """Step 3 (Eq. 13): d at theta, on this update's dev batch (:func:`metabt_rewards.dev_gradient`)."""
        batch = self.dev_batch(update_num)
        if theta[0].is_cuda:
            batch = utils.move_to_cuda(batch)
        return R.dev_gradient(dual, theta, batch, self.tgt_dict.pad())

    def rewards(self, dual: DualTransformerModel, theta: List[torch.Tensor], theta_prev: Optional[List[torch.Tensor]],
                pending: List[Dict], g: torch.Tensor, d: torch.Tensor, h: Optional[torch.Tensor] = None):
        """Step 4 (Eq. 17/18) with this task's settings: :func:`metabt_rewards.rewards`."""
        c = self.cfg
        settings = R.RewardSettings(c.meta_reward, c.meta_reward_granularity, c.meta_sentence_method,
                                    c.meta_taylor_eps)
        return R.rewards(dual, theta, theta_prev, pending, g, d, h, settings, self._criterion, self.tgt_dict.pad())

    def _step_backward(self, psi: List[torch.Tensor], scaler: torch.amp.GradScaler) -> None:
        """All-reduce psi's gradient, unscale and clip it, take the backward model's optimizer step, clear it.

        A non-finite gradient (after the all-reduce, so on every worker alike) skips the step and, with a
        loss scaler, lowers psi's loss scale, as fairseq's AMP does for theta."""
        grads = G.average_grads_(psi)
        if scaler.is_enabled():
            scaler.scale(grads.new_zeros(()))  # starts the scaler if no psi loss went through it yet
            scaler.unscale_(self.backward_optimizer)
        if not torch.isfinite(grads).all():
            logger.warning("non-finite backward-model gradient: skipping its update")
            metrics.log_scalar("bwd_nonfinite", 1.0, weight=1, round=3)
        else:
            if self.cfg.backward_clip_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(psi, self.cfg.backward_clip_norm)
                metrics.log_scalar("bwd_gnorm", float(norm), weight=1, round=3)
            scaler.step(self.backward_optimizer)  # a plain step when the scaler is disabled
        if scaler.is_enabled():
            scaler.update()
        for p in psi:
            p.grad = None

    # ---- state -----------------------------------------------------------------------------
    def get_checkpoint_dict(self) -> Dict:
        return {self.__class__.__name__: {
            "backward_optimizer": self.backward_optimizer.state_dict() if self.backward_optimizer else None,
            "baseline": self.baseline.state_dict(),
            "meta_steps": self.meta_steps,
            "psi_scaler": self._psi_scaler.state_dict() if self._psi_scaler is not None else None,
        }}

    def set_checkpoint_dict(self, state: Dict) -> None:
        if state.get("backward_optimizer") is not None and self.backward_optimizer is not None:
            self.backward_optimizer.load_state_dict(state["backward_optimizer"])
        self.baseline.load_state_dict(state["baseline"])
        self.meta_steps = int(state.get("meta_steps", 0))
        self._psi_scaler_state = state.get("psi_scaler")
        if self._psi_scaler is not None and self._psi_scaler_state and self._psi_scaler.is_enabled():
            self._psi_scaler.load_state_dict(self._psi_scaler_state)

    # ---- metrics ---------------------------------------------------------------------------
    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)

        def total(key):
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        ln2 = math.log(2)
        if total("mbt_bitext_ntokens") > 0:
            metrics.log_scalar("fwd_bitext_loss", total("mbt_bitext_loss") / total("mbt_bitext_ntokens") / ln2,
                               total("mbt_bitext_ntokens"), round=3)
        if total("mbt_pseudo_ntokens") > 0:
            metrics.log_scalar("fwd_pseudo_loss", total("mbt_pseudo_loss") / total("mbt_pseudo_ntokens") / ln2,
                               total("mbt_pseudo_ntokens"), round=3)
        if total("mbt_bwd_ntokens") > 0:
            metrics.log_scalar("bwd_mle_loss", total("mbt_bwd_mle_loss") / total("mbt_bwd_ntokens") / ln2,
                               total("mbt_bwd_ntokens"), round=3)
        if total("mbt_pseudo_count") > 0:
            metrics.log_scalar("pseudo_len", total("mbt_pseudo_len_sum") / total("mbt_pseudo_count"),
                               total("mbt_pseudo_count"), round=2)
        if any("mbt_pseudo_empty" in log for log in logging_outputs):
            metrics.log_scalar("pseudo_empty", total("mbt_pseudo_empty"), 1, round=1)


def parse_betas(text: str, flag: str) -> tuple:
    """Adam's (beta1, beta2) from a flag value such as "(0.9, 0.98)"."""
    try:
        betas = tuple(float(b) for b in text.strip().strip("()").split(","))
    except ValueError:
        betas = ()
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise UserError(f"{flag} {text!r} is not two numbers in [0, 1)", f'write it like {flag} "(0.9, 0.98)"')
    return betas

