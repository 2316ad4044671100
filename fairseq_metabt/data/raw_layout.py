"""Find and validate corpora in the project's raw layout.

The raw layout (see ``docs/data.md``) is one directory holding::

    train.SRC-TGT.SRC   train.SRC-TGT.TGT      (bitext, one sentence per line)
    valid.SRC-TGT.SRC   valid.SRC-TGT.TGT
    test.SRC-TGT.SRC    test.SRC-TGT.TGT
    mono.LANG                                   (monolingual text)
    manifest.json                               (optional; written by the synthetic generator)

Synthetic and real corpora use the same layout, so every script that reads one
reads the other.  Validation stops at the first problem with a message that
names the file (and line) and the fix: bytes that are not UTF-8, a stray
``\r``, a byte-order mark, a NUL byte, an empty or whitespace-only line, sides
of different lengths, a pair stored in both directions, a malformed
``manifest.json``.  Held-out sets that share lines with the training data or
with each other are warned about (:attr:`RawLayout.warnings`).
:func:`raw_checksums` fingerprints the corpus (``prepare.json`` records it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from fairseq_metabt.errors import UserError

SPLITS = ("train", "valid", "test")
_BITEXT_RE = re.compile(r"^(train|valid|test)\.([^.\-\s]+)-([^.\-\s]+)\.([^.\-\s]+)$")
_MONO_RE = re.compile(r"^mono\.([^.\-\s]+)$")

Pair = Tuple[str, str]
logger = logging.getLogger(__name__)
_BOM = b"\xef\xbb\xbf"
_BLANK_LINE = re.compile(r"^[^\S\n]*$", re.M)  # a line that is empty or holds only whitespace


class RawLayoutError(UserError):
    """A raw corpus directory does not follow the documented layout."""


@dataclass
class RawLayout:
    """What a raw directory holds: bitext files per pair and split, monolingual files."""

    root: str
    bitext: Dict[Pair, Dict[str, Tuple[str, str]]] = field(default_factory=dict)
    mono: Dict[str, str] = field(default_factory=dict)
    manifest: Optional[dict] = None
    warnings: List[str] = field(default_factory=list)

    @property
    def pairs(self) -> List[Pair]:
        return sorted(self.bitext)

    @property
    def languages(self) -> List[str]:
        langs = set(self.mono)
        for s, t in self.bitext:
            langs.update((s, t))
        return sorted(langs)

    def files(self) -> List[str]:
        """Every file of the corpus that a tool reads (bitext, mono, manifest), sorted."""
        out = [f for splits in self.bitext.values() for sides in splits.values() for f in sides]
        out += list(self.mono.values())
        manifest = os.path.join(self.root, "manifest.json")
        return sorted(out + ([manifest] if os.path.exists(manifest) else []))

    def bitext_prefix(self, split: str, pair: Pair) -> str:
        """``<root>/<split>.<src>-<tgt>``, the prefix fairseq-preprocess expects."""
        return os.path.join(self.root, f"{split}.{pair[0]}-{pair[1]}")


_BLOCK = 1 << 22


def check_text(path: str) -> int:
    """Number of lines of ``path``, after checking that every tool will split it into the same sentences.

    Lines end at ``\n`` only.  The file must be UTF-8 and hold no ``\r``:
    Python's universal newlines (used by fairseq-preprocess) and
    sentencepiece would split a line at a stray ``\r`` where a byte count of
    ``\n`` does not, silently misaligning the two sides of a bitext.  A
    byte-order mark would become part of the first sentence (and of a
    reference), a NUL byte an ``<unk>``, and an empty or whitespace-only line
    an empty sentence.  The error names the file, line and column of the first
    bad byte.
    """
    lines = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(_BLOCK)
            if not block:
                break
            block += f.readline()  # whole lines only, so a multi-byte character is never cut
            if lines == 0 and block.startswith(_BOM):
                _raise_at(path, block, lines, 0, "the file starts with a UTF-8 byte-order mark (BOM), which would "
                          "become part of its first sentence",
                          "remove it, e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' FILE")
            cr, nul = block.find(b"\r"), block.find(b"\x00")
            first_bad = min([i for i in (cr, nul) if i >= 0], default=len(block))
            try:
                text = block[:first_bad].decode("utf-8")
            except UnicodeDecodeError as e:
                _raise_at(path, block, lines, e.start, f"byte 0x{block[e.start]:02x} is not UTF-8",
                          "re-encode the file as UTF-8, e.g. iconv -f LATIN1 -t UTF-8 FILE")
            if first_bad == cr:
                _raise_at(path, block, lines, cr, "carriage return (\\r): sentencepiece and fairseq-preprocess "
                          "would split the line there and misalign the bitext",
                          "remove every \\r, e.g. tr -d '\\r' < FILE > FILE.new")
            if first_bad == nul:
                _raise_at(path, block, lines, nul, "NUL byte (0x00): fairseq would read it as an unknown token",
                          "remove every NUL byte, e.g. tr -d '\\000' < FILE > FILE.new")
            bom = text.find("\ufeff")  # a byte-order mark inside the file (files concatenated with cat)
            if bom >= 0:
                _raise_at(path, block, lines, len(text[:bom].encode("utf-8")), "byte-order mark (U+FEFF) inside the "
                          "file: it would become part of the sentence", "remove every U+FEFF, e.g. "
                          "sed -i 's/\\xEF\\xBB\\xBF//g' FILE")
            blank = _BLANK_LINE.search(text)  # no \r or NUL here: the whole block was decoded
            if blank is not None and blank.start() < len(text):
                line = lines + text.count("\n", 0, blank.start()) + 1
                raise RawLayoutError(
                    f"{path}, line {line}: the line is empty or holds only whitespace; it would become an empty "
                    "sentence", "remove it (in a bitext, the same line of both sides), e.g. list them with "
                    "grep -n '^[[:space:]]*$' FILE")
            lines += block.count(b"\n")
            if not block.endswith(b"\n"):
                lines += 1  # a last line without its newline
    return lines


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def raw_checksums(layout: "RawLayout") -> Dict[str, str]:
    """``{file name: sha256}`` of every file of the corpus (recorded in ``prepare.json``)."""
    return {os.path.basename(p): sha256_file(p) for p in layout.files()}


def _pair_hashes(src: str, tgt: str) -> Iterator[int]:
    """A hash of each (source line, target line) of a bitext, streamed."""
    with open(src, encoding="utf-8", newline="\n") as fs, open(tgt, encoding="utf-8", newline="\n") as ft:
        for a, b in zip(fs, ft):
            yield hash((a.rstrip("\n"), b.rstrip("\n")))


def overlap_warnings(layout: "RawLayout") -> List[str]:
    """Warnings for held-out bitext that shares sentence pairs with train or with the other held-out split.

    A pair counts as shared when both its sides occur together in the other split; counts are of lines.
    Only the held-out splits are kept in memory (as hashes); train is streamed."""
    out = []
    for (s, t), splits in sorted(layout.bitext.items()):
        held = {split: list(_pair_hashes(*splits[split])) for split in ("valid", "test") if split in splits}
        wanted = set().union(*held.values()) if held else set()
        in_train = {h for h in _pair_hashes(*splits["train"]) if h in wanted}
        for split, hashes in held.items():
            n = sum(h in in_train for h in hashes)
            if n:
                out.append(f"{n} of the {len(hashes)} sentence pairs of {split}.{s}-{t} also occur in "
                           f"train.{s}-{t}: scores on {split} are partly measured on training data")
        if len(held) == 2:
            if held["valid"] == held["test"]:
                out.append(f"test.{s}-{t} is identical to valid.{s}-{t}: the test score is not held out from "
                           "model selection (early stopping, checkpoint choice)")
            else:
                valid = set(held["valid"])
                n = sum(h in valid for h in held["test"])
                if n:
                    out.append(f"{n} of the {len(held['test'])} sentence pairs of test.{s}-{t} also occur in "
                               f"valid.{s}-{t}: the test score is partly measured on the dev set")
    return out


def _raise_at(path: str, block: bytes, lines_before: int, offset: int, what: str, fix: str) -> None:
    line_start = block.rfind(b"\n", 0, offset) + 1
    line = lines_before + block.count(b"\n", 0, offset) + 1
    column = len(block[line_start:offset].decode("utf-8", errors="replace")) + 1
    raise RawLayoutError(f"{path}, line {line}, column {column}: {what}", fix)


def _check_nonempty(path: str) -> int:
    n = check_text(path)
    if n == 0:
        raise RawLayoutError(
            f"{path} is empty. Every corpus file needs at least one sentence: "
            "fill it or remove it (and its other side) from the directory."
        )
    return n


def scan_raw_dir(root: str, require_valid: bool = True, check_contents: bool = True) -> RawLayout:
    """Scan ``root`` and validate it against the raw layout.

    Checks: the directory exists; every bitext file has its other side; every
    pair has a ``train`` split; both sides of a split have the same number of
    lines and none is empty; at least one pair has a ``valid`` split (fairseq
    needs one for validation) unless ``require_valid`` is False; and, when a
    ``manifest.json`` is present, every language found is declared in it.
    """
    if not os.path.isdir(root):
        raise RawLayoutError(
            f"raw corpus directory {root!r} does not exist. Create it with "
            "`python -m fairseq_metabt.synthetic --preset quickstart --out DIR` "
            "or place your corpus there in the layout of docs/data.md."
        )
    layout = RawLayout(root=os.path.abspath(root))
    sides: Dict[Tuple[str, Pair], Dict[str, str]] = {}
    for name in sorted(os.listdir(root)):
        path = os.path.join(layout.root, name)
        m = _BITEXT_RE.match(name)
        if m:
            split, s, t, lang = m.groups()
            if lang not in (s, t):
                raise RawLayoutError(
                    f"{path}: the file suffix {lang!r} is neither side of the pair {s}-{t}; "
                    f"rename it to {split}.{s}-{t}.{s} or {split}.{s}-{t}.{t}."
                )
            if s == t:
                raise RawLayoutError(f"{path}: a pair needs two different languages, got {s}-{t}.")
            sides.setdefault((split, (s, t)), {})[lang] = path
            continue
        m = _MONO_RE.match(name)
        if m:
            layout.mono[m.group(1)] = path

    for (split, (s, t)), files in sorted(sides.items()):
        for lang in (s, t):
            if lang not in files:
                missing = os.path.join(layout.root, f"{split}.{s}-{t}.{lang}")
                raise RawLayoutError(
                    f"missing file {missing}: the {split} split of {s}-{t} has only one side. "
                    "Add the other side (one translation per line) or remove the file that is there."
                )
        layout.bitext.setdefault((s, t), {})[split] = (files[s], files[t])

    for s, t in sorted(layout.bitext):
        if (t, s) in layout.bitext and s < t:
            raise RawLayoutError(
                f"the pair {s}-{t} is stored in both directions in {layout.root} (train.{s}-{t}.* and "
                f"train.{t}-{s}.*): it would be binarised twice, with two different training sets",
                f"keep one direction: merge the files into {s}-{t} (every direction trains from one pair), "
                f"or remove the {t}-{s} files")
    if not layout.bitext:
        raise RawLayoutError(
            f"no bitext found in {layout.root}: expected files named train.SRC-TGT.SRC and "
            "train.SRC-TGT.TGT (see docs/data.md)."
        )
    for pair, splits in layout.bitext.items():
        if "train" not in splits:
            raise RawLayoutError(
                f"missing split: {layout.bitext_prefix('train', pair)}.{{{pair[0]},{pair[1]}}} "
                f"not found, but other splits of {pair[0]}-{pair[1]} exist. Every pair needs a "
                "train split; add it or remove the pair's files."
            )
    if require_valid and not any("valid" in s for s in layout.bitext.values()):
        first = layout.pairs[0]
        raise RawLayoutError(
            f"missing split: no valid.SRC-TGT.* files in {layout.root}; fairseq needs a "
            f"validation set. Add e.g. {layout.bitext_prefix('valid', first)}.{first[0]} and .{first[1]}."
        )

    if check_contents:
        for pair, splits in layout.bitext.items():
            for split, (src, tgt) in splits.items():
                ns, nt = _check_nonempty(src), _check_nonempty(tgt)
                if ns != nt:
                    raise RawLayoutError(
                        f"{src} has {ns} lines but {tgt} has {nt}: the two sides of a bitext "
                        "must be line-aligned. Fix the files so that line i of one translates line i of the other."
                    )
        for lang, path in layout.mono.items():
            _check_nonempty(path)
        layout.warnings = overlap_warnings(layout)
        for w in layout.warnings:
            logger.warning("%s", w)

    manifest_path = os.path.join(layout.root, "manifest.json")
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8", newline="\n") as f:
            try:
                manifest = json.load(f)
            except ValueError as e:  # bad JSON or not UTF-8
                raise RawLayoutError(f"{manifest_path} is not valid JSON ({e}); fix or delete it.") from e
        declared = manifest_languages(manifest, manifest_path)
        if declared is None:
            msg = (f"{manifest_path} has no \"languages\" key, so it is not a corpus manifest (the manifest is "
                   "optional); it is ignored")
            layout.warnings.append(msg)
            logger.warning("%s", msg)
        else:
            layout.manifest = manifest
            for lang in layout.languages:
                if lang not in declared:
                    raise RawLayoutError(
                        f"language {lang!r} (files in {layout.root}) is absent from {manifest_path}, which "
                        f"declares {sorted(declared)}. Add it to the manifest's languages or remove its files."
                    )
    return layout


def manifest_languages(manifest, path: str = "manifest.json") -> Optional[List[str]]:
    """Language codes declared by a manifest: ``{"languages": [...]}`` holding codes or ``{"code": ...}``
    entries, or a dict keyed by code.  None when the object has no ``languages`` key (not a corpus
    manifest); anything else malformed is a :class:`RawLayoutError`."""
    fix = ('write {"languages": [{"code": "xx"}, ...]} (or a list of codes), or delete the file: the manifest '
           "is optional")
    if not isinstance(manifest, dict):
        raise RawLayoutError(f"{path} must be a JSON object with a \"languages\" list, but it holds "
                             f"{_json_kind(manifest)}", fix)
    if "languages" not in manifest:
        return None
    langs = manifest["languages"]
    if isinstance(langs, dict):
        return [str(k) for k in langs]
    if not isinstance(langs, list):
        raise RawLayoutError(f"{path}: \"languages\" must be a list of language codes or of {{\"code\": ...}} "
                             f"entries, but it holds {_json_kind(langs)}", fix)
    codes = []
    for i, x in enumerate(langs):
        if isinstance(x, dict) and isinstance(x.get("code"), str) and x["code"]:
            codes.append(x["code"])
        elif isinstance(x, str) and x:
            codes.append(x)
        else:
            what = "has no \"code\"" if isinstance(x, dict) else f"is {_json_kind(x)}"
            raise RawLayoutError(f"{path}: entry {i + 1} of \"languages\" {what}", fix)
    return codes


def _json_kind(x) -> str:
    return {dict: "an object", list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(
        type(x), f"the number {x}" if isinstance(x, (int, float)) else type(x).__name__)
