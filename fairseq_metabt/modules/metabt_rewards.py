"""MetaBT's reward for the backward model (Pham et al. 2021, Eq. 13, 17 and 18; steps 3-4 of the update).

* :func:`pseudo_gradient` — ``g``: the pseudo pairs' per-token mean gradient at theta_{t-1}, gathered from
  the micro-batches' shares and averaged over workers.
* :func:`dev_gradient` — ``d = grad_theta J_dev(theta_t)`` (Eq. 13), the mean per-token dev NLL in eval mode.
* :func:`adam_preconditioner` — ``1 / (sqrt(v_hat) + eps)``, the diagonal of Eq. 18's ``h(g)``.
* :func:`sentence_losses` — each pseudo pair's own per-token mean training loss (for per-sentence rewards).
* :func:`rewards` — ``r = sim(d, h(g))`` per batch, or ``r_i = d . h(g_i)`` per sentence (Eq. 17/18).
* :func:`reward_stats` — the (sum, sum of squares, count, unusable) all-reduced to skip and log alike.

The task (``tasks/meta_backtranslation.py``) calls these in the order of the paper's algorithm box.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from fairseq_metabt.errors import UserError
from fairseq_metabt.modules import gradients as G
from fairseq_metabt.modules.generation import eval_mode, sequence_log_probs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RewardSettings:
    """How the reward is taken: ``kind`` cosine/dot, ``granularity`` batch/sentence, per-sentence ``method``
    taylor/double_backward and the Taylor step ``taylor_eps`` (divided by ``||d||``)."""

    kind: str = "cosine"
    granularity: str = "batch"
    method: str = "taylor"
    taylor_eps: float = 1e-2


def pseudo_gradient(pending: List[Dict], theta: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, bool]:
    """``g``: the sum of the micro-batches' pseudo-pair gradient shares (each a sum over its tokens),
    averaged over workers and divided by the workers' mean pseudo-token count, so ``g`` is the gradient of
    the per-token mean pseudo loss at theta_{t-1}.  The flag is False when no worker had a pseudo pair."""
    ntok = torch.tensor([sum(p["ntokens"] for p in pending)], dtype=torch.float64)
    g = sum(p["g"] for p in pending) if pending else torch.zeros(sum(t.numel() for t in theta))
    g = g.to(theta[0].device)
    G.all_reduce_mean_(g)
    G.all_reduce_mean_(ntok)
    have_pseudo = float(ntok) > 0
    if have_pseudo:
        g.div_(float(ntok))
    return g, have_pseudo


def dev_gradient(dual: torch.nn.Module, theta: Sequence[torch.Tensor], batch: Dict, pad: int) -> torch.Tensor:
    """Eq. 13's ``d = grad_theta J_dev(theta)``: the gradient of the mean per-token dev NLL, in eval mode
    (J_dev without dropout noise), as one flat fp32 vector."""
    with eval_mode(dual):
        nll = -sequence_log_probs(dual, batch, pad).sum() / max(float(batch["ntokens"]), 1.0)
        grads = torch.autograd.grad(nll, theta, allow_unused=True)
    return G.flatten(grads, theta)


def adam_preconditioner(optimizer, theta: Sequence[torch.Tensor]) -> torch.Tensor:
    """1 / (sqrt(v_hat) + eps) from Adam's second moments, read after this update's step: the
    diagonal preconditioner of Eq. 18, whose step direction is h(g) = g / (sqrt(v_hat) + eps)
    (momentum left out, as the appendix assumes the moving averages independent of theta)."""
    parts = []
    for mom in G.adam_moments(optimizer, theta):  # --amp's double unscale corrected there
        if mom is None:
            raise UserError("--meta-reward-precondition needs Adam's second moments on the model parameters "
                            "(--optimizer adam, fp32 or --amp); they were not found")
        v_hat = mom.exp_avg_sq / (1.0 - mom.beta2 ** mom.step)
        parts.append((1.0 / (v_hat.sqrt() + mom.eps)).reshape(-1))
    return torch.cat(parts)


def sentence_losses(dual: torch.nn.Module, batch: Dict, criterion, pad: int) -> torch.Tensor:
    """Each pair's own per-token mean training loss (the criterion's, e.g. label-smoothed), shape (n,):
    the ``l_i`` whose gradients ``g_i`` give per-sentence rewards."""
    target = batch["target"]
    net_output = dual(**batch["net_input"])
    if criterion is not None and hasattr(criterion, "compute_loss"):
        per_tok, _ = criterion.compute_loss(dual, net_output, batch, reduce=False)
        losses = per_tok.reshape(target.shape).sum(-1)
    else:
        lprobs = dual.get_normalized_probs(net_output, log_probs=True)
        losses = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).masked_fill(target.eq(pad), 0.0).sum(-1)
    return losses / target.ne(pad).sum(-1).clamp(min=1)


def rewards(dual: torch.nn.Module, theta: Sequence[torch.Tensor], theta_prev: Optional[Sequence[torch.Tensor]],
            pending: List[Dict], g: torch.Tensor, d: torch.Tensor, h: Optional[torch.Tensor],
            settings: RewardSettings, criterion, pad: int) -> Tuple[torch.Tensor, bool]:
    """Step 4 (Eq. 17; Eq. 18 with ``h``): the reward(s) of the pseudo pairs, and False when unusable.

    ``g`` is the per-token mean pseudo-pair gradient at theta_{t-1}, ``d`` the dev gradient at
    theta_t, ``h`` Adam's diagonal preconditioner ``1 / (sqrt(v_hat) + eps)`` or None.  The
    optimizer's step direction is ``h(g) = h * g``, so

    * batch: ``r = d . h(g)`` (dot) or ``cos(d, h(g))`` (cosine), one value repeated per sentence;
    * sentence: ``r_i = d . h(g_i)``, divided by ``||d|| ||h(g)||`` for cosine, where ``g_i`` is the
      gradient of sentence i's *own* per-token mean loss at theta_{t-1} (eval mode), so that
      ``g = sum_i (n_i / n) g_i`` and ``sum_i (n_i / n) r_i`` is the batch reward: a sentence's
      reward is on the batch's scale, and identical sentences each get the batch reward.
    """
    n = sum(len(p["logp"]) for p in pending)
    if not pending:
        return torch.zeros(0), False
    hg = g if h is None else g * h
    if settings.granularity == "batch":
        r, ok = G.similarity(d, hg, settings.kind)
        return r.detach().cpu().expand(n).clone(), ok
    direction = d if h is None else d * h  # d . h(g_i) = (d * h) . g_i
    dots = []
    saved = [p.detach().clone() for p in theta]
    with torch.no_grad():
        for p, old in zip(theta, theta_prev):
            p.copy_(old)
    try:
        for p in pending:
            def loss_fn(batch=p["pseudo"]):
                with eval_mode(dual):
                    return sentence_losses(dual, batch, criterion, pad)

            if settings.method == "taylor":
                dots.append(G.per_example_dot_taylor(loss_fn, theta, direction, settings.taylor_eps))
            else:
                dots.append(G.per_example_dot_double_backward(loss_fn, theta, direction))
    except ValueError as e:  # zero or non-finite d
        logger.warning("per-sentence reward skipped: %s", e)
        return torch.zeros(0), False
    finally:
        with torch.no_grad():
            for p, new in zip(theta, saved):
                p.copy_(new)
    r = torch.cat(dots).cpu()
    if settings.kind == "cosine":  # the batch cosine's normalisation, so sentence rewards share its scale
        norm = float(d.norm() * hg.norm())
        if not math.isfinite(norm) or norm == 0.0:
            return r, False
        r = r / norm
    return r, bool(torch.isfinite(r).all())


def reward_stats(r: torch.Tensor, ok: bool, n_local: int) -> Tuple[torch.Tensor, bool, float]:
    """(sum r, sum r^2, count, unusable) averaged over workers, whether any worker had no usable reward
    (then all skip the REINFORCE term alike), and the mean reward over all workers' sentences."""
    stats = torch.tensor([float(r.sum()) if ok else 0.0, float((r ** 2).sum()) if ok else 0.0,
                          float(n_local if ok else 0), 0.0 if ok else 1.0], dtype=torch.float64)
    G.all_reduce_mean_(stats)
    skipped = bool(stats[3] > 0)
    mean_r = float(stats[0] / stats[2]) if stats[2] > 0 else float("nan")
    return stats, skipped, mean_r
