"""Bi-directional, tagged bitext (Niu et al. 2019, §3; Johnson et al. 2017).

A pair f–e is trained as the corpus plus its swap, with one shared dictionary.
Tag convention: **a sentence carries the tag of the language on the other side
of its pair**.  The source carries the tag of the language to translate into
(Johnson et al.), the target the tag of the language it was translated from::

    f → e:   source  __e__ f1 … fn </s>      target  __f__ e1 … em </s>
    e → f:   source  __f__ e1 … em </s>      target  __e__ f1 … fn </s>

So a target — or a translation sampled in its place — is verbatim a
well-formed source for translating back, and the original source, tag
included, is exactly what that back-translation must reconstruct (Eq. 3).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch
from fairseq.data import ConcatDataset, Dictionary, LanguagePairDataset, PrependTokenDataset, data_utils
from fairseq.data import indexed_dataset

from fairseq_metabt.data.tagging import lang_tag
from fairseq_metabt.errors import UserFileError


def find_pair_prefix(data_path: str, split: str, src: str, tgt: str, impl: Optional[str]) -> str:
    """``DATA/split.src-tgt.`` or ``DATA/split.tgt-src.``, whichever fairseq-preprocess wrote."""
    for a, b in ((src, tgt), (tgt, src)):
        prefix = os.path.join(data_path, f"{split}.{a}-{b}.")
        if indexed_dataset.dataset_exists(prefix + src, impl=impl) and indexed_dataset.dataset_exists(
            prefix + tgt, impl=impl
        ):
            return prefix
    raise UserFileError(
        f"bidirectional_translation: no binarised '{split}' split for the pair {src}-{tgt} in {data_path} "
        f"(looked for {split}.{src}-{tgt}.* and {split}.{tgt}-{src}.*). Prepare the corpus with "
        "scripts/prepare_data.py, or pass the -s/-t of a pair it contains."
    )


def load_bidirectional_pair(
    data_path: str,
    split: str,
    src: str,
    tgt: str,
    dictionary: Dictionary,
    both_directions: bool,
    impl: Optional[str] = None,
    left_pad_source: bool = True,
    left_pad_target: bool = False,
    shuffle: bool = True,
) -> LanguagePairDataset:
    """The tagged src→tgt corpus, followed by its tagged swap when ``both_directions``.

    Indices ``0 .. N-1`` are src→tgt (so a one-direction split keeps the raw
    files' sentence ids), ``N .. 2N-1`` the swap.
    """
    prefix = find_pair_prefix(data_path, split, src, tgt, impl)
    src_raw = data_utils.load_indexed_dataset(prefix + src, dictionary, impl)
    tgt_raw = data_utils.load_indexed_dataset(prefix + tgt, dictionary, impl)
    # f tagged for translation into tgt; e tagged with the language it came from (module docstring)
    f_tagged = PrependTokenDataset(src_raw, dictionary.index(lang_tag(tgt)))
    e_tagged = PrependTokenDataset(tgt_raw, dictionary.index(lang_tag(src)))
    if both_directions:
        # the swap reuses the same tagged sentences: a target is a source for the reverse direction
        sources = ConcatDataset([f_tagged, e_tagged])
        targets = ConcatDataset([e_tagged, f_tagged])
    else:
        sources, targets = f_tagged, e_tagged
    return LanguagePairDataset(
        sources, sources.sizes, dictionary, targets, targets.sizes, dictionary,
        left_pad_source=left_pad_source, left_pad_target=left_pad_target, shuffle=shuffle,
    )


def reverse_tag_map(dictionary: Dictionary, lang_a: str, lang_b: str) -> Dict[int, int]:
    """Source tag id → target tag id for both directions of the pair: ``__b__ → __a__``, ``__a__ → __b__``."""
    ta, tb = dictionary.index(lang_tag(lang_a)), dictionary.index(lang_tag(lang_b))
    return {tb: ta, ta: tb}


def target_tag_prefix(src_tokens: torch.Tensor, pad: int, tag_map: Dict[int, int]) -> torch.Tensor:
    """``(B, 1)`` tags that start each row's translation, read off the tag that starts its source.

    Works for left- or right-padded sources and for batches that mix directions.
    """
    first = src_tokens.ne(pad).long().argmax(dim=1, keepdim=True)  # first non-pad position
    source_tags = src_tokens.gather(1, first)
    out = torch.full_like(source_tags, -1)
    for s, t in tag_map.items():
        out[source_tags == s] = t
    if (out < 0).any():
        raise ValueError(
            "bidirectional_translation: a source sentence does not start with a language tag of this pair "
            f"(found token ids {sorted(set(source_tags[out < 0].tolist()))}). Sources must be built by the "
            "task (load_dataset / build_dataset_for_inference), which prepends the tag."
        )
    return out
