"""scripts/make_catalog_corpus.py and fairseq_metabt/data/catalogs.py on catalogs written by the test (never
downloads): the parsers, every cleaning rule, split sizes, leakage (checked here independently),
determinism, the raw-layout validator, the offline cache path, and the one-line errors."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import struct
import subprocess
import sys
from collections import Counter
from typing import Dict, List, Optional, Tuple

import pytest

from fairseq_metabt.data import catalog_corpus as cc
from fairseq_metabt.data import catalogs as cat
from fairseq_metabt.data.raw_layout import scan_raw_dir
from fairseq_metabt.errors import UserError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SCRIPT = os.path.join(ROOT, "scripts", "make_catalog_corpus.py")
LANGS = ("gl", "pt", "es", "ru", "tr")
SMALL = "train=20,valid=6,test=10,other=30,mono_src=15,mono_tgt=1000"


def _script():
    spec = importlib.util.spec_from_file_location("make_catalog_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- fixture catalogs ---------------------------------------------------------------

VERBS = ["Open", "Close", "Save", "Print", "Rename", "Delete", "Copy", "Move"]
ADJS = ["the red", "the old", "a new", "the shared", "every hidden", "the last"]
NOUNS = ["image file", "window layout", "music playlist", "mail folder", "calendar event", "font style"]


def english_sentences() -> List[str]:
    return [f"{v} {a} {n}" for v in VERBS for a in ADJS for n in NOUNS]  # 288 distinct, 4-5 tokens


def translate(english: str, lang: str) -> str:
    return " ".join(w.lower() + lang for w in english.split())


def po_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def write_po(path: str, entries: List[Tuple[Optional[str], str, str]], extra: str = "") -> None:
    """entries: (msgctxt, msgid, msgstr)."""
    out = ['msgid ""', 'msgstr ""', '"Content-Type: text/plain; charset=UTF-8\\n"', ""]
    for ctxt, msgid, msgstr in entries:
        if ctxt is not None:
            out.append(f"msgctxt {po_quote(ctxt)}")
        out += [f"msgid {po_quote(msgid)}", f"msgstr {po_quote(msgstr)}", ""]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(out) + extra)


def make_mo(pairs: Dict[str, str], big_endian: bool = False) -> bytes:
    """A GNU .mo file holding ``pairs`` (keys may carry ``ctxt\\x04`` and ``\\x00`` plurals)."""
    order = ">" if big_endian else "<"
    items = sorted((k.encode(), v.encode()) for k, v in pairs.items())
    n = len(items)
    o_orig, o_trans = 28, 28 + 8 * n
    data_off = 28 + 16 * n
    ids = b"".join(k + b"\0" for k, _ in items)
    strs = b"".join(v + b"\0" for _, v in items)
    orig_tab, trans_tab, pos = b"", b"", data_off
    for k, _ in items:
        orig_tab += struct.pack(order + "2I", len(k), pos)
        pos += len(k) + 1
    for _, v in items:
        trans_tab += struct.pack(order + "2I", len(v), pos)
        pos += len(v) + 1
    header = struct.pack(order + "7I", 0x950412DE, 0, n, o_orig, o_trans, 0, 0)
    return header + orig_tab + trans_tab + ids + strs


DIRTY = [  # (ctxt, msgid, msgstr) that the cleaning rules must drop or change
    (None, "Open %s in a new window", "abrir %s nunha xanela nova"),
    (None, "Save <b>all</b> open files", "gardar <b>todos</b> os ficheiros"),
    (None, "Line one of the help\nline two of it", "liña un\nliña dous"),
    (None, "Quit", "Saír"),
    (None, "Visit the project web site now", "Visit the project web site now"),
    (None, "See https://example.org for more details", "vexa https://example.org para detalles"),
]


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory) -> str:
    """Five languages as .po files (app/LANG.po), plus a .mo for gl and noise the rules must remove."""
    root = str(tmp_path_factory.mktemp("catalogs"))
    sents = english_sentences()
    for i, lang in enumerate(LANGS):
        # every language translates most sentences; each skips a different slice
        chosen = [s for j, s in enumerate(sents) if (j + i) % 9 != 0]
        entries = [(None, s, translate(s, lang)) for s in chosen]
        entries += [(None, "_Accelerated " + s, "_" + translate("accelerated " + s, lang)) for s in chosen[:5]]
        entries += DIRTY
        fuzzy = (f'\n#, fuzzy\nmsgid "Fuzzy entries are never used"\nmsgstr "{lang} fuzzy never used"\n'
                 f'\nmsgid "One apple on the table"\nmsgid_plural "Several apples on the table"\n'
                 f'msgstr[0] "{lang} apple one"\nmsgstr[1] "{lang} apples many"\n')
        write_po(os.path.join(root, "app", f"{lang}.po"), entries, extra=fuzzy)
    english_only = [f"Lonely English sentence number {w}" for w in ("one", "two", "three", "four", "five")]
    with open(os.path.join(root, "app", "de.po"), "w", encoding="utf-8") as f:
        f.write('msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n' + "".join(
            f'msgid "{e}"\nmsgstr "de {e.lower()} de"\n\n' for e in english_only))
    mo_dir = os.path.join(root, "locale", "gl", "LC_MESSAGES")
    os.makedirs(mo_dir)
    extra = {f"Show the {n} again and again": f"amosar o {n} outra vez" for n in ("panel", "grid", "ruler")}
    extra[""] = "Content-Type: text/plain; charset=UTF-8\n"
    with open(os.path.join(mo_dir, "extra.mo"), "wb") as f:
        f.write(make_mo(extra))
    return root


def build_small(catalog_dir: str, out: str, preset: str, seed: int = 1, sizes: str = SMALL, **kw) -> dict:
    return cc.build(preset, out, None, catalog_dir, seed, cc.parse_sizes(sizes), "gl", ["pt", "es"], ["ru", "tr"],
                    log=lambda m: None, **kw)


def read_lines(path: str) -> List[str]:
    with open(path, encoding="utf-8", newline="\n") as f:
        return f.read().split("\n")[:-1]


# --- parsers ----------------------------------------------------------------------

def test_parse_po_flags_context_plurals_continuations():
    text = r'''# comment
msgid ""
msgstr ""
"Content-Type: text/plain; charset=UTF-8\n"

#: src/a.c:1
#, fuzzy, c-format
msgid "Fuzzy one"
msgstr "borroso"

msgctxt "menu"
msgid "Open "
"the file"
msgstr "Abrir "
"o ficheiro \"x\""

msgid "One file"
msgid_plural "Many files"
msgstr[0] "un"
msgstr[1] "moitos"
msgid "No blank line before me"
msgstr "sen liña"

#~ msgid "Old message"
#~ msgstr "vella"
'''
    entries = cat.parse_po(text.encode())
    by_id = {e.msgid: e for e in entries}
    assert by_id["Fuzzy one"].fuzzy and not by_id["Open the file"].fuzzy
    assert by_id["Open the file"].msgctxt == "menu" and by_id["Open the file"].msgstr == ['Abrir o ficheiro "x"']
    assert by_id["One file"].msgid_plural == "Many files" and by_id["One file"].msgstr == ["un", "moitos"]
    assert by_id["No blank line before me"].msgstr == ["sen liña"]
    assert by_id["Old message"].obsolete
    assert "" not in by_id  # the header is not a message


@pytest.mark.parametrize("big_endian", [False, True])
def test_parse_mo_context_plural_and_byte_order(big_endian):
    data = make_mo({"": "Content-Type: text/plain; charset=UTF-8\n", "menu\x04Open": "Abrir",
                    "One file\x00Many files": "un\x00moitos", "Plain": "Simple ñ"}, big_endian)
    entries = {e.msgid: e for e in cat.parse_mo(data)}
    assert entries["Open"].msgctxt == "menu" and entries["Open"].msgstr == ["Abrir"]
    assert entries["One file"].msgid_plural == "Many files" and entries["One file"].msgstr == ["un", "moitos"]
    assert entries["Plain"].msgstr == ["Simple ñ"] and "" not in entries


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="gettext's msgfmt is not installed")
def test_parse_mo_reads_msgfmt_output(tmp_path):
    po = tmp_path / "x.po"
    write_po(str(po), [("ctx", "Open the file now", "Abrir o ficheiro agora"), (None, "Close it", "Pechalo")])
    subprocess.run(["msgfmt", "-o", str(tmp_path / "x.mo"), str(po)], check=True)
    entries = {e.msgid: e for e in cat.parse_mo((tmp_path / "x.mo").read_bytes())}
    assert entries["Open the file now"].msgctxt == "ctx" and entries["Close it"].msgstr == ["Pechalo"]


def test_parse_errors_are_one_line_user_errors():
    with pytest.raises(UserError, match="bad magic"):
        cat.parse_mo(b"\0" * 40, "x.mo")
    with pytest.raises(UserError, match="truncated or corrupt"):
        cat.parse_mo(make_mo({"a b c": "d e f"})[:40], "x.mo")
    with pytest.raises(UserError, match="line 1"):
        cat.parse_po(b"garbage here\n", "x.po")


# --- cleaning rules, one by one ------------------------------------------------------

def test_rule_usable_drops_fuzzy_untranslated_obsolete():
    assert cat.is_usable(cat.Entry("Open it now", ["Abrir"]))
    assert not cat.is_usable(cat.Entry("Open it now", ["Abrir"], fuzzy=True))
    assert not cat.is_usable(cat.Entry("Open it now", [""]))
    assert not cat.is_usable(cat.Entry("Open it now", []))
    assert not cat.is_usable(cat.Entry("Open it now", ["Abrir"], obsolete=True))


def test_rule_plural_dropped():
    assert cat.is_plural(cat.Entry("One file", ["un", "moitos"], msgid_plural="Many files"))
    assert not cat.is_plural(cat.Entry("One file", ["un"]))
    assert cat.clean_pair(cat.Entry("One file here", ["un aqui", "moitos"], msgid_plural="Files")) == "plural"


@pytest.mark.parametrize("text", ["Open %s now", "%d files left", "%(name)s is here", "Width %.2f px",
                                  "Page %1 of %2", "Size %lu bytes", "Hello {0} there", "Hi {name} you",
                                  "Path ${HOME} used", "Value %I64d", "Got %<PRIu64> items", "Done 100%% now",
                                  "Order %2$s %1$s"])
def test_rule_format_strings(text):
    assert cat.has_format(text)


@pytest.mark.parametrize("text", ["Open the file", "Use 100 percent", "A {big} deal? no: { spaced }",
                                  "Tom & Jerry show"])
def test_rule_format_keeps_plain_text(text):
    assert cat.has_format(text) is (text == "A {big} deal? no: { spaced }")


def test_rule_markup():
    for text in ["Save <b>all</b> files", "<span weight='bold'>x</span>", "Line<br/>break", "Fish &amp; chips",
                 "Quote &#34;x&#34;"]:
        assert cat.has_markup(text), text
    for text in ["a < b and c > d", "Tom & Jerry", "x<3 things"]:
        assert not cat.has_markup(text), text


def test_rule_accelerators():
    assert cat.strip_accelerators("_File") == "File"
    assert cat.strip_accelerators("Pr_eferences") == "Preferences"
    assert cat.strip_accelerators("Save _As…") == "Save As…"
    assert cat.strip_accelerators("&Open file") == "Open file"
    assert cat.strip_accelerators("Sa&ve image") == "Save image"
    assert cat.strip_accelerators("ファイル(_F)") == "ファイル"
    assert cat.strip_accelerators("Datei (&D)") == "Datei"
    assert cat.strip_accelerators("Tom && Jerry") == "Tom & Jerry"
    assert cat.strip_accelerators("Tom & Jerry") == "Tom & Jerry"
    assert cat.strip_accelerators("__init__ stays") == "__init__ stays"


def test_rule_newlines_and_controls():
    assert cat.has_control("two\nlines") and cat.has_control("tab\there") and not cat.has_control("one line")
    assert cat.clean_pair(cat.Entry("Line one here\nline two", ["a\nb"])) == "newline"


def test_rule_whitespace_normalised():
    assert cat.normalise("  Open\u00a0the   file \u2009now ") == "Open the file now"
    assert cat.normalise("Cafe\u0301 open") == "Café open"  # NFC


def test_rule_urls():
    assert cat.has_url("See https://example.org now") and cat.has_url("Mail me@example.org please")
    assert cat.has_url("Visit www.gimp.org today") and not cat.has_url("Open the file.")


def test_rule_length_and_ratio():
    assert not cat.length_ok("Open file", "Abrir ficheiro")                      # English < 3 tokens
    assert cat.length_ok("Open the file", "Abrir")                               # translation may be shorter
    assert not cat.length_ok(" ".join(["word"] * 101), " ".join(["palabra"] * 101))  # > 100 tokens
    assert not cat.length_ok("Open the file", "x " * 30)                         # ratio > 3
    assert not cat.length_ok("1 2 3", "4 5 6")                                   # no letter


def test_rule_copies():
    assert cat.is_copy("Open the File", "open the file") and not cat.is_copy("Open the file", "Abrir o ficheiro")
    assert cat.clean_pair(cat.Entry("Visit the web site", ["Visit the web site"])) == "copy"


def test_rule_duplicates_and_context_vote():
    entries = [cat.Entry("Open the file", ["Abrir o ficheiro"], msgctxt="menu"),
               cat.Entry("Open the file", ["Abrir o ficheiro"], msgctxt="toolbar"),
               cat.Entry("Open the file", ["Abre o ficheiro"]),
               cat.Entry("Close the file", ["Pechar b"]), cat.Entry("Close the file", ["Pechar a"])]
    stats = Counter()
    table = cat.pool_language(entries, stats)
    assert table == {"Open the file": "Abrir o ficheiro", "Close the file": "Pechar a"}  # majority, then smallest
    assert stats["kept"] == 2 and stats["duplicate"] == 3
    assert table == cat.pool_language(list(reversed(entries)))  # order does not matter


def test_clean_pair_applies_accelerators_and_whitespace():
    assert cat.clean_pair(cat.Entry("_Open  the file", ["_Abrir o\u00a0ficheiro"])) == ("Open the file",
                                                                                      "Abrir o ficheiro")


def test_leak_key():
    assert cat.leak_key("Open File…") == cat.leak_key("open file") != cat.leak_key("open files")


# --- the corpus -----------------------------------------------------------------------

def test_presets_sizes_layout_and_no_leakage(catalog_dir, tmp_path):
    sizes = cc.parse_sizes(SMALL)
    expected_langs = {"bt": ["gl"], "bidir": ["gl"], "multi": list(LANGS)}
    for preset in ("bt", "multi", "bidir"):
        out = str(tmp_path / preset)
        manifest = build_small(catalog_dir, out, preset)
        layout = scan_raw_dir(out)  # the project's validator, manifest languages included
        assert sorted(layout.pairs) == sorted((l, "en") for l in expected_langs[preset])
        mono = {"bt": ["en"], "multi": ["en"], "bidir": ["en", "gl"]}[preset]
        assert sorted(layout.mono) == mono
        n = {name: len(read_lines(os.path.join(out, name))) for name in manifest["files"]}
        assert n == manifest["sizes"]
        assert n["train.gl-en.gl"] == sizes["train"] and n["valid.gl-en.en"] == sizes["valid"]
        assert n["test.gl-en.gl"] == sizes["test"]
        if preset == "multi":
            for lang in ("pt", "es", "ru", "tr"):
                assert n[f"train.{lang}-en.{lang}"] == sizes["other"]
                # multi-way valid/test: the same English sentences for every source
                assert read_lines(os.path.join(out, f"test.{lang}-en.en")) == read_lines(
                    os.path.join(out, "test.gl-en.en"))
        if preset == "bidir":
            assert n["mono.gl"] == sizes["mono_src"]
        # independent leakage check: exact lines, both sides, every valid/test file against every other file
        held = set()
        for name in manifest["files"]:
            if name.startswith(("valid.", "test.")):
                held.update(read_lines(os.path.join(out, name)))
        for name in manifest["files"]:
            if name.startswith(("train.", "mono.")):
                lines = read_lines(os.path.join(out, name))
                assert not held & set(lines), (preset, name, sorted(held & set(lines))[:3])
                assert not {l.casefold() for l in held} & {l.casefold() for l in lines}
        assert manifest["leakage_check"]["violations"] == 0
        # the rules were applied: nothing dirty survives anywhere
        everything = [l for name in manifest["files"] for l in read_lines(os.path.join(out, name))]
        assert not any("%" in l or "<b>" in l or "_" in l or "http" in l or "fuzzy" in l for l in everything)
        assert not any(l in ("Quit", "Saír", "Visit the project web site now") for name in manifest["files"]
                       if not name.startswith("mono.") for l in read_lines(os.path.join(out, name)))
    bt, bidir = str(tmp_path / "bt"), str(tmp_path / "bidir")
    for name in os.listdir(bt):  # bt and bidir share their splits
        if name.startswith(("train.", "valid.", "test.", "mono.")):
            assert read_lines(os.path.join(bt, name)) == read_lines(os.path.join(bidir, name))
    # mono.gl is not the translation of mono.en lines
    gl_english = {translate(s, "gl"): s for s in english_sentences()}
    mono_en = set(read_lines(os.path.join(bidir, "mono.en")))
    assert not any(gl_english.get(l) in mono_en for l in read_lines(os.path.join(bidir, "mono.gl")))


def test_deterministic_and_seeded(catalog_dir, tmp_path):
    a, b, c = (str(tmp_path / x) for x in "abc")
    build_small(catalog_dir, a, "multi", seed=3)
    build_small(catalog_dir, b, "multi", seed=3)
    build_small(catalog_dir, c, "multi", seed=4)
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    for name in names:
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name
    assert read_lines(os.path.join(a, "test.gl-en.en")) != read_lines(os.path.join(c, "test.gl-en.en"))


def test_leakage_check_catches_a_leak(catalog_dir, tmp_path):
    out = str(tmp_path / "bt")
    build_small(catalog_dir, out, "bt")
    leaked = read_lines(os.path.join(out, "test.gl-en.gl"))[3]
    with open(os.path.join(out, "mono.en"), "a", encoding="utf-8") as f:
        f.write(leaked.upper() + "\n")  # the check is case-insensitive
    with pytest.raises(cc.LeakageError, match="leakage: .*mono.en"):
        cc.check_leakage(out)


def _tiny_deb(tmp_path, name: str = "fixture-l10n", version: str = "1.0-1") -> str:
    pkg = tmp_path / "pkg"
    mo_dir = pkg / "usr" / "share" / "locale" / "gl" / "LC_MESSAGES"
    mo_dir.mkdir(parents=True)
    sents = english_sentences()
    (mo_dir / "fixture.mo").write_bytes(make_mo({s: translate(s, "gl") for s in sents}))
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN" / "control").write_text(f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
                                            "Maintainer: test <t@example.org>\nDescription: fixture\n")
    deb = str(tmp_path / f"{name}_{version}_all.deb")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(pkg), deb], check=True,
                   capture_output=True)
    return deb


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")
def test_offline_cache_of_pinned_packages(tmp_path, monkeypatch):
    deb = _tiny_deb(tmp_path)
    sha = hashlib.sha256(open(deb, "rb").read()).hexdigest()
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    shutil.copy(deb, cache / "debs")
    monkeypatch.setattr(cc, "PACKAGES", (("fixture-l10n", "1.0-1", sha),))
    sizes = cc.parse_sizes("train=30,valid=5,test=10,mono_src=10")
    out = str(tmp_path / "out")
    manifest = cc.build("bt", out, str(cache), None, 1, sizes, "gl", [], [], offline=True, log=lambda m: None)
    assert manifest["packages"] == {"fixture-l10n": "1.0-1"}
    assert os.path.exists(cache / "catalogs" / "fixture-l10n_1.0-1" / ".complete")
    import json
    prov = json.load(open(os.path.join(out, "catalog.json")))
    assert prov["source"]["packages"][0]["sha256"] == sha and prov["source"]["packages"][0]["pinned"]
    scan_raw_dir(out)
    # a .deb whose bytes differ from the pin is refused, and nothing is written
    monkeypatch.setattr(cc, "PACKAGES", (("fixture-l10n", "1.0-1", "0" * 64),))
    with pytest.raises(UserError, match="not the pinned"):
        cc.build("bt", str(tmp_path / "out2"), str(cache), None, 1, sizes, "gl", [], [], offline=True)
    assert not os.path.exists(tmp_path / "out2")
    # a package missing from the cache with --offline: one line naming it
    monkeypatch.setattr(cc, "PACKAGES", (("fixture-absent", "2.0", "0" * 64),))
    with pytest.raises(UserError, match="fixture-absent 2.0 is not in the cache"):
        cc.build("bt", str(tmp_path / "out3"), str(cache), None, 1, sizes, "gl", [], [], offline=True)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")
def test_stale_package_lists_are_refreshed_in_the_cache(tmp_path, monkeypatch):
    """A fresh machine whose image lists an older version than the pin: the download is retried once on package
    lists refreshed into the cache (``apt-get update`` there, the machine's lists untouched), then succeeds; a
    refresh that fails is one error naming ``apt-get update``. apt-get is a stand-in: tests never download."""
    deb = _tiny_deb(tmp_path)
    sha = hashlib.sha256(open(deb, "rb").read()).hexdigest()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bindir / "apt-get"
    # stand-in: `-o Dir::State::Lists=D update` marks D fresh; `download` works only on fresh lists
    fake.write_text(f"""#!/bin/sh
echo "$*" >> {calls}
lists=""
if [ "$1" = -o ]; then lists="${{2#Dir::State::Lists=}}"; shift 2; fi
case "$1" in
  update) [ -n "$FAIL_UPDATE" ] && {{ echo "E: network unreachable" >&2; exit 100; }}
          [ -d "$lists/partial" ] && touch "$lists/fresh"; exit 0;;
  download) if [ -n "$lists" ] && [ -f "$lists/fresh" ]; then cp {deb} .; exit 0; fi
            echo "E: Version '1.0-1' for 'fixture-l10n' was not found" >&2; exit 100;;
esac
exit 1
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(cc, "PACKAGES", (("fixture-l10n", "1.0-1", sha),))
    monkeypatch.setattr(cc, "_FRESH_LISTS", {})
    sizes = cc.parse_sizes("train=30,valid=5,test=10,mono_src=10")
    cache = str(tmp_path / "cache")
    manifest = cc.build("bt", str(tmp_path / "out"), cache, None, 1, sizes, "gl", [], [], log=lambda m: None)
    assert manifest["packages"] == {"fixture-l10n": "1.0-1"}
    lines = calls.read_text().splitlines()
    assert lines == ["download fixture-l10n=1.0-1", f"-o Dir::State::Lists={cache}/apt-lists update",
                     f"-o Dir::State::Lists={cache}/apt-lists download fixture-l10n=1.0-1"], lines
    # the refresh fails (no network): one error naming the step and the fix; nothing written
    monkeypatch.setenv("FAIL_UPDATE", "1")
    monkeypatch.setattr(cc, "_FRESH_LISTS", {})
    with pytest.raises(UserError, match=r"apt-get update \(package lists in .*apt-lists\) failed .*network"):
        cc.build("bt", str(tmp_path / "out2"), str(tmp_path / "cache2"), None, 1, sizes, "gl", [], [])
    assert not os.path.exists(tmp_path / "out2")
    # no apt-get at all: one error saying so and how to get the packages, not a traceback
    empty = tmp_path / "nobin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(cc, "_FRESH_LISTS", {})
    with pytest.raises(UserError, match="apt-get is not available.*reuse --cache"):
        cc.build("bt", str(tmp_path / "out3"), str(tmp_path / "cache3"), None, 1, sizes, "gl", [], [])


def test_pinned_packages_exclude_the_image_catalogs():
    names = [p for p, _, _ in cc.PACKAGES]
    assert not set(names) & set(cc.IMAGE_LOCALE_PACKAGES)
    assert len(names) == len(set(names)) and all(len(sha) == 64 for _, _, sha in cc.PACKAGES)
    if shutil.which("dpkg-query"):  # none of them is installed on this machine
        proc = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Status}\n", *names], capture_output=True,
                              text=True)
        assert "install ok installed" not in proc.stdout


def test_image_domains_are_skipped(tmp_path):
    root = tmp_path / "cats"
    write_po(str(root / "locale" / "gl" / "LC_MESSAGES" / "coreutils.po"), [(None, "Open the file now", "Abrir")])
    files = cc.catalogs_in_dir(str(root))
    assert [f.domain for f in files] == ["coreutils"]
    with pytest.raises(UserError, match="no usable gl"):
        cc.gather(files, ["gl"])


# --- errors: one line, exit status 2, nothing overwritten --------------------------------

def _fails(capsys, argv: List[str]) -> str:
    with pytest.raises(SystemExit) as e:
        _script().main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fairseq-metabt: error: ") and "\n" not in err, err
    return err


def test_errors(catalog_dir, tmp_path, capsys):
    main = _script().main
    assert "unknown preset 'nope'" in _fails(capsys, ["--preset", "nope", str(tmp_path / "o")])
    assert "not a directory" in _fails(capsys, ["--preset", "bt", str(tmp_path / "o"), "--catalog-dir",
                                                str(tmp_path / "missing")])
    assert "bad --sizes" in _fails(capsys, ["--preset", "bt", str(tmp_path / "o"), "--catalog-dir", catalog_dir,
                                            "--sizes", "train=0"])
    assert "only" in _fails(capsys, ["--preset", "bt", str(tmp_path / "o"), "--catalog-dir", catalog_dir,
                                     "--sizes", "train=100000"])
    empty_cache = tmp_path / "cache"
    assert "is not in the cache" in _fails(capsys, ["--preset", "bt", str(tmp_path / "o"), "--cache",
                                                    str(empty_cache), "--offline"])
    (tmp_path / "afile").write_text("x")
    assert "exists and is not a directory" in _fails(capsys, ["--preset", "bt", str(tmp_path / "afile"),
                                                              "--catalog-dir", catalog_dir])
    assert "--cache" in _fails(capsys, ["--preset", "bt", str(tmp_path / "o"), "--cache", str(tmp_path / "afile")])
    # an existing, non-empty OUT is refused and left as it was
    out = tmp_path / "used"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert "is not empty" in _fails(capsys, ["--preset", "bt", str(out), "--catalog-dir", catalog_dir])
    assert os.listdir(out) == ["notes.txt"]
    assert "did not write" in _fails(capsys, ["--preset", "bt", str(out), "--catalog-dir", catalog_dir, "--force"])
    assert (out / "notes.txt").read_text() == "mine" and os.listdir(out) == ["notes.txt"]
    # its own output is replaced with --force, and only that
    own = str(tmp_path / "own")
    assert main(["--preset", "bt", own, "--catalog-dir", catalog_dir, "--sizes", SMALL]) == 0
    assert "is not empty" in _fails(capsys, ["--preset", "bt", own, "--catalog-dir", catalog_dir, "--sizes", SMALL])
    assert main(["--preset", "bidir", own, "--catalog-dir", catalog_dir, "--sizes", SMALL, "--force"]) == 0
    assert "mono.gl" in os.listdir(own)
    # a corrupt catalog: one line naming the file
    bad = tmp_path / "bad" / "locale" / "gl" / "LC_MESSAGES"
    bad.mkdir(parents=True)
    (bad / "broken.mo").write_bytes(b"not a catalog at all, clearly")
    assert "broken.mo is not a .mo file" in _fails(capsys, ["--preset", "bt", str(tmp_path / "o2"),
                                                            "--catalog-dir", str(tmp_path / "bad")])


def test_cli_subprocess_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--preset", "nope", str(tmp_path / "o")], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("fairseq-metabt: error: unknown preset") and proc.stderr.count("\n") == 1
