"""Generate from a (sub-)model inside a training step with fairseq's SequenceGenerator.

Used by meta back-translation (the backward model samples pseudo-sources) and
wake-sleep (back-translations and dreamt pairs).  The model is switched to
eval mode and generation runs under ``no_grad``; the previous mode is restored
afterwards, so dropout in the surrounding training step is unaffected.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, List

import torch
from fairseq import search
from fairseq.sequence_generator import SequenceGenerator

from fairseq_metabt.errors import UserError

GENERATION_MODES = ("sample", "greedy", "beam")


def inverse_cdf_sample(probs: torch.Tensor) -> torch.Tensor:
    """One draw per row from unnormalised probabilities ``(..., V)``: indices of shape ``(...)``.

    The same distribution as ``torch.multinomial(probs, 1)``, drawn by inverting the row's CDF with one
    uniform number per row instead of a random number per vocabulary entry: on a CPU the draw is about 4x
    cheaper at V = 2k and generation about 2x faster (``scripts/benchmark_sampling.py``, ``docs/benchmarks.md``).  ``right=True``
    never lands on a zero-probability entry (banned tokens, truncated top-k/top-p entries)."""
    cdf = probs.float().cumsum(dim=-1)
    u = torch.rand(cdf.shape[:-1] + (1,), device=cdf.device, dtype=cdf.dtype) * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.size(-1) - 1).squeeze(-1)


class InverseCdfSampling(search.Sampling):
    """fairseq's ``search.Sampling`` (temperature, top-k, top-p, beams of independent samples) with the
    multinomial draw replaced by :func:`inverse_cdf_sample`; scores, beams and index remapping as fairseq's."""

    def step(self, step: int, lprobs: torch.Tensor, scores: torch.Tensor, prev_output_tokens=None,
             original_batch_idxs=None):
        bsz, beam_size, _ = lprobs.size()
        if step == 0:  # every hypothesis starts the same: draw beam_size samples from the first one
            lprobs = lprobs[:, :1, :].contiguous()
        top = None
        if self.sampling_topp > 0:
            probs, top = self._sample_topp(lprobs)
        elif self.sampling_topk > 0:
            lprobs, top = lprobs.topk(self.sampling_topk)
            probs = lprobs.exp_()
        else:
            probs = lprobs.exp_()
        probs = probs.expand(bsz, beam_size, -1)
        idx = inverse_cdf_sample(probs)
        scores_buf = probs.gather(2, idx.unsqueeze(-1)).log_().view(bsz, -1)
        if top is not None:  # positions in the truncated set -> vocabulary ids
            idx = top.expand(bsz, beam_size, -1).gather(2, idx.unsqueeze(-1)).squeeze(2)
        if step == 0:
            beams_buf = idx.new_zeros(bsz, beam_size)
        else:
            beams_buf = torch.arange(beam_size, device=idx.device).repeat(bsz, 1)
            scores_buf.add_(scores[:, :, step - 1].gather(1, beams_buf))
        return scores_buf, idx, beams_buf


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode: ``sample`` (temperature / top-k / top-p), ``greedy`` or ``beam``."""

    mode: str = "sample"
    beam: int = 5
    temperature: float = 1.0
    sampling_topk: int = -1
    sampling_topp: float = -1.0
    max_len_a: float = 1.2
    max_len_b: int = 10

    def __post_init__(self):
        if self.mode not in GENERATION_MODES:
            raise UserError(f"generation mode {self.mode!r} unknown: choose one of {GENERATION_MODES}")
        if self.temperature <= 0:
            raise UserError(f"generation temperature must be > 0, got {self.temperature}")
        if self.mode == "beam" and self.beam < 1:
            raise UserError(f"beam size must be >= 1, got {self.beam}")


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Eval mode inside the block, the previous mode restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class InStepGenerator:
    """A cached SequenceGenerator for one model and one set of settings."""

    def __init__(self, model: torch.nn.Module, tgt_dict, settings: GenerationSettings):
        self.model = model
        self.settings = settings
        s = settings
        strategy = InverseCdfSampling(tgt_dict, s.sampling_topk, s.sampling_topp) if s.mode == "sample" else None
        # SequenceGenerator's constructor switches the model to eval mode for good; keep the caller's mode
        with eval_mode(model):
            self.generator = SequenceGenerator(
                [model], tgt_dict,
                beam_size=s.beam if s.mode == "beam" else 1,
                max_len_a=s.max_len_a, max_len_b=s.max_len_b,
                temperature=s.temperature if s.mode == "sample" else 1.0,
                search_strategy=strategy,
            )

    def __call__(self, net_input: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        """One output per input row (EOS-terminated token tensors, best hypothesis).

        Sampling draws from torch's global RNG, which fairseq's trainer reseeds
        every update, so a resumed run samples the same pseudo data."""
        sample = {"net_input": {"src_tokens": net_input["src_tokens"], "src_lengths": net_input["src_lengths"]}}
        with eval_mode(self.model), torch.no_grad():
            hypos = self.generator.generate([self.model], sample)
        return [h[0]["tokens"] for h in hypos]

    def max_len(self, src_tokens: torch.Tensor) -> int:
        """The step at which fairseq's generator forces EOS for this (padded) input batch:
        ``min(int(a * width + b), max_decoder_positions - 1)``, read from the generator itself."""
        g = self.generator
        return min(int(g.max_len_a * src_tokens.size(1) + g.max_len_b), g.max_len - 1)


def _plain_softmax(model: torch.nn.Module) -> bool:
    """True when the model's normalised probabilities are ``log_softmax(logits.float())`` (no adaptive
    softmax), so log-probabilities of chosen tokens can be read as ``logit - logsumexp(logits)``."""
    decoder = getattr(model, "decoder", None)
    return decoder is not None and getattr(decoder, "adaptive_softmax", None) is None


def sampling_log_probs(model: torch.nn.Module, batch: Dict, settings: GenerationSettings, pad: int, eos: int,
                       max_len: int, min_len: int = 1) -> torch.Tensor:
    """``log q(target | source)`` per row under the distribution the sample was *drawn from*.

    REINFORCE (Pham et al. 2021, Eq. 8/17: ``grad log P(x_hat | y; psi)``) needs the
    log-probability of the policy that produced ``x_hat``.  fairseq's ``SequenceGenerator``
    draws each token from the model's distribution distorted by: the temperature (logits / T,
    sampling only), ``pad`` never chosen, EOS banned before step ``min_len`` (1), EOS forced at
    step ``max_len`` (probability 1: no gradient), and top-k or nucleus truncation (sampling
    only; renormalised by the multinomial draw).  The same distortions are applied here,
    teacher-forced over the whole target at once; the truncated set is a step function of the
    probabilities, so it carries no gradient.  ``batch`` holds ``source -> target`` pairs (target
    EOS-terminated, right-padded); returns shape ``(bsz,)``.

    The renormalised distribution is ``softmax`` of the logits with the banned entries at -inf (a
    log-softmax shifts each row by a constant, which renormalising removes), so log q of the chosen token
    is ``z_target - logsumexp(z_allowed)`` (one fused cross-entropy), where before issue 31 a log-softmax,
    a masked copy and a renormalisation each wrote and backpropagated a ``(B, T, V)`` tensor.
    """
    sample = settings.mode == "sample"
    net_output = model(**batch["net_input"])
    logits = net_output[0]
    if sample and settings.temperature != 1.0:
        logits = logits / settings.temperature
    if _plain_softmax(model):
        z = logits.float()
    else:  # adaptive softmax: its own normalisation first (renormalising below removes the shift)
        z = model.get_normalized_probs((logits, *net_output[1:]), log_probs=True).float()
    steps = z.size(1)
    ban = torch.zeros(z.shape[1:], dtype=torch.bool, device=z.device)  # (T, V)
    ban[:, pad] = True
    ban[:min_len, eos] = True
    if max_len < steps:
        ban[max_len:, :] = True
        ban[max_len:, eos] = False
    if sample and settings.sampling_topp > 0:
        # the nucleus is taken on the model's probabilities (EOS/pad rules applied, not renormalised),
        # as fairseq's Sampling._sample_topp does
        with torch.no_grad():
            lp = torch.log_softmax(z, dim=-1).masked_fill_(ban, float("-inf"))
            ban = ban | ~_nucleus(lp, settings.sampling_topp)
    elif sample and settings.sampling_topk > 0:
        with torch.no_grad():
            top = z.masked_fill(ban, float("-inf")).topk(min(settings.sampling_topk, z.size(-1)), dim=-1).indices
            ban = ban | ~torch.zeros_like(z, dtype=torch.bool).scatter_(-1, top, True)
    # a forced EOS (probability one) reads 0 after the ban: exact, and no gradient flows through it
    return -_token_nll(z.masked_fill(ban, float("-inf")), batch["target"], pad).sum(-1)


def _token_nll(z: torch.Tensor, target: torch.Tensor, pad: int) -> torch.Tensor:
    """``logsumexp(z) - z_target`` per position (0 at padding), shaped like ``target``: log-softmax and gather
    fused (``F.cross_entropy``), whose backward is one pass over (B, T, V) where gather and logsumexp take
    several (about 35 % less time for that part on a CPU, issue 31)."""
    return torch.nn.functional.cross_entropy(z.reshape(-1, z.size(-1)), target.reshape(-1), reduction="none",
                                             ignore_index=pad).view_as(target)


def _nucleus(lprobs: torch.Tensor, p: float) -> torch.Tensor:
    """The tokens fairseq's ``Sampling._sample_topp`` keeps: the most likely ones, in order, up to and
    including the first whose cumulative (unrenormalised) probability reaches ``p``."""
    probs = lprobs.exp()
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    below = sorted_probs.cumsum(dim=-1).lt(p)
    last = below.long().sum(-1, keepdim=True).clamp_(max=probs.size(-1) - 1)
    keep_sorted = below.scatter(-1, last, True)
    return torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)


def sequence_log_probs(model: torch.nn.Module, batch: Dict, pad: int) -> torch.Tensor:
    """``log P(target | source)`` summed over the target tokens of each row (shape ``(bsz,)``).

    With a plain softmax, ``z_target - logsumexp(z)`` (the same value as gathering from the log-softmax,
    without writing and back-propagating the ``(B, T, V)`` log-probabilities)."""
    net_output = model(**batch["net_input"])
    target = batch["target"]
    if _plain_softmax(model):
        return -_token_nll(net_output[0].float(), target, pad).sum(-1)
    else:
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        token_lp = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return token_lp.masked_fill(target.eq(pad), 0.0).sum(-1)
