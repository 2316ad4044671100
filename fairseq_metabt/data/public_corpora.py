"""Read the public corpora of the papers in the formats they are distributed in, and write the raw layout.

Three readers, each for a local copy of the files as users download them (nothing is downloaded here):

* **TED** (Qi et al. 2018, the corpus of the DDS and latent-depth papers): the tables
  ``all_talks_{train,dev,test}.tsv``, one row per sentence, a ``talk_name`` column and one column per
  language (TED's codes: ``en``, ``az``, ``pt-br``, ...); a sentence missing in a language is the marker
  ``__NULL__`` (or ``_ _ NULL _ _``, the marker after tokenisation).  :func:`read_ted` yields, per
  language and split, the rows where both that language and the pivot are present, so the pivot side
  of every pair is the same English sentence wherever the talk was translated (the multi-way structure
  that target-conditioned sampling reads).
* **IWSLT'14** (the XML/TAGS release, e.g. ``de-en/``): ``train.tags.de-en.{de,en}`` (plain lines with
  XML metadata lines between the talks) and ``IWSLT14.TED*.de-en.{de,en}.xml`` (``<seg id=...>``
  elements).  :func:`read_iwslt14` follows fairseq's ``examples/translation/prepare-iwslt14.sh``: the
  metadata lines are dropped (the text of ``<title>``/``<description>`` is kept), pairs longer than
  175 words or with a length ratio above 1.5 are dropped, every 23rd remaining pair is the dev set,
  and the test set is dev2010 + TEDX dev2012 + tst2010 + tst2011 + tst2012.
* **WMT-style pairs**: plain text (optionally ``.gz``) or SGM files (``<seg id=...>``), given by prefix
  (:func:`find_side`).

Every reader returns :class:`Corpus` (pairs per split, monolingual text); :func:`write_raw` writes it in
the raw layout (``docs/data.md``), dropping pairs with an empty side and replacing the characters the
raw layout refuses (``\\r``, NUL, a byte-order mark) by spaces, so the written corpus passes
:func:`fairseq_metabt.data.raw_layout.scan_raw_dir`.  Every mistake in the input (a missing file or
column, misaligned sides) is a one-line :class:`~fairseq_metabt.errors.UserError`.
"""
from __future__ import annotations

import csv
import glob
import gzip
import html
import os
import random
import re
from dataclasses import dataclass, field
from typing import IO, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from fairseq_metabt import fileio
from fairseq_metabt.errors import UserError, UserFileError


class PublicDataError(UserError):
    """A public corpus on disk is not in the distributed format the converter reads."""


# TED's column names -> the ISO 639-3 codes the papers use (aze, bel, ...).  A language not listed keeps its
# TED code with '-' turned into '_' (pt-br -> pt_br): the raw layout's file names reserve '-' and '.'.
TED_CODES: Dict[str, str] = {
    "en": "eng", "az": "aze", "be": "bel", "gl": "glg", "sk": "slk", "tr": "tur", "ru": "rus", "pt": "por",
    "cs": "ces", "bs": "bos", "mr": "mar", "hi": "hin", "mk": "mkd", "el": "ell", "bg": "bul", "fr": "fra",
    "ko": "kor", "de": "deu", "es": "spa", "it": "ita", "nl": "nld", "ar": "ara", "he": "heb", "ja": "jpn",
    "zh-cn": "zho", "vi": "vie", "pl": "pol", "ro": "ron", "fa": "fas", "hu": "hun", "uk": "ukr",
    "sr": "srp", "hr": "hrv", "sv": "swe", "da": "dan", "fi": "fin", "lt": "lit", "sl": "slv", "sq": "sqi",
    "ka": "kat", "hy": "hye", "kk": "kaz", "eu": "eus", "ta": "tam", "bn": "ben", "ur": "urd", "ms": "msa",
    "id": "ind", "th": "tha", "my": "mya", "mn": "mon", "et": "est", "ku": "kur", "eo": "epo",
}
TED_SPLITS = {"train": "all_talks_train.tsv", "valid": "all_talks_dev.tsv", "test": "all_talks_test.tsv"}
TED_NULL_MARKERS = ("__NULL__", "_ _ NULL _ _")

# The papers' language sets (ISO 639-3), each translating to or from English.
PRESETS: Dict[str, Tuple[str, ...]] = {
    # DDS (Wang et al. 2020, Table 1/2) and MetaBT's multilingual setting: four low-resource languages and
    # the related high-resource language of each (aze-tur, bel-rus, glg-por, slk-ces)
    "ted8-related": ("aze", "bel", "glg", "slk", "tur", "rus", "por", "ces"),
    # the "diverse" group of MultiDDS (Wang et al. 2020b) and the latent-depth paper (App. C.1, Table 12)
    "ted8-diverse": ("bos", "mar", "hin", "mkd", "ell", "bul", "fra", "kor"),
    "lrl4": ("aze", "bel", "glg", "slk"),
    "hrl4": ("tur", "rus", "por", "ces"),
    # one low-resource language with its related high-resource one
    "aze-tur": ("aze", "tur"), "bel-rus": ("bel", "rus"), "glg-por": ("glg", "por"), "slk-ces": ("slk", "ces"),
}
# the related high-resource language of each low-resource one (DDS `related`, MetaBT --related-lang-pairs)
RELATED_HRL = {"aze": "tur", "bel": "rus", "glg": "por", "slk": "ces"}

IWSLT_TEST_SETS = ("IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010",
                   "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012")
_SEG = re.compile(r"<seg[^>]*>(.*?)</seg>", re.I | re.S)
_TAG_LINE = re.compile(r"^\s*<[^>]+>.*$")
_KEPT_TAGS = re.compile(r"</?(title|description)>", re.I)
_REFUSED_CHARS = re.compile("[\r\x00\ufeff\u2028\u2029\x0b\x0c\x1c\x1d\x1e\x85]")


@dataclass
class Corpus:
    """Sentence pairs per (source, target) pair and split, and monolingual text per language."""

    bitext: Dict[Tuple[str, str], Dict[str, List[Tuple[str, str]]]] = field(default_factory=dict)
    mono: Dict[str, List[str]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def add(self, pair: Tuple[str, str], split: str, pairs: List[Tuple[str, str]]) -> None:
        self.bitext.setdefault(pair, {}).setdefault(split, []).extend(pairs)


def clean(line: str) -> str:
    """One sentence as the raw layout stores it: no line breaks or refused characters, runs of space kept."""
    return _REFUSED_CHARS.sub(" ", line.replace("\n", " ").replace("\t", " ")).strip()


def _open(path: str) -> IO[str]:
    """A text file (``.gz`` decompressed), UTF-8 with lines ending at ``\\n``; a clear error when missing."""
    if not os.path.isfile(path):
        raise UserFileError(f"{path} does not exist", "check the path of the downloaded corpus")
    try:
        if path.endswith(".gz"):
            return gzip.open(path, "rt", encoding="utf-8", newline="\n")
        return fileio.open_text(path)
    except OSError as e:
        raise UserFileError(f"{path} cannot be read ({e.strerror or e})", "check its permissions") from e


def _read_lines(path: str) -> List[str]:
    try:
        with _open(path) as f:
            return [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as e:
        raise PublicDataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})",
                              "convert it to UTF-8 (e.g. iconv) before converting the corpus") from e
    except (OSError, EOFError) as e:  # a truncated .gz
        raise PublicDataError(f"{path} cannot be read ({e})", "download it again") from e


def read_segments(path: str) -> List[str]:
    """The ``<seg>`` contents of an XML/SGM file in document order, XML entities decoded."""
    text = "\n".join(_read_lines(path))
    segs = [html.unescape(s) for s in _SEG.findall(text)]
    if not segs:
        raise PublicDataError(f"{path} has no <seg id=...> elements", "give the .xml/.sgm file of a dev or test "
                              "set, or a plain-text file with one sentence per line")
    return segs


def read_side(path: str) -> List[str]:
    """Sentences of one side: ``<seg>`` elements for ``.xml``/``.sgm`` files, else one per line."""
    base = path[:-3] if path.endswith(".gz") else path
    return read_segments(path) if base.endswith((".xml", ".sgm")) else _read_lines(path)


def _aligned(src_path: str, tgt_path: str) -> List[Tuple[str, str]]:
    src, tgt = read_side(src_path), read_side(tgt_path)
    if len(src) != len(tgt):
        raise PublicDataError(f"{src_path} has {len(src)} sentences but {tgt_path} has {len(tgt)}: the two sides "
                              "are not aligned", "give the two sides of the same corpus")
    return list(zip(src, tgt))


# -- TED -----------------------------------------------------------------------------------------------
def ted_column(code: str) -> str:
    """TED's column name of an ISO 639-3 code (``aze`` -> ``az``); a TED code is returned unchanged."""
    for column, iso in TED_CODES.items():
        if iso == code:
            return column
    return code.replace("_", "-")


def raw_code(column: str) -> str:
    """The raw layout's language code of a TED column (``az`` -> ``aze``, ``pt-br`` -> ``pt_br``)."""
    return TED_CODES.get(column, column.replace("-", "_"))


def read_ted(ted_dir: str, languages: Sequence[str], pivot: str = "eng",
             max_sentences: Optional[Dict[str, int]] = None) -> Corpus:
    """The pairs LANG-PIVOT of every language from the TED tables in ``ted_dir``.

    ``languages`` and ``pivot`` are ISO 639-3 codes (or TED column names).  A row enters the pair of a
    language when both its cell and the pivot's are present (not a ``__NULL__`` marker, not empty).
    """
    corpus = Corpus()
    wanted = [(lang, ted_column(lang)) for lang in languages]
    pivot_column = ted_column(pivot)
    for split, name in TED_SPLITS.items():
        path = os.path.join(ted_dir, name)
        if not os.path.isfile(path):
            raise UserFileError(f"{path} does not exist", f"--ted-dir needs the three TED tables "
                                f"{', '.join(TED_SPLITS.values())} (Qi et al. 2018, ted_talks.tar.gz, unpacked)")
        with _open(path) as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if not header:
                raise PublicDataError(f"{path} is empty", "unpack the TED tables again")
            index = {c.strip(): i for i, c in enumerate(header)}
            if "talk_name" not in index:
                raise PublicDataError(f"{path} has no talk_name column, so it is not a TED table (its header "
                                      f"starts {', '.join(header[:3])})", "give the all_talks_*.tsv files of "
                                      "Qi et al. 2018")
            for lang, column in wanted + [(pivot, pivot_column)]:
                if column not in index:
                    raise PublicDataError(f"{path} has no column {column!r} for language {lang}",
                                          "choose languages among its columns: " + ", ".join(
                                              c for c in header if c != "talk_name")[:300])
            rows: Dict[str, List[Tuple[str, str]]] = {lang: [] for lang, _ in wanted}
            for line_no, row in enumerate(reader, start=2):
                if len(row) != len(header):
                    raise PublicDataError(f"{path}, line {line_no}: {len(row)} cells where the header has "
                                          f"{len(header)}", "the table is damaged; unpack it again")
                en = _ted_cell(row[index[pivot_column]])
                if en is None:
                    continue
                for lang, column in wanted:
                    text = _ted_cell(row[index[column]])
                    if text is not None:
                        rows[lang].append((text, en))
        for lang, _ in wanted:
            pairs = rows[lang]
            limit = (max_sentences or {}).get(split)
            if limit:
                pairs = pairs[:limit]
            if not pairs:
                raise PublicDataError(f"{path} has no {split} sentence of {lang} with a {pivot} translation",
                                      "check the language codes (--langs/--preset)")
            corpus.add((lang, pivot), split, pairs)
    return corpus


def _ted_cell(cell: str) -> Optional[str]:
    text = cell.strip()
    if not text or any(marker in text for marker in TED_NULL_MARKERS):
        return None
    return text


# -- IWSLT'14 ------------------------------------------------------------------------------------------
def _iwslt_train(path_src: str, path_tgt: str) -> List[Tuple[str, str]]:
    src, tgt = _read_lines(path_src), _read_lines(path_tgt)
    if len(src) != len(tgt):
        raise PublicDataError(f"{path_src} has {len(src)} lines but {path_tgt} has {len(tgt)}",
                              "give the two train.tags files of one IWSLT release")
    out = []
    for i, (s, t) in enumerate(zip(src, tgt), start=1):
        s_meta, t_meta = _is_metadata(s), _is_metadata(t)
        if s_meta != t_meta:
            raise PublicDataError(f"{path_src} and {path_tgt} are misaligned at line {i} (an XML metadata line "
                                  "on one side only)", "give the two train.tags files of one IWSLT release")
        if not s_meta:
            out.append((_KEPT_TAGS.sub("", s).strip(), _KEPT_TAGS.sub("", t).strip()))
    return out


def _is_metadata(line: str) -> bool:
    """An XML line between talks (``<url>``, ``<talkid>``, ``<keywords>``, ...) that is not a sentence;
    ``<title>`` and ``<description>`` hold text and are kept, as in fairseq's prepare-iwslt14.sh."""
    return bool(_TAG_LINE.match(line)) and not _KEPT_TAGS.match(line.strip())


def _fairseq_clean(pairs: Iterable[Tuple[str, str]], max_len: int = 175, ratio: float = 1.5
                   ) -> List[Tuple[str, str]]:
    """Moses clean-corpus-n as prepare-iwslt14.sh applies it: 1..max_len words per side, length ratio <= ratio
    (counted in whitespace words here; fairseq counts Moses tokens, so a few borderline pairs differ)."""
    out = []
    for s, t in pairs:
        ns, nt = len(s.split()), len(t.split())
        if 1 <= ns <= max_len and 1 <= nt <= max_len and ns <= ratio * nt and nt <= ratio * ns:
            out.append((s, t))
    return out


def read_iwslt14(iwslt_dir: str, src: str = "de", tgt: str = "en", train_as: str = "bitext") -> Corpus:
    """IWSLT'14 SRC-TGT from its XML/TAGS release in ``iwslt_dir`` (fairseq's split, see the module doc).

    ``train_as='mono'`` writes the training sides as ``mono.SRC``/``mono.TGT`` instead of a train split
    (the wake-sleep paper's TED domain-adaptation setting: the TED training text is monotext) and keeps
    the dev and test sets.
    """
    release = f"{src}-{tgt}" if os.path.exists(os.path.join(iwslt_dir, f"train.tags.{src}-{tgt}.{src}")) \
        else f"{tgt}-{src}"
    tags = [os.path.join(iwslt_dir, f"train.tags.{release}.{lang}") for lang in (src, tgt)]
    for path in tags:
        if not os.path.isfile(path):
            raise UserFileError(f"{path} does not exist", "--iwslt-dir needs the unpacked IWSLT'14 release "
                                f"(train.tags.{src}-{tgt}.*, IWSLT14.TED*.xml), e.g. the de-en folder of de-en.tgz")
    pairs = _fairseq_clean(_iwslt_train(*tags))
    corpus = Corpus()
    valid = [p for i, p in enumerate(pairs, start=1) if i % 23 == 0]
    train = [p for i, p in enumerate(pairs, start=1) if i % 23 != 0]
    corpus.add((src, tgt), "valid", valid)
    if train_as == "mono":
        corpus.mono[src] = [s for s, _ in train]
        corpus.mono[tgt] = [t for _, t in train]
    else:
        corpus.add((src, tgt), "train", train)
    test = []
    for name in IWSLT_TEST_SETS:
        sides = [os.path.join(iwslt_dir, f"{name}.{release}.{lang}.xml") for lang in (src, tgt)]
        missing = [p for p in sides if not os.path.isfile(p)]
        if missing:
            raise UserFileError(f"{missing[0]} does not exist", "the IWSLT'14 test set is dev2010 + TEDX dev2012 + "
                                "tst2010-2012 (as in fairseq's prepare-iwslt14.sh); unpack the whole release")
        test.extend(_aligned(*sides))
    corpus.add((src, tgt), "test", test)
    corpus.notes.append(f"IWSLT'14 {src}-{tgt}: fairseq's split (every 23rd cleaned training pair is dev; test = "
                        + " + ".join(IWSLT_TEST_SETS) + ")" + ("; training text as monotext" if train_as == "mono"
                                                               else ""))
    return corpus


# -- WMT-style pairs -------------------------------------------------------------------------------------
def find_side(directory: str, prefix: str, lang: str, pair: Tuple[str, str]) -> str:
    """The file of one side of the corpus PREFIX: ``PREFIX.LANG`` (or ``.gz``), or the SGM file of a WMT
    test set (``PREFIX-SRCTGT-src.LANG.sgm``/``-ref.LANG.sgm``, either order of the pair)."""
    s, t = pair
    candidates = [f"{prefix}.{lang}", f"{prefix}.{lang}.gz", f"{prefix}.{s}-{t}.{lang}", f"{prefix}.{t}-{s}.{lang}"]
    for a, b in ((s, t), (t, s)):
        candidates += [f"{prefix}-{a}{b}-{role}.{lang}.sgm" for role in ("src", "ref")]
    for name in candidates:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    matches = sorted(glob.glob(os.path.join(glob.escape(directory), glob.escape(prefix) + f"*.{lang}.sgm")))
    if len(matches) == 1:
        return matches[0]
    raise UserFileError(f"no file for {lang} of {prefix!r} in {directory} (tried {', '.join(candidates[:3])}, "
                        f"{prefix}-*.{lang}.sgm)", "give the prefix of files PREFIX.LANG or a WMT .sgm pair")


def read_wmt(wmt_dir: str, src: str, tgt: str, train: Sequence[str], valid: Sequence[str] = (),
             test: Sequence[str] = ()) -> Corpus:
    """SRC-TGT pairs from WMT-style files in ``wmt_dir``: each split is one or more corpus prefixes
    (concatenated in the order given), each side plain text, ``.gz`` or SGM."""
    corpus = Corpus()
    for split, prefixes in (("train", train), ("valid", valid), ("test", test)):
        for prefix in prefixes:
            sides = [find_side(wmt_dir, prefix, lang, (src, tgt)) for lang in (src, tgt)]
            corpus.add((src, tgt), split, _aligned(*sides))
    return corpus


# -- monolingual text and writing -----------------------------------------------------------------------
def sample_lines(path: str, n: Optional[int], seed: int = 1) -> List[str]:
    """The lines of a monolingual file, or ``n`` of them drawn uniformly without replacement (in file order)."""
    lines = [clean(x) for x in read_side(path)]
    lines = [x for x in lines if x]
    if n is None or n >= len(lines):
        return lines
    keep = sorted(random.Random(seed).sample(range(len(lines)), n))
    return [lines[i] for i in keep]


def planned_files(corpus: Corpus) -> List[str]:
    """The raw-layout names ``write_raw`` writes for ``corpus``."""
    names = []
    for (s, t), splits in corpus.bitext.items():
        names += [f"{split}.{s}-{t}.{lang}" for split in splits for lang in (s, t)]
    return sorted(names + [f"mono.{lang}" for lang in corpus.mono])


def write_raw(corpus: Corpus, out_dir: str) -> Dict[str, int]:
    """Write ``corpus`` into ``out_dir`` in the raw layout; returns the line count of every file written.

    Pairs with a side that is empty after :func:`clean` are dropped (the raw layout refuses empty lines).
    """
    counts: Dict[str, int] = {}
    for (s, t), splits in sorted(corpus.bitext.items()):
        for split, pairs in splits.items():
            kept = [(clean(a), clean(b)) for a, b in pairs]
            kept = [(a, b) for a, b in kept if a and b]
            if not kept:
                raise PublicDataError(f"the {split} split of {s}-{t} has no pair with text on both sides",
                                      "check the input files")
            for i, lang in enumerate((s, t)):
                name = f"{split}.{s}-{t}.{lang}"
                _write_lines(os.path.join(out_dir, name), (p[i] for p in kept))
                counts[name] = len(kept)
    for lang, lines in sorted(corpus.mono.items()):
        kept = [x for x in (clean(line) for line in lines) if x]
        if not kept:
            raise PublicDataError(f"the monolingual text of {lang} is empty", "check the input file")
        _write_lines(os.path.join(out_dir, f"mono.{lang}"), kept)
        counts[f"mono.{lang}"] = len(kept)
    return counts


def _write_lines(path: str, lines: Iterator[str]) -> None:
    with fileio.atomic_write(path, flag="--out") as f:
        for line in lines:
            f.write(line + "\n")
