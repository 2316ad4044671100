"""Length-sorted chunks of a batch of pairs, so padding does not multiply the work (issue 31).

MetaBT's pseudo pairs put one target monolingual sentence beside each bitext sentence: the bitext batch is
fairseq's length bucket, but the monolingual sentences are drawn at random, so a batch of 200 nine-token
bitext sentences carries 200 monolingual sentences padded to the longest of them (often 10x the median).
A loss that is a sum over sentences (the pseudo pairs' token-summed loss, log q of each sample) is the same
sum over chunks of similar length; only the padding, which every position of a Transformer pays for, goes.
"""
from __future__ import annotations

from typing import List, Sequence


def length_chunks(src_lens: Sequence[int], tgt_lens: Sequence[int], max_tokens: int) -> List[List[int]]:
    """Positions ``0..n-1`` grouped into chunks of similar length: sorted by (target, source) length, each
    chunk as many rows as keep ``rows * (longest source + longest target)`` (its padded size) within
    ``max_tokens`` (one row at least).  ``max_tokens <= 0``: one chunk of all rows, in order."""
    n = len(src_lens)
    if n != len(tgt_lens):
        raise ValueError(f"{n} source lengths but {len(tgt_lens)} target lengths")
    if max_tokens <= 0 or n == 0:
        return [list(range(n))] if n else []
    order = sorted(range(n), key=lambda i: (tgt_lens[i], src_lens[i]))
    chunks: List[List[int]] = []
    cur: List[int] = []
    width_s = width_t = 0
    for i in order:
        s, t = max(width_s, src_lens[i]), max(width_t, tgt_lens[i])
        if cur and (len(cur) + 1) * (s + t) > max_tokens:
            chunks.append(cur)
            cur, s, t = [], src_lens[i], tgt_lens[i]
        cur.append(i)
        width_s, width_t = s, t
    chunks.append(cur)
    return chunks


def pair_chunks(rows: Sequence[int], sources: Sequence, targets: Sequence, max_tokens: int) -> List[List[int]]:
    """:func:`length_chunks` of the pairs ``(sources[i], targets[i])`` for ``i`` in ``rows`` (token tensors),
    as lists of those ``i``.  Each model's pass takes its own chunks, sorted by *its* target: the decoder side
    (cross-attention, the output layer and the loss over the vocabulary) is the costly one, so theta's
    pseudo pairs (x_hat -> y') go by the length of y', psi's log q (y' -> x_hat) by that of x_hat (sorted by
    y', psi's targets were padded to the longest x_hat of each chunk: log q cost 1.4x theta's pass)."""
    return [[rows[j] for j in c] for c in length_chunks(
        [sources[i].numel() for i in rows], [targets[i].numel() for i in rows], max_tokens)]
