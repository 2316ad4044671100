"""``latent_layers_loss``: Eq. 8 of Li et al. (2020) for ``latent_depth_transformer``.

    L_LL = NLL_ls + beta * KL(q_phi(z) || p(z)) + lambda * L_K,   L_K = (sum_l q(z_l) - K)^2

per gated side (encoder, decoder) of the batch's language, in one backward
pass.  The KL is computed in closed form from the gate probabilities
(:mod:`fairseq_metabt.modules.latent_layers`) against the ``uniform``
(Beta(1,1)) or the ``aggregated`` (mean over languages) prior.  ``beta`` rises
linearly from 0 over ``--latent-kl-anneal-updates`` updates (never negative);
``lambda`` is ``--latent-lk-weight`` alone.  Both are per-token weights: the
terms are multiplied by the batch's sample size, which fairseq divides out.

Logged with ``fairseq.logging.metrics``: ``latent_kl``, ``latent_lk``,
``latent_beta``, ``latent_tau`` and the gate probability of every language
and layer, ``q_{enc|dec}_{LANG}_{l}``.
"""

from dataclasses import dataclass, field

import torch

from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics

from fairseq_metabt.errors import UserError
from fairseq_metabt.modules.latent_layers import (
    annealed_beta,
    kl_aggregated_prior,
    kl_uniform_prior,
    layer_count_loss,
)

LATENT_PRIOR_CHOICES = ChoiceEnum(["uniform", "aggregated"])


@dataclass
class LatentLayersLossConfig(LabelSmoothedCrossEntropyCriterionConfig):
    latent_kl_weight: float = field(
        default=1.0, metadata={"help": "final KL weight beta of Eq. 8 (>= 0)"})
    latent_kl_anneal_updates: int = field(
        default=0, metadata={"help": "raise beta linearly from 0 to --latent-kl-weight over this many "
                                     "updates (0: constant)"})
    latent_prior: LATENT_PRIOR_CHOICES = field(
        default="uniform", metadata={"help": "prior p(z) of the KL: uniform (Beta(1,1)) or aggregated "
                                             "(aggregated posterior across languages)"})
    latent_lk_weight: float = field(
        default=0.0, metadata={"help": "weight lambda of L_K = (sum_l q(z_l) - K)^2 (>= 0); K is the model's "
                                       "--encoder/--decoder-target-layers"})


@register_criterion("latent_layers_loss", dataclass=LatentLayersLossConfig)
class LatentLayersLossCriterion(LabelSmoothedCrossEntropyCriterion):
    def __init__(self, task, sentence_avg, label_smoothing, latent_kl_weight=1.0, latent_kl_anneal_updates=0,
                 latent_prior="uniform", latent_lk_weight=0.0, ignore_prefix_size=0, report_accuracy=False):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if latent_kl_weight < 0 or latent_lk_weight < 0:
            raise UserError(f"--latent-kl-weight and --latent-lk-weight must be >= 0, "
                             f"got {latent_kl_weight} and {latent_lk_weight}")
        self.kl_weight = latent_kl_weight
        self.kl_anneal_updates = latent_kl_anneal_updates
        self.prior = str(latent_prior)
        self.lk_weight = latent_lk_weight

    def latent_terms(self, latent: dict):
        """``(KL, L_K)`` summed over the gated sides of one batch (Eq. 8), as differentiable tensors."""
        kl, lk = 0.0, 0.0
        for side in ("encoder", "decoder"):
            if side not in latent:
                continue
            s = latent[side]
            if self.prior == "uniform":
                kl = kl + kl_uniform_prior(s["q"])
            else:
                kl = kl + kl_aggregated_prior(s["q"], s["q_all"])
            if s["k"] is not None:
                lk = lk + layer_count_loss(s["q"], s["k"])
        return torch.as_tensor(kl), torch.as_tensor(lk)

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        latent = net_output[1].get("latent")
        if latent is None:
            raise UserError("latent_layers_loss needs a latent_depth_transformer model")
        beta = annealed_beta(latent["num_updates"], self.kl_weight, self.kl_anneal_updates)
        kl, lk = self.latent_terms(latent)
        # one loss, one backward pass: NLL + beta KL + lambda L_K (per token, hence * sample_size)
        loss = loss + sample_size * (beta * kl.to(loss) + self.lk_weight * lk.to(loss))

        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
            "latent_batches": 1,
            "latent_kl": float(kl.detach()),
            "latent_lk": float(lk.detach()),
            "latent_beta": beta,
            "latent_tau": latent["tau"],
        }
        lang = latent["lang_name"]
        logging_output[f"latent_n_{lang}"] = 1
        for side in ("encoder", "decoder"):
            if side in latent:
                for i, q in enumerate(latent[side]["q"].detach().tolist()):
                    logging_output[f"q_{side[:3]}_{lang}_{i}"] = q
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = n_correct.item()
            logging_output["total"] = total.item()
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        batches = sum(log.get("latent_batches", 0) for log in logging_outputs)
        if batches == 0:
            return
        for key in ("latent_kl", "latent_lk", "latent_beta", "latent_tau"):
            metrics.log_scalar(key, sum(log.get(key, 0) for log in logging_outputs) / batches, batches,
                               round=4, priority=500)
        keys = sorted({k for log in logging_outputs for k in log if k.startswith("q_")})
        for key in keys:
            lang = key.split("_", 2)[2].rsplit("_", 1)[0]
            n = sum(log.get(f"latent_n_{lang}", 0) for log in logging_outputs)
            if n > 0:
                metrics.log_scalar(key, sum(log.get(key, 0) for log in logging_outputs) / n, n,
                                   round=3, priority=1000)
