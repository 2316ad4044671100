"""gettext translation catalogs (``.po`` / ``.mo``) as parallel text, and the cleaning rules applied to them.

``scripts/make_catalog_corpus.py`` turns the catalogs shipped in Debian
packages into corpora in the raw layout (``docs/catalog_corpus.md``).  This
module holds the parts that do not touch the network: the two parsers, one
small function per cleaning rule, and the pooling of the catalogs of one
language into one English -> translation table.

Both parsers return :class:`Entry` objects; :func:`clean_pair` applies every
rule in order and returns the cleaned ``(english, translation)`` pair or the
name of the rule that dropped it (counted in the corpus's provenance).
"""
from __future__ import annotations

import ast
import re
import struct
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple, Union

from fairseq_metabt.errors import UserError


class CatalogError(UserError):
    """A catalog file that is not a valid .po or .mo file."""


@dataclass
class Entry:
    """One catalog message: ``msgstr`` holds one string, or one per plural form."""

    msgid: str
    msgstr: List[str] = field(default_factory=list)
    msgctxt: Optional[str] = None
    msgid_plural: Optional[str] = None
    fuzzy: bool = False
    obsolete: bool = False


# --- parsers -------------------------------------------------------------------

_MO_MAGIC_LE = 0x950412DE


def _charset(header: str) -> str:
    m = re.search(r"charset=([A-Za-z0-9_.:-]+)", header)
    charset = m.group(1) if m else "utf-8"
    return "utf-8" if charset.upper() in ("CHARSET", "") else charset


def parse_mo(data: bytes, name: str = "<mo>") -> List[Entry]:
    """The messages of a binary ``.mo`` catalog (GNU format, either byte order).

    ``msgctxt`` is separated from ``msgid`` by ``\\x04`` and plural forms by
    ``\\x00``, as msgfmt writes them.  The header entry (empty msgid) is not
    returned; its ``charset`` decodes the others.
    """
    if len(data) < 20:
        raise CatalogError(f"{name} is not a .mo file (only {len(data)} bytes)",
                           "delete it from the cache and run again")
    for order in ("<", ">"):
        if struct.unpack(order + "I", data[:4])[0] == _MO_MAGIC_LE:
            break
    else:
        raise CatalogError(f"{name} is not a .mo file (bad magic number)", "delete it from the cache and run again")
    try:
        _rev, n, o_orig, o_trans = struct.unpack(order + "4I", data[4:20])
        raw: List[Tuple[bytes, bytes]] = []
        for i in range(n):
            lo, oo = struct.unpack(order + "2I", data[o_orig + 8 * i: o_orig + 8 * i + 8])
            lt, ot = struct.unpack(order + "2I", data[o_trans + 8 * i: o_trans + 8 * i + 8])
            if oo + lo > len(data) or ot + lt > len(data):
                raise struct.error("string table points past the end of the file")
            raw.append((data[oo: oo + lo], data[ot: ot + lt]))
    except struct.error as e:
        raise CatalogError(f"{name} is a truncated or corrupt .mo file ({e})",
                           "delete it from the cache and run again") from None
    charset = "utf-8"
    for key, value in raw:
        if key == b"":
            charset = _charset(value.decode("ascii", errors="replace"))
    entries = []
    for key, value in raw:
        if key == b"":
            continue
        try:
            k, v = key.decode(charset), value.decode(charset)
        except (UnicodeDecodeError, LookupError):
            continue  # a message that does not decode is not text we can use
        ctxt = None
        if "\x04" in k:
            ctxt, k = k.split("\x04", 1)
        msgid, _, plural = k.partition("\x00")
        entries.append(Entry(msgid=msgid, msgstr=v.split("\x00"), msgctxt=ctxt,
                             msgid_plural=plural if "\x00" in k else None))
    return entries


_PO_KEYWORD = re.compile(r"^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s+(\".*\")\s*$")


def _po_string(literal: str, name: str, lineno: int) -> str:
    try:
        value = ast.literal_eval(literal)  # C escapes are a subset of Python's
    except (ValueError, SyntaxError):
        raise CatalogError(f"{name}, line {lineno}: bad string {literal[:40]!r}",
                           "fix the .po file or delete it") from None
    if not isinstance(value, str):
        raise CatalogError(f"{name}, line {lineno}: bad string {literal[:40]!r}", "fix the .po file or delete it")
    return value


def parse_po(data: Union[bytes, str], name: str = "<po>") -> List[Entry]:
    """The messages of a ``.po`` file (flags ``#, fuzzy`` and obsolete ``#~`` entries are marked, not dropped).

    Bytes are decoded with the header's charset (UTF-8 when absent)."""
    if isinstance(data, bytes):
        m = re.search(rb"charset=([A-Za-z0-9_.:-]+)", data[:4000])
        charset = _charset("charset=" + m.group(1).decode("ascii")) if m else "utf-8"
        try:
            text = data.decode(charset)
        except (UnicodeDecodeError, LookupError) as e:
            raise CatalogError(f"{name} does not decode as {charset} ({e})", "fix the .po file or delete it") from None
    else:
        text = data
    entries: List[Entry] = []
    cur: Dict[str, object] = {}
    last: Optional[Tuple[str, Optional[int]]] = None
    flags_fuzzy = False

    def flush() -> None:
        nonlocal cur, last, flags_fuzzy
        if "msgid" in cur:
            forms = cur.get("msgstr", {})
            msgstr = [forms[i] for i in sorted(forms)] if forms else []
            entries.append(Entry(msgid=cur["msgid"], msgstr=msgstr, msgctxt=cur.get("msgctxt"),
                                 msgid_plural=cur.get("msgid_plural"), fuzzy=flags_fuzzy,
                                 obsolete=bool(cur.get("obsolete"))))
        cur, last, flags_fuzzy = {}, None, False

    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        obsolete = line.startswith("#~")
        if obsolete:
            line = line[2:].strip()
            if line.startswith("|"):  # "#~|": the previous msgid of an obsolete message
                continue
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith("#,") and "msgid" in cur and "msgstr" in cur:
                flush()
            if line.startswith("#,") and "fuzzy" in [f.strip() for f in line[2:].split(",")]:
                flags_fuzzy = True
            continue
        if line.startswith('"'):
            if last is None:
                raise CatalogError(f"{name}, line {lineno}: a string continuation without a keyword",
                                   "fix the .po file or delete it")
            value = _po_string(line, name, lineno)
            key, idx = last
            if key == "msgstr":
                cur["msgstr"][idx] += value  # type: ignore[index]
            else:
                cur[key] = cur[key] + value  # type: ignore[operator]
            continue
        m = _PO_KEYWORD.match(line)
        if not m:
            raise CatalogError(f"{name}, line {lineno}: cannot parse {line[:40]!r}", "fix the .po file or delete it")
        keyword, index, literal = m.groups()
        value = _po_string(literal, name, lineno)
        if keyword in ("msgctxt", "msgid") and "msgid" in cur and "msgstr" in cur:
            flush()  # the previous message ended without a blank line
        if keyword.startswith("msgstr"):
            idx = int(index) if index is not None else 0
            cur.setdefault("msgstr", {})[idx] = value  # type: ignore[union-attr]
            last = ("msgstr", idx)
        else:
            cur[keyword] = value
            last = (keyword, None)
        if obsolete:
            cur["obsolete"] = True
    flush()
    return [e for e in entries if e.msgid != "" or e.msgctxt is not None]


def parse_catalog(data: bytes, name: str) -> List[Entry]:
    """Parse ``data`` as ``.mo`` or ``.po`` according to ``name``'s extension."""
    if name.endswith(".mo"):
        return parse_mo(data, name)
    if name.endswith(".po"):
        return parse_po(data, name)
    raise CatalogError(f"{name} is neither a .mo nor a .po file", "pass catalog files ending in .mo or .po")


# --- cleaning rules (docs/catalog_corpus.md lists them in this order) ------------

MIN_TOKENS = 3     # English side, whitespace tokens
MAX_TOKENS = 100   # either side
MAX_RATIO = 3.0    # character-length ratio between the sides

_FORMAT = re.compile(
    r"%(?:\d+\$)?(?:\([^)]*\))?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?"  # %, position, key, flags, width, prec.
    r"(?:hh|h|ll|l|L|q|j|z|t|I64|I32|I)*[diouxXeEfFgGaAcspnrSC%]"      # length modifier, conversion
    r"|%<PRI\w+>"          # gettext's %<PRId64>
    r"|%\d"                # Qt / positional %1
    r"|%[A-Za-z_]+%"       # %NAME% placeholders
    r"|\{[^{}\s]*\}"       # {0} {} {name} {name:>3}
    r"|\$\{[^}]*\}|\$[A-Z_][A-Z0-9_]*"  # ${var} $VAR
)
_MARKUP = re.compile(r"</?[A-Za-z][^<>]*>|&(?:#\d+|#x[0-9A-Fa-f]+|[A-Za-z][A-Za-z0-9]*);")
_CJK_ACCEL = re.compile(r"\s*\((?:_|&)[A-Za-z0-9]\)")
_UNDERSCORE_ACCEL = re.compile(r"(?<!_)_(?=[^\W_])")
_AMP_ACCEL = re.compile(r"(?<![&\w])&(?=[^\W_])|(?<=\w)&(?=[^\W\d_])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|\bwww\.|[\w.+-]+@[\w-]+\.[\w.]+")


def is_usable(entry: Entry) -> bool:
    """Rule 1: a translated, current message (not fuzzy, not obsolete, non-empty msgid and msgstr)."""
    return (not entry.fuzzy and not entry.obsolete and bool(entry.msgid.strip())
            and bool(entry.msgstr) and all(s.strip() for s in entry.msgstr))


def is_plural(entry: Entry) -> bool:
    """Rule 2: a message with plural forms (dropped entirely: its forms follow a count placeholder)."""
    return entry.msgid_plural is not None or len(entry.msgstr) > 1


def has_format(text: str) -> bool:
    """Rule 3: a printf / Python / brace / shell placeholder (``%s``, ``%(n)d``, ``%1``, ``{0}``, ``${x}``)."""
    return bool(_FORMAT.search(text))


def has_markup(text: str) -> bool:
    """Rule 4: an XML/HTML/Pango tag or an entity (``<b>``, ``</a>``, ``&amp;``)."""
    return bool(_MARKUP.search(text))


def strip_accelerators(text: str) -> str:
    """Rule 5: remove mnemonic markers: ``_File`` / ``Pr_eferences`` / ``&File`` -> ``File`` / ``Preferences``,
    the CJK form ``ファイル(_F)`` -> ``ファイル``, and ``&&`` -> ``&`` (a literal ampersand)."""
    text = _CJK_ACCEL.sub("", text)
    text = _UNDERSCORE_ACCEL.sub("", text)
    text = _AMP_ACCEL.sub("", text)
    return text.replace("&&", "&")


def has_control(text: str) -> bool:
    """Rule 6: a newline, tab or other control character (multi-line messages are dropped, not joined)."""
    return bool(_CONTROL.search(text))


def normalise(text: str) -> str:
    """Rule 7: Unicode NFC, every run of whitespace (no-break spaces included) one space, ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def has_url(text: str) -> bool:
    """Rule 8: a URL or an e-mail address."""
    return bool(_URL.search(text))


def length_ok(english: str, translation: str) -> bool:
    """Rule 9: English 3-100 whitespace tokens, translation 1-100, character ratio at most 3 either way,
    and a letter on each side."""
    if not has_letter(english) or not has_letter(translation):
        return False
    ne, nt = len(english.split()), len(translation.split())
    if not MIN_TOKENS <= ne <= MAX_TOKENS or not 1 <= nt <= MAX_TOKENS:
        return False
    le, lt = len(english), len(translation)
    return max(le, lt) <= MAX_RATIO * min(le, lt)


def has_letter(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


def is_copy(english: str, translation: str) -> bool:
    """Rule 10: the translation is the English left untranslated (equal after case folding)."""
    return english.casefold() == translation.casefold()


def clean_text(text: str) -> Union[str, Tuple[str]]:
    """Rules 3-8 on one side: the cleaned text, or a 1-tuple with the name of the rule that dropped it."""
    if has_control(text.strip("\n")):
        return ("newline",)
    if has_format(text):
        return ("format",)
    if has_markup(text):
        return ("markup",)
    if has_url(text):
        return ("url",)
    return normalise(strip_accelerators(text))


def clean_english(msgid: str) -> Optional[str]:
    """The cleaned English side of a message on its own (for monolingual text), or None when a rule drops it."""
    text = clean_text(msgid)
    if isinstance(text, tuple) or not MIN_TOKENS <= len(text.split()) <= MAX_TOKENS or not has_letter(text):
        return None
    return text


def clean_pair(entry: Entry) -> Union[Tuple[str, str], str]:
    """Every rule on one message: ``(english, translation)``, or the name of the rule that dropped it."""
    if not is_usable(entry):
        return "untranslated"
    if is_plural(entry):
        return "plural"
    english, translation = clean_text(entry.msgid), clean_text(entry.msgstr[0])
    for side in (english, translation):
        if isinstance(side, tuple):
            return side[0]
    if not length_ok(english, translation):
        return "length"
    if is_copy(english, translation):
        return "copy"
    return english, translation


def leak_key(text: str) -> str:
    """The key under which two lines count as the same sentence for the leakage check:
    case-folded letters and digits only (``Open File…`` and ``open file`` collide)."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).casefold() if ch.isalnum())


def pool_language(entries: Iterable[Entry], stats: Optional[Counter] = None) -> Dict[str, str]:
    """Rule 11 over all cleaned pairs of one language: one translation per English sentence.

    The context (``msgctxt``) only tells messages apart in the catalog and is
    not part of the text; where one English sentence has several translations
    (contexts, catalogs), the most frequent wins, ties broken by the smallest
    string, so the result does not depend on the order of the catalogs.
    """
    votes: Dict[str, Counter] = {}
    for entry in entries:
        result = clean_pair(entry)
        if isinstance(result, str):
            if stats is not None:
                stats[result] += 1
            continue
        english, translation = result
        votes.setdefault(english, Counter())[translation] += 1
        if stats is not None:
            stats["kept"] += 1
    table = {}
    for english, counter in votes.items():
        table[english] = min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    if stats is not None:
        stats["duplicate"] += stats["kept"] - len(table)
        stats["kept"] = len(table)
    return table
