"""In-process tiny fairseq Transformers and batches for unit tests (no data files)."""
import argparse

import torch
from fairseq.data import Dictionary
from fairseq.models.transformer import TransformerModel

import fairseq_metabt  # noqa: F401  (registers architectures)
from fairseq_metabt.data.batches import pair_batch
from fairseq_metabt.models.transformer_lowres import transformer_lowres_tiny


class _Task:
    def __init__(self, d):
        self.source_dictionary = self.target_dictionary = d


def tiny_dictionary(n: int = 20) -> Dictionary:
    d = Dictionary()
    for i in range(n):
        d.add_symbol(f"w{i}")
    return d


def tiny_args(**overrides) -> argparse.Namespace:
    args = argparse.Namespace(dropout=0.0, **overrides)
    transformer_lowres_tiny(args)
    return args


def tiny_transformer(d: Dictionary, seed: int = 0, **overrides) -> TransformerModel:
    torch.manual_seed(seed)
    return TransformerModel.build_model(tiny_args(**overrides), _Task(d))


def random_batch(d: Dictionary, n: int = 6, seed: int = 0, max_len: int = 7) -> dict:
    g = torch.Generator().manual_seed(seed)
    lo, hi = d.nspecial, len(d)

    def row():
        length = int(torch.randint(2, max_len, (1,), generator=g))
        return torch.cat([torch.randint(lo, hi, (length,), generator=g), torch.tensor([d.eos()])])

    return pair_batch([row() for _ in range(n)], [row() for _ in range(n)], d.pad(), d.eos())
