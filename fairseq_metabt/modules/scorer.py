"""DDS scorers psi (Wang et al. 2020).

* :class:`LanguageScorer` — multilingual NMT (§3.2, A.2): a 2-layer perceptron
  over the availability vector of a target sentence (1 where source language
  S_i has a translation of it) gives ``p(S_i | y; psi)``, masked to the
  available languages.  With every language available it is simply a learned
  distribution over languages.
* :func:`language_reinforce_loss` — Alg. 2 line 11: the scorer's loss whose
  gradient is ``-(1/B) sum_j sum_i r_i grad log p(S_i | y_j; psi)``.
* :func:`language_objective_loss` — the same with a choice of objective: ``kl`` (the
  default: the expected reward minus ``lambda KL(p || prior)``), Alg. 2 as written,
  rewards centred within each availability set, or the exact expected reward
  ``sum_i p(S_i | y) r_i`` (no sampled languages).
* :func:`update_scorer` — the one place of the scorer's update (Alg. 2 lines 9–13):
  E Adam steps of one objective; the task and the tests both call it.
* :func:`kl_target` — the closed-form maximiser of the ``kl`` objective,
  ``p*(i | y) ∝ prior(i | y) exp(r_i / lambda)``.
* :class:`ExampleScorer` — Alg. 1: a small MLP over per-example features whose
  softmax over the batch weights the examples.
"""
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from fairseq_metabt.modules.reinforce import policy_gradient_loss


class LanguageScorer(nn.Module):
    """psi: availability vector (B, n) -> masked log p(S_i | y; psi) (B, n); unavailable entries are -inf."""

    def __init__(self, num_langs: int, hidden: int = 64, seed: int = 0):
        super().__init__()
        if num_langs < 1:
            raise ValueError(f"the scorer needs at least one language, got {num_langs}")
        state = torch.random.get_rng_state()
        torch.manual_seed(int(seed))  # identical psi on every worker, independent of model init order
        try:
            self.hidden = nn.Linear(num_langs, hidden)
            self.out = nn.Linear(hidden, num_langs)
        finally:
            torch.random.set_rng_state(state)
        self.num_langs = num_langs

    def logits(self, avail: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(avail.to(self.hidden.weight.dtype))))

    def log_probs(self, avail: torch.Tensor) -> torch.Tensor:
        avail = avail.bool()
        if not bool(avail.any(-1).all()):
            raise ValueError("every availability vector needs at least one available language")
        return F.log_softmax(self.logits(avail).masked_fill(~avail, float("-inf")), dim=-1)

    def probs(self, avail: torch.Tensor) -> torch.Tensor:
        return self.log_probs(avail).exp()

    @torch.no_grad()
    def set_prior(self, log_weights: Sequence[float]) -> None:
        """Make ``p(S_i | y) ∝ exp(log_weights[i])`` over the available languages, whatever ``y``:
        the output layer ignores the hidden units and its bias holds the log-weights."""
        w = torch.as_tensor(list(log_weights), dtype=torch.float32)
        if w.numel() != self.num_langs or not torch.isfinite(w).all():
            raise ValueError(f"need {self.num_langs} finite log-weights, got {list(log_weights)}")
        self.out.weight.zero_()
        self.out.bias.copy_(w)

    def imitate(self, avail: torch.Tensor, target_probs: torch.Tensor, steps: int = 300, lr: float = 1e-2) -> float:
        """Fit psi to a heuristic ``q(S_i | y)`` (TCS init) by minimising KL(q || p) with Adam; returns the final KL."""
        avail = avail.bool()
        q = target_probs.to(self.out.weight.dtype) * avail
        q = q / q.sum(-1, keepdim=True)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        kl = torch.zeros(())
        for _ in range(steps):
            logp = self.log_probs(avail)
            kl = (q * (torch.log(q.clamp_min(1e-12)) - torch.where(avail, logp, torch.zeros_like(logp)))).sum(-1).mean()
            opt.zero_grad()
            kl.backward()
            opt.step()
        return float(kl.detach())


def language_reinforce_loss(scorer: LanguageScorer, avail: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Alg. 2 line 11 as a loss: ``-(1/B) sum_j sum_{i available for y_j} r_i log p(S_i | y_j; psi)``.

    Its gradient is minus the paper's ``d_psi``, so a descent step on it is the ascent step of line 12.
    ``avail``: (B, n) availability of the B sampled targets; ``rewards``: (n,) one reward per language.
    """
    avail = avail.bool()
    logp = scorer.log_probs(avail)
    advantages = rewards.to(logp).expand_as(logp)[avail]
    return policy_gradient_loss(logp[avail], advantages) / avail.shape[0]


OBJECTIVES = ("kl", "alg2", "centered", "exact")
DEFAULT_OBJECTIVE = "kl"
DEFAULT_KL_WEIGHT = 0.1  # lambda: a reward gap of 0.1 (cosine units) over the p-mean multiplies p by e


def language_objective_loss(scorer: LanguageScorer, avail: torch.Tensor, rewards: torch.Tensor,
                            valid: Optional[torch.Tensor] = None, objective: str = "alg2",
                            weights: Optional[torch.Tensor] = None,
                            prior_log_probs: Optional[torch.Tensor] = None,
                            kl_weight: float = DEFAULT_KL_WEIGHT) -> torch.Tensor:
    """The scorer's loss (minus its objective) over targets ``avail`` (B, n) weighted by ``weights`` (B,)
    (default ``1/B``: B targets drawn uniformly, Alg. 2 line 10).  Only ``valid`` rewards (n,) count.

    * ``alg2``: ``-sum_j w_j sum_{i in A_j, valid} r_i log p(i | y_j)`` (Alg. 2 line 11).  Its gradient
      sums ``r_i grad log p_i`` over *all* available languages, so a reward shared by all of them pushes
      every set towards uniform (``sum_i grad log p_i``), and p drifts towards ``p ∝ r``.
    * ``centered``: the same with ``r_i - mean_{k in A_j, valid} r_k`` in each target's set: a reward
      common to the set gives no gradient, so equal rewards keep the prior.
    * ``exact``: ``-sum_j w_j sum_{i in A_j} p(i | y_j) r_i``, the expected reward itself, whose gradient
      is ``sum_i p_i (r_i - sum_k p_k r_k) grad z_i`` (shift-invariant, no sampled language).  An invalid
      language's reward is replaced by the p-weighted mean of the valid ones in its set (no push).
    * ``kl`` (the default): ``-sum_j w_j [sum_{i in A_j} p(i | y_j) r_i - lambda KL(p(.|y_j) || p0(.|y_j))]``,
      the ``exact`` objective with a KL penalty towards the prior ``p0`` (``prior_log_probs`` (B, n), the
      scorer's log-probabilities at its initialisation; ``kl_weight`` = lambda > 0).  Its logit gradient
      is ``p_i [(r_i - rbar_p) - lambda (log(p_i / p0_i) - KL)]``, zero exactly at
      ``p*(i | y) ∝ p0(i | y) exp(r_i / lambda)`` (:func:`kl_target`): a weighting, never a ranking,
      whatever the optimiser.  Equal rewards keep p at the prior; rewards that are noise of spread sigma
      move log p by about sigma / lambda around it and do not accumulate over scorer updates (the
      anchor is the prior, not the previous p); a consistent gap g multiplies the odds by exp(g / lambda).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown scorer objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    avail = avail.bool()
    logp = scorer.log_probs(avail)
    r = rewards.to(logp).expand_as(logp)
    ok = avail & (torch.ones_like(avail) if valid is None else valid.bool().to(avail.device).expand_as(avail))
    n_rows = avail.shape[0]
    w = torch.full((n_rows,), 1.0 / n_rows, dtype=logp.dtype) if weights is None else weights.to(logp)
    if objective == "alg2":
        adv = torch.where(ok, r, torch.zeros_like(r))
        return -(w[:, None] * adv.detach() * torch.where(avail, logp, torch.zeros_like(logp))).sum()
    # a per-set reference subtracted first makes equal rewards give exactly 0 (not rounding noise, which
    # the scorer's Adam would blow up to full-size steps); a constant per set changes neither objective
    ref = torch.where(ok, r, torch.full_like(r, float("-inf"))).max(-1, keepdim=True).values
    ref = torch.where(torch.isfinite(ref), ref, torch.zeros_like(ref)).detach()
    r = torch.where(ok, r - ref, torch.zeros_like(r))
    if objective == "centered":
        count = ok.sum(-1, keepdim=True).clamp_min(1).to(r)
        adv = torch.where(ok, r - r.sum(-1, keepdim=True) / count, torch.zeros_like(r))
        return -(w[:, None] * adv.detach() * torch.where(avail, logp, torch.zeros_like(logp))).sum()
    p = logp.exp()
    with torch.no_grad():
        pv = torch.where(ok, p, torch.zeros_like(p))
        fill = (pv * r).sum(-1, keepdim=True) / pv.sum(-1, keepdim=True).clamp_min(1e-30)
        r_eff = torch.where(ok, r, fill.expand_as(r))
        r_eff = torch.where(avail, r_eff, torch.zeros_like(r_eff))
    # + the references as a constant (sum_i p_i = 1): the value is the expected reward, the gradient unchanged
    loss = -(w[:, None] * p * r_eff).sum() - (w * ref.squeeze(-1) * ok.any(-1).to(w)).sum()
    if objective == "kl":
        if prior_log_probs is None:
            raise ValueError("the kl objective needs the prior's log-probabilities of the same targets")
        if not kl_weight > 0:
            raise ValueError(f"the kl objective needs a weight lambda > 0, got {kl_weight}")
        logp0 = prior_log_probs.to(logp).detach()
        diff = torch.where(avail, logp - logp0, torch.zeros_like(logp))
        loss = loss + kl_weight * (w[:, None] * p * diff).sum()
    return loss


def kl_target(prior_probs: torch.Tensor, rewards: torch.Tensor, kl_weight: float = DEFAULT_KL_WEIGHT) -> torch.Tensor:
    """The maximiser of the ``kl`` objective for every reward valid: ``p*(i|y) ∝ p0(i|y) exp(r_i / lambda)``
    over the available languages (rows of ``prior_probs`` (B, n); zeros stay zero)."""
    logp0 = prior_probs.double().log()
    z = logp0 + rewards.double().expand_as(logp0) / kl_weight
    return torch.softmax(z.masked_fill(prior_probs <= 0, float("-inf")), dim=-1).to(prior_probs.dtype)


def update_scorer(scorer: LanguageScorer, optimizer: torch.optim.Optimizer, rewards: torch.Tensor,
                  valid: Optional[torch.Tensor], objective: str, iters: int,
                  targets: Callable[[int], Tuple[torch.Tensor, Optional[torch.Tensor]]],
                  prior: Optional[LanguageScorer] = None, kl_weight: float = DEFAULT_KL_WEIGHT) -> None:
    """Alg. 2 lines 9–13: ``iters`` (E) optimiser steps of ``objective`` (:func:`language_objective_loss`).

    ``targets(it)`` gives step ``it``'s availability vectors (B, n) and their weights (B,) or None (= 1/B):
    B targets drawn uniformly (line 10), or every availability pattern weighted by its share of the
    targets.  ``prior`` (``kl`` only): the frozen scorer whose distribution anchors the KL penalty.
    The update of ``kl``, in full::

        psi <- Adam(psi, grad_psi L),  L = -sum_j w_j [ sum_{i in A_j} p(i|y_j) r_i
                                                       - lambda sum_{i in A_j} p(i|y_j) log(p(i|y_j) / p0(i|y_j)) ]
    """
    if objective == "kl" and prior is None:
        raise ValueError("the kl objective needs the prior scorer")
    for it in range(iters):
        avail, weights = targets(it)
        prior_logp = None
        if objective == "kl":
            with torch.no_grad():
                prior_logp = prior.log_probs(avail)
        loss = language_objective_loss(scorer, avail, rewards, valid, objective, weights, prior_logp, kl_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def distribution_stats(probs: torch.Tensor, prior_probs: Optional[torch.Tensor] = None,
                       weights: Optional[torch.Tensor] = None) -> Tuple[float, float]:
    """Mean entropy ``E_y H(p(.|y))`` (nats) and mean ``E_y KL(p(.|y) || p0(.|y))`` of rows ``probs`` (P, n)
    weighted by ``weights`` (P,) (default uniform); the KL is 0 without a prior."""
    probs = probs.double()
    w = torch.full((len(probs),), 1.0 / max(len(probs), 1), dtype=torch.float64) if weights is None \
        else weights.double() / weights.double().sum()
    logp = torch.where(probs > 0, probs.log(), torch.zeros_like(probs))
    entropy = float((w * -(probs * logp).sum(-1)).sum())
    kl = 0.0
    if prior_probs is not None:
        p0 = prior_probs.double()
        logp0 = torch.where(p0 > 0, p0.log(), torch.zeros_like(p0))
        kl = float((w * (probs * (logp - logp0)).sum(-1)).sum())
    return entropy, kl


class ExampleScorer(nn.Module):
    """Alg. 1's scorer: example features (B, f) -> one score each; ``weights`` is the softmax over the batch."""

    def __init__(self, num_features: int, hidden: int = 32, seed: int = 0):
        super().__init__()
        state = torch.random.get_rng_state()
        torch.manual_seed(int(seed))
        try:
            self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        finally:
            torch.random.set_rng_state(state)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.to(self.net[0].weight.dtype)).squeeze(-1)

    def log_weights(self, features: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        s = self.scores(features)
        if mask is not None:
            s = s.masked_fill(~mask.bool(), float("-inf"))
        return F.log_softmax(s, dim=-1)
