"""Build fairseq translation batches from token tensors produced inside a training step.

Back-translation-style methods create new pairs on the fly (pseudo-sources
sampled for monolingual targets, reversed bitext for the backward model).
These helpers strip padding and re-collate with fairseq's own
``language_pair_dataset.collate``, so the batches are exactly what a
``LanguagePairDataset`` would have produced.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from fairseq.data.language_pair_dataset import collate


def strip_padding(tokens: torch.Tensor, pad: int) -> List[torch.Tensor]:
    """Rows of a (left- or right-)padded batch without their padding."""
    return [row[row.ne(pad)] for row in tokens]


def pair_batch(sources: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], pad: int, eos: int,
               ids: Sequence[int] = None, left_pad_source: bool = True) -> Dict:
    """A translation batch (net_input, target, ntokens, ...) of the given unpadded pairs (EOS-terminated)."""
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources but {len(targets)} targets")
    if len(sources) == 0:
        return {}
    ids = list(range(len(sources))) if ids is None else list(ids)
    samples = [{"id": i, "source": s.cpu(), "target": t.cpu()} for i, s, t in zip(ids, sources, targets)]
    batch = collate(samples, pad, eos, left_pad_source=left_pad_source, left_pad_target=False)
    # collate sorts by source length; keep the mapping to the caller's order in "id"
    return batch


def reversed_batch(sample: Dict, pad: int, eos: int) -> Dict:
    """The batch of the reversed pairs (target → source), e.g. for a backward model's MLE."""
    sources = strip_padding(sample["net_input"]["src_tokens"], pad)
    targets = strip_padding(sample["target"], pad)
    return pair_batch(targets, sources, pad, eos, ids=sample["id"].tolist())


def source_input(rows: Sequence[torch.Tensor], pad: int, left_pad: bool = True) -> Dict[str, torch.Tensor]:
    """``net_input`` (``src_tokens``, ``src_lengths``) of unpadded rows, *in the given order*
    (unlike ``pair_batch``, which sorts by length), padded as fairseq pads sources."""
    from fairseq.data import data_utils

    tokens = data_utils.collate_tokens(list(rows), pad, left_pad=left_pad)
    lengths = torch.tensor([row.numel() for row in rows], dtype=torch.long, device=tokens.device)
    return {"src_tokens": tokens, "src_lengths": lengths}
