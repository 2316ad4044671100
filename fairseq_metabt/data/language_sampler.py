"""Target-conditioned multilingual sampling whose per-language distribution a task sets (DDS, TCS).

n bitexts share one *hub* language (the target T in many-to-one, the source
in one-to-many).  An epoch visits every distinct hub sentence ("target") once,
uniformly; for each, the source language is drawn from ``p(S_i | y)``, which
depends on ``y`` only through its availability vector (which languages have a
translation of ``y``, found by hashing the hub side of every bitext).  When
no hub sentence is shared by two languages (bitexts that are not multi-way
parallel), every slot is available in every language and the language is
drawn from one distribution over languages; the example is then the one at
the slot's length quantile in that language (so batches by length still hold).

The data loader only yields *slot ids*; :meth:`LanguageSampledDataset.assemble`
draws the languages and collates the sentences in the training process, with
the task's current table and a seeded generator.  A changed distribution
therefore applies to the next batch, identically on every worker, whether
DataLoader workers are on or not, and a resumed run draws the same languages.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from fairseq.data import FairseqDataset, LanguagePairDataset, data_utils

from fairseq_metabt.errors import UserError


class HubIndex:
    """Distinct hub sentences of n bitexts: availability (U, n) and example index (U, n) (-1 = absent)."""

    def __init__(self, hub_sides: Sequence, hub_sizes: Sequence[np.ndarray], other_sizes: Sequence[np.ndarray],
                 mode: str = "auto"):
        self.num_langs = len(hub_sides)
        keys: Dict[bytes, int] = {}
        rows: List[Tuple[int, int, int]] = []  # (hub id, language, example index)
        hub_len: List[int] = []
        for lang, ds in enumerate(hub_sides):
            for i in range(len(ds)):
                k = np.asarray(ds[i], dtype=np.int64).tobytes()
                u = keys.get(k)
                if u is None:
                    u = keys[k] = len(hub_len)
                    hub_len.append(int(hub_sizes[lang][i]))
                rows.append((u, lang, i))
        table = np.full((len(hub_len), self.num_langs), -1, dtype=np.int64)
        for u, lang, i in rows:
            if table[u, lang] < 0:  # a target repeated within one bitext: keep its first example
                table[u, lang] = i
        shared = bool(((table >= 0).sum(1) >= 2).any())
        if mode == "auto":
            mode = "target" if shared else "language"
        if mode not in ("target", "language"):
            raise UserError(f"sampling mode must be auto, target or language, got {mode!r}")
        self.mode = mode
        self.multiway_fraction = float(((table >= 0).sum(1) >= 2).mean()) if len(table) else 0.0
        if mode == "target":
            self.table = table
            self.avail = table >= 0
            other = np.zeros(len(table), dtype=np.int64)
            for lang in range(self.num_langs):
                have = table[:, lang] >= 0
                other[have] = np.maximum(other[have], other_sizes[lang][table[have, lang]])
            self.hub_sizes, self.other_sizes = np.asarray(hub_len, dtype=np.int64), other
        else:
            # one slot per example of the pooled bitexts; language k gets the example at the slot's length quantile
            pooled = np.concatenate([np.asarray(s, dtype=np.int64) for s in other_sizes])
            hub_pooled = np.concatenate([np.asarray(s, dtype=np.int64) for s in hub_sizes])
            order = np.lexsort((hub_pooled, pooled))
            quantile = np.empty(len(pooled), dtype=np.float64)
            quantile[order] = np.arange(len(pooled)) / len(pooled)
            self.table = np.empty((len(pooled), self.num_langs), dtype=np.int64)
            for lang in range(self.num_langs):
                by_len = np.lexsort((np.asarray(hub_sizes[lang]), np.asarray(other_sizes[lang])))
                self.table[:, lang] = by_len[np.minimum((quantile * len(by_len)).astype(np.int64), len(by_len) - 1)]
            self.avail = np.ones_like(self.table, dtype=bool)
            self.hub_sizes, self.other_sizes = hub_pooled, pooled
        # scorer inputs depend on availability only: one probability row per distinct pattern
        self.patterns, self.pattern_of = np.unique(self.avail, axis=0, return_inverse=True)
        self.pattern_of = self.pattern_of.reshape(-1)

    def __len__(self) -> int:
        return len(self.table)

    def languages_per_target(self) -> np.ndarray:
        return self.avail.sum(1)


class LanguageSampledDataset(FairseqDataset):
    """The training set of ``dds_translation``: items are slots (hub sentences); see the module docstring."""

    def __init__(self, langs: Sequence[str], pairs: Sequence[LanguagePairDataset], hub_is_target: bool,
                 mode: str = "auto", shuffle: bool = True, source_prefix: Optional[Sequence[int]] = None):
        if len(langs) != len(pairs) or not pairs:
            raise ValueError("one bitext per language is needed")
        self.langs, self.pairs, self.hub_is_target, self.shuffle = list(langs), list(pairs), hub_is_target, shuffle
        # one-to-many: a token per language put before the source (the target-language tag), added at
        # assembly so that the hub side is hashed untagged
        self.source_prefix = list(source_prefix) if source_prefix is not None else None
        hub = [p.tgt if hub_is_target else p.src for p in pairs]
        hub_sizes = [p.tgt_sizes if hub_is_target else p.src_sizes for p in pairs]
        other = [p.src_sizes if hub_is_target else p.tgt_sizes for p in pairs]
        self.index = HubIndex(hub, hub_sizes, other, mode)
        if hub_is_target:
            self.src_sizes, self.tgt_sizes = self.index.other_sizes, self.index.hub_sizes
        else:
            self.src_sizes, self.tgt_sizes = self.index.hub_sizes, self.index.other_sizes
        if source_prefix is not None:
            self.src_sizes = self.src_sizes + 1
        self.sizes = np.maximum(self.src_sizes, self.tgt_sizes)
        self.epoch = 1

    # -- what fairseq's batching reads ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> Dict:
        return {"id": int(index)}

    def collater(self, samples: List[Dict]) -> Dict:
        if not samples:
            return {}
        ids = torch.tensor([s["id"] for s in samples], dtype=torch.long)
        return {"dds_slots": ids, "nsentences": len(ids), "ntokens": int(self.tgt_sizes[ids.numpy()].sum())}

    def num_tokens(self, index: int) -> int:
        return int(self.sizes[index])

    def num_tokens_vec(self, indices):
        return self.sizes[indices]

    def size(self, index: int):
        return (int(self.src_sizes[index]), int(self.tgt_sizes[index]))

    def ordered_indices(self):
        # fairseq seeds numpy with (seed, epoch) around this call: a different order per epoch, same on every rank
        idx = np.random.permutation(len(self)).astype(np.int64) if self.shuffle else np.arange(len(self))
        idx = idx[np.argsort(self.tgt_sizes[idx], kind="mergesort")]
        return idx[np.argsort(self.src_sizes[idx], kind="mergesort")]

    @property
    def supports_prefetch(self) -> bool:
        return False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # -- sampling -----------------------------------------------------------------------------------
    def availability(self, slots: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.index.avail[slots])

    def choose_languages(self, slots: np.ndarray, pattern_probs: torch.Tensor,
                         generator: torch.Generator) -> np.ndarray:
        """One language per slot, ``k ~ p(. | availability(slot))``; ``pattern_probs``: (patterns, n)."""
        probs = pattern_probs[torch.from_numpy(self.index.pattern_of[slots])].double()
        return torch.multinomial(probs, 1, generator=generator).squeeze(1).numpy()

    def assemble(self, slots: Sequence[int], languages: Sequence[int]) -> Dict[int, Dict]:
        """Collated batches, one per language present: ``{language index: fairseq sample}``."""
        slots, languages = np.asarray(slots), np.asarray(languages)
        out: Dict[int, Dict] = {}
        for lang in sorted(set(languages.tolist())):
            chosen = slots[languages == lang]
            examples = self.index.table[chosen, lang]
            if (examples < 0).any():
                raise RuntimeError("a slot was assigned a language without a translation of its target")
            ds = self.pairs[lang]
            items = []
            for slot, ex in zip(chosen, examples):
                item = ds[int(ex)]
                item["id"] = int(slot)
                if self.source_prefix is not None:
                    item["source"] = torch.cat([item["source"].new_tensor([self.source_prefix[lang]]), item["source"]])
                items.append(item)
            out[lang] = ds.collater(items)
        return out

    def sample_targets(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Availability vectors of ``count`` targets drawn uniformly (for the scorer update, Alg. 2 line 10)."""
        slots = torch.randint(0, len(self), (count,), generator=generator).numpy()
        return self.availability(slots)

    def language_batch_slots(self, lang: int, target_tokens: int, generator: torch.Generator) -> np.ndarray:
        """Slots for a fresh batch of language ``lang`` alone (the DDS reward probe): targets available
        in ``lang`` drawn uniformly without replacement until their target tokens reach ``target_tokens``
        (at least one).  The size depends on ``target_tokens`` only, never on how often ``p`` picks
        ``lang``, so every language's gradient averages the same amount of data."""
        have = np.flatnonzero(self.index.avail[:, lang])
        if not len(have):
            raise ValueError(f"language {self.langs[lang]} has no training target")
        order = have[torch.randperm(len(have), generator=generator).numpy()]
        tgt = self.pairs[lang].tgt_sizes[self.index.table[order, lang]]
        count = int(np.searchsorted(np.cumsum(tgt), max(int(target_tokens), 1))) + 1
        return order[:min(count, len(order))]

    def language_sizes(self) -> List[int]:
        return [len(p) for p in self.pairs]


def seeded_generator(*keys: int) -> torch.Generator:
    """A torch generator seeded by a hash of integers (seed, update, rank, ...), equal on every process."""
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = (h * 0x100000001B3 ^ (int(k) & 0xFFFFFFFFFFFF)) % (1 << 63)
    return torch.Generator().manual_seed(h)


def marginal(pattern_probs: torch.Tensor, pattern_of: np.ndarray) -> torch.Tensor:
    """``E_y p(. | y)`` under uniform targets: the language distribution an epoch realises."""
    counts = torch.from_numpy(np.bincount(pattern_of, minlength=len(pattern_probs))).to(pattern_probs)
    return (counts[:, None] * pattern_probs).sum(0) / counts.sum()

