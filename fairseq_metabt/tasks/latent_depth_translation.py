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

Gate learning rate (``--latent-gate-lr``): the gate logits get their own Adam
with a constant learning rate (no warm-up, no decay), stepped here after
fairseq's optimizer has stepped Theta; fairseq's optimizer skips the logits
(their gradient is ``None`` while it steps).  fairseq's CLI optimizers have
one parameter group whose learning rate the scheduler overwrites every update,
and ``--optimizer composite`` takes its groups only from a Hydra config, so
this hook (``optimizer_step``) is the place that works with ``--optimizer adam``
from the command line.  The gate optimizer's state is saved with the task's
checkpoint state and restored on resume.

Inference sets the language's deterministic gates (``q > 0.5`` or top-K) on
every model before generating; a pair the model was not trained on is refused.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Dict, List, Tuple

import torch

from fairseq import models as fairseq_models
from fairseq.logging import metrics
from fairseq.tasks import register_task
from fairseq.tasks.multilingual_translation import MultilingualTranslationTask

from fairseq_metabt import validate
from fairseq_metabt.errors import UserError
from fairseq_metabt.models.latent_depth_transformer import LatentDepthTransformerModel
from fairseq_metabt.modules import amp
from fairseq_metabt.modules import gradients as G


def latent_languages(lang_pairs: List[str], side: str = "auto") -> Tuple[str, List[str]]:
    """``(side, languages)``: which side of each pair owns the gates, and the contiguous language list.

    ``auto``: one pair → bilingual (one shared row); one shared target → ``source`` (many-to-one);
    one shared source → ``target`` (one-to-many).
    """
    pairs = [p.split("-") for p in lang_pairs]
    if any(len(p) != 2 or not all(p) for p in pairs):
        raise UserError(f"--lang-pairs must be SRC-TGT,..., got {','.join(lang_pairs)}")
    if len(set(map(tuple, pairs))) != len(pairs):
        raise UserError(f"--lang-pairs lists a pair twice: {','.join(lang_pairs)}")
    srcs, tgts = sorted({s for s, _ in pairs}), sorted({t for _, t in pairs})
    if side == "auto":
        if len(pairs) == 1:  # one shared row of logits, named after the pair
            return "bilingual", [lang_pairs[0]]
        if len(tgts) == 1:
            side = "source"
        elif len(srcs) == 1:
            side = "target"
        else:
            raise UserError("many-to-many --lang-pairs: choose the language that owns the latent layers "
                             "with --latent-lang-side source|target")
    if side == "source":
        return side, srcs
    if side == "target":
        return side, tgts
    raise UserError(f"--latent-lang-side must be auto, source or target, got {side!r}")


def check_gate_lr(args) -> None:
    """``--latent-gate-lr``: positive, and only with fp32 parameters (fp32 or ``--amp`` training)."""
    gate_lr = getattr(args, "latent_gate_lr", None)
    if gate_lr is None:
        return
    if gate_lr <= 0:
        raise UserError(f"--latent-gate-lr must be > 0, got {gate_lr} (leave it unset to share the model's "
                         "optimizer)")
    if (getattr(args, "fp16", False) or getattr(args, "bf16", False)) and not getattr(args, "amp", False):
        raise UserError("--latent-gate-lr needs fp32 parameters: use --amp instead of --fp16/--bf16 "
                         "(fairseq's FP16 optimizer keeps its own flat copy of every parameter)")


def check_inner_steps_precision(args) -> None:
    """``--latent-inner-steps I > 1`` drops q_phi's gradient in ``optimizer_step`` on I - 1 of every I updates.
    fairseq's ``--fp16``/``--bf16`` optimizer has copied every gradient into its flat fp32 master copy by
    then (in ``clip_grad_norm``) and steps that copy whole: dropping the gradient there would not stop Adam
    moving the gates by momentum, so the inner loop would silently become I = 1.  ``--amp`` and the
    memory-efficient variants step the parameters themselves and honour it."""
    if getattr(args, "latent_inner_steps", 1) <= 1 or getattr(args, "amp", False):
        return
    for flag in ("fp16", "bf16"):
        if getattr(args, flag, False) and not getattr(args, f"memory_efficient_{flag}", False):
            raise UserError(f"--latent-inner-steps {args.latent_inner_steps} cannot hold the gate logits still "
                            f"under --{flag}: its optimizer steps a flat fp32 copy of every parameter, gates "
                            "included, every update",
                            f"use --amp or --memory-efficient-{flag}, or --latent-inner-steps 1")


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
        parser.add_argument("--latent-gate-lr", type=float, default=None, metavar="LR",
                            help="give the gate logits q_phi their own Adam with this constant learning rate "
                                 "(no warm-up, no decay); unset = they share the model's optimizer and schedule")
        parser.add_argument("--latent-lang-side", default="auto", choices=["auto", "source", "target"],
                            help="which language of a pair owns the gate logits: auto = source for "
                                 "many-to-one, target for one-to-many, one shared row for one pair")
        # fmt: on

    @classmethod
    def setup_task(cls, args, **kwargs):
        validate.lang_pairs_have_data(args.data, args.lang_pairs)
        return super().setup_task(args, **kwargs)

    def __init__(self, args, dicts, training):
        super().__init__(args, dicts, training)
        if args.latent_inner_steps < 1:
            raise UserError(f"--latent-inner-steps must be >= 1, got {args.latent_inner_steps}")
        self.latent_side, self.latent_lang_list = latent_languages(args.lang_pairs, args.latent_lang_side)
        if self.latent_side == "target" and not args.decoder_langtok:
            raise UserError("one-to-many latent depth needs --decoder-langtok: the shared decoder must be "
                             "told the target language")
        check_gate_lr(args)
        check_inner_steps_precision(args)
        validate.config(args)  # then the task's, model's and criterion's numeric options: finite, in range
        self.reset_gate_state()

    def reset_gate_state(self) -> None:
        """Alg. 2 state: count of q_phi updates and the gate optimizer (built at the first optimizer step)."""
        self.phi_updates = 0
        self.gate_optimizer = None
        self._gate_optimizer_state = None  # restored from a checkpoint before the optimizer exists

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
            raise UserError(f"latent_depth_translation needs a latent_depth_transformer architecture, "
                             f"got --arch {arch}")
        if pruned and not self.training:
            src, tgt = self.lang_pairs[0].split("-")
            side = getattr(args, "latent_side", "bilingual")
            lang = {"source": src, "target": tgt}.get(side, args.latent_pruned_lang)
            if lang != args.latent_pruned_lang:
                raise UserError(f"this checkpoint is the pruned sub-network of {args.latent_pruned_lang}; "
                                 f"it cannot translate {src}-{tgt}")
        trained = [p for p in str(args.latent_lang_pairs).split(",") if p]
        for pair in self.lang_pairs:
            if pair not in trained:
                raise UserError(f"language pair {pair} is not in this latent-depth model; "
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
            agg_loss = agg_loss + loss.detach()  # a tensor: no host sync per language pair (fairseq drops it)
            agg_sample_size += sample_size
            for k, v in log.items():
                agg_log[k] += v
        return agg_loss, agg_sample_size, agg_log

    def is_phi_step(self, update_num: int) -> bool:
        """Whether update ``update_num`` (0-based) is the last inner step, which updates q_phi."""
        return (update_num + 1) % self.args.latent_inner_steps == 0

    def _gate_opt(self, phi: List[torch.Tensor]) -> torch.optim.Optimizer:
        if self.gate_optimizer is None:
            self.gate_optimizer = torch.optim.Adam(phi, lr=self.args.latent_gate_lr)
            if self._gate_optimizer_state is not None:
                self.gate_optimizer.load_state_dict(self._gate_optimizer_state)
                self._gate_optimizer_state = None
        return self.gate_optimizer

    def optimizer_step(self, optimizer, model, update_num):
        """Step Theta always, q_phi only on the last inner step (grad None → the optimizer skips it);
        with ``--latent-gate-lr``, q_phi by its own constant-rate Adam."""
        phi = [p for n, p in self._unwrap(model).named_parameters() if n.endswith("_latent.logits")]
        if amp.update_skipped(optimizer):  # --amp overflow: fairseq skips the step and retries the update
            optimizer.step()
            return
        phi_step = self.is_phi_step(update_num)
        grads = [p.grad for p in phi]
        if phi and any(g is not None for g in grads) and G.log_due(update_num, self.args):
            # after fairseq's multiply_grads/clip (and AMP's unscale): the per-token gradient of the update;
            # a host sync, so at the log interval only
            norm = torch.sqrt(sum((g.detach().float() ** 2).sum() for g in grads if g is not None))
            metrics.log_scalar("latent_gate_gnorm", float(norm), 1, round=4, priority=700)
        own = getattr(self.args, "latent_gate_lr", None) is not None
        if own or not phi_step:
            for p in phi:
                p.grad = None
        optimizer.step()
        if phi_step:
            self.phi_updates += 1
            finite = all(g is None or torch.isfinite(g).all() for g in grads)
            if own and phi and finite:  # AMP overflow: fairseq skips this update, so do the gates
                for p, g in zip(phi, grads):
                    p.grad = g
                self._gate_opt(phi).step()

    def get_checkpoint_dict(self) -> Dict[str, dict]:
        # fairseq stores it in extra_state and hands back extra_state[<task class name>] on resume
        state = {"phi_updates": self.phi_updates}
        gate_state = self.gate_optimizer.state_dict() if self.gate_optimizer is not None \
            else self._gate_optimizer_state
        if gate_state is not None:
            state["gate_optimizer"] = gate_state
        return {self.__class__.__name__: state}

    def set_checkpoint_dict(self, state: Dict[str, int]) -> None:
        self.phi_updates = int(state.get("phi_updates", 0))
        gate_state = state.get("gate_optimizer")
        if gate_state is not None and getattr(self.args, "latent_gate_lr", None) is not None:
            # the constant rate of this run wins over the one saved (as fairseq does for --lr on resume)
            for group in gate_state["param_groups"]:
                group["lr"] = self.args.latent_gate_lr
            if self.gate_optimizer is not None:
                self.gate_optimizer.load_state_dict(gate_state)
            else:
                self._gate_optimizer_state = gate_state

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
