"""``latent_layers_loss``: Eq. 8 of Li et al. (2020) for ``latent_depth_transformer``.

    L_LL = NLL_ls + beta(t) * KL + lambda(t) * L_K,   L_K = (sum_l u_l - K)^2

per gated side (encoder, decoder), in one backward pass per language batch:

* ``KL`` = mean over the side's layers of ``KL(q_phi(z_l) || p(z_l))``, closed
  form from the gate probabilities, against the ``uniform`` (Beta(1,1)) or
  the ``aggregated`` (mean over languages) prior.  Averaging over layers
  (fairseq's ``examples/latent_depth`` does too) keeps its gradient per gate
  at ``beta / L`` of the paper's sum, so it does not pin every gate at 1/2.
  ``beta(t)`` rises linearly from 0 over ``--latent-kl-anneal-updates``.
* ``L_K`` acts on the layer utilisation aggregated over languages,
  ``u_l = mean_n q(z_l | n)`` (``--latent-lk-utilisation aggregated``, as
  fairseq), so languages keep their own depth and only the average is pulled
  to K; ``language`` applies it to the batch language's q.  ``lambda(t)`` is
  0 until the KL anneal ends, then rises linearly over as many updates.

Both weights are per token (the terms are multiplied by the batch's sample
size, which fairseq divides out), so an update with one batch per language
applies one aggregated L_K in total.

Logged with ``fairseq.logging.metrics``: ``latent_kl``, ``latent_lk`` (raw
terms), ``latent_beta``, ``latent_lambda``, ``latent_tau``, ``latent_hard``,
``latent_kl_gnorm`` / ``latent_lk_gnorm`` (L2 norm of the weighted term's
per-token gradient on the gate logits), ``latent_q_margin`` (mean
``|q - 1/2|``: how far the gates left the decision threshold) and the gate
probability of every language and layer, ``q_{enc|dec}_{LANG}_{l}``.
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
from omegaconf import II

from fairseq_metabt import validate
from fairseq_metabt.errors import UserError
from fairseq_metabt.modules import gradients as G
from fairseq_metabt.modules.latent_layers import (
    annealed_beta,
    annealed_lk_weight,
    expected_layer_count_loss,
    kl_aggregated_prior,
    kl_uniform_prior,
    layer_count_loss,
    layer_utilisation,
)

LATENT_PRIOR_CHOICES = ChoiceEnum(["uniform", "aggregated"])
LK_UTILISATION_CHOICES = ChoiceEnum(["aggregated", "language"])
LK_FORM_CHOICES = ChoiceEnum(["sampled", "mean"])


@dataclass
class LatentLayersLossConfig(LabelSmoothedCrossEntropyCriterionConfig):
    latent_kl_weight: float = field(
        default=1.0, metadata={"help": "final KL weight beta of Eq. 8 (>= 0), on the KL averaged over layers "
                                       "(acts as beta / L on the paper's sum over layers)"})
    latent_kl_anneal_updates: int = field(
        default=0, metadata={"help": "raise beta linearly from 0 to --latent-kl-weight over this many "
                                     "updates (0: constant)"})
    latent_prior: LATENT_PRIOR_CHOICES = field(
        default="uniform", metadata={"help": "prior p(z) of the KL: uniform (Beta(1,1)) or aggregated "
                                             "(aggregated posterior across languages)"})
    latent_lk_weight: float = field(
        default=0.0, metadata={"help": "weight lambda of L_K = (sum_l u_l - K)^2 (>= 0), applied once the KL "
                                       "anneal is over (then ramped over as many updates); K is the model's "
                                       "--encoder/--decoder-target-layers"})
    latent_lk_utilisation: LK_UTILISATION_CHOICES = field(
        default="aggregated", metadata={"help": "utilisation u_l that L_K constrains: aggregated (mean over "
                                                "languages, each language keeps its own depth) or language "
                                                "(the batch language's q: every language forced to K)"})
    latent_lk_form: LK_FORM_CHOICES = field(
        default="sampled", metadata={"help": "sampled: L_K on the sampled 0/1 gates, in expectation "
                                             "(sum_l u_l - K)^2 + Var(layer count), whose variance term "
                                             "discretises the gates (the paper's L_K); mean: (sum_l u_l - K)^2 "
                                             "on the gate probabilities only, which fixes the expected depth "
                                             "but lets q spread evenly over layers"})
    log_interval: int = II("common.log_interval")


@register_criterion("latent_layers_loss", dataclass=LatentLayersLossConfig)
class LatentLayersLossCriterion(LabelSmoothedCrossEntropyCriterion):
    def __init__(self, task, sentence_avg, label_smoothing, latent_kl_weight=1.0, latent_kl_anneal_updates=0,
                 latent_prior="uniform", latent_lk_weight=0.0, latent_lk_utilisation="aggregated",
                 latent_lk_form="sampled", ignore_prefix_size=0, report_accuracy=False, log_interval=1):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if latent_kl_weight < 0 or latent_lk_weight < 0:
            raise UserError(f"--latent-kl-weight and --latent-lk-weight must be >= 0, "
                             f"got {latent_kl_weight} and {latent_lk_weight}")
        validate.config(locals())  # then every numeric argument: finite, in range (fairseq_metabt/validate.py)
        self.kl_weight = latent_kl_weight
        self.kl_anneal_updates = latent_kl_anneal_updates
        self.prior = str(latent_prior)
        self.lk_weight = latent_lk_weight
        self.lk_utilisation = str(latent_lk_utilisation)
        self.lk_form = str(latent_lk_form)
        self.log_interval = log_interval

    def latent_terms(self, latent: dict):
        """``(KL, L_K)`` of one batch (Eq. 8), summed over the gated sides, as differentiable tensors."""
        sides = {side: (latent[side]["q_all"], latent[side]["k"]) for side in ("encoder", "decoder") if side in latent}
        return self._terms(sides, latent["lang"])

    def _terms(self, sides: dict, lang: int):
        kl, lk = 0.0, 0.0
        for q_all, k in sides.values():
            q = q_all[lang]
            kl = kl + (kl_uniform_prior(q) if self.prior == "uniform" else kl_aggregated_prior(q, q_all))
            if k is not None:
                lk = lk + self._lk(q_all if self.lk_utilisation == "aggregated" else q.unsqueeze(0), k)
        return torch.as_tensor(kl), torch.as_tensor(lk)

    def _lk(self, q_rows: torch.Tensor, k: int) -> torch.Tensor:
        """L_K over the ``(N, L)`` gate probabilities of the languages sharing the layer count."""
        if self.lk_form == "sampled":
            return expected_layer_count_loss(q_rows, k)
        return layer_count_loss(layer_utilisation(q_rows), k)

    def latent_weights(self, num_updates: int):
        """``(beta, lambda)`` at update ``num_updates``: beta anneals from 0; L_K starts after the anneal."""
        return (annealed_beta(num_updates, self.kl_weight, self.kl_anneal_updates),
                annealed_lk_weight(num_updates, self.lk_weight, self.kl_anneal_updates))

    @torch.enable_grad()
    def term_grad_norms(self, latent: dict, beta: float, lam: float):
        """L2 norms of the per-token gradients of ``beta * KL`` and ``lambda * L_K`` on the gate logits.

        Computed on a detached copy of the logits (a separate, tiny graph), so the model's backward pass,
        DDP's hooks and the optimizer never see it."""
        leaves = {side: latent[side]["logits"].detach().float().requires_grad_(True)
                  for side in ("encoder", "decoder") if side in latent}
        kl, lk = self._terms({s: (torch.sigmoid(x), latent[s]["k"]) for s, x in leaves.items()}, latent["lang"])
        norms = []
        for weight, term in ((beta, kl), (lam, lk)):
            if weight == 0 or not term.requires_grad:
                norms.append(0.0)
                continue
            grads = torch.autograd.grad(weight * term, list(leaves.values()), retain_graph=True, allow_unused=True)
            norms.append(float(torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None))))
        return norms[0], norms[1]

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        latent = net_output[1].get("latent")
        if latent is None:
            raise UserError("latent_layers_loss needs a latent_depth_transformer model")
        beta, lam = self.latent_weights(latent["num_updates"])
        kl, lk = self.latent_terms(latent)
        # one loss, one backward pass: NLL + beta KL + lambda L_K (per token, hence * sample_size)
        loss = loss + sample_size * (beta * kl.to(loss) + lam * lk.to(loss))
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
            "latent_batches": 1,
            "latent_kl": kl.detach(),  # tensors: summed on the device, read once in reduce_metrics
            "latent_lk": lk.detach(),
            "latent_beta": beta,
            "latent_lambda": lam,
            "latent_tau": latent["tau"],
            "latent_hard": latent["hard"],
        }
        # diagnostics that need host syncs (two extra gradient norms, the margin, every gate probability):
        # in training at the log interval only, in validation always
        if not model.training or G.log_due(latent["num_updates"], {"log_interval": self.log_interval}):
            kl_gnorm, lk_gnorm = self.term_grad_norms(latent, beta, lam) if model.training else (0.0, 0.0)
            q_all = [latent[s]["q_all"].detach() for s in ("encoder", "decoder") if s in latent]
            lang = latent["lang_name"]
            margin = float(torch.cat([(q - 0.5).abs().flatten() for q in q_all]).mean())
            logging_output.update({"latent_diag_batches": 1, "latent_kl_gnorm": kl_gnorm, "latent_lk_gnorm": lk_gnorm,
                                   "latent_q_margin": margin, f"latent_n_{lang}": 1})
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
        for key in ("latent_kl", "latent_lk", "latent_beta", "latent_lambda", "latent_tau", "latent_hard"):
            metrics.log_scalar(key, float(sum(log.get(key, 0) for log in logging_outputs)) / batches, batches,
                               round=4, priority=500)
        diag = sum(log.get("latent_diag_batches", 0) for log in logging_outputs)
        for key in ("latent_kl_gnorm", "latent_lk_gnorm", "latent_q_margin") if diag else ():
            metrics.log_scalar(key, sum(log.get(key, 0) for log in logging_outputs) / diag, diag, round=4,
                               priority=500)
        keys = sorted({k for log in logging_outputs for k in log if k.startswith("q_")})
        for key in keys:
            lang = key.split("_", 2)[2].rsplit("_", 1)[0]
            n = sum(log.get(f"latent_n_{lang}", 0) for log in logging_outputs)
            if n > 0:
                metrics.log_scalar(key, sum(log.get(key, 0) for log in logging_outputs) / n, n,
                                   round=3, priority=1000)
