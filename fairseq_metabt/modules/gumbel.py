"""Gumbel estimators shared by the STGS reconstruction and latent-depth methods.

* :func:`straight_through_gumbel_softmax` — Niu et al. (2019) Eq. 5–6: a hard
  one-hot sample ``one_hot(argmax(a + G))`` with ``G ~ Gumbel(0, beta)`` in the
  forward pass, and the gradient of ``softmax((a + G) / tau)`` in the backward
  pass (Jang et al., 2017; Bengio et al., 2013).
* :func:`gumbel_sigmoid` — the relaxed Bernoulli used for latent layer gates
  (Li et al., 2020, Eq. 5): ``sigmoid((logit + L) / tau)`` with logistic noise
  ``L = log u - log(1 - u)`` (the difference of two Gumbel variables), with an
  optional straight-through hard gate.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from fairseq_metabt.errors import UserError


def _uniform_like(t: torch.Tensor, generator: Optional[torch.Generator], eps: float) -> torch.Tensor:
    """Uniform(eps, 1 - eps) of ``t``'s shape in at least fp32: in fp16/bf16 (autocast logits) values near 1
    round to 1 and the noise built from them to inf, so callers cast only the finished noise."""
    u = torch.rand(t.shape, dtype=torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype,
                   device=t.device, generator=generator)
    return u.clamp_(eps, 1.0 - eps)


def gumbel_noise(like: torch.Tensor, scale: float = 1.0, generator: Optional[torch.Generator] = None,
                 eps: float = 1e-10) -> torch.Tensor:
    """i.i.d. Gumbel(0, ``scale``) noise of ``like``'s shape, dtype and device."""
    if scale < 0:
        raise UserError(f"Gumbel scale must be >= 0, got {scale}")
    if scale == 0:
        return torch.zeros_like(like)
    return (-scale * torch.log(-torch.log(_uniform_like(like, generator, eps)))).to(like.dtype)


def straight_through_gumbel_softmax(
    logits: torch.Tensor,
    tau: float = 2.0,
    beta: float = 1.0,
    dim: int = -1,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """STGS sample (Niu et al. 2019, Eq. 5–6).

    Returns ``(st, soft)``: ``st`` equals the one-hot ``argmax(logits + G)``
    in value and carries the gradient of ``soft = softmax((logits + G) / tau)``;
    ``G ~ Gumbel(0, beta)`` (``beta = 0``: greedy).
    """
    if tau <= 0:
        raise UserError(f"STGS temperature tau must be > 0, got {tau}")
    perturbed = logits + gumbel_noise(logits, beta, generator)
    soft = F.softmax(perturbed.float() / tau, dim=dim).to(logits.dtype)
    index = perturbed.argmax(dim=dim, keepdim=True)
    hard = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return hard - soft.detach() + soft, soft


def gumbel_sigmoid(
    logits: torch.Tensor,
    tau: float = 1.0,
    hard: bool = False,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Relaxed Bernoulli sample ``sigmoid((logits + log u - log(1-u)) / tau)`` (Li et al. 2020, Eq. 5).

    ``P(sample > 0.5) = sigmoid(logits)`` for every ``tau``.  With ``hard``,
    the value is the 0/1 gate and the gradient that of the relaxed sample.
    """
    if tau <= 0:
        raise UserError(f"Gumbel-sigmoid temperature tau must be > 0, got {tau}")
    u = _uniform_like(logits, generator, 1e-6)
    soft = torch.sigmoid((logits + (torch.log(u) - torch.log1p(-u)).to(logits.dtype)) / tau)
    if not hard:
        return soft
    return (soft > 0.5).to(soft.dtype) - soft.detach() + soft
