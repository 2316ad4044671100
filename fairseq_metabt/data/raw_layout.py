"""Find and validate corpora in the project's raw layout.

The raw layout (see ``docs/data.md``) is one directory holding::

    train.SRC-TGT.SRC   train.SRC-TGT.TGT      (bitext, one sentence per line)
    valid.SRC-TGT.SRC   valid.SRC-TGT.TGT
    test.SRC-TGT.SRC    test.SRC-TGT.TGT
    mono.LANG                                   (monolingual text)
    manifest.json                               (optional; written by the synthetic generator)

Synthetic and real corpora use the same layout, so every script that reads one
reads the other.  Validation stops at the first problem with a message that
names the file and the fix.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from fairseq_metabt.errors import UserError

SPLITS = ("train", "valid", "test")
_BITEXT_RE = re.compile(r"^(train|valid|test)\.([^.\-\s]+)-([^.\-\s]+)\.([^.\-\s]+)$")
_MONO_RE = re.compile(r"^mono\.([^.\-\s]+)$")

Pair = Tuple[str, str]


class RawLayoutError(UserError):
    """A raw corpus directory does not follow the documented layout."""


@dataclass
class RawLayout:
    """What a raw directory holds: bitext files per pair and split, monolingual files."""

    root: str
    bitext: Dict[Pair, Dict[str, Tuple[str, str]]] = field(default_factory=dict)
    mono: Dict[str, str] = field(default_factory=dict)
    manifest: Optional[dict] = None

    @property
    def pairs(self) -> List[Pair]:
        return sorted(self.bitext)

    @property
    def languages(self) -> List[str]:
        langs = set(self.mono)
        for s, t in self.bitext:
            langs.update((s, t))
        return sorted(langs)

    def bitext_prefix(self, split: str, pair: Pair) -> str:
        """``<root>/<split>.<src>-<tgt>``, the prefix fairseq-preprocess expects."""
        return os.path.join(self.root, f"{split}.{pair[0]}-{pair[1]}")


_BLOCK = 1 << 22


def check_text(path: str) -> int:
    """Number of lines of ``path``, after checking that every tool will split it into the same lines.

    Lines end at ``\n`` only.  The file must be UTF-8 and hold no ``\r``:
    Python's universal newlines (used by fairseq-preprocess) and
    sentencepiece would split a line at a stray ``\r`` where a byte count of
    ``\n`` does not, silently misaligning the two sides of a bitext.  The
    error names the file, line and column of the first bad byte.
    """
    lines = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(_BLOCK)
            if not block:
                break
            block += f.readline()  # whole lines only, so a multi-byte character is never cut
            cr = block.find(b"\r")
            try:
                text_end = cr if cr >= 0 else len(block)
                block[:text_end].decode("utf-8")
            except UnicodeDecodeError as e:
                _raise_at(path, block, lines, e.start, f"byte 0x{block[e.start]:02x} is not UTF-8",
                          "re-encode the file as UTF-8, e.g. iconv -f LATIN1 -t UTF-8 FILE")
            if cr >= 0:
                _raise_at(path, block, lines, cr, "carriage return (\\r): sentencepiece and fairseq-preprocess "
                          "would split the line there and misalign the bitext",
                          "remove every \\r, e.g. tr -d '\\r' < FILE > FILE.new")
            lines += block.count(b"\n")
            if not block.endswith(b"\n"):
                lines += 1  # a last line without its newline
    return lines


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

    manifest_path = os.path.join(layout.root, "manifest.json")
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8", newline="\n") as f:
            try:
                layout.manifest = json.load(f)
            except ValueError as e:  # bad JSON or not UTF-8
                raise RawLayoutError(f"{manifest_path} is not valid JSON ({e}); fix or delete it.") from e
        declared = manifest_languages(layout.manifest)
        for lang in layout.languages:
            if lang not in declared:
                raise RawLayoutError(
                    f"language {lang!r} (files in {layout.root}) is absent from {manifest_path}, which "
                    f"declares {sorted(declared)}. Add it to the manifest's languages or remove its files."
                )
    return layout


def manifest_languages(manifest: dict) -> List[str]:
    """Language codes declared by a manifest (a list of codes or of ``{"code": ...}`` entries, or a dict)."""
    langs = manifest.get("languages", [])
    if isinstance(langs, dict):
        return list(langs)
    return [x["code"] if isinstance(x, dict) else str(x) for x in langs]
