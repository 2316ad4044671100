"""The abstract grammar shared by every synthetic language.

A sentence is first sampled as a language-neutral *derivation*: nested tuples
of lemma ids and features (number, person, tense).  Each language then
realises the same derivation with its own words, word order and morphology
(see :mod:`fairseq_metabt.synthetic.languages`), which is what makes every
translation exact and deterministic.

Derivations are plain tuples rather than objects because hundreds of
thousands of them are sampled per corpus; the layouts are::

    sentence := ("decl", clause) | ("q", clause) | ("coord", conj, clause, clause)
    clause   := ("v",   subject, verb, tense, obj|None, iobj|None, adv|None, pp|None)
              | ("cop", subject, tense, degree_adv|None, adj, pp|None)
    subject  := np | ("P", agr)                      # pronoun, agr in 0..5
    np       := (noun, number, det|None, adjs, pp|None, rel|None)
    pp       := (prep, np)
    rel      := (verb, tense, obj|None)              # subject-gap relative clause

``number`` is 0 (singular) or 1 (plural); ``agr = 2 * (person - 1) + number``
(so 3rd person singular is 4); ``tense`` is 0 present, 1 past, 2 future.
"""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

# Open classes are large and Zipf-distributed; closed classes are small.
# Pronouns are indexed by agreement slot, so there are exactly six.
POS_SIZES: Tuple[Tuple[str, int], ...] = (
    ("noun", 450),
    ("verb_intr", 90),
    ("verb_tr", 170),
    ("verb_ditr", 24),
    ("adj", 170),
    ("adv", 60),
    ("prep", 14),
    ("det", 5),
    ("conj", 3),
    ("pron", 6),
    ("cop", 1),
    ("rel", 1),
    ("q", 1),
    ("dat", 1),
)
OPEN_CLASSES: Tuple[str, ...] = ("noun", "verb_intr", "verb_tr", "verb_ditr", "adj", "adv")
VERB_CLASSES: Tuple[str, ...] = ("verb_intr", "verb_tr", "verb_ditr", "cop")
N_AGR = 6  # person (1..3) x number (sg, pl)
N_TENSE = 3  # present, past, future
AGR_3SG = 4


def _build_inventory() -> Tuple[Tuple[str, ...], Dict[str, range]]:
    pos_of: List[str] = []
    ranges: Dict[str, range] = {}
    for pos, size in POS_SIZES:
        ranges[pos] = range(len(pos_of), len(pos_of) + size)
        pos_of.extend([pos] * size)
    return tuple(pos_of), ranges


#: POS of every lemma id, and the id range of every POS.
POS_OF, POS_RANGES = _build_inventory()
N_LEMMAS: int = len(POS_OF)
COP: int = POS_RANGES["cop"][0]
REL: int = POS_RANGES["rel"][0]
QUESTION: int = POS_RANGES["q"][0]
DATIVE: int = POS_RANGES["dat"][0]

CLAUSE_KINDS: Tuple[str, ...] = (
    "intransitive", "transitive", "ditransitive", "copular", "question", "relative", "coordination",
)
SIMPLE_KINDS: Tuple[str, ...] = ("intransitive", "transitive", "ditransitive", "copular")


class Sampler:
    """Draws items from a fixed categorical distribution with one ``random()`` call."""

    __slots__ = ("items", "cum")

    def __init__(self, items: Sequence, weights: Sequence[float]) -> None:
        total = float(sum(weights))
        acc, cum = 0.0, []
        for w in weights:
            acc += w
            cum.append(acc / total)
        cum[-1] = 1.0  # random() < 1.0, so bisect never runs off the end
        self.items = tuple(items)
        self.cum = cum

    def draw(self, rng: random.Random):
        return self.items[bisect.bisect_right(self.cum, rng.random())]


@dataclass(frozen=True)
class DomainSpec:
    """A text domain: how lemmas are ranked and how often each clause type occurs.

    ``permute_ranks`` gives the domain its own (seed-dependent) Zipf ranking of
    every open class, so that frequent words differ between domains.
    """

    name: str
    zipf_exponent: float
    clause_weights: Tuple[Tuple[str, float], ...]
    permute_ranks: bool = False
    p_adverb: float = 0.25
    p_clause_pp: float = 0.3
    p_pronoun_subject: float = 0.25

    def __post_init__(self) -> None:
        unknown = [k for k, _ in self.clause_weights if k not in CLAUSE_KINDS]
        if unknown:
            raise ValueError(f"domain {self.name!r}: unknown clause kinds {unknown}")


DOMAINS: Dict[str, DomainSpec] = {
    spec.name: spec
    for spec in (
        DomainSpec(
            "general", 1.0,
            (("intransitive", 0.17), ("transitive", 0.28), ("ditransitive", 0.08), ("copular", 0.14),
             ("question", 0.12), ("relative", 0.11), ("coordination", 0.10)),
        ),
        # "News-like": long declaratives, few questions, flatter vocabulary.
        DomainSpec(
            "out", 0.9,
            (("intransitive", 0.12), ("transitive", 0.34), ("ditransitive", 0.14), ("copular", 0.06),
             ("question", 0.02), ("relative", 0.18), ("coordination", 0.14)),
            p_adverb=0.15, p_clause_pp=0.45, p_pronoun_subject=0.1,
        ),
        # "Conversation-like": its own word ranking, short clauses, many questions and pronouns.
        DomainSpec(
            "in", 1.15,
            (("intransitive", 0.24), ("transitive", 0.2), ("ditransitive", 0.04), ("copular", 0.22),
             ("question", 0.24), ("relative", 0.03), ("coordination", 0.03)),
            permute_ranks=True, p_adverb=0.35, p_clause_pp=0.15, p_pronoun_subject=0.5,
        ),
    )
}


class Domain:
    """A :class:`DomainSpec` compiled for one seed: samplers for lemmas and features."""

    def __init__(self, spec: DomainSpec, seed: int) -> None:
        self.spec = spec
        rng = random.Random(f"metabt-synthetic/{seed}/domain/{spec.name}")
        self.lemmas: Dict[str, Sampler] = {}
        for pos, ids in POS_RANGES.items():
            if len(ids) == 1:
                continue
            order = list(ids)
            if spec.permute_ranks and pos in OPEN_CLASSES:
                rng.shuffle(order)
            # Open classes are Zipfian over their ranking; closed classes are
            # mildly skewed so that every function word is frequent.
            s = spec.zipf_exponent if pos in OPEN_CLASSES else 0.5
            self.lemmas[pos] = Sampler(order, [1.0 / (r + 1) ** s for r in range(len(order))])
        self.clause_kind = Sampler([k for k, _ in spec.clause_weights], [w for _, w in spec.clause_weights])
        simple = [(k, w) for k, w in spec.clause_weights if k in SIMPLE_KINDS]
        self.simple_kind = Sampler([k for k, _ in simple], [w for _, w in simple])
        self.tense = Sampler((0, 1, 2), (0.5, 0.3, 0.2))
        self.n_adjs = Sampler((0, 1, 2), (0.6, 0.3, 0.1))
        self.det = self.lemmas["det"]
        self.p_adverb = spec.p_adverb
        self.p_clause_pp = spec.p_clause_pp
        self.p_pronoun = spec.p_pronoun_subject

    # --- derivation sampling -------------------------------------------------

    def np(self, rng: random.Random, allow_pp: bool = True) -> tuple:
        """A noun phrase; one level of PP embedding at most keeps lengths bounded."""
        r = rng.random
        det = self.det.draw(rng) if r() < 0.8 else None
        adj = self.lemmas["adj"]
        adjs = tuple(adj.draw(rng) for _ in range(self.n_adjs.draw(rng)))
        pp = (self.lemmas["prep"].draw(rng), self.np(rng, False)) if allow_pp and r() < 0.12 else None
        return (self.lemmas["noun"].draw(rng), 1 if r() < 0.35 else 0, det, adjs, pp, None)

    def clause(self, rng: random.Random, kind: str, relative_subject: bool = False) -> tuple:
        """One clause of a simple kind; optionally with a relative clause on its subject."""
        r = rng.random
        if relative_subject:
            noun, number, det, adjs, _, _ = self.np(rng, False)
            if r() < 0.5:
                rel = (self.lemmas["verb_tr"].draw(rng), self.tense.draw(rng), self.np(rng, False))
            else:
                rel = (self.lemmas["verb_intr"].draw(rng), self.tense.draw(rng), None)
            subj: tuple = (noun, number, det, adjs, None, rel)
        elif r() < self.p_pronoun:
            subj = ("P", int(r() * N_AGR))
        else:
            subj = self.np(rng)
        tense = self.tense.draw(rng)
        pp = (self.lemmas["prep"].draw(rng), self.np(rng, False)) if r() < self.p_clause_pp else None
        if kind == "copular":
            degree = self.lemmas["adv"].draw(rng) if r() < self.p_adverb else None
            return ("cop", subj, tense, degree, self.lemmas["adj"].draw(rng), pp)
        obj = iobj = None
        if kind == "intransitive":
            verb = self.lemmas["verb_intr"].draw(rng)
        elif kind == "transitive":
            verb = self.lemmas["verb_tr"].draw(rng)
            obj = self.np(rng)
        else:
            verb = self.lemmas["verb_ditr"].draw(rng)
            obj = self.np(rng, False)
            iobj = self.np(rng, False)
        adv = self.lemmas["adv"].draw(rng) if r() < self.p_adverb else None
        return ("v", subj, verb, tense, obj, iobj, adv, pp)

    def sentence(self, rng: random.Random) -> tuple:
        """Sample one sentence derivation from this domain."""
        kind = self.clause_kind.draw(rng)
        if kind == "question":
            return ("q", self.clause(rng, self.simple_kind.draw(rng)))
        if kind == "coordination":
            return ("coord", self.lemmas["conj"].draw(rng),
                    self.clause(rng, self.simple_kind.draw(rng)), self.clause(rng, self.simple_kind.draw(rng)))
        if kind == "relative":
            return ("decl", self.clause(rng, "transitive" if rng.random() < 0.6 else "intransitive", True))
        return ("decl", self.clause(rng, kind))
