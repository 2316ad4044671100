"""Monolingual text for back-translation-style tasks: loading it, and pairing it with generated text.

Meta back-translation reads target monotext; wake-sleep reads monotext on both
sides.  Both load ``BIN/mono.LANG`` (written by ``scripts/prepare_data.py``)
through :func:`load_mono_dataset`, and turn a model's outputs for a mono batch
into a training batch with :func:`generated_pairs`.
"""
from __future__ import annotations

import os
import shutil
from typing import Dict, List, Optional, Sequence

import torch
from fairseq import utils
from fairseq.data import FairseqDataset, LanguagePairDataset, data_utils

from fairseq_metabt.data.batches import pair_batch
from fairseq_metabt.errors import UserError, UserFileError


def mono_prefix(data: str, lang: str, override: Optional[str] = None) -> str:
    """``override`` if given, else ``DATA/mono.LANG`` (first of several data paths)."""
    return override or os.path.join(utils.split_paths(data)[0], f"mono.{lang}")


def load_mono_dataset(prefix: str, dictionary, dataset_impl: Optional[str], lang: str, needed_by: str,
                      option: str = "--mono-data") -> FairseqDataset:
    """The binarised monotext at ``prefix``; a clear error if it is missing or empty."""
    mono = data_utils.load_indexed_dataset(prefix, dictionary, dataset_impl)
    if mono is None:
        raise UserFileError(
            f"{needed_by}, but {prefix}.bin/.idx does not exist. "
            f"Put mono.{lang} in the raw directory and run scripts/prepare_data.py, "
            f"or point {option} at a binarised prefix."
        )
    if len(mono) == 0:
        raise UserError(f"the monolingual data {prefix} is empty; add sentences to mono.{lang}")
    return mono


def mono_pair_dataset(mono: FairseqDataset, dictionary, left_pad_source: bool = True) -> LanguagePairDataset:
    """Monotext as a source-only LanguagePairDataset (batches with ``net_input`` and ``id``)."""
    return LanguagePairDataset(mono, mono.sizes, dictionary, left_pad_source=left_pad_source)


def generated_pairs(generated: Sequence[torch.Tensor], given: Sequence[torch.Tensor], pad: int, eos: int,
                    ids: Optional[Sequence[int]] = None) -> Dict:
    """Pseudo pairs (generated source, real monotext target) as a translation batch.

    The generated rows are a model's outputs for the monotext rows ``given`` (a
    back-translation, or a dreamt translation that becomes the backward model's input).
    Rows whose generation is empty (EOS alone) are dropped; the result has ``kept`` (row
    indices into ``generated``) and, if any row is kept, ``batch`` (``pair_batch`` output
    whose ``id`` are the given ``ids``, default the row indices)."""
    keep: List[int] = [i for i, g in enumerate(generated) if g.numel() > 1]
    out: Dict = {"kept": keep}
    if keep:
        out["batch"] = pair_batch([generated[i] for i in keep], [given[i] for i in keep], pad, eos,
                                  ids=[ids[i] for i in keep] if ids is not None else keep)
    return out


def mono_as_test_split(bin_dir: str, lang: str, other: str, out_dir: str) -> str:
    """``out_dir`` where ``BIN/mono.LANG`` is the ``test`` split of LANG-OTHER (the OTHER side a dummy
    copy of it), with the joint dictionary: ``fairseq-generate`` then translates the whole monotext."""
    os.makedirs(out_dir, exist_ok=True)
    for side in (lang, other):
        shutil.copy(os.path.join(bin_dir, "dict.txt"), os.path.join(out_dir, f"dict.{side}.txt"))
        for ext in ("bin", "idx"):
            dst = os.path.join(out_dir, f"test.{lang}-{other}.{side}.{ext}")
            if not os.path.lexists(dst):
                os.symlink(os.path.abspath(os.path.join(bin_dir, f"mono.{lang}.{ext}")), dst)
    return out_dir
