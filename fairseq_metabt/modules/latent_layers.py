"""Latent layers (Li et al. 2020, "Deep Transformers with Latent Depth"): gates, priors, KL, L_K.

Every gated layer computes ``x_{l+1} = x_l + z_l * F_l(x_l)`` (Eq. 2).  The gate
``z_l`` of language ``n`` follows ``q_phi(z_l) = Bernoulli(sigmoid(alpha_{n,l}))``,
relaxed during training to the Gumbel-sigmoid of Eq. 5
(:func:`fairseq_metabt.modules.gumbel.gumbel_sigmoid`).  The training loss is
Eq. 8, ``NLL + beta * KL(q_phi(z) || p(z)) + lambda * L_K``.

Normalisations (documented in ``docs/methods/latent_depth.md``): the KL is
*averaged* over a side's layers (fairseq's ``examples/latent_depth`` does the
same), so ``beta`` here acts as ``beta / L`` would on the paper's sum over
layers; ``L_K`` acts on the layer utilisation averaged over languages,
``u_l = mean_n q(z_l | n)`` (as fairseq does), so each language keeps its own
depth and only the total is pulled to ``K``.

KL in closed form.  The prior on each gate is ``z_l ~ Bernoulli(pi)`` with
``pi ~ Beta(1, 1)``; its marginal is ``Bernoulli(1/2)`` (``E[pi] = 1/2``), so
``KL(Bernoulli(q) || p) = q log 2q + (1-q) log 2(1-q) = log 2 - H(q)``,
computed from the gate probabilities (not from samples, unlike fairseq's
``examples/latent_depth``).  The ``aggregated`` prior is the aggregated
posterior ``q~(z_l) = mean_n q(z_l | n)`` across languages (Sec. 5), held
fixed (detached) as the target of each language's posterior.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from fairseq_metabt.errors import UserError
from fairseq_metabt.modules.gumbel import gumbel_sigmoid

_EPS = 1e-6


class LatentLayerGates(nn.Module):
    """Per-language logits ``alpha`` of shape ``(num_langs, num_layers)`` and their gates.

    The logits are initialised explicitly to ``init_logit`` (fairseq's example
    used uninitialised memory).
    """

    def __init__(self, num_langs: int, num_layers: int, init_logit: float = 1.0) -> None:
        super().__init__()
        if num_langs < 1 or num_layers < 1:
            raise UserError(f"latent gates need >= 1 language and layer, got {num_langs} and {num_layers}")
        self.logits = nn.Parameter(torch.full((num_langs, num_layers), float(init_logit)))

    @property
    def num_langs(self) -> int:
        return self.logits.size(0)

    @property
    def num_layers(self) -> int:
        return self.logits.size(1)

    def probs(self, lang: Optional[int] = None) -> torch.Tensor:
        """``q(z_l = 1)``: shape ``(num_layers,)`` for one language, ``(num_langs, num_layers)`` for all."""
        logits = self.logits if lang is None else self.logits[lang]
        return torch.sigmoid(logits)

    def sample(self, lang: int, tau: float, hard: bool = False) -> torch.Tensor:
        """All L gates of one language at once (Alg. 2, line 7), relaxed (Eq. 5) or straight-through hard."""
        return gumbel_sigmoid(self.logits[lang], tau=tau, hard=hard)

    @torch.no_grad()
    def select(self, lang: int, mode: str = "threshold", k: Optional[int] = None) -> torch.Tensor:
        """Deterministic 0/1 selection for inference: ``q > 0.5`` or the ``k`` most probable layers."""
        q = self.probs(lang)
        if mode == "threshold":
            return (q > 0.5).to(q.dtype)
        if mode == "topk":
            if k is None or not 1 <= k <= q.numel():
                raise UserError(f"top-K layer selection needs 1 <= K <= {q.numel()}, got K={k}")
            # stable sort: ties go to the lower layer, so selection is reproducible
            order = torch.sort(-q, stable=True).indices[:k]
            return torch.zeros_like(q).index_fill_(0, order, 1.0)
        raise UserError(f"unknown layer selection mode {mode!r} (choose threshold or topk)")


def bernoulli_kl(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(Bernoulli(q) || Bernoulli(p))``."""
    q = q.clamp(_EPS, 1 - _EPS)
    p = p.clamp(_EPS, 1 - _EPS)
    return q * (torch.log(q) - torch.log(p)) + (1 - q) * (torch.log1p(-q) - torch.log1p(-p))


def kl_uniform_prior(q: torch.Tensor) -> torch.Tensor:
    """KL term of Eq. 8 (uniform prior) averaged over layers: ``mean_l KL(q(z_l) || Bern(1/2)) = mean_l log 2 - H(q_l)``."""
    return bernoulli_kl(q, torch.full_like(q, 0.5)).mean()


def kl_aggregated_prior(q: torch.Tensor, q_all: torch.Tensor) -> torch.Tensor:
    """KL term of Eq. 8 (aggregated prior, Sec. 5) averaged over layers: ``mean_l KL(q(z_l | n) || q~(z_l))``,
    ``q~ = mean_n q(z_l | n)`` detached."""
    return bernoulli_kl(q, q_all.mean(dim=0).detach()).mean()


def layer_count_loss(q: torch.Tensor, k: int) -> torch.Tensor:
    """``(sum_l q(z_l) - K)^2``: the expected number of selected layers is pushed to K (Eq. 8's L_K on the
    expected count only, ``--latent-lk-form mean``; see :func:`expected_layer_count_loss`)."""
    return (q.sum() - float(k)) ** 2


def expected_layer_count_loss(q_all: torch.Tensor, k: int) -> torch.Tensor:
    """The paper's ``L_K`` on *sampled* gates, in expectation over them (Eq. 8; App. D, Fig. 8).

    ``L_K = (sum_l u_l(z) - K)^2`` with the utilisation ``u_l(z) = mean_n z_{n,l}`` of the sampled 0/1 gates
    ``z_{n,l} ~ Bernoulli(q_{n,l})`` (independent).  Its expectation, exact and differentiable in ``q``::

        E_z[L_K] = (sum_l mean_n q_{n,l} - K)^2  +  sum_{n,l} q_{n,l} (1 - q_{n,l}) / N^2

    (the square of the mean plus the variance of the sampled layer count).  The first term only fixes the
    expected depth, which any spread of ``q`` over the layers satisfies (e.g. three gates at 1/3 for K - 1
    layers); the variance term is zero only at ``q in {0, 1}`` and is what discretises the gates, as the
    appendix observes of ``L_K``.  ``q_all``: ``(N, L)`` gate probabilities of the N languages that share the
    count (one row for the per-language form)."""
    n = q_all.size(0)
    return layer_count_loss(q_all.mean(dim=0), k) + (q_all * (1 - q_all)).sum() / n ** 2


def layer_utilisation(q_all: torch.Tensor) -> torch.Tensor:
    """Utilisation of each layer aggregated over languages, ``u_l = mean_n q(z_l | n)``: the argument of
    L_K (Eq. 8) in the multilingual setting, so only the *average* depth is pulled to K."""
    return q_all.mean(dim=0)


def gates_are_hard(num_updates: int, soft_updates: Optional[int], hard: bool = False) -> bool:
    """Soft-to-hard schedule: relaxed gates (Eq. 5) for the first ``soft_updates`` updates, straight-through
    0/1 gates afterwards (``None``: soft throughout unless ``hard``), so the trained network is the evaluated one."""
    return bool(hard) or (soft_updates is not None and num_updates >= soft_updates)


def annealed_lk_weight(num_updates: int, weight: float, anneal_updates: int) -> float:
    """L_K weight ``lambda``: 0 while beta anneals, then linear from 0 to ``weight`` over the next
    ``anneal_updates`` updates (fairseq's ``examples/latent_depth`` schedule); ``anneal_updates = 0``: constant."""
    if weight < 0:
        raise UserError(f"L_K weight must be >= 0, got {weight}")
    if anneal_updates <= 0:
        return float(weight)
    return float(weight) * min(1.0, max(0, num_updates - anneal_updates) / anneal_updates)


def selection_mode(args, side: str) -> str:
    """Inference selection of one side: ``--{side}-latent-select``, else ``--latent-eval-select``, else threshold."""
    return getattr(args, f"{side}_latent_select", None) or getattr(args, "latent_eval_select", None) or "threshold"


def annealed_beta(num_updates: int, weight: float, anneal_updates: int) -> float:
    """KL weight ``beta``: linear from 0 to ``weight`` over ``anneal_updates`` updates; never negative."""
    if weight < 0:
        raise UserError(f"KL weight must be >= 0, got {weight}")
    if anneal_updates <= 0:
        return float(weight)
    return float(weight) * min(1.0, max(0, num_updates) / anneal_updates)


def annealed_tau(num_updates: int, tau: float, tau_min: float, rate: float) -> float:
    """Gumbel-sigmoid temperature ``max(tau_min, tau * exp(-rate * t))`` (``rate = 0``: constant)."""
    if tau <= 0 or tau_min <= 0:
        raise UserError(f"latent temperature must be > 0, got tau={tau}, tau_min={tau_min}")
    return max(tau_min, tau * math.exp(-rate * max(0, num_updates)))
