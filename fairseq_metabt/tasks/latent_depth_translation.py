"""``latent_depth_translation``: Alg. 2 of Li et al. (2020) on fairseq's multilingual data pipeline.

Data come from fairseq's ``multilingual_translation`` task (one batch per
language pair per sample, pairs stored in either direction), but a *single*
``latent_depth_transformer`` serves every pair.  The batch of pair ``S-T``
uses the gate logits of its *latent language*: the source in many-to-one,
the target in one-to-many (``--latent-lang-side``); a bilingual model has one
row of logits.  Language indices are contiguous, ``0..N-1`` in sorted order,
so every encoder/decoder gate combination works in O2M and M2O.

Inner loop (Alg. 2, first-order): one fairseq update is one inner step.  The
Transformer parameters Theta are updated at every step; the gate logits
q_phi only at every ``--latent-inner-steps``-th step, with that step's
gradient (the other steps' phi gradients are dropped before the optimizer
step, so Adam's moments of phi do not move either).  fairseq's trainer,
``--update-freq`` and DDP are used unchanged.  The number of phi updates is
saved in the checkpoint (``get_checkpoint_dict``).

Inference sets the language's deterministic gates (``q > 0.5`` or top-K) on
every model before generating; a pair the model was not trained on is refused.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Dict, List, Tuple

import torch

from fairseq import models as fairseq_models
from fairseq.tasks import register_task
from fairseq.tasks.multilingual_translation import MultilingualTranslationTask

from fairseq_metabt.models.latent_depth_transformer import LatentDepthTransformerModel
from fairseq_metabt.modules import amp


def latent_languages(lang_pairs: List[str], side: str = "auto") -> Tuple[str, List[str]]:
    """``(side, languages)``: which side of each pair owns the gates, and the contiguous language list.

    ``auto``: one pair → bilingual (one shared row); one shared target → ``source`` (many-to-one);
    one shared source → ``target`` (one-to-many).
    """
    pairs = [p.split("-") for p in lang_pairs]
    if any(len(p) != 2 or not all(p) for p in pairs):
        raise ValueError(f"--lang-pairs must be SRC-TGT,..., got {','.join(lang_pairs)}")
    if len(set(map(tuple, pairs))) != len(pairs):
        raise ValueError(f"--lang-pairs lists a pair twice: {','.join(lang_pairs)}")
    srcs, tgts = sorted({s for s, _ in pairs}), sorted({t for _, t in pairs})
    if side == "auto":
        if len(pairs) == 1:  # one shared row of logits, named after the pair
            return "bilingual", [lang_pairs[0]]
        if len(tgts) == 1:
            side = "source"
        elif len(srcs) == 1:
            side = "target"
        else:
            raise ValueError("many-to-many --lang-pairs: choose the language that owns the latent layers "
                             "with --latent-lang-side source|target")
    if side == "source":
        return side, srcs
    if side == "target":
        return side, tgts
    raise ValueError(f"--latent-lang-side must be auto, source or target, got {side!r}")


@register_task("latent_depth_translation")
class LatentDepthTranslationTask(MultilingualTranslationTask):
    """Multilingual (or bilingual) translation with one latent-depth Transformer (Li et al. 2020, Alg. 2)."""

    @staticmethod
    def add_args(parser):
        MultilingualTranslationTask.add_args(parser)
        # fmt: off
        parser.add_argument("--latent-inner-steps", type=int, default=1, metavar="I",
                            help="inner-loop length I of Alg. 2: Theta is updated every update, the gate "
                                 "logits q_phi every I-th update with that update's gradient (first-order)")
        parser.add_argument("--latent-lang-side", default="auto", choices=["auto", "source", "target"],
                            help="which language of a pair owns the gate logits: auto = source for "
                                 "many-to-one, target for one-to-many, one shared row for one pair")
        # fmt: on

    def __init__(self, args, dicts, training):
        super().__init__(args, dicts, training)
        if args.latent_inner_steps < 1:
            raise ValueError(f"--latent-inner-steps must be >= 1, got {args.latent_inner_steps}")
        self.latent_side, self.latent_lang_list = latent_languages(args.lang_pairs, args.latent_lang_side)
        if self.latent_side == "target" and not args.decoder_langtok:
            raise ValueError("one-to-many latent depth needs --decoder-langtok: the shared decoder must be "
                             "told the target language")
        self.phi_updates = 0

    # -- model ---------------------------------------------------------------------------------------
    def build_model(self, args, from_checkpoint=False):
        arch = getattr(args, "arch", None) or getattr(args, "_name", None)
        if getattr(args, "latent_lang_pairs", None) is None:
            # a new model: record its languages, side and pairs so the checkpoint carries them
            args.latent_langs = ",".join(self.latent_lang_list)
            args.latent_lang_pairs = ",".join(self.args.lang_pairs)
            args.latent_side = self.latent_side
        model = fairseq_models.build_model(args, self, from_checkpoint)
        pruned = getattr(args, "latent_pruned_lang", None) is not None  # scripts/prune_latent_depth.py
        if not isinstance(model, LatentDepthTransformerModel) and not pruned:
            raise ValueError(f"latent_depth_translation needs a latent_depth_transformer architecture, "
                             f"got --arch {arch}")
        if pruned and not self.training:
            src, tgt = self.lang_pairs[0].split("-")
            side = getattr(args, "latent_side", "bilingual")
            lang = {"source": src, "target": tgt}.get(side, args.latent_pruned_lang)
            if lang != args.latent_pruned_lang:
                raise ValueError(f"this checkpoint is the pruned sub-network of {args.latent_pruned_lang}; "
                                 f"it cannot translate {src}-{tgt}")
        trained = [p for p in str(args.latent_lang_pairs).split(",") if p]
        for pair in self.lang_pairs:
            if pair not in trained:
                raise ValueError(f"language pair {pair} is not in this latent-depth model; "
                                 f"it was trained on {', '.join(trained)}")
        return model

    def _lang_index(self, model, lang_pair: str) -> int:
        src, tgt = lang_pair.split("-")
        side = getattr(model.args, "latent_side", None) or self.latent_side
        if side == "bilingual":
            return 0
        return model.latent_lang_index(src if side == "source" else tgt)

    @staticmethod
    def _unwrap(model):
        # fairseq wraps DDP models twice (ModuleProxyWrapper around the DDP module)
        while hasattr(model, "module"):
            model = model.module
        return model

    def _with_lang(self, model, lang_pair: str, sample: dict) -> dict:
        sample = dict(sample)
        sample["net_input"] = dict(sample["net_input"], latent_lang=self._lang_index(self._unwrap(model), lang_pair))
        return sample

    # -- Alg. 2 ----------------------------------------------------------------------------------------
    def _pairs_in(self, sample) -> List[str]:
        return [p for p in self.lang_pairs if sample.get(p) is not None and len(sample[p]) != 0]

    @amp.amp_train_step
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """One inner step: one batch per language pair (Alg. 2, lines 5–8), one backward pass each."""
        model.train()
        model.set_num_updates(update_num)
        agg_loss, agg_sample_size, agg_log = 0.0, 0.0, defaultdict(float)
        pairs = self._pairs_in(sample)
        for i, pair in enumerate(pairs):
            no_sync = (self.args.distributed_world_size > 1 and hasattr(model, "no_sync") and i < len(pairs) - 1)
            with model.no_sync() if no_sync else contextlib.ExitStack():
                loss, sample_size, log = criterion(model, self._with_lang(model, pair, sample[pair]))
                if ignore_grad:
                    loss *= 0
                optimizer.backward(loss)
            agg_loss += loss.detach().item()
            agg_sample_size += sample_size
            for k, v in log.items():
                agg_log[k] += v
        return agg_loss, agg_sample_size, agg_log

    def is_phi_step(self, update_num: int) -> bool:
        """Whether update ``update_num`` (0-based) is the last inner step, which updates q_phi."""
        return (update_num + 1) % self.args.latent_inner_steps == 0

    def optimizer_step(self, optimizer, model, update_num):
        """Step Theta always, q_phi only on the last inner step (grad None → the optimizer skips it)."""
        phi = [p for n, p in self._unwrap(model).named_parameters() if n.endswith("_latent.logits")]
        if amp.update_skipped(optimizer):  # --amp overflow: the step is skipped and the update retried
            optimizer.step()
            return
        if self.is_phi_step(update_num):
            self.phi_updates += 1
        else:
            for p in phi:
                p.grad = None
        optimizer.step()

    def get_checkpoint_dict(self) -> Dict[str, dict]:
        # fairseq stores it in extra_state and hands back extra_state[<task class name>] on resume
        return {self.__class__.__name__: {"phi_updates": self.phi_updates}}

    def set_checkpoint_dict(self, state: Dict[str, int]) -> None:
        self.phi_updates = int(state.get("phi_updates", 0))

    # -- validation and inference ---------------------------------------------------------------------
    def valid_step(self, sample, model, criterion):
        model.eval()
        agg_loss, agg_sample_size, agg_log = 0.0, 0.0, defaultdict(float)
        with torch.no_grad():
            for pair in self.eval_lang_pairs:
                if pair not in sample or sample[pair] is None or len(sample[pair]) == 0:
                    continue
                loss, sample_size, log = criterion(model, self._with_lang(model, pair, sample[pair]))
                agg_loss += loss.data.item()
                agg_sample_size += sample_size
                for k, v in log.items():
                    agg_log[k] += v
        return agg_loss, agg_sample_size, agg_log

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        pair = f"{self.args.source_lang}-{self.args.target_lang}"
        for m in map(self._unwrap, models):
            if isinstance(m, LatentDepthTransformerModel):
                m.eval()
                m.set_latent_lang(self._lang_index(m, pair))
        return super().inference_step(generator, models, sample, prefix_tokens, constraints)

    def build_generator(self, models, args, **kwargs):
        # SequenceGenerator calls model.eval(); gates must already be the pair's
        pair = f"{self.args.source_lang}-{self.args.target_lang}"
        for m in map(self._unwrap, models):
            if isinstance(m, LatentDepthTransformerModel):
                m.set_latent_lang(self._lang_index(m, pair))
        return super().build_generator(models, args, **kwargs)

    def max_positions(self):
        # one model serves every pair: a plain (source, target) bound, not fairseq's per-pair dict
        return (self.args.max_source_positions, self.args.max_target_positions)
