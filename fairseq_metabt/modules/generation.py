"""Generate from a (sub-)model inside a training step with fairseq's SequenceGenerator.

Used by meta back-translation (the backward model samples pseudo-sources) and
wake-sleep (back-translations and dreamt pairs).  The model is switched to
eval mode and generation runs under ``no_grad``; the previous mode is restored
afterwards, so dropout in the surrounding training step is unaffected.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from fairseq import search
from fairseq.models.transformer import TransformerDecoderBase
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

    def draw(self, lprobs: torch.Tensor, beam_size: int):
        """Truncate ``(bsz, 1 or beam_size, V)`` log-probabilities (top-p / top-k, as fairseq) and draw one token
        per (row, beam): ``(probs, positions, tokens)``, ``probs`` the unnormalised truncated probabilities
        ``(bsz, beam_size, V')``, ``positions`` the draws' indices in them, ``tokens`` their vocabulary ids."""
        bsz = lprobs.size(0)
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
        if top is None:  # positions in the truncated set -> vocabulary ids
            return probs, idx, idx
        return probs, idx, top.expand(bsz, beam_size, -1).gather(2, idx.unsqueeze(-1)).squeeze(2)

    def step(self, step: int, lprobs: torch.Tensor, scores: torch.Tensor, prev_output_tokens=None,
             original_batch_idxs=None):
        bsz, beam_size, _ = lprobs.size()
        if step == 0:  # every hypothesis starts the same: draw beam_size samples from the first one
            lprobs = lprobs[:, :1, :].contiguous()
        probs, idx, tokens = self.draw(lprobs, beam_size)
        scores_buf = probs.gather(2, idx.unsqueeze(-1)).log_().view(bsz, -1)
        if step == 0:
            beams_buf = idx.new_zeros(bsz, beam_size)
        else:
            beams_buf = torch.arange(beam_size, device=idx.device).repeat(bsz, 1)
            scores_buf.add_(scores[:, :, step - 1].gather(1, beams_buf))
        return scores_buf, tokens, beams_buf


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
        net_input = {"src_tokens": net_input["src_tokens"], "src_lengths": net_input["src_lengths"]}
        with eval_mode(self.model), torch.no_grad():
            if self._lean:
                return self._sample(net_input)
            hypos = self.generator.generate([self.model], {"net_input": net_input})
        return [h[0]["tokens"] for h in hypos]

    @property
    def _lean(self) -> bool:
        """Sampling (one hypothesis per row) from one encoder-decoder with an incremental decoder: the loop of
        :meth:`_sample`, without SequenceGenerator's beam bookkeeping."""
        g = self.generator
        return (self.settings.mode == "sample" and g.beam_size == 1 and g.model.has_encoder()
                and g.model.has_incremental_states() and g.lm_model is None and not g.match_source_len
                and g.repeat_ngram_blocker is None)

    def _sample(self, net_input: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        """The same draws as ``SequenceGenerator.generate`` with :class:`InverseCdfSampling` and one hypothesis
        per row (issue 31): the same decoder calls on the same rows, the same masks (pad never, EOS not before
        ``min_len``, EOS forced at ``max_len``), the same uniforms in the same order (one per unfinished row
        and step, rows in input order), finished rows dropped from the batch at the step they end; what goes
        is the generator's per-step work for beams and scores, which a one-hypothesis sample never reads (the
        identity reordering of every cached key and value each step, score and attention buffers, the
        finalisation's Python loops; ``docs/benchmarks.md``, issue 31).  ``tests/test_modules_sampling.py``
        compares the tokens with the generator's on a fixed seed."""
        g, model = self.generator, self.model
        src_tokens = net_input["src_tokens"]
        bsz, max_len = src_tokens.size(0), self.max_len(src_tokens)
        if bsz == 0:
            return []
        encoder_out = model.encoder.forward_torchscript(net_input)
        state: Dict[str, Dict[str, Optional[torch.Tensor]]] = {}
        tokens = src_tokens.new_full((bsz, max_len + 2), g.pad)
        tokens[:, 0] = g.eos
        rows = list(range(bsz))  # input position of each row still decoding
        out: List[Optional[torch.Tensor]] = [None] * bsz
        for step in range(max_len + 1):
            decoder_out = model.decoder.forward(tokens[:, :step + 1], encoder_out=encoder_out, incremental_state=state)
            logits = decoder_out[0][:, -1:, :].div_(g.temperature)
            lprobs = model.get_normalized_probs((logits, decoder_out[1] if len(decoder_out) > 1 else None),
                                                log_probs=True, sample=None)[:, -1, :]
            lprobs.masked_fill_(lprobs.isnan(), -math.inf)
            lprobs[:, g.pad] = -math.inf
            lprobs[:, g.unk] -= g.unk_penalty
            if step >= max_len:
                lprobs[:, :g.eos] = -math.inf
                lprobs[:, g.eos + 1:] = -math.inf
            if step < g.min_len:
                lprobs[:, g.eos] = -math.inf
            if g.token_indices_to_suppress is not None:
                lprobs[:, g.token_indices_to_suppress] = -math.inf
            probs, idx, drawn = g.search.draw(lprobs.unsqueeze(1), 1)
            drawn = drawn.view(-1)
            tokens[:, step + 1] = drawn
            # an EOS of probability zero (every entry banned) does not end a row, as in the generator
            ended = drawn.eq(g.eos) & probs.gather(2, idx.unsqueeze(-1)).view(-1).gt(0)
            if not bool(ended.any()):
                continue
            done = ended.nonzero().view(-1).tolist()
            for i in done:
                out[rows[i]] = tokens[i, 1:step + 2].clone()
            if len(done) == len(rows):
                return out
            keep = (~ended).nonzero().view(-1)
            rows = [rows[i] for i in keep.tolist()]
            tokens = tokens.index_select(0, keep)
            model.decoder.reorder_incremental_state_scripting(state, keep)
            encoder_out = model.encoder.reorder_encoder_out(encoder_out, keep)
        # the generator asserts the same: the EOS forced at max_len had probability zero (non-finite scores)
        raise RuntimeError(f"in-step sampling: {len(rows)} rows did not end at the forced EOS")

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


def _packable(model: torch.nn.Module) -> bool:
    """A fairseq Transformer with a plain softmax: its logits are ``decoder.output_layer`` of the features
    ``model(..., features_only=True)`` returns, position by position."""
    return _plain_softmax(model) and isinstance(model.decoder, TransformerDecoderBase)


def _target_logits(model: torch.nn.Module, batch: Dict, pad: int, owner: torch.nn.Module = None):
    """The logits at the target's non-padding positions, ``(N, V)``, with their ``(rows, steps)``;
    ``owner``: the Transformer whose ``decoder`` ``model`` runs (``model`` itself unless a wrapper).

    The output layer (and everything over the vocabulary after it: masks, log-softmax, their backward) runs
    on the N real positions only, not on the ``B x T`` of the padded batch (issue 31: y' and x_hat are not
    length-bucketed, so even length-sorted chunks keep 20-40 % padding on the target side).  The logits of
    a position do not depend on the others', so the values are the padded batch's."""
    target = batch["target"]
    features = model(**batch["net_input"], features_only=True)[0]
    rows, steps = target.ne(pad).nonzero(as_tuple=True)
    return (owner or model).decoder.output_layer(features[rows, steps]), rows, steps


def packed_loss_input(model: torch.nn.Module, owner: torch.nn.Module, batch: Dict, pad: int, criterion):
    """``(net_output, sample)`` for ``criterion.compute_loss(owner, net_output, sample, reduce=False)``: the
    padded batch's, or, for a fairseq Transformer and a criterion that reads every target position as
    ``log_softmax(logits)`` against ``sample["target"]`` (label-smoothed cross-entropy), one row of the N real
    positions (:func:`_target_logits`), whose per-token losses and their sum are the padded batch's."""
    if not (_packable(owner) and hasattr(criterion, "get_lprobs_and_target")
            and getattr(criterion, "ignore_prefix_size", 0) == 0):
        return model(**batch["net_input"]), batch
    logits, rows, steps = _target_logits(model, batch, pad, owner)
    return (logits.unsqueeze(0), {}), {"target": batch["target"][rows, steps].unsqueeze(0)}


def _row_sums(values: torch.Tensor, rows: torch.Tensor, bsz: int) -> torch.Tensor:
    """Per-row sums of the packed per-position ``values``: shape ``(bsz,)``."""
    return values.new_zeros(bsz).index_add(0, rows, values)


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
    a masked copy and a renormalisation each wrote and backpropagated a ``(B, T, V)`` tensor; for a fairseq
    Transformer, over the target's real positions only (:func:`_target_logits`).
    """
    sample = settings.mode == "sample"
    target = batch["target"]
    if _packable(model):
        logits, rows, steps = _target_logits(model, batch, pad)
    else:
        net_output = model(**batch["net_input"])
        logits = net_output[0]
    if sample and settings.temperature != 1.0:
        logits = logits / settings.temperature
    if _plain_softmax(model):
        z = logits.float()
    else:  # adaptive softmax: its own normalisation first (renormalising below removes the shift)
        z = model.get_normalized_probs((logits, *net_output[1:]), log_probs=True).float()
    steps_total = target.size(1)
    ban = torch.zeros(steps_total, z.size(-1), dtype=torch.bool, device=z.device)  # (T, V)
    ban[:, pad] = True
    ban[:min_len, eos] = True
    if max_len < steps_total:
        ban[max_len:, :] = True
        ban[max_len:, eos] = False
    if _packable(model):
        ban, tokens = ban[steps], target[rows, steps]  # (N, V), (N,)
    else:
        ban, tokens = ban.expand_as(z), target
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
    nll = _token_nll(z.masked_fill(ban, float("-inf")), tokens, pad)
    return -_row_sums(nll, rows, target.size(0)) if _packable(model) else -nll.sum(-1)


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
    without writing and back-propagating the ``(B, T, V)`` log-probabilities), for a fairseq Transformer at
    the target's real positions only (:func:`_target_logits`)."""
    target = batch["target"]
    if _packable(model):
        logits, rows, steps = _target_logits(model, batch, pad)
        return -_row_sums(_token_nll(logits.float(), target[rows, steps], pad), rows, target.size(0))
    net_output = model(**batch["net_input"])
    if _plain_softmax(model):
        return -_token_nll(net_output[0].float(), target, pad).sum(-1)
    lprobs = model.get_normalized_probs(net_output, log_probs=True)
    token_lp = lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return token_lp.masked_fill(target.eq(pad), 0.0).sum(-1)
