"""Differentiable round-trip reconstruction with STGS (Niu et al. 2019, Eq. 3–6).

For a tagged bitext example (f, e) of the ``bidirectional_translation`` task::

    L = L_T + λ · L_R
    L_T = −log P(e | f; θ)                                    (Eq. 4, teacher forced)
    ê   = free-running STGS sample of T(f; θ)                 (Eq. 5–6, Gumbel(0, β), temperature τ)
    L_R = −log P(f | ê; θ)                                    (Eq. 3, teacher forced, same θ)

The translation ê is decoded token by token from the model's own straight-through
one-hots (:mod:`fairseq_metabt.modules.free_running`), tokens after its first EOS
are masked out, and the source f — its language tag included — is reconstructed
from ê's one-hots × the shared embedding matrix, so L_R's gradient reaches the
encoder, the decoder and the embeddings through both passes.  Both terms are sums
over tokens (as in Eq. 3–4) and can be label smoothed.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
    label_smoothed_nll_loss,
)
from fairseq.logging import metrics
from omegaconf import II
from torch import Tensor

from fairseq_metabt import validate
from fairseq_metabt.errors import UserError
from fairseq_metabt.modules import ddp
from fairseq_metabt.modules.free_running import (
    FreeRunningSample,
    encode_soft,
    free_running_decode,
    max_sample_length,
)


@dataclass
class StgsReconstructionConfig(LabelSmoothedCrossEntropyCriterionConfig):
    stgs_tau: float = field(default=2.0, metadata={"help": "STGS softmax temperature τ of Eq. 6 (> 0)"})
    stgs_beta: float = field(
        default=0.0, metadata={"help": "scale β of the Gumbel(0, β) noise of Eq. 5 (>= 0; 0 = greedy sample)"}
    )
    stgs_max_len_a: float = field(
        default=1.2, metadata={"help": "sampled translations are capped at a·src_len + b tokens (a)"}
    )
    stgs_max_len_b: int = field(
        default=10, metadata={"help": "sampled translations are capped at a·src_len + b tokens (b)"}
    )
    reconstruction_weight: float = field(
        default=1.0, metadata={"help": "λ in L = L_T + λ·L_R (0 trains L_T alone, e.g. to pre-train)"}
    )
    ddp_backend: str = II("distributed_training.ddp_backend")
    distributed_world_size: int = II("distributed_training.distributed_world_size")


def validate_stgs_args(tau: float, beta: float, weight: float) -> None:
    """One clear error per bad hyper-parameter."""
    if not tau > 0:
        raise UserError(f"--stgs-tau must be > 0 (the softmax temperature of Eq. 6), got {tau}; "
                         "the paper uses 2.")
    if not beta >= 0:
        raise UserError(f"--stgs-beta must be >= 0 (the scale of the Gumbel noise; 0 = greedy), got {beta}; "
                         "the paper uses 0 or 0.5.")
    if not weight >= 0:
        raise UserError(f"--reconstruction-weight must be >= 0, got {weight}.")


def check_shared_embeddings(model) -> None:
    """The reconstructor reads the translator's one-hots: one embedding matrix, tied output."""
    enc, dec = model.encoder, model.decoder
    if (enc.embed_tokens.weight is not dec.embed_tokens.weight
            or getattr(dec, "output_projection", None) is None
            or dec.output_projection.weight is not dec.embed_tokens.weight):
        raise UserError(
            "stgs_reconstruction needs a Transformer whose encoder, decoder and output layer share one "
            "embedding matrix: train with --share-all-embeddings (and a joint dictionary, as "
            "scripts/prepare_data.py writes)."
        )


def shift_right(target: Tensor, pad: int, eos: int) -> Tensor:
    """Teacher-forcing decoder input for right-padded ``target``: ``</s> y1 … yn`` (as fairseq's collater)."""
    prev = torch.cat([target.new_full((target.size(0), 1), eos), target[:, :-1]], dim=1)
    return prev.masked_fill(target.eq(pad), pad)


@register_criterion("stgs_reconstruction", dataclass=StgsReconstructionConfig)
class StgsReconstructionCriterion(LabelSmoothedCrossEntropyCriterion):
    """L_T + λ·L_R with a free-running straight-through Gumbel-softmax round trip (Niu et al. 2019)."""

    def __init__(self, task, sentence_avg: bool, label_smoothing: float, ignore_prefix_size: int = 0,
                 report_accuracy: bool = False, stgs_tau: float = 2.0, stgs_beta: float = 0.0,
                 stgs_max_len_a: float = 1.2, stgs_max_len_b: int = 10, reconstruction_weight: float = 1.0,
                 ddp_backend: Optional[str] = None, distributed_world_size: int = 1):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        validate_stgs_args(stgs_tau, stgs_beta, reconstruction_weight)
        # also at weight 0: the translation loss shares the encoder pass with the round trip
        ddp.refuse_pytorch_ddp({"ddp_backend": ddp_backend, "distributed_world_size": distributed_world_size},
                               "stgs_reconstruction", "it calls the encoder and decoder directly (one encoder pass "
                               "for the translation loss and the round trip), not through torch's DDP wrapper, so "
                               "DDP would all-reduce no gradient and the workers would drift apart")
        validate.config(locals())  # then every numeric argument: finite, in range (fairseq_metabt/validate.py)
        if not hasattr(task, "target_tags"):
            raise UserError("stgs_reconstruction needs --task bidirectional_translation (tagged corpus plus "
                             "its swap, so one model translates and reconstructs).")
        self.tau, self.beta = stgs_tau, stgs_beta
        self.max_len_a, self.max_len_b = stgs_max_len_a, stgs_max_len_b
        self.weight = reconstruction_weight

    def forward(self, model, sample: Dict, reduce: bool = True) -> Tuple[Tensor, int, Dict]:
        net_input = sample["net_input"]
        # one encoder pass serves the translation loss and the free-running sample
        encoder_out = model.encoder(net_input["src_tokens"], src_lengths=net_input["src_lengths"])
        net_output = model.decoder(net_input["prev_output_tokens"], encoder_out=encoder_out)
        trans_loss, trans_nll = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "trans_loss": trans_loss.data, "nll_loss": trans_nll.data, "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0), "sample_size": sample_size,
        }
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"], logging_output["total"] = utils.item(n_correct.data), utils.item(total.data)

        loss = trans_loss
        if self.weight > 0:
            rec_loss, rec_nll, stats = self.reconstruction_loss(model, encoder_out, net_input["src_tokens"])
            loss = trans_loss + self.weight * rec_loss
            logging_output.update(rec_loss=rec_loss.data, rec_nll_loss=rec_nll.data, **stats)
        logging_output["loss"] = loss.data
        return loss, sample_size, logging_output

    def reconstruction_loss(self, model, encoder_out, src_tokens: Tensor) -> Tuple[Tensor, Tensor, Dict]:
        """L_R = −log P(f | ê) (Eq. 3), ê sampled free-running with STGS from ``encoder_out``."""
        check_shared_embeddings(model)
        pad, eos = self.padding_idx, self.task.src_dict.eos()
        max_len = max_sample_length(src_tokens, self.max_len_a, self.max_len_b, model.decoder.max_positions())
        sample: FreeRunningSample = free_running_decode(
            model.decoder, encoder_out, max_len, tau=self.tau, beta=self.beta,
            prefix_tokens=self.task.target_tags(src_tokens),
        )
        # ê (tag + tokens + </s>) is a source for the reverse direction; the original source f,
        # tag included, right-padded, is the reconstruction target
        rec_target = utils.convert_padding_direction(src_tokens, pad, left_to_right=True)
        rec_encoder_out = encode_soft(model.encoder, sample.tokens, sample.embeddings)
        rec_output = model.decoder(shift_right(rec_target, pad, eos), encoder_out=rec_encoder_out)
        lprobs = model.get_normalized_probs(rec_output, log_probs=True)
        rec_loss, rec_nll = label_smoothed_nll_loss(
            lprobs.view(-1, lprobs.size(-1)), rec_target.view(-1), self.eps, ignore_index=pad, reduce=True
        )
        mask = rec_target.ne(pad)
        # tensors, not ints: no host sync inside the step; fairseq sums them and reduce_metrics reads them once
        stats = {
            "rec_ntokens": mask.sum(),
            "rec_correct": (lprobs.argmax(-1).eq(rec_target) & mask).sum(),
            "sample_len": sample.lengths.sum(),
            "sample_eos": sample.ended_with_eos.sum(),
            "sample_n": int(sample.lengths.numel()),
        }
        return rec_loss, rec_nll, stats

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)

        def total(key: str) -> float:
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        ntokens = total("ntokens")
        if ntokens > 0:
            metrics.log_scalar("trans_loss", total("trans_loss") / ntokens / math.log(2), ntokens, round=3)
        rec_ntokens, n = total("rec_ntokens"), total("sample_n")
        if rec_ntokens > 0:
            metrics.log_scalar("rec_loss", total("rec_loss") / rec_ntokens / math.log(2), rec_ntokens, round=3)
            metrics.log_scalar("rec_nll_loss", total("rec_nll_loss") / rec_ntokens / math.log(2), rec_ntokens,
                               round=3)
            metrics.log_scalar("rec_acc", 100.0 * total("rec_correct") / rec_ntokens, rec_ntokens, round=2)
        if n > 0:
            metrics.log_scalar("sample_len", total("sample_len") / n, n, round=2)
            metrics.log_scalar("sample_eos", total("sample_eos") / n, n, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
