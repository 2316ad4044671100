"""HIDDEN: reconstruction of the source from hidden states (Niu et al. 2019, §4.3; Wang et al. 2018a).

The contrastive baseline to STGS reconstruction::

    L = w_T · L_T + w_enc · L_enc + w_dec · L_dec,    (w_enc, w_dec, w_T) = (0.5, 0.5, 1)

``L_T`` is the translation cross-entropy (Eq. 4); ``L_enc`` and ``L_dec`` are
−log P(f | encoder states) and −log P(f | decoder states), teacher forced, from
the two reconstructors of ``--arch transformer_hidden_reconstruction*``.  All
terms are token sums and can be label smoothed.

The paper fine-tunes the pre-trained translator jointly with reconstructors
that start from their own initialisation (§4.4), i.e. fresh (the default here).
``--freeze-translator`` trains the reconstructors alone on the frozen
translator's hidden states, the same loss reported: a separate stage that
warms them up before the joint fine-tuning (an option, not the paper's setup).
"""
import contextlib
import math
from dataclasses import dataclass, field
from typing import Dict, Tuple

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)
from fairseq.logging import metrics
from torch import Tensor, nn

from fairseq_metabt import validate
from fairseq_metabt.criterions.stgs_reconstruction import shift_right
from fairseq_metabt.errors import UserError


@dataclass
class HiddenReconstructionConfig(LabelSmoothedCrossEntropyCriterionConfig):
    encoder_reconstruction_weight: float = field(
        default=0.5, metadata={"help": "weight of the loss of reconstructing f from encoder states (paper: 0.5)"}
    )
    decoder_reconstruction_weight: float = field(
        default=0.5, metadata={"help": "weight of the loss of reconstructing f from decoder states (paper: 0.5)"}
    )
    freeze_translator: bool = field(
        default=False, metadata={"help": "train only the two reconstructors, on the frozen translator's hidden "
                                         "states (encoder, decoder and shared embeddings get no gradient; the loss "
                                         "is unchanged): warms up fresh reconstructors on the L_T model before "
                                         "joint fine-tuning (the paper does not)"}
    )


@register_criterion("hidden_reconstruction", dataclass=HiddenReconstructionConfig)
class HiddenReconstructionCriterion(LabelSmoothedCrossEntropyCriterion):
    """L_T + 0.5·L_enc + 0.5·L_dec with two hidden-state reconstructors (Niu et al. 2019, §4.3)."""

    def __init__(self, task, sentence_avg: bool, label_smoothing: float, ignore_prefix_size: int = 0,
                 report_accuracy: bool = False, encoder_reconstruction_weight: float = 0.5,
                 decoder_reconstruction_weight: float = 0.5, freeze_translator: bool = False):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        for flag, w in (("--encoder-reconstruction-weight", encoder_reconstruction_weight),
                        ("--decoder-reconstruction-weight", decoder_reconstruction_weight)):
            if not w >= 0:
                raise UserError(f"{flag} must be >= 0, got {w}")
        validate.config(locals())  # then every numeric argument: finite, in range (fairseq_metabt/validate.py)
        if freeze_translator and not (encoder_reconstruction_weight > 0 or decoder_reconstruction_weight > 0):
            raise UserError("--freeze-translator trains only the reconstructors, but both reconstruction weights "
                            "are 0", "give --encoder-reconstruction-weight or --decoder-reconstruction-weight > 0")
        self.w_enc, self.w_dec = encoder_reconstruction_weight, decoder_reconstruction_weight
        self.freeze_translator = freeze_translator

    def forward(self, model, sample: Dict, reduce: bool = True) -> Tuple[Tensor, int, Dict]:
        if not hasattr(model, "encoder_reconstructor"):
            raise UserError("hidden_reconstruction needs reconstructors: train with --arch "
                             "transformer_hidden_reconstruction_tiny/_small (or transformer_hidden_reconstruction).")
        net_input = sample["net_input"]
        src, prev = net_input["src_tokens"], net_input["prev_output_tokens"]
        # a frozen translator builds no graph: L_T is only reported, the states are constants to the reconstructors
        with torch.no_grad() if self.freeze_translator else contextlib.nullcontext():
            encoder_out = model.encoder(src, src_lengths=net_input["src_lengths"])
            states, extra = model.decoder(prev, encoder_out=encoder_out, features_only=True)
            net_output = (model.decoder.output_layer(states), extra)
            trans_loss, trans_nll = self.compute_loss(model, net_output, sample, reduce=reduce)

        pad = self.padding_idx
        rec_target = utils.convert_padding_direction(src, pad, left_to_right=True)
        rec_prev = shift_right(rec_target, pad, self.task.source_dictionary.eos())
        mask = rec_target.ne(pad)
        logging_output = {"ntokens": sample["ntokens"], "nsentences": sample["target"].size(0),
                          "rec_ntokens": int(mask.sum()), "trans_loss": trans_loss.data, "nll_loss": trans_nll.data}
        loss = trans_loss
        memories = {
            "enc": (model.encoder_reconstructor, encoder_out, self.w_enc),
            "dec": (model.decoder_reconstructor, model.states_as_memory(states, prev.eq(pad)), self.w_dec),
        }
        for name, (reconstructor, memory, weight) in memories.items():
            out = self.reconstruct(reconstructor, rec_prev, memory)
            lprobs = reconstructor.get_normalized_probs(out, log_probs=True)
            rec_loss, _ = label_smoothed_nll_loss(lprobs.view(-1, lprobs.size(-1)), rec_target.view(-1), self.eps,
                                                  ignore_index=pad, reduce=True)
            loss = loss + weight * rec_loss
            logging_output[f"rec_{name}_loss"] = rec_loss.data
            logging_output[f"rec_{name}_correct"] = int((lprobs.argmax(-1).eq(rec_target) & mask).sum())
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output.update(loss=loss.data, sample_size=sample_size)
        return loss, sample_size, logging_output

    def reconstruct(self, reconstructor: nn.Module, prev: Tensor, memory: Dict) -> Tuple[Tensor, Dict]:
        """Teacher-forced reconstructor pass; with a frozen translator it reads a detached embedding matrix.

        The reconstructors share (and tie) the translator's embeddings, which must not move either:
        ``functional_call`` substitutes a detached copy (its tied output layer follows).
        """
        if not self.freeze_translator:
            return reconstructor(prev, encoder_out=memory)
        frozen = {"embed_tokens.weight": reconstructor.embed_tokens.weight.detach()}
        return torch.func.functional_call(reconstructor, frozen, (prev,), {"encoder_out": memory})

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)

        def total(key: str) -> float:
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        ntokens, rec_ntokens = total("ntokens"), total("rec_ntokens")
        if ntokens > 0:
            metrics.log_scalar("trans_loss", total("trans_loss") / ntokens / math.log(2), ntokens, round=3)
        if rec_ntokens > 0:
            for name in ("enc", "dec"):
                metrics.log_scalar(f"rec_{name}_loss", total(f"rec_{name}_loss") / rec_ntokens / math.log(2),
                                   rec_ntokens, round=3)
                metrics.log_scalar(f"rec_{name}_acc", 100.0 * total(f"rec_{name}_correct") / rec_ntokens,
                                   rec_ntokens, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
