"""DDS per-language rewards (Wang et al. 2020, Alg. 2 lines 7–8; appendix A.1, Eq. 13 and 17).

* :func:`language_reward` — ``r_i = sim(grad[S_i], grad J(theta_t, D_dev))``: cosine (the paper's
  implementation, A.1), dot (Eq. 13 as derived) or ``adam``: the cosine after the per-coordinate step
  scale of the model's Adam, ``grad[S_i] * P`` with ``P ~ sqrt(1 - beta2^t) / sqrt(v)`` (Eq. 17).
* :func:`adam_step_scale` — that ``P`` read from fairseq's optimizer state.
* :func:`reward_spread` — how far the rewards of one scorer update stand apart: their std across
  languages against the gap between the best and their mean (logged with every scorer update).
* :class:`LanguageGradientEMA` — the EMA path of Alg. 2 line 7 (``--dds-grad-source ema``), with the
  EMA counted in tokens so that a rarely sampled language is not averaged over fewer tokens (which
  lowers its cosine: a bias against it), stale languages flagged, and non-finite gradients kept out.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch

from fairseq_metabt.errors import UserError
from fairseq_metabt.modules import gradients as G

REWARD_KINDS = ("cosine", "dot", "adam")


def language_reward(g: torch.Tensor, dev: torch.Tensor, kind: str = "cosine",
                    step_scale: Optional[torch.Tensor] = None) -> Tuple[float, bool]:
    """One language's reward; the flag is False (and the reward 0) for a zero or non-finite gradient."""
    if kind == "adam":
        if step_scale is None:
            raise ValueError("the adam reward needs the optimizer's per-coordinate step scale")
        g, kind = g * step_scale, "cosine"
    if kind not in ("cosine", "dot"):
        raise ValueError(f"unknown reward {kind!r}: use one of {', '.join(REWARD_KINDS)}")
    if not bool(torch.isfinite(g).all()) or not bool(torch.isfinite(dev).all()):
        return 0.0, False
    r, ok = G.similarity(g, dev, kind)
    return (float(r), True) if ok else (0.0, False)


def reward_spread(rewards: torch.Tensor, valid: Optional[torch.Tensor] = None) -> Tuple[float, float]:
    """``(std, gap)`` of the valid rewards across languages: the population std and ``max - mean``
    (0, 0 with fewer than two valid rewards).  A gap of about one std or two is what noise gives; a
    language that leads by several stds, update after update, is a signal."""
    r = rewards.detach().double().reshape(-1)
    if valid is not None:
        r = r[valid.bool().reshape(-1).to(r.device)]
    if r.numel() < 2:
        return 0.0, 0.0
    return float(r.std(unbiased=False)), float(r.max() - r.mean())


def adam_step_scale(optimizer, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``P = sqrt(1 - beta2^t) / (sqrt(v_t) + eps)`` per coordinate of ``params`` (flat fp32), Eq. 17's
    ``g'(x)`` without the learning rate (a common factor, irrelevant to a cosine).  ``optimizer`` is
    fairseq's: its ``.optimizer`` is the torch optimizer whose state is keyed by the model's parameters
    (fp32, ``--amp`` or ``--memory-efficient-fp16``; plain ``--fp16`` keeps flat fp32 copies instead)."""
    out, found = [], 0
    for p, mom in zip(params, G.adam_moments(optimizer, params)):  # --amp's double unscale corrected there
        if mom is not None:
            out.append((1.0 - mom.beta2 ** mom.step) ** 0.5 / (mom.exp_avg_sq.reshape(-1).sqrt() + mom.eps))
            found += 1
        else:  # no step taken yet for this parameter: plain gradient (SGD, Eq. 13)
            out.append(torch.ones(p.numel(), device=p.device))
    if params and not found:
        raise UserError("--dds-reward adam reads Adam's second moments of the model's parameters, but the "
                         "optimizer keeps none for them: train with --optimizer adam in fp32, --amp or "
                         "--memory-efficient-fp16 (not --fp16), or choose --dds-reward cosine")
    return torch.cat(out)


class LanguageGradientEMA:
    """Per-language gradient EMAs ``grad[S_i]`` (Alg. 2 line 7), counted in tokens.

    Alg. 2 keeps ``grad[S_i] <- a1 grad[S_i] + a2 g_i`` per update, ``g_i`` the mean gradient per token
    of language i in that update.  Under skewed sampling a rare language's ``g_i`` averages few tokens,
    so its EMA is noisier and its cosine with the dev gradient lower: the reward then depends on the
    sampling probability itself.  Here language i keeps a decayed gradient sum ``S_i`` and token count
    ``N_i``; an update giving it ``m_i`` of the ``M`` tokens of all ``n`` languages decays both by
    ``a1^(n m_i / M)`` before adding, and the reward reads ``S_i / N_i``.  At uniform sampling the decay
    is ``a1`` per update as in the paper; otherwise every language averages about the same number of
    tokens (``a2`` cancels in the ratio).  The price is an older theta for a rare language: one without
    a token since ``stale_after`` is flagged stale (:meth:`stale`) and gets no reward.  Updates with a
    non-finite gradient (fp16/AMP overflow) are dropped whole, so nothing non-finite ever enters.
    """

    def __init__(self, num_langs: int, dim: int, alpha1: float, device=None):
        self.alpha1 = float(alpha1)
        self.sums = torch.zeros(num_langs, dim, device=device)
        self.tokens = torch.zeros(num_langs, dtype=torch.float64)
        self.last_seen = torch.full((num_langs,), -1, dtype=torch.long)  # update of the last token

    @property
    def seen(self) -> torch.Tensor:
        return self.last_seen >= 0

    def nbytes(self) -> int:
        return self.sums.numel() * self.sums.element_size()

    @torch.no_grad()
    def update(self, grad_sums: torch.Tensor, ntokens: torch.Tensor, update: int) -> bool:
        """Fold one update in: ``grad_sums`` (n, dim) summed gradients and ``ntokens`` (n,) tokens per
        language.  Returns False (and changes nothing) when a gradient or count is not finite."""
        ntokens = ntokens.detach().to(torch.float64).cpu()
        if not bool(torch.isfinite(ntokens).all()) or not bool(torch.isfinite(grad_sums).all()):
            return False
        total = float(ntokens.sum())
        if total <= 0:
            return True
        n = len(ntokens)
        for lang in range(n):
            m = float(ntokens[lang])
            if m > 0:
                decay = self.alpha1 ** (n * m / total)
                self.sums[lang].mul_(decay).add_(grad_sums[lang].to(self.sums.dtype))
                self.tokens[lang] = self.tokens[lang] * decay + m
                self.last_seen[lang] = int(update)
        return True

    def stale(self, stale_after: int) -> torch.Tensor:
        """Languages seen before but not at or after update ``stale_after``."""
        return self.seen & (self.last_seen < int(stale_after))

    def mean(self, lang: int) -> torch.Tensor:
        """``S_i / N_i``: language i's token-weighted mean gradient."""
        return self.sums[lang] / max(float(self.tokens[lang]), 1e-12)

    def rewards(self, dev: torch.Tensor, kind: str = "cosine", step_scale: Optional[torch.Tensor] = None,
                stale_after: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Rewards (n,) and which are valid: seen, not stale, finite, non-degenerate."""
        n = len(self.sums)
        out, valid = torch.zeros(n), torch.zeros(n, dtype=torch.bool)
        stale = self.stale(stale_after) if stale_after is not None else torch.zeros(n, dtype=torch.bool)
        for lang in range(n):
            if bool(self.seen[lang]) and not bool(stale[lang]):
                r, ok = language_reward(self.mean(lang), dev, kind, step_scale)
                out[lang], valid[lang] = r, ok
        return out, valid

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"sums": self.sums.detach().cpu().clone(), "tokens": self.tokens.clone(),
                "last_seen": self.last_seen.clone()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        if tuple(state["sums"].shape) != tuple(self.sums.shape):
            raise UserError(f"the checkpoint's gradient EMAs have shape {tuple(state['sums'].shape)}, this run "
                             f"needs {tuple(self.sums.shape)}: keep --dds-grad-params and --dds-grad-sketch-dim")
        self.sums.copy_(state["sums"].to(self.sums.device))
        self.tokens.copy_(state["tokens"])
        self.last_seen.copy_(state["last_seen"])
