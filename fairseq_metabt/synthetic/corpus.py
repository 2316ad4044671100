"""Build a synthetic corpus in memory and write it in the project's raw layout."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from fairseq_metabt import fileio
from fairseq_metabt.errors import UserError
from fairseq_metabt.synthetic.grammar import DOMAINS, N_LEMMAS, POS_OF, Domain
from fairseq_metabt.synthetic.languages import (
    DESIGNS, MAX_LEN, MIN_LEN, Language, build_languages, flipped_parameters,
)
from fairseq_metabt.synthetic.presets import PRESETS, ROLES, TARGET, NoiseSpec, Preset

GENERATOR = "fairseq_metabt.synthetic"
GENERATOR_VERSION = "1.0.0"
META_DIR = "meta"
_OUTPUT_PREFIXES = ("train.", "valid.", "test.", "mono.")


class SyntheticError(UserError):
    """A bad preset, size or option; the message says what is accepted."""


class OutputExistsError(UserError, FileExistsError):
    """The output directory holds files and ``force`` was not given, or holds files the generator did not write."""


@dataclass
class Corpus:
    """A generated corpus: raw-layout files, auxiliary files under ``meta/``, and the manifest."""

    files: Dict[str, List[str]] = field(default_factory=dict)
    aux: Dict[str, List[str]] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)


def list_presets() -> List[str]:
    """Names of the available presets."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; raises :class:`SyntheticError` listing the presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise SyntheticError(f"unknown preset {name!r}; available presets: {', '.join(PRESETS)}") from None


def resolve_sizes(preset: Preset, sizes: Optional[Mapping[str, int]] = None) -> Dict[str, int]:
    """The preset's default sizes updated by ``sizes``; unknown keys and non-positive values are errors."""
    resolved = dict(preset.defaults)
    valid = ", ".join(preset.defaults)
    for key, value in (sizes or {}).items():
        if key not in resolved:
            raise SyntheticError(f"unknown size key {key!r} for preset {preset.name!r}; valid keys: {valid}")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SyntheticError(
                f"size {key}={value!r} must be a positive integer (preset {preset.name!r}, valid keys: {valid})"
            )
        resolved[key] = value
    return resolved


def parse_sizes(text: str) -> Dict[str, int]:
    """Parse ``KEY=N,KEY=N`` (keys are checked later against the preset by :func:`resolve_sizes`)."""
    sizes: Dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise SyntheticError(f"bad --sizes entry {item!r}: expected KEY=N, e.g. train=500,valid=50")
        try:
            sizes[key] = int(value)
        except ValueError:
            raise SyntheticError(f"bad --sizes entry {item!r}: {value!r} is not an integer") from None
    return sizes


# --- sampling ------------------------------------------------------------------

def _rng(seed: int, preset: str, purpose: str) -> random.Random:
    """An independent, reproducible random stream per (seed, preset, purpose)."""
    return random.Random(f"metabt-synthetic/{seed}/{preset}/{purpose}")


def _draw(
    rng: random.Random,
    domain: Domain,
    langs: Sequence[Language],
    n: int,
    exclude: Optional[Set[str]] = None,
    unique: bool = False,
) -> List[Tuple[str, ...]]:
    """``n`` derivations realised in every language of ``langs`` (one string per language).

    A derivation is resampled when any realisation falls outside the length
    bounds, when its first realisation is in ``exclude``, or (``unique``) when
    it repeats an earlier one.
    """
    rows: List[Tuple[str, ...]] = []
    seen: Set[str] = set()
    budget = 100 * n + 10_000  # generous: rejection rates are a few percent
    first, rest = langs[0], langs[1:]
    while len(rows) < n:
        budget -= 1
        if budget < 0:
            raise SyntheticError(f"could only draw {len(rows)} of {n} distinct sentences; ask for fewer")
        d = domain.sentence(rng)
        toks = first.realise(d)
        if not MIN_LEN <= len(toks) <= MAX_LEN:
            continue
        key = " ".join(toks)
        if (exclude is not None and key in exclude) or (unique and key in seen):
            continue
        row = [key]
        for lang in rest:
            toks = lang.realise(d)
            if not MIN_LEN <= len(toks) <= MAX_LEN:
                break
            row.append(" ".join(toks))
        else:
            if unique:
                seen.add(key)
            rows.append(tuple(row))
    return rows


def _corrupt(
    pairs: List[Tuple[str, str]], spec: NoiseSpec, rng: random.Random, vocab: List[str]
) -> Tuple[List[str], List[int]]:
    """Corrupt ``pairs`` (src, tgt) in place.

    Returns one label per line (``clean``, ``mismatch`` or ``tokens``) and, per
    line, the index of the line whose original target it now carries.
    """
    n = len(pairs)
    chosen = rng.sample(range(n), round(spec.rate * n))
    n_mis = round(len(chosen) * spec.mismatch_share)
    if n_mis < 2:  # a single line cannot be misaligned with itself
        n_mis = 0
    mis, tok = sorted(chosen[:n_mis]), sorted(chosen[n_mis:])
    labels = ["clean"] * n
    origin = list(range(n))
    # Rotate targets among the mismatched lines: each gets another line's target.
    for i, j in zip(mis, mis[1:] + mis[:1]):
        origin[i] = j
    targets = [pairs[j][1] for j in range(n)]
    for i in mis:
        pairs[i] = (pairs[i][0], targets[origin[i]])
        labels[i] = "mismatch"
    for i in tok:
        words = pairs[i][0].split(" ")
        forced = rng.randrange(len(words))
        for k in range(len(words)):
            if k == forced or rng.random() < spec.token_replace_prob:
                words[k] = rng.choice(vocab)
        pairs[i] = (" ".join(words), pairs[i][1])
        labels[i] = "tokens"
    return labels, origin


# --- corpus construction -------------------------------------------------------

def _language_entry(code: str, present: Sequence[str], lang: Language) -> dict:
    design = DESIGNS[code]
    related = [c for c in present if c != code and (DESIGNS[c].parent == code or design.parent == c)]
    entry = {
        "code": code,
        "role": ROLES[code],
        "parent": design.parent,
        "related_to": related,
        "order": design.order(),
        "morphology": dict(design.morphology),
        "vocabulary_size": len(lang.vocabulary()),
    }
    if design.parent is not None:
        entry["cognate_edit_rate"] = design.cognate_edit_rate
        entry["flipped_parameters"] = flipped_parameters(DESIGNS[design.parent], design)
    return entry


def _domain_entry(name: str) -> dict:
    spec = DOMAINS[name]
    return {
        "zipf_exponent": spec.zipf_exponent,
        "own_word_ranking": spec.permute_ranks,
        "clause_weights": dict(spec.clause_weights),
    }


def _check_arguments(
    preset: str, seed: int, sizes: Optional[Mapping[str, int]], multiway: bool
) -> Tuple[Preset, Dict[str, int]]:
    """Validate the arguments; returns the preset and its resolved sizes."""
    p = get_preset(preset)
    sz = resolve_sizes(p, sizes)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SyntheticError(f"seed must be an integer, got {seed!r}")
    if multiway and not p.supports_multiway:
        multi = [name for name, q in PRESETS.items() if q.supports_multiway]
        raise SyntheticError(f"--multiway applies only to preset(s) {', '.join(multi)}, not {p.name!r}")
    return p, sz


def build_corpus(
    preset: str = "quickstart",
    seed: int = 1,
    sizes: Optional[Mapping[str, int]] = None,
    multiway: bool = False,
) -> Corpus:
    """Generate a corpus in memory (no files written); see :func:`generate_corpus`."""
    p, sz = _check_arguments(preset, seed, sizes, multiway)
    langs = build_languages(list(p.languages), seed)
    tgt = langs[TARGET]
    domains = {name: Domain(DOMAINS[name], seed) for name in sorted({p.train_domain, p.eval_domain, p.mono_domain})}
    corpus = Corpus()
    meta_files: Dict[str, str] = {}

    # Training bitexts.  Multi-way: one target pool, each source translating a random subset of it.
    train: Dict[str, List[Tuple[str, str]]] = {}
    pool_ids: Dict[str, List[int]] = {}
    multiway_info = None
    if multiway:
        pool_size = max([sz["pool"]] + [sz[p.train_key(s)] for s in p.sources])
        pool = _draw(_rng(seed, p.name, "pool"), domains[p.train_domain],
                     [tgt] + [langs[s] for s in p.sources], pool_size)
        coverage = [0] * pool_size
        for col, src in enumerate(p.sources, start=1):
            ids = sorted(_rng(seed, p.name, f"avail/{src}").sample(range(pool_size), sz[p.train_key(src)]))
            train[src] = [(pool[j][col], pool[j][0]) for j in ids]
            pool_ids[src] = ids
            for j in ids:
                coverage[j] += 1
        histogram: Dict[str, int] = {}
        for c in coverage:
            histogram[str(c)] = histogram.get(str(c), 0) + 1
        multiway_info = {
            "pool_size": pool_size,
            "targets_by_number_of_sources": dict(sorted(histogram.items(), key=lambda kv: int(kv[0]))),
            "index_files": {},
        }
    else:
        for src in p.sources:
            rows = _draw(_rng(seed, p.name, f"train/{src}"), domains[p.train_domain],
                         [tgt, langs[src]], sz[p.train_key(src)])
            train[src] = [(s, t) for t, s in rows]

    noise_info: Dict[str, dict] = {}
    for src, spec in p.noise.items():
        vocab = langs[src].vocabulary()
        labels, origin = _corrupt(train[src], spec, _rng(seed, p.name, f"noise/{src}"), vocab)
        if src in pool_ids:
            pool_ids[src] = [pool_ids[src][j] for j in origin]
        name = f"{META_DIR}/train.{src}-{TARGET}.noise"
        corpus.aux[name] = labels
        noise_info[src] = {
            "rate": spec.rate,
            "mismatch_share": spec.mismatch_share,
            "token_replace_prob": spec.token_replace_prob,
            "corrupted_lines": sum(lab != "clean" for lab in labels),
            "mismatched_lines": labels.count("mismatch"),
            "token_noised_lines": labels.count("tokens"),
            "labels_file": name,
        }
    for src, ids in pool_ids.items():
        name = f"{META_DIR}/train.{src}-{TARGET}.ids"
        corpus.aux[name] = [str(i) for i in ids]
        multiway_info["index_files"][src] = name

    # Shared valid/test (the same target sentences for every source), unseen in training.
    train_targets = {t for pairs in train.values() for _, t in pairs}
    n_valid = sz["valid"]
    evals = _draw(_rng(seed, p.name, "eval"), domains[p.eval_domain], [tgt] + [langs[s] for s in p.sources],
                  n_valid + sz["test"], exclude=train_targets, unique=True)
    for src, pairs in train.items():
        col = 1 + p.sources.index(src)
        for split, rows in (("train", None), ("valid", evals[:n_valid]), ("test", evals[n_valid:])):
            split_pairs = pairs if rows is None else [(r[col], r[0]) for r in rows]
            corpus.files[f"{split}.{src}-{TARGET}.{src}"] = [s for s, _ in split_pairs]
            corpus.files[f"{split}.{src}-{TARGET}.{TARGET}"] = [t for _, t in split_pairs]

    # Monolingual text: fresh derivations per language (not parallel), never a valid/test sentence.
    for code in p.mono:
        col = 0 if code == TARGET else 1 + p.sources.index(code)
        held_out = {r[col] for r in evals}
        rows = _draw(_rng(seed, p.name, f"mono/{code}"), domains[p.mono_domain], [langs[code]],
                     sz[f"mono_{code}"], exclude=held_out)
        corpus.files[f"mono.{code}"] = [r[0] for r in rows]

    # A bilingual dictionary of lemma stems, handy for analysis.
    header = "\t".join(["lemma", "pos"] + list(p.languages))
    corpus.aux[f"{META_DIR}/lexicon.tsv"] = [header] + [
        "\t".join([str(i), POS_OF[i]] + [langs[c].words[i] for c in p.languages]) for i in range(N_LEMMAS)
    ]

    present = list(p.languages)
    relatedness = []
    for code in present:
        parent = DESIGNS[code].parent
        if parent in present:
            relatedness.append({
                "languages": [parent, code],
                "relation": "parent-child",
                "cognate_edit_rate": DESIGNS[code].cognate_edit_rate,
                "flipped_parameters": flipped_parameters(DESIGNS[parent], DESIGNS[code]),
            })
    corpus.manifest = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "preset": p.name,
        "description": p.description,
        "seed": seed,
        "multiway": multiway,
        "target": TARGET,
        "length_range": [MIN_LEN, MAX_LEN],
        "languages": [_language_entry(c, present, langs[c]) for c in present],
        "relatedness": relatedness,
        "pairs": [{"src": s, "tgt": TARGET, "splits": ["train", "valid", "test"]} for s in p.sources],
        "domains": {
            "train": p.train_domain, "valid": p.eval_domain, "test": p.eval_domain, "mono": p.mono_domain,
            "definitions": {name: _domain_entry(name) for name in domains},
        },
        "size_keys": sz,
        "size_defaults": dict(p.defaults),
        "files": list(corpus.files),
        "sizes": {name: len(lines) for name, lines in corpus.files.items()},
        "aux_files": list(corpus.aux),
        "noise": noise_info,
        "multiway_info": multiway_info,
    }
    return corpus


def existing_outputs(out_dir: Union[str, os.PathLike]) -> List[str]:
    """Entries of ``out_dir`` that look like a corpus (sorted)."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(
        name for name in os.listdir(out_dir)
        if name in ("manifest.json", META_DIR) or name.startswith(_OUTPUT_PREFIXES)
    )


def _write_lines(path: str, lines: List[str]) -> None:
    with fileio.open_text(path, "w") as f:
        f.write("\n".join(lines))
        f.write("\n")


def generate_corpus(
    preset: str,
    out_dir: Union[str, os.PathLike],
    seed: int = 1,
    sizes: Optional[Mapping[str, int]] = None,
    *,
    multiway: bool = False,
    force: bool = False,
) -> dict:
    """Generate a corpus and write it to ``out_dir`` in the raw layout; return the manifest.

    Refuses (:class:`OutputExistsError`) when ``out_dir`` is not empty, unless
    ``force``, in which case the files the generator recorded as written there
    before (and only those) are removed first, so no stale file survives and no
    file of the user's is lost.  ``manifest.json`` is written last
    (atomically): its presence marks a complete corpus.
    """
    out_dir = os.fspath(out_dir)
    _check_arguments(preset, seed, sizes, multiway)  # argument errors take precedence over --force
    corpus = build_corpus(preset, seed, sizes, multiway)
    names = list(corpus.files) + list(corpus.aux)
    fileio.OutputRecord(out_dir, f"python -m {GENERATOR}").prepare(names + ["manifest.json"], force,
                                                                    OutputExistsError)
    os.makedirs(os.path.join(out_dir, META_DIR), exist_ok=True)
    for name, lines in list(corpus.files.items()) + list(corpus.aux.items()):
        _write_lines(os.path.join(out_dir, name), lines)
    fileio.write_json(os.path.join(out_dir, "manifest.json"), corpus.manifest)
    return corpus.manifest
