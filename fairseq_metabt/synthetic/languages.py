"""Synthetic languages: designs, seed-dependent lexica, and realisation of derivations.

A language is a *design* (fixed: sound inventory, word order, morphology,
family relations) plus a *lexicon* drawn from the corpus seed (one pseudo-word
per lemma and one string per inflectional affix).  A related language is made
from its parent by editing a fraction of the parent's words by a character or
two and flipping exactly one word-order parameter; everything else is
inherited, so the two share most of their token types.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from fairseq_metabt.synthetic.grammar import (
    AGR_3SG, COP, DATIVE, N_AGR, N_LEMMAS, N_TENSE, POS_OF, POS_RANGES, QUESTION, REL, VERB_CLASSES,
)

MIN_LEN, MAX_LEN = 4, 40  # sentence length bounds (tokens, punctuation included)

WORD_ORDERS = ("SVO", "SOV", "VSO")
ORDER_PARAMS = ("word_order", "adjective", "adposition")
MORPH_FEATURES = ("number", "agreement", "tense")
# Affix slots; the unmarked values (singular, present, 3rd person singular) have none.
AFFIX_SLOTS: Tuple[str, ...] = ("pl", "past", "fut", "1sg", "2sg", "1pl", "2pl", "3pl")
_AGR_SLOTS = ("1sg", "1pl", "2sg", "2pl", None, "3pl")  # indexed by agr = 2*(person-1)+number
_TENSE_SLOTS = (None, "past", "fut")
_FUNCTION_POS = ("prep", "det", "conj", "pron", "cop", "rel", "q", "dat")


@dataclass(frozen=True)
class Phonology:
    """Sound inventory and syllable shape; ``onsets``/``codas`` may contain ``""``."""

    onsets: Tuple[str, ...]
    vowels: Tuple[str, ...]
    codas: Tuple[str, ...]
    coda_prob: float

    def syllable(self, rng: random.Random) -> str:
        s = rng.choice(self.onsets) + rng.choice(self.vowels)
        if rng.random() < self.coda_prob:
            s += rng.choice(self.codas)
        return s

    def word(self, rng: random.Random, n_syllables: int) -> str:
        return "".join(self.syllable(rng) for _ in range(n_syllables))

    @property
    def consonants(self) -> Tuple[str, ...]:
        """Single consonant letters, sorted (never iterate a set: output must be reproducible)."""
        return tuple(sorted({c for part in self.onsets + self.codas for c in part}))


@dataclass(frozen=True)
class LanguageDesign:
    """The fixed, seed-independent description of one language."""

    code: str
    phonology: Phonology
    word_order: str
    adjective: str  # "pre" or "post" (relative to the noun)
    adposition: str  # "pre" (prepositions, head-initial) or "post" (postpositions, head-final)
    morphology: Dict[str, str] = field(default_factory=dict)  # feature -> "suffix" | "particle"
    parent: Optional[str] = None
    cognate_edit_rate: float = 0.0

    def __post_init__(self) -> None:
        # Designs are hand-written tables: catch typos at import time.
        ok = (self.word_order in WORD_ORDERS and self.adjective in ("pre", "post")
              and self.adposition in ("pre", "post") and sorted(self.morphology) == sorted(MORPH_FEATURES)
              and all(v in ("suffix", "particle") for v in self.morphology.values()))
        if not ok:
            raise ValueError(f"invalid language design {self.code!r}")

    def order(self) -> Dict[str, str]:
        """The word-order parameters by name."""
        return {"word_order": self.word_order, "adjective": self.adjective, "adposition": self.adposition}


def _morph(number: str, agreement: str, tense: str) -> Dict[str, str]:
    return {"number": number, "agreement": agreement, "tense": tense}


_P_TGT = Phonology(("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "w", "st", "tr", "pl"),
                   ("a", "e", "i", "o", "u"), ("n", "r", "s", "t", "l"), 0.35)
_P_HRL = Phonology(("b", "d", "g", "k", "m", "n", "r", "s", "t", "y", "z", ""),
                   ("a", "e", "i", "o", "u"), ("n", "m", "r"), 0.2)
_P_UNRA = Phonology(("h", "k", "l", "m", "n", "p", "w", "hw"), ("a", "e", "i", "o", "u", "aa", "ii"), ("",), 0.0)
_P_UNRB = Phonology(("c", "ch", "j", "q", "v", "x", "zh", "sh", "f"), ("a", "e", "i", "o", "u", "y"),
                    ("ng", "x", "q", "c"), 0.5)
_P_NSY = Phonology(("b", "dj", "gb", "kp", "l", "mb", "nd", "ng", "s", "v", "w"), ("a", "e", "i", "o", "u", "ou"),
                   ("k", "d"), 0.25)

#: Every language any preset may use.  ``lrl`` is derived from ``hrl``: a
#: quarter of the cognates edited and the adjective position flipped.
DESIGNS: Dict[str, LanguageDesign] = {
    d.code: d
    for d in (
        LanguageDesign("tgt", _P_TGT, "SVO", "pre", "pre", _morph("suffix", "suffix", "particle")),
        LanguageDesign("hrl", _P_HRL, "SOV", "post", "post", _morph("suffix", "suffix", "suffix")),
        LanguageDesign("lrl", _P_HRL, "SOV", "pre", "post", _morph("suffix", "suffix", "suffix"),
                       parent="hrl", cognate_edit_rate=0.25),
        LanguageDesign("unra", _P_UNRA, "VSO", "post", "pre", _morph("particle", "particle", "particle")),
        LanguageDesign("unrb", _P_UNRB, "SVO", "pre", "post", _morph("particle", "suffix", "suffix")),
        LanguageDesign("nsy", _P_NSY, "SOV", "pre", "pre", _morph("suffix", "particle", "suffix")),
    )
}


def flipped_parameters(a: LanguageDesign, b: LanguageDesign) -> List[str]:
    """Names of the word-order parameters on which two designs differ."""
    oa, ob = a.order(), b.order()
    return [p for p in ORDER_PARAMS if oa[p] != ob[p]]


# --- lexicon construction ------------------------------------------------------

def _n_syllables(rng: random.Random, lemma: int) -> int:
    """Syllable count; function words and frequent (low-rank) lemmas are shorter."""
    pos = POS_OF[lemma]
    if pos in _FUNCTION_POS:
        return 1
    rank = lemma - POS_RANGES[pos][0]
    if rank < 20:
        return 1 + (rng.random() < 0.5)
    return 2 + (rng.random() < 0.45)


def _draw_affixes(rng: random.Random, ph: Phonology) -> Dict[str, str]:
    """Distinct affix strings such that every tense+agreement suffix combination is distinct."""
    while True:
        aff = {slot: ph.syllable(rng) for slot in AFFIX_SLOTS}
        vals = list(aff.values())
        combos = [(aff[t] if t else "") + (aff[a] if a else "") for t in _TENSE_SLOTS for a in _AGR_SLOTS]
        if len(set(vals)) == len(vals) and len(set(combos)) == len(combos):
            return aff


def _edit_word(rng: random.Random, word: str, ph: Phonology) -> str:
    """Change one or two letters, keeping vowels vowels and consonants consonants."""
    vowels = tuple(sorted({c for v in ph.vowels for c in v}))
    cons = ph.consonants
    chars = list(word)
    for _ in range(1 + (rng.random() < 0.4)):
        i = rng.randrange(len(chars))
        pool = vowels if chars[i] in vowels else cons
        choices = [c for c in pool if c != chars[i]]
        if choices:
            chars[i] = rng.choice(choices)
    return "".join(chars)


class Lexicon:
    """One language's words: ``stems[lemma]`` and ``affixes[slot]``."""

    def __init__(self, stems: List[str], affixes: Dict[str, str]) -> None:
        self.stems = stems
        self.affixes = affixes


def _fresh_lexicon(design: LanguageDesign, rng: random.Random) -> Lexicon:
    ph = design.phonology
    used: set = set()
    stems: List[str] = []
    for lemma in range(N_LEMMAS):
        n = _n_syllables(rng, lemma)
        for attempt in range(200):
            w = ph.word(rng, n + attempt // 50)  # grow the word if the short space is crowded
            if w not in used:
                break
        used.add(w)
        stems.append(w)
    return Lexicon(stems, _draw_affixes(rng, ph))


def _derived_lexicon(design: LanguageDesign, parent: Lexicon, rng: random.Random) -> Lexicon:
    ph = design.phonology
    stems = list(parent.stems)
    used = set(stems)
    for lemma in range(N_LEMMAS):
        if rng.random() >= design.cognate_edit_rate:
            continue
        for _ in range(50):
            w = _edit_word(rng, stems[lemma], ph)
            if w not in used:
                used.add(w)
                stems[lemma] = w
                break
    return Lexicon(stems, dict(parent.affixes))


# --- compiled language ---------------------------------------------------------

class Language:
    """A design plus a lexicon, with precomputed inflection tables for fast realisation."""

    def __init__(self, design: LanguageDesign, lexicon: Lexicon) -> None:
        self.design = design
        self.code = design.code
        self.lexicon = lexicon
        self.head_initial = design.adposition == "pre"
        self.adj_pre = design.adjective == "pre"
        self.order = design.word_order
        self._build_tables()

    def _inflect(self, stem: str, slots: Tuple[Tuple[str, Optional[str]], ...]) -> Tuple[str, ...]:
        """Attach each (feature, affix slot) as suffix or particle according to the morphology."""
        suffix, particles = "", []
        for feature, slot in slots:
            if slot is None:
                continue
            aff = self.lexicon.affixes[slot]
            if self.design.morphology[feature] == "suffix":
                suffix += aff
            else:
                particles.append(aff)
        word = stem + suffix
        # Particles precede the word in head-initial languages and follow it otherwise.
        return (*particles, word) if self.head_initial else (word, *particles)

    def _build_tables(self) -> None:
        stems = self.lexicon.stems
        self.words = stems
        self.nouns: Dict[int, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
            n: (self._inflect(stems[n], ()), self._inflect(stems[n], (("number", "pl"),)))
            for n in POS_RANGES["noun"]
        }
        self.verbs: Dict[int, List[Tuple[str, ...]]] = {}
        for pos in VERB_CLASSES:
            for v in POS_RANGES[pos]:
                self.verbs[v] = [
                    self._inflect(stems[v], (("tense", _TENSE_SLOTS[t]), ("agreement", _AGR_SLOTS[a])))
                    for t in range(N_TENSE) for a in range(N_AGR)
                ]
        self.pronouns = [stems[p] for p in POS_RANGES["pron"]]

    def token_owners(self) -> Dict[str, List[int]]:
        """Map every token the language can emit to its owners: lemma ids, or -1 for particles."""
        owners: Dict[str, List[int]] = {}

        def add(tok: str, who: int) -> None:
            lst = owners.setdefault(tok, [])
            if who not in lst:
                lst.append(who)

        for slot in AFFIX_SLOTS:
            if self.design.morphology[_slot_feature(slot)] == "particle":
                add(self.lexicon.affixes[slot], -1)
        word_at = -1 if self.head_initial else 0  # where _inflect puts the (suffixed) word
        for lemma in range(N_LEMMAS):
            table = self.nouns.get(lemma) or self.verbs.get(lemma)
            if table is None:
                add(self.words[lemma], lemma)
            else:
                for form in table:
                    add(form[word_at], lemma)
        return owners

    def vocabulary(self) -> List[str]:
        """Every word token the language can emit, sorted (punctuation excluded)."""
        return sorted(self.token_owners())

    # --- realisation ---------------------------------------------------------

    def realise(self, s: tuple) -> List[str]:
        """Tokens of one sentence derivation in this language."""
        out: List[str] = []
        tag = s[0]
        if tag == "decl":
            self._clause(s[1], out)
            out.append(".")
        elif tag == "q":
            if self.head_initial:
                out.append(self.words[QUESTION])
                self._clause(s[1], out)
            else:
                self._clause(s[1], out)
                out.append(self.words[QUESTION])
            out.append("?")
        else:  # coordination
            self._clause(s[2], out)
            out.append(self.words[s[1]])
            self._clause(s[3], out)
            out.append(".")
        return out

    def _np(self, np: tuple, out: List[str]) -> None:
        noun, number, det, adjs, pp, rel = np
        hi = self.head_initial
        if not hi:
            if pp is not None:
                self._pp(pp[0], pp[1], out)
            if rel is not None:
                self._rel(rel, number, out)
        if det is not None:
            out.append(self.words[det])
        if self.adj_pre:
            out.extend([self.words[a] for a in adjs])
            out.extend(self.nouns[noun][number])
        else:
            out.extend(self.nouns[noun][number])
            out.extend([self.words[a] for a in adjs])
        if hi:
            if pp is not None:
                self._pp(pp[0], pp[1], out)
            if rel is not None:
                self._rel(rel, number, out)

    def _pp(self, adp: int, np: tuple, out: List[str]) -> None:
        if self.head_initial:
            out.append(self.words[adp])
            self._np(np, out)
        else:
            self._np(np, out)
            out.append(self.words[adp])

    def _rel(self, rel: tuple, number: int, out: List[str]) -> None:
        verb, tense, obj = rel
        # The gapped subject is the head noun: 3rd person, the head's number.
        v = self.verbs[verb][tense * N_AGR + AGR_3SG + number]
        body: List[str] = []
        if obj is not None and self.order == "SOV":
            self._np(obj, body)
            body.extend(v)
        else:
            body.extend(v)
            if obj is not None:
                self._np(obj, body)
        if self.head_initial:
            out.append(self.words[REL])
            out.extend(body)
        else:
            out.extend(body)
            out.append(self.words[REL])

    def _clause(self, c: tuple, out: List[str]) -> None:
        subj_d = c[1]
        subj: List[str] = []
        if subj_d[0] == "P":
            agr = subj_d[1]
            subj.append(self.pronouns[agr])
        else:
            agr = AGR_3SG + subj_d[1]
            self._np(subj_d, subj)
        comp: List[str] = []  # object / predicate slot
        adjunct: List[str] = []
        if c[0] == "cop":
            _, _, tense, degree, adj, pp = c
            verb = self.verbs[COP][tense * N_AGR + agr]
            if degree is not None:
                comp.append(self.words[degree])
            comp.append(self.words[adj])
        else:
            _, _, v, tense, obj, iobj, adv, pp = c
            verb = self.verbs[v][tense * N_AGR + agr]
            if obj is not None:
                self._np(obj, comp)
            if iobj is not None:
                self._pp(DATIVE, iobj, comp)
            if adv is not None:
                adjunct.append(self.words[adv])
        if pp is not None:
            self._pp(pp[0], pp[1], adjunct)
        order = self.order
        if order == "SVO":
            out += subj
            out += verb
            out += comp
            out += adjunct
        elif order == "SOV":  # head-final clause: adjuncts precede the verb
            out += subj
            out += comp
            out += adjunct
            out += verb
        else:  # VSO
            out += verb
            out += subj
            out += comp
            out += adjunct


def _slot_feature(slot: str) -> str:
    if slot == "pl":
        return "number"
    if slot in ("past", "fut"):
        return "tense"
    return "agreement"


def _repair_collisions(design: LanguageDesign, lex: Lexicon, rng: random.Random) -> Language:
    """Compile, redrawing stems until no two lemmas (or a lemma and a particle) share a token.

    Inflection can make ``stem+affix`` equal another lemma's word; an exact,
    learnable mapping needs every token to have a single owner.
    """
    ph = design.phonology
    used = set(lex.stems)
    for _ in range(1000):
        lang = Language(design, lex)
        clashes = sorted({max(o) for o in lang.token_owners().values() if len(o) > 1})
        if not clashes:
            return lang
        for lemma in clashes:
            if lemma < 0:  # two particles clash: impossible, affixes are distinct
                raise RuntimeError(f"affix collision in {design.code}")
            for attempt in range(200):
                w = ph.word(rng, 2 + attempt // 50)
                if w not in used:
                    break
            used.add(w)
            lex.stems[lemma] = w
    raise RuntimeError(f"could not build a collision-free lexicon for {design.code}")


def build_languages(codes: List[str], seed: int) -> Dict[str, Language]:
    """Compile the named languages for ``seed`` (parents are built as needed, not returned)."""
    lexica: Dict[str, Lexicon] = {}
    built: Dict[str, Language] = {}

    def build(code: str) -> Language:
        if code in built:
            return built[code]
        design = DESIGNS[code]
        rng = random.Random(f"metabt-synthetic/{seed}/lexicon/{code}")
        if design.parent is None:
            lex = _fresh_lexicon(design, rng)
        else:
            build(design.parent)
            lex = _derived_lexicon(design, lexica[design.parent], rng)
        lang = _repair_collisions(design, lex, rng)
        # Store a copy: the derived language's repair must not mutate its parent.
        lexica[code] = Lexicon(list(lex.stems), dict(lex.affixes))
        built[code] = lang
        return lang

    return {code: build(code) for code in codes}
