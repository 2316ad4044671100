"""Corpus presets: which languages, which splits, default sizes, domains and noise.

A preset's *design* (language codes, roles, relations) is fixed; only the
lexica and sentences depend on the seed.  Size keys are uniform across
presets: ``train`` is always the lrl-tgt training bitext, a source language
code (``hrl``, ``unra``, ...) is that language's training bitext, ``valid`` and
``test`` apply to every pair, ``mono_LANG`` is ``mono.LANG``, and ``pool`` is
the multi-way target pool of the multilingual preset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

TARGET = "tgt"
LRL = "lrl"

#: Role of each language code in every preset that uses it.
ROLES: Dict[str, str] = {
    "tgt": "target",
    "lrl": "lrl",
    "hrl": "hrl",
    "unra": "unrelated",
    "unrb": "unrelated",
    "nsy": "noisy",
}


@dataclass(frozen=True)
class NoiseSpec:
    """Corruption of a training bitext.

    A fraction ``rate`` of the pairs is corrupted; of those, ``mismatch_share``
    get another pair's target (a misalignment) and the rest get source tokens
    replaced by random words of the source language with probability
    ``token_replace_prob`` each (at least one token per sentence).
    """

    rate: float = 0.3
    mismatch_share: float = 0.5
    token_replace_prob: float = 0.3


@dataclass(frozen=True)
class Preset:
    """A named corpus recipe."""

    name: str
    description: str
    sources: Tuple[str, ...]  # source languages of X-tgt bitexts; lrl first
    defaults: Dict[str, int]  # size key -> default number of lines
    mono: Tuple[str, ...] = ()  # languages that get mono.LANG
    train_domain: str = "general"
    eval_domain: str = "general"
    mono_domain: str = "general"
    noise: Dict[str, NoiseSpec] = field(default_factory=dict)
    supports_multiway: bool = False

    @property
    def languages(self) -> Tuple[str, ...]:
        return (TARGET,) + self.sources

    @staticmethod
    def train_key(src: str) -> str:
        """Size key of ``train.src-tgt``."""
        return "train" if src == LRL else src


PRESETS: Dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "quickstart",
            "one low-resource pair lrl-tgt with monolingual text on both sides",
            (LRL,),
            {"train": 4000, "valid": 300, "test": 300, "mono_tgt": 20000, "mono_lrl": 10000},
            mono=(TARGET, LRL),
        ),
        Preset(
            "multilingual",
            "lrl plus a related hrl, two unrelated HRLs (unra, unrb) and a noisy language (nsy), all into tgt",
            (LRL, "hrl", "unra", "unrb", "nsy"),
            {"train": 2000, "hrl": 20000, "unra": 20000, "unrb": 20000, "nsy": 20000,
             "valid": 300, "test": 300, "mono_tgt": 20000, "mono_lrl": 10000, "pool": 30000},
            mono=(TARGET, LRL),
            noise={"nsy": NoiseSpec()},
            supports_multiway=True,
        ),
        Preset(
            "bidirectional",
            "one low-resource pair lrl-tgt used in both directions, with monolingual text on both sides",
            (LRL,),
            {"train": 4000, "valid": 300, "test": 300, "mono_tgt": 20000, "mono_lrl": 20000},
            mono=(TARGET, LRL),
        ),
        Preset(
            "domain",
            "lrl-tgt with out-of-domain training bitext, in-domain valid/test and in-domain monolingual text",
            (LRL,),
            {"train": 4000, "valid": 300, "test": 300, "mono_tgt": 20000, "mono_lrl": 10000},
            mono=(TARGET, LRL),
            train_domain="out",
            eval_domain="in",
            mono_domain="in",
        ),
    )
}
