"""Bitext batches with monolingual sentences added on top (back-translation-style tasks).

A batch of a back-translation method must hold the *same* bitext as the plain
translation baseline's batch, with the pseudo pairs added on top; otherwise the
comparison with the baseline is confounded by fewer bitext sentences per update.
:class:`BitextWithMonoDataset` is therefore indexed, ordered, filtered and
batched by the bitext alone (``--max-tokens`` counts bitext tokens, exactly as
``--task translation`` does with the same seed, in every epoch of a run that
starts at epoch 1), and every bitext example
carries one sentence of each monolingual stream.  The monotext is walked in a
seeded random order that continues from epoch to epoch, so an epoch is sized by
the bitext, never by unused monotext, and a larger monotext is covered over the
epochs.

:func:`pseudo_loss_scale` is the matching loss normalisation: fairseq divides
the summed loss by the returned ``sample_size``; with the bitext's own sample
size there, the bitext term is the baseline's per-token mean, and a pseudo loss
scaled by ``weight * bitext_size / pseudo_size`` adds ``weight`` times the
pseudo pairs' own per-token mean (per micro-batch).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List

import numpy as np
from fairseq.data import FairseqDataset, data_utils


class BitextWithMonoDataset(FairseqDataset):
    """``bitext`` batched as on its own; each example also carries one sentence of each ``monos`` stream.

    Batches are ``{"bitext": bitext batch, name: mono batch, ...}`` (mono batches are
    the mono datasets' own collation, with ``id`` = index into that monotext).
    """

    def __init__(self, bitext: FairseqDataset, monos: Dict[str, FairseqDataset], seed: int):
        if not monos:
            raise ValueError("BitextWithMonoDataset needs at least one monolingual dataset")
        for name, mono in monos.items():
            if len(mono) == 0:
                raise ValueError(f"the monolingual dataset {name!r} is empty")
        self.bitext, self.monos, self.seed = bitext, OrderedDict(monos), int(seed)
        self.epoch = 1
        self._orders: Dict[str, np.ndarray] = {}

    # ---- which mono sentence goes with bitext example i ------------------------------------------
    def mono_index(self, name: str, index: int) -> int:
        """Mono sentence of stream ``name`` paired with bitext example ``index`` in the current epoch:
        position ``(epoch - 1) * len(bitext) + index`` of a seeded permutation of the monotext,
        re-drawn each time the walk wraps around (a function of seed and epoch only)."""
        mono = self.monos[name]
        pos = (self.epoch - 1) * len(self.bitext) + int(index)
        cycle, offset = divmod(pos, len(mono))
        return int(self._order(name, cycle)[offset])

    def _order(self, name: str, cycle: int) -> np.ndarray:
        key = f"{name}:{cycle}"
        if key not in self._orders:
            if len(self._orders) > 8:
                self._orders.clear()
            salt = sum(ord(c) for c in name)
            rng = np.random.RandomState((self.seed * 1000003 + cycle * 7919 + salt) % 2**32)
            self._orders[key] = rng.permutation(len(self.monos[name]))
        return self._orders[key]

    # ---- FairseqDataset: everything that sizes and orders batches is the bitext's ----------------
    def __getitem__(self, index):
        item = OrderedDict([("bitext", self.bitext[index])])
        for name, mono in self.monos.items():
            item[name] = mono[self.mono_index(name, index)]
        return item

    def __len__(self):
        return len(self.bitext)

    def collater(self, samples: List[Dict]):
        if len(samples) == 0:
            return None
        out = OrderedDict([("bitext", self.bitext.collater([s["bitext"] for s in samples]))])
        for name, mono in self.monos.items():
            out[name] = mono.collater([s[name] for s in samples])
        return out

    def num_tokens(self, index):
        return self.bitext.num_tokens(index)

    def num_tokens_vec(self, indices):
        return self.bitext.num_tokens_vec(indices)

    def size(self, index):
        return self.bitext.size(index)

    @property
    def sizes(self):
        return self.bitext.sizes

    def ordered_indices(self):
        # fairseq orders a dataset under numpy_seed(seed + epoch) and keeps the batches of a reusable
        # dataset (the baseline's LanguagePairDataset) from the epoch it started at: in a fresh run,
        # epoch 1's, for every epoch.  This dataset is rebuilt every epoch (below), so it fixes that
        # seed itself and gets the baseline's batches in every epoch.
        with data_utils.numpy_seed(self.seed + 1):
            return self.bitext.ordered_indices()

    def filter_indices_by_size(self, indices, max_sizes):
        return self.bitext.filter_indices_by_size(indices, max_sizes)

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        return self.bitext.batch_by_size(indices, max_tokens, max_sentences, required_batch_size_multiple)

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        # False: fairseq then makes a new iterator (and DataLoader) each epoch, so data-loading workers,
        # which hold copies of this dataset, see set_epoch's new monotext walk (persistent workers of a
        # reused DataLoader would keep the first epoch's forever)
        return False

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        for ds in (self.bitext, *self.monos.values()):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    @property
    def supports_prefetch(self):
        return False


def pseudo_loss_scale(weight: float, bitext_size: float, pseudo_size: float) -> float:
    """Factor on a summed pseudo-pair loss so that, with ``sample_size = bitext_size``, it contributes
    ``weight`` times its own per-token (or per-sentence) mean next to the bitext's mean."""
    return weight * float(bitext_size) / max(float(pseudo_size), 1.0)
