"""``latent_depth_transformer``: a pre-norm Transformer with latent (gated) layers (Li et al. 2020).

Each gated layer computes ``x_{l+1} = x_l + z_l * F_l(x_l)`` (Eq. 2), where
``F_l(x) = layer_l(x) - x`` is the whole pre-norm layer's residual branch.
``z_l`` is drawn once per batch for all layers (Alg. 2, line 7) from the
Gumbel-sigmoid relaxation (Eq. 5) of ``q_phi(z_l) = Bernoulli(sigmoid(alpha_{n,l}))``
with one row of logits per language ``n`` (:class:`LatentLayerGates`).

Training gates are relaxed for the first ``--latent-soft-updates`` updates and
straight-through 0/1 afterwards, so the network trained is the network evaluated.  Unset, the relaxed
phase is a warm-up (:func:`default_soft_updates`): as long as the criterion's KL anneal, else
:data:`DEFAULT_SOFT_UPDATES` updates.

In eval mode the gates are deterministic (``q > 0.5`` or top-K per side, ``--{encoder,decoder}-latent-select``)
and a de-selected layer is skipped, a selected one runs unchanged, so the
model equals a plain Transformer that keeps only the selected layers
(``scripts/prune_latent_depth.py``) and ``fairseq-generate`` is reproducible.

Parameter names of the layers are those of fairseq's ``transformer``; the
gate logits live in ``encoder_latent.logits`` / ``decoder_latent.logits``.

The language of a batch is passed as ``net_input["latent_lang"]`` (an int,
set by the ``latent_depth_translation`` task) or, for generation, set with
:meth:`LatentDepthTransformerModel.set_latent_lang`.  A model trained on
one language pair (``latent_langs`` of length 1) needs neither.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerModel, base_architecture
from fairseq.models.transformer.transformer_decoder import TransformerDecoderBase
from fairseq.models.transformer.transformer_encoder import TransformerEncoderBase
from fairseq.models.transformer.transformer_config import TransformerConfig
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

from fairseq_metabt.errors import UserError
from fairseq_metabt.modules.latent_layers import LatentLayerGates, annealed_tau, gates_are_hard, selection_mode
from fairseq_metabt.models.transformer_lowres import set_sizes, setdefault


# Relaxed gates only for a warm-up.  Relaxed throughout (the old default) trains a different network from the
# one inference runs: at tau = 5 most relaxed samples lie strictly between 0 and 1, while evaluation keeps
# q > 0.5 as 0/1 gates.  The miniatures (docs/results/indicative/latent_depth.json, every run) used relaxed
# gates for exactly the KL anneal (200 updates), then hard gates while L_K ramps in: the gates polarised on every seed
# and the model scored as trained equalled its pruned per-language Transformers.  Without an anneal, 500
# updates is fairseq's examples/latent_depth --soft-update.
DEFAULT_SOFT_UPDATES = 500


def default_soft_updates(args) -> int:
    """``--latent-soft-updates`` when unset: the KL anneal's length (``--latent-kl-anneal-updates`` of the
    ``latent_layers_loss`` criterion, in the same flat namespace) when positive, else 500 updates."""
    anneal = getattr(args, "latent_kl_anneal_updates", None) or 0
    return int(anneal) if anneal > 0 else DEFAULT_SOFT_UPDATES


class _Gated:
    """Mixin holding the gate of one layer for the current forward pass (set by the model).

    ``latent`` is False on an ungated side: the layer is then fairseq's, unchanged.  ``gate_off`` is True
    in training when the gate is a straight-through 0 (see :meth:`_forward_gated`).
    """

    latent: bool = False
    gate: Optional[Tensor] = None
    gate_off: bool = False

    def _forward_gated(self, forward, g: Tensor, x: Tensor, *args, **kwargs):
        """``(out, g)``: the layer's output and the gate to apply to it.

        For a straight-through gate whose value is 0 (``gate_off`` in training), Eq. 2's output
        ``x + z (y - x)`` has gradient ``I`` on ``x`` and ``0`` on the layer's parameters; only
        ``dL/dz = <dL/dout, y - x>`` needs ``y``, as a constant.  So ``y`` is computed under ``no_grad`` (same
        values, same dropout draws) and the layer's backward pass is skipped.  The parameters still get their
        exact gradient, zero, through ``z + 0 * sum_p p[0]``: a scalar added to the gate, so no extra op on the
        activations (an optimizer with momentum steps a zero gradient but skips a ``None`` one, and c10d DDP
        expects every parameter's gradient; one element per parameter, so fp16 cannot overflow it to inf)."""
        if not (self.gate_off and self.training):
            return forward(x, *args, **kwargs), g
        with torch.no_grad():
            out = forward(x, *args, **kwargs)
        params = [p for p in self.parameters() if p.requires_grad]
        if params:
            g = g + sum(p.reshape(-1)[0] for p in params) * 0.0
        return out, g

    def _gate_or_fail(self) -> Tensor:
        if self.gate is None:
            raise RuntimeError(
                "latent layer gate not set: call model.set_latent_lang(index) (multilingual models) "
                "or run the model's forward with net_input['latent_lang']"
            )
        return self.gate

    def _skip(self, g: Tensor) -> Optional[bool]:
        """In eval mode (0/1 gate, no gradient) return whether the layer is skipped; else None."""
        if self.training or g.requires_grad:
            return None
        return bool(g.item() == 0.0)


class GatedTransformerEncoderLayer(_Gated, TransformerEncoderLayerBase):
    """Encoder layer with ``x + z * (layer(x) - x)`` (Eq. 2)."""

    def forward(self, x, encoder_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor] = None):
        if not self.latent:
            return super().forward(x, encoder_padding_mask, attn_mask)
        g = self._gate_or_fail()
        skip = self._skip(g)
        if skip:
            return (x, None) if self.return_fc else x
        out, g = self._forward_gated(super().forward, g, x, encoder_padding_mask, attn_mask)
        if skip is False:  # eval, selected: the plain layer, bit for bit
            return out
        y, fc = out if self.return_fc else (out, None)
        y = x + g.to(x.dtype) * (y - x)
        return (y, fc) if self.return_fc else y


class GatedTransformerDecoderLayer(_Gated, TransformerDecoderLayerBase):
    """Decoder layer with ``x + z * (layer(x) - x)`` (Eq. 2); a skipped layer keeps no incremental state."""

    def forward(self, x, *args, **kwargs):
        if not self.latent:
            return super().forward(x, *args, **kwargs)
        g = self._gate_or_fail()
        skip = self._skip(g)
        if skip:
            return x, None, None
        (y, attn, state), g = self._forward_gated(super().forward, g, x, *args, **kwargs)
        if skip is False:
            return y, attn, state
        return x + g.to(x.dtype) * (y - x), attn, state


class LatentTransformerEncoder(TransformerEncoderBase):
    def build_encoder_layer(self, cfg):
        return GatedTransformerEncoderLayer(cfg, return_fc=self.return_fc)


class LatentTransformerDecoder(TransformerDecoderBase):
    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        return GatedTransformerDecoderLayer(cfg, no_encoder_attn)


def _split(value) -> List[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [v for v in str(value).split(",") if v]


@register_model("latent_depth_transformer")
class LatentDepthTransformerModel(TransformerModel):
    """Pre-norm Transformer whose encoder and/or decoder layers are latent (Li et al. 2020)."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        # fmt: off
        parser.add_argument("--encoder-latent-layers", action="store_true",
                            help="gate every encoder layer with a per-language latent variable z_l (Eq. 2)")
        parser.add_argument("--decoder-latent-layers", action="store_true",
                            help="gate every decoder layer with a per-language latent variable z_l (Eq. 2)")
        parser.add_argument("--latent-tau", type=float, metavar="T",
                            help="Gumbel-sigmoid temperature tau of the gates (Eq. 5), > 0 (default 5, as fairseq's "
                                 "example: a less saturated, lower-variance gate gradient)")
        parser.add_argument("--latent-tau-min", type=float, metavar="T",
                            help="lower bound of the annealed temperature (default 0.1)")
        parser.add_argument("--latent-tau-anneal-rate", type=float, metavar="R",
                            help="anneal tau as max(tau-min, tau * exp(-R * update)); 0 keeps tau constant (default 0)")
        parser.add_argument("--latent-hard", action="store_true",
                            help="straight-through gates from the first update: 0/1 in the forward pass, relaxed "
                                 "gradient (same as --latent-soft-updates 0)")
        parser.add_argument("--latent-soft-updates", type=int, metavar="N",
                            help="relaxed gates for the first N updates, straight-through 0/1 gates afterwards "
                                 "(the network trained is the one evaluated); default: the length of the KL "
                                 "anneal (--latent-kl-anneal-updates) when it is set, else "
                                 f"{DEFAULT_SOFT_UPDATES}")
        parser.add_argument("--latent-logit-init", type=float, metavar="A",
                            help="initial gate logit alpha for every language and layer (default 1.0, q = 0.73)")
        parser.add_argument("--encoder-target-layers", type=int, metavar="K",
                            help="K of L_K for the encoder: expected number of selected encoder layers "
                                 "(also the K of --latent-eval-select topk); unset = no L_K on the encoder")
        parser.add_argument("--decoder-target-layers", type=int, metavar="K",
                            help="K of L_K for the decoder (also the K of --latent-eval-select topk); "
                                 "unset = no L_K on the decoder")
        parser.add_argument("--latent-eval-select", choices=["threshold", "topk"],
                            help="deterministic layer selection at inference on both sides: q > 0.5 (threshold, "
                                 "default) or the K most probable layers (topk, needs --*-target-layers)")
        parser.add_argument("--encoder-latent-select", choices=["threshold", "topk"],
                            help="inference selection of the encoder's layers (overrides --latent-eval-select)")
        parser.add_argument("--decoder-latent-select", choices=["threshold", "topk"],
                            help="inference selection of the decoder's layers (overrides --latent-eval-select)")
        parser.add_argument("--latent-langs", type=str, metavar="L1,L2",
                            help="languages owning a row of gate logits, in index order; set by the "
                                 "latent_depth_translation task (default: one shared row)")
        parser.add_argument("--latent-lang-pairs", type=str, metavar="S-T,...",
                            help="language pairs the model was trained on; set by the task")
        # fmt: on

    @classmethod
    def build_model(cls, args, task):
        latent_depth_base(args)
        _validate(args)
        model = super().build_model(args, task)
        # fairseq hands __init__ a TransformerConfig; the latent options live in the flat Namespace
        model.args = args
        model._init_latent(args)
        return model

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return LatentTransformerEncoder(TransformerConfig.from_namespace(args), src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        cfg = TransformerConfig.from_namespace(args)
        return LatentTransformerDecoder(cfg, tgt_dict, embed_tokens, no_encoder_attn=cfg.no_cross_attention)

    def _init_latent(self, args) -> None:
        encoder, decoder = self.encoder, self.decoder
        self.latent_langs: List[str] = _split(args.latent_langs) or ["*"]
        n = len(self.latent_langs)
        init = args.latent_logit_init
        self.encoder_latent = LatentLayerGates(n, len(encoder.layers), init) if args.encoder_latent_layers else None
        self.decoder_latent = LatentLayerGates(n, len(decoder.layers), init) if args.decoder_latent_layers else None
        for side, gates in ((encoder, self.encoder_latent), (decoder, self.decoder_latent)):
            for layer in side.layers:
                layer.latent = gates is not None
        self._num_updates = 0
        # skip the backward pass of layers whose straight-through gate is 0 (exact; False: run it, for tests)
        self.skip_off_backward = True
        self._lang: Optional[int] = 0 if n == 1 else None
        if self._lang is not None:
            self._assign_eval_gates()

    # eval gates are derived from the logits: refresh them whenever the logits or the mode change
    def train(self, mode: bool = True):
        super().train(mode)
        if not mode and getattr(self, "_lang", None) is not None:
            self._assign_eval_gates()
        return self

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        out = super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
        if self._lang is not None:
            self._assign_eval_gates()
        return out

    # -- language -------------------------------------------------------------------------------------
    def latent_lang_index(self, lang: str) -> int:
        """Row of gate logits for ``lang``; a clear error for a language the model was not trained on."""
        if len(self.latent_langs) == 1:
            return 0
        try:
            return self.latent_langs.index(lang)
        except ValueError:
            raise UserError(f"language {lang!r} has no latent layers in this model; "
                             f"it was trained for {', '.join(self.latent_langs)}") from None

    def set_latent_lang(self, index: int) -> None:
        """Select the language whose deterministic gates the next eval-mode passes (e.g. generation) use."""
        if not 0 <= index < len(self.latent_langs):
            raise ValueError(f"latent language index {index} out of range 0..{len(self.latent_langs) - 1}")
        self._lang = index
        self._assign_eval_gates()

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        self._num_updates = num_updates

    @property
    def latent_tau(self) -> float:
        a = self.args
        return annealed_tau(self._num_updates, a.latent_tau, a.latent_tau_min, a.latent_tau_anneal_rate)

    def layer_selection(self, lang: int) -> Dict[str, Tensor]:
        """Deterministic 0/1 gates of one language per gated side (what eval mode and pruning use)."""
        out = {}
        for side, gates in (("encoder", self.encoder_latent), ("decoder", self.decoder_latent)):
            if gates is not None:
                out[side] = gates.select(lang, selection_mode(self.args, side),
                                         getattr(self.args, f"{side}_target_layers"))
        return out

    def _assign_eval_gates(self) -> None:
        for side, z in self.layer_selection(self._lang).items():
            for layer, g in zip(getattr(self, side).layers, z):
                layer.gate = g.detach().clone()

    @property
    def latent_hard(self) -> bool:
        """Whether training gates are straight-through 0/1 at the current update (soft-to-hard schedule)."""
        return gates_are_hard(self._num_updates, getattr(self.args, "latent_soft_updates", None),
                              self.args.latent_hard)

    def _assign_train_gates(self, lang: int) -> Dict[str, Tensor]:
        tau, samples, hard = self.latent_tau, {}, self.latent_hard
        for side, gates in (("encoder", self.encoder_latent), ("decoder", self.decoder_latent)):
            if gates is not None:
                z = gates.sample(lang, tau, hard=hard)
                # straight-through 0 gates: those layers skip their backward pass (one host read per side)
                off = [v == 0.0 for v in z.detach().tolist()] if hard and self.skip_off_backward \
                    else [False] * len(z)
                for i, layer in enumerate(getattr(self, side).layers):
                    layer.gate, layer.gate_off = z[i], off[i]
                samples[side] = z.detach()
        return samples

    # -- forward --------------------------------------------------------------------------------------
    def forward(
        self,
        src_tokens,
        src_lengths,
        prev_output_tokens,
        latent_lang: Optional[int] = None,
        return_all_hiddens: bool = True,
        features_only: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
    ):
        if latent_lang is None:
            if self._lang is None:
                raise ValueError("this multilingual latent-depth model needs net_input['latent_lang'] "
                                 "(use --task latent_depth_translation)")
            latent_lang = self._lang
        latent_lang = int(latent_lang)
        if self.training:
            samples = self._assign_train_gates(latent_lang)
        else:
            self._lang = latent_lang
            self._assign_eval_gates()
            samples = self.layer_selection(latent_lang)
        x, extra = super().forward(src_tokens, src_lengths, prev_output_tokens, return_all_hiddens,
                                   features_only, alignment_layer, alignment_heads)
        extra["latent"] = self._latent_info(latent_lang, samples)
        return x, extra

    def _latent_info(self, lang: int, samples: Dict[str, Tensor]) -> dict:
        """What the latent_layers_loss criterion needs: q of this language and of all, K, the samples."""
        info = {"lang": lang, "lang_name": self.latent_langs[lang], "num_updates": self._num_updates,
                "tau": self.latent_tau, "hard": float(self.training and self.latent_hard)}
        for side, gates in (("encoder", self.encoder_latent), ("decoder", self.decoder_latent)):
            if gates is not None:
                q_all = gates.probs()
                info[side] = {"q": q_all[lang], "q_all": q_all, "z": samples[side], "logits": gates.logits,
                              "k": getattr(self.args, f"{side}_target_layers")}
        return info


def _validate(args) -> None:
    """One clear error per bad setting."""
    if args.latent_tau is None or args.latent_tau <= 0:
        raise UserError(f"--latent-tau must be > 0, got {args.latent_tau}")
    if args.latent_tau_min <= 0:
        raise UserError(f"--latent-tau-min must be > 0, got {args.latent_tau_min}")
    if getattr(args, "latent_soft_updates", None) is not None and args.latent_soft_updates < 0:
        raise UserError(f"--latent-soft-updates must be >= 0, got {args.latent_soft_updates}")
    if args.latent_tau_anneal_rate < 0:
        raise UserError(f"--latent-tau-anneal-rate must be >= 0, got {args.latent_tau_anneal_rate}")
    if not (args.encoder_latent_layers or args.decoder_latent_layers):
        raise UserError("latent_depth_transformer needs --encoder-latent-layers and/or --decoder-latent-layers")
    for side in ("encoder", "decoder"):
        k, n = getattr(args, f"{side}_target_layers"), getattr(args, f"{side}_layers")
        if k is not None and not 1 <= k <= n:
            raise UserError(f"--{side}-target-layers K={k} must be between 1 and the number of "
                             f"{side} layers ({n}); raise --{side}-layers or lower K")
        if getattr(args, f"{side}_latent_layers"):
            if not getattr(args, f"{side}_normalize_before"):
                raise UserError(f"latent layers need a pre-norm {side} (--{side}-normalize-before): "
                                 "Eq. 2 gates the layer's residual branch")
            if selection_mode(args, side) == "topk" and k is None:
                raise UserError(f"top-K selection of the {side} (--{side}-latent-select or --latent-eval-select "
                                 f"topk) needs --{side}-target-layers K, or choose threshold for this side")
    if getattr(args, "checkpoint_activations", False):
        raise UserError("latent_depth_transformer does not support --checkpoint-activations")


@register_model_architecture("latent_depth_transformer", "latent_depth_transformer")
def latent_depth_base(args) -> None:
    """Defaults shared by every latent-depth architecture: pre-norm, tau 5 (fairseq's), threshold selection."""
    setdefault(args, "encoder_normalize_before", True)
    setdefault(args, "decoder_normalize_before", True)
    setdefault(args, "share_decoder_input_output_embed", True)
    setdefault(args, "latent_tau", 5.0)
    setdefault(args, "latent_tau_min", 0.1)
    setdefault(args, "latent_tau_anneal_rate", 0.0)
    setdefault(args, "latent_hard", False)
    setdefault(args, "latent_soft_updates", default_soft_updates(args))
    setdefault(args, "encoder_latent_select", None)
    setdefault(args, "decoder_latent_select", None)
    setdefault(args, "latent_logit_init", 1.0)
    setdefault(args, "latent_eval_select", "threshold")
    setdefault(args, "encoder_latent_layers", False)
    setdefault(args, "decoder_latent_layers", False)
    setdefault(args, "latent_langs", None)
    setdefault(args, "encoder_target_layers", None)
    setdefault(args, "decoder_target_layers", None)
    setdefault(args, "latent_lang_pairs", None)
    base_architecture(args)


def _sized(args, dim: int, ffn: int, heads: int, layers: int, dropout: float) -> None:
    set_sizes(args, dim, ffn, heads, layers, dropout)
    latent_depth_base(args)


@register_model_architecture("latent_depth_transformer", "latent_depth_transformer_tiny")
def latent_depth_transformer_tiny(args) -> None:
    """4+4 latent layers, dim 32, ffn 64, 2 heads (tests)."""
    _sized(args, dim=32, ffn=64, heads=2, layers=4, dropout=0.1)


@register_model_architecture("latent_depth_transformer", "latent_depth_transformer_small")
def latent_depth_transformer_small(args) -> None:
    """6+6 latent layers, dim 256, ffn 512, 4 heads (miniature reproductions on CPU)."""
    _sized(args, dim=256, ffn=512, heads=4, layers=6, dropout=0.2)


@register_model_architecture("latent_depth_transformer", "latent_depth_transformer_base")
def latent_depth_transformer_base(args) -> None:
    """12+12 latent layers, dim 512, ffn 1024, 4 heads (the paper's deep multilingual width, Sec. C.2)."""
    _sized(args, dim=512, ffn=1024, heads=4, layers=12, dropout=0.1)


@register_model_architecture("latent_depth_transformer", "latent_depth_transformer_deep")
def latent_depth_transformer_deep(args) -> None:
    """24+24 latent layers, dim 512, ffn 1024, 4 heads (the paper's 24-layer latent-depth setting)."""
    _sized(args, dim=512, ffn=1024, heads=4, layers=24, dropout=0.1)
