"""Free-running straight-through decoding and soft-input encoding (Niu et al. 2019, §3.2).

* :func:`free_running_decode` samples a translation token by token from the
  decoder's own previous predictions (no teacher forcing): at step t the
  logits ``a(h_t)`` (Eq. 1) are perturbed with Gumbel(0, β) noise, the hard
  one-hot ``argmax`` is taken (Eq. 5) with the gradient of
  ``softmax((a + G)/τ)`` (Eq. 6), and the straight-through one-hot times the
  embedding matrix is the next step's input embedding ``E(ê_<t)`` (Eq. 2).
  It runs on fairseq's incremental state, so each step costs one position,
  and the one-hot product is a row lookup with the dense product's exact
  gradient (:func:`~fairseq_metabt.modules.gumbel.straight_through_embedding`),
  so no B×T×V tensor is built in the forward pass.
* :func:`encode_soft` encodes a sequence given by its input embeddings (the
  sample's straight-through one-hots × E, or any soft embeddings) through
  fairseq's own ``TransformerEncoder(token_embeddings=...)``.

Both work on any fairseq ``TransformerModel``; the reconstruction criterion
additionally needs all embeddings shared (``--share-all-embeddings``), so the
one-hots of the translator's vocabulary are the reconstructor's inputs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fairseq_metabt.modules.gumbel import gumbel_argmax_softmax, straight_through_embedding


@dataclass
class FreeRunningSample:
    """A batch of free-running samples, masked after each row's first EOS.

    ``tokens`` (B, T): sampled ids, ``pad`` after the first EOS (which is kept);
    ``embeddings`` (B, T, C): straight-through one-hots × E (Eq. 2): value
    ``E[tokens]``, gradient of Eq. 6 through the sampled steps (forced tag and
    EOS: E only), zero after the first EOS;
    ``lengths`` (B,): tokens up to and including the first EOS;
    ``ended_with_eos`` (B,): EOS was chosen before the length cap forced it.
    """

    tokens: Tensor
    embeddings: Tensor
    lengths: Tensor
    ended_with_eos: Tensor


@contextlib.contextmanager
def embedding_output(embedding: nn.Module, value: Tensor) -> Iterator[None]:
    """Make ``embedding(ids)`` return ``value`` (same shape) while inside the block.

    fairseq's decoder computes ``embed_scale * embed_tokens(prev_output_tokens)``
    with no argument for precomputed embeddings; substituting the module's
    output keeps every other line of fairseq's decoder (positions, scaling,
    layers, incremental state) in use unchanged.
    """

    def hook(module: nn.Module, inputs, output: Tensor) -> Tensor:
        if output.shape != value.shape:
            raise RuntimeError(f"soft embeddings have shape {tuple(value.shape)}, the decoder expects "
                               f"{tuple(output.shape)}")
        return value

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def max_sample_length(src_tokens: Tensor, max_len_a: float, max_len_b: int, max_positions: int) -> int:
    """The step at which EOS is forced: ``min(a * src_len + b, max_positions - 1)``, as SequenceGenerator."""
    return min(int(max_len_a * src_tokens.size(1) + max_len_b), max_positions - 1)


def free_running_decode(
    decoder: nn.Module,
    encoder_out: Dict[str, List[Tensor]],
    max_len: int,
    tau: float = 2.0,
    beta: float = 0.0,
    prefix_tokens: Optional[Tensor] = None,
    incremental: bool = True,
    generator: Optional[torch.Generator] = None,
) -> FreeRunningSample:
    """Sample ê token by token, feeding back straight-through one-hots (Eq. 5–6).

    Mirrors fairseq's ``SequenceGenerator`` (beam 1) step for step: the input
    at step 0 is EOS, ``pad`` is never chosen, ``prefix_tokens`` (B, P) are
    forced, EOS is forced at step ``max_len``, and a row that has produced EOS
    leaves the batch (its incremental state is dropped with fairseq's
    ``reorder_incremental_state``), so the tokens after a row's first EOS are
    never computed: they are ``pad`` with zero embeddings.  With ``beta = 0`` the
    sample is the greedy translation.  ``incremental=False`` recomputes the
    whole prefix at every step (for testing the incremental path).
    """
    weight = decoder.embed_tokens.weight  # (V, C); shared with the output layer and the encoder
    pad, eos = decoder.padding_idx, decoder.dictionary.eos()
    bsz = encoder_out["encoder_out"][0].size(1)
    device = weight.device
    pad_mask = _one_hot_mask(weight.size(0), pad, device)

    active = torch.arange(bsz, device=device)  # rows still decoding
    memory = encoder_out
    prev_tokens = torch.full((bsz, 1), eos, dtype=torch.long, device=device)
    emb = F.embedding(prev_tokens, weight)  # (b, 1, C) step input: E(</s>), as fairseq's BOS input
    history = emb  # all inputs so far, kept only to recompute the prefix (incremental=False)
    incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = {} if incremental else None
    ended_with_eos = torch.zeros(bsz, dtype=torch.bool, device=device)
    embeddings, tokens = [], []

    for step in range(max_len + 1):
        forced = None
        if prefix_tokens is not None and step < prefix_tokens.size(1) and step < max_len:
            forced = prefix_tokens[active, step]
        elif step >= max_len:
            forced = torch.full_like(active, eos)
        if step < max_len:  # at the cap EOS is forced and nothing follows: that step needs no decoder pass
            with embedding_output(decoder.embed_tokens, emb if incremental else history):
                # a forced step's output distribution is never used: its states (cached for later steps) suffice
                out, _ = decoder(prev_tokens, encoder_out=memory, incremental_state=incremental_state,
                                 features_only=forced is not None)
        if forced is None:
            logits = out[:, -1, :].masked_fill(pad_mask, float("-inf"))
            index, soft = gumbel_argmax_softmax(logits, tau=tau, beta=beta, generator=generator)
            token = index.squeeze(-1)
            st_emb = straight_through_embedding(token, soft, weight)  # (b, C) = st @ E, exact gradient
        else:
            token = forced
            st_emb = F.embedding(token, weight)  # forced: no sample gradient, E's only
        done = token.eq(eos)
        if forced is None:
            ended_with_eos[active[done]] = True
        # scatter the active rows into full-batch step outputs (finished rows: pad, zero embedding)
        embeddings.append(st_emb.new_zeros(bsz, st_emb.size(-1)).index_copy(0, active, st_emb))
        tokens.append(token.new_full((bsz,), pad).index_copy(0, active, token))
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            active, token, st_emb = active[keep], token[keep], st_emb[keep]
            prev_tokens, history = prev_tokens[keep], history[keep]
            memory = _select_rows(memory, keep)
            if incremental_state is not None:
                decoder.reorder_incremental_state_scripting(incremental_state, keep)
        prev_tokens = torch.cat([prev_tokens, token[:, None]], dim=1)
        emb = st_emb[:, None, :]
        if not incremental:
            history = torch.cat([history, emb], dim=1)

    tokens_t = torch.stack(tokens, dim=1)
    return FreeRunningSample(tokens_t, torch.stack(embeddings, dim=1), tokens_t.ne(pad).long().sum(1), ended_with_eos)


def _select_rows(encoder_out: Dict[str, List[Tensor]], rows: Tensor) -> Dict[str, List[Tensor]]:
    """The rows of what the decoder reads from ``encoder_out`` (states are T x B x C, the mask B x T)."""
    out = dict(encoder_out)
    out["encoder_out"] = [encoder_out["encoder_out"][0].index_select(1, rows)]
    if len(encoder_out.get("encoder_padding_mask", [])) > 0:
        out["encoder_padding_mask"] = [encoder_out["encoder_padding_mask"][0].index_select(0, rows)]
    return out


def _one_hot_mask(vocab: int, index: int, device) -> Tensor:
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    mask[index] = True
    return mask


def encode_soft(encoder: nn.Module, tokens: Tensor, embeddings: Tensor) -> Dict[str, List[Tensor]]:
    """Encode a sequence given by its (B, T, C) input ``embeddings``; ``tokens`` (B, T) give padding and positions.

    ``embeddings`` are what ``encoder.embed_tokens(tokens)`` would be, e.g. a
    :class:`FreeRunningSample`'s straight-through one-hots × E: with hard
    one-hots this is exactly ``encoder(tokens)`` in value, and the gradient
    reaches whatever produced the embeddings.
    """
    lengths = tokens.ne(encoder.padding_idx).long().sum(1)
    return encoder(tokens, src_lengths=lengths, token_embeddings=embeddings)
