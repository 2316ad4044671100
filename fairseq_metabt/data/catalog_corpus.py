"""Real-text corpora from gettext catalogs in Debian packages (``scripts/make_catalog_corpus.py``).

The catalogs of a pinned set of Debian packages (``PACKAGES``: name, version,
sha256 of the ``.deb``) are downloaded with ``apt-get download`` into a cache,
unpacked with ``dpkg-deb`` (never installed), cleaned by the rules of
:mod:`fairseq_metabt.data.catalogs` and split into corpora in the raw layout
(``docs/data.md``).  The English message ids are the target side and pivot:
the same English sentence translated into several languages makes the data
multi-way parallel.  Everything is documented in ``docs/catalog_corpus.md``.
"""
from __future__ import annotations

import glob
import os
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from fairseq_metabt import fileio
from fairseq_metabt.data import catalogs
from fairseq_metabt.data.raw_layout import overlap_warnings, scan_raw_dir, sha256_file
from fairseq_metabt.errors import UserError, UserFileError

TOOL = "scripts/make_catalog_corpus.py"
VERSION = "1.0.0"
TARGET = "en"

# The pinned package set (Debian 12 "bookworm", architecture-independent catalogs).  Each was checked
# to ship .mo files under usr/share/locale and to own no catalog installed in the machine image
# (IMAGE_LOCALE_PACKAGES).  GTK 3 (gtk30.mo) and libgweather were left out on purpose: gtk30 repeats
# much of the image's gtk20 catalog, and libgweather is mostly place names.
PACKAGES: Tuple[Tuple[str, str, str], ...] = (
    ("gimp-data", "2.10.34-1+deb12u10", "89007a69d4ef2b0440e5419e75d4112cfd1c49e97db38220d210b9f86322be7c"),
    ("inkscape", "1.2.2-2+deb12u1", "838dc6b30685055a4ff963931c458e5ea3e3fb0459c43a890a85663339233032"),
    ("gnome-control-center-data", "1:43.6-2~deb12u1",
     "f76430c1f6db2be884bbc0e37cfa43752b49d252abb94d9cce494e8cdd8882a1"),
    ("evince-common", "43.1-2+deb12u1", "777ea7d094db2acd7b385e272b0ba6cf03c7e45d574e6f2c689b507de3d95dbb"),
    ("gedit-common", "44.2-1", "3d9446b4ddcc7db0df41d9ee7f71b60a1d29ad688b6acbe04fe6fbea3461d5ef"),
    ("nautilus-data", "43.2-1", "2b0ba8ce95bbd9007ab4ff34070f67c2d41ca5c0b155bf8a12776f2ebb9b1481"),
    ("evolution-common", "3.46.4-2+deb12u1", "52e3a67ba3f2815fa864f600f5e3c2afd6ebc0b3487b50525df75006d4172b46"),
    ("evolution-data-server-common", "3.46.4-2+deb12u1",
     "0cd32d4dec7d0b553d390fc68b62ab769fc5031da20d47d7a3b8bf8b9f29b28c"),
    ("gnumeric-common", "1.12.55-1", "b474f0a67a781bdb41374110b54fe679c690f981dac356a9ca6260688df9f6b8"),
    ("gnucash-common", "1:4.13-1", "8477b415856eb671125ee63ac6a4ee1d23efeca3de6e55e5a14c6ebb32642b31"),
    ("vlc-l10n", "3.0.24-0+deb12u1", "11e65bcd6a1d4626b9e2d7388bb93c80edc46da82a6ca3b26d88f71edcb6f9b2"),
    ("synaptic", "0.91.3", "e35be88cf6594ef058d85acdfbb3216d735939bf32ce99b63d7cb455ef4ed628"),
    ("pidgin-data", "2.14.12-1", "fe25279f89fdcc3b38874880f53bf205987e2048154cabc6fe529759e7d8df76"),
    ("filezilla-common", "3.63.0-1+deb12u3", "2788f0f962c3a3d8eda1e76f10339b29ca5dc42dceb4ee8ad66b0c9beb6a717a"),
    ("rhythmbox-data", "3.4.6-2", "9eb244e46496ee6f7f0710d82a62b6fa1129e08eff198022a914f6b621c91a70"),
    ("xfce4-panel", "4.18.2-1", "0cf545a2693b62ad081e62eef9a689cfb3ae0ae6faaeeba200a95137cad4dd72"),
    ("mousepad", "0.5.10-2", "98a8800dd1693dcf7e4fa3723c21de65be54a95800b6d6b734624fe1e5f6543b"),
    ("totem-common", "43.0-2", "23190cc8726d7b8bfe9a4362260cdb2c98d304b195104ffc7ea382593c991ad8"),
    ("gnome-shell-common", "43.9-0+deb12u2", "9e70b13b77e684b024732b10be4998474cede77f633b06bc35e483b06a678d9f"),
    ("gramps", "5.1.5-1", "77875e0983e97498e91a14b4fd4033998146a582c7932a993cf268929a9fda6b"),
)

# Packages that own catalogs under /usr/share/locale in the machine image this kit was built on
# (`dpkg -S` of every installed .mo).  Those catalogs are kept for independent evaluation: no package
# here may be in PACKAGES, and a catalog whose domain one of them installs is skipped (IMAGE_DOMAINS).
IMAGE_LOCALE_PACKAGES = (
    "adduser", "appstream", "apt", "at-spi2-common", "bash", "binutils-common", "coreutils", "diffutils", "dpkg",
    "findutils", "gettext", "gettext-base", "git", "gnupg-l10n", "grep", "gsettings-desktop-schemas", "iso-codes",
    "krb5-locales", "libapt-pkg6.0", "libavahi-common-data", "libc-l10n", "libdpkg-perl", "libelf1",
    "libgdk-pixbuf2.0-common", "libglib2.0-data", "libgnutls30", "libgstreamer1.0-0", "libgtk2.0-common",
    "libidn2-0", "libpam-runtime", "libpq5", "login", "make", "man-db", "net-tools", "packagekit", "polkitd",
    "postgresql-15", "postgresql-client-15", "procps", "psmisc", "python-apt-common", "sed", "shared-mime-info",
    "software-properties-common", "systemd", "tar", "wget", "xdg-user-dirs", "xkb-data", "xz-utils",
)
IMAGE_DOMAINS = frozenset((
    "Linux-PAM", "PackageKit", "adduser", "apt", "apt-utils", "appstream", "at-spi2-core", "avahi", "bash",
    "binutils", "bfd", "coreutils", "diffutils", "dpkg", "dpkg-dev", "dselect", "elfutils", "findutils",
    "gas", "gdk-pixbuf", "gettext-runtime", "gettext-tools", "git", "glib20", "gnupg2", "gnutls", "gold",
    "gprof", "grep", "gsettings-desktop-schemas", "gstreamer-1.0", "gtk20", "gtk20-properties", "iso_15924",
    "iso_3166", "iso_3166-1", "iso_3166-2", "iso_3166-3", "iso_3166_2", "iso_4217", "iso_639", "iso_639-2",
    "iso_639-3", "iso_639-5", "iso_639_3", "iso_639_5", "ld", "libapt-pkg6.0", "libc", "libidn2", "libpq5-15",
    "make", "man-db", "man-db-gnulib", "mit-krb5", "net-tools", "opcodes", "pg_config-15", "polkit-1",
    "procps-ng", "psmisc", "python-apt", "sed", "shadow", "shared-mime-info", "software-properties", "systemd",
    "tar", "wget", "wget-gnulib", "xdg-user-dirs", "xkeyboard-config", "xz",
))

LANGUAGE_NAMES = {"en": "English", "gl": "Galician", "pt": "Portuguese", "es": "Spanish", "ru": "Russian",
                  "tr": "Turkish"}

# src: the low-resource language; related/unrelated: the other sources of `multi`.
PRESETS = {
    "bt": {"description": "one low-resource pair {src}-en (train/valid/test) and English monolingual text",
           "mono": (TARGET,), "multi": False},
    "multi": {"description": "{src}-en plus related ({related}) and unrelated ({unrelated}) sources into en, "
                             "multi-way valid/test shared by every pair",
              "mono": (TARGET,), "multi": True},
    "bidir": {"description": "one pair {src}-en for both directions, with monolingual text on both sides",
              "mono": (TARGET, "src"), "multi": False},
}
DEFAULT_SIZES = {"train": 2000, "valid": 500, "test": 1000, "other": 20000, "mono_src": 10000,
                 "mono_tgt": 100000}
DEFAULT_LANGS = {"src": "gl", "related": ("pt", "es"), "unrelated": ("ru", "tr")}
_LANG_CODE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2})?$")
_CATALOG_PATH = re.compile(r"(?:^|/)locale/([^/]+)/LC_MESSAGES/([^/]+)\.(mo|po)$")


class CatalogCorpusError(UserError):
    """A bad option, cache or catalog directory for the catalog corpus."""


class LeakageError(CatalogCorpusError):
    """A valid/test sentence occurs in a training or monolingual file (never expected: a bug)."""


# --- sizes and options -----------------------------------------------------------

def parse_sizes(text: Optional[str]) -> Dict[str, int]:
    """``KEY=N,...`` over :data:`DEFAULT_SIZES`."""
    sizes = dict(DEFAULT_SIZES)
    for item in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in sizes:
            raise CatalogCorpusError(f"bad --sizes entry {item!r}", f"use KEY=N with KEY one of {', '.join(sizes)}")
        try:
            n = int(value)
        except ValueError:
            n = -1
        if n <= 0:
            raise CatalogCorpusError(f"bad --sizes entry {item!r}: {value.strip()!r} is not a positive integer",
                                     "e.g. --sizes train=2000,valid=500")
        sizes[key] = n
    return sizes


def check_language(code: str, flag: str) -> str:
    if not _LANG_CODE.match(code) or code == TARGET:
        raise CatalogCorpusError(f"{flag} {code!r} is not a catalog language code other than {TARGET!r}",
                                 "use a locale directory name such as gl, pt, pt_BR")
    return code


# --- fetching and unpacking ------------------------------------------------------

def _deb_fields(path: str) -> Tuple[str, str]:
    try:
        out = subprocess.run(["dpkg-deb", "-f", path, "Package", "Version"], check=True, capture_output=True,
                             text=True).stdout
    except FileNotFoundError:
        raise CatalogCorpusError("dpkg-deb is not installed; it unpacks the cached .deb files",
                                 "install dpkg (Debian/Ubuntu), or pass --catalog-dir with unpacked catalogs") from None
    except subprocess.CalledProcessError as e:
        raise CatalogCorpusError(f"{path} is not a valid .deb ({e.stderr.strip()[:120]})",
                                 "delete it from the cache and run again") from None
    fields = dict(line.split(": ", 1) for line in out.strip().split("\n") if ": " in line)
    return fields.get("Package", ""), fields.get("Version", "")


def _cached_deb(deb_dir: str, name: str, version: str) -> Optional[str]:
    for path in sorted(glob.glob(os.path.join(glob.escape(deb_dir), f"{name}_*.deb"))):
        if _deb_fields(path) == (name, version):
            return path
    return None


def _apt(args: List[str], lists: Optional[str], **kw) -> "subprocess.CompletedProcess[str]":
    """``apt-get``/``apt-cache`` with ``args``; with ``lists``, on the package lists kept there (see
    :func:`_refresh_lists`) instead of the machine's."""
    opts = ["-o", f"Dir::State::Lists={lists}"] if lists else []
    try:
        return subprocess.run([args[0], *opts, *args[1:]], capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise CatalogCorpusError(f"{args[0]} is not available: packages missing from the cache cannot be downloaded",
                                 "run once on a Debian 12 machine with network, then reuse --cache DIR") from None


def _download(deb_dir: str, name: str, version: Optional[str], lists: Optional[str] = None) -> None:
    spec = f"{name}={version}" if version else name
    proc = _apt(["apt-get", "download", spec], lists, cwd=deb_dir)
    if proc.returncode != 0:
        msg = " ".join(proc.stderr.split())[-200:]
        raise CatalogCorpusError(
            f"apt-get download {spec} failed ({msg})",
            "check the network; if the archive no longer has this version, pass --any-version to use its "
            "current one (recorded in catalog.json), or reuse a cache that holds it")


_FRESH_LISTS: Dict[str, str] = {}  # cache -> its refreshed package lists (refreshed once a process)


def _refresh_lists(cache: str) -> str:
    """Fresh package lists in ``CACHE/apt-lists`` (``apt-get update`` there; root is not needed and the
    machine's own lists are left alone): a fresh machine's image may list older versions than the pins (a
    security update supersedes a pinned version in the lists, not in the archive). Returns the directory."""
    lists = os.path.join(cache, "apt-lists")
    os.makedirs(os.path.join(lists, "partial"), exist_ok=True)
    proc = _apt(["apt-get", "update"], lists)
    if proc.returncode != 0:
        msg = " ".join(proc.stderr.split())[-200:]
        raise CatalogCorpusError(f"apt-get update (package lists in {lists}) failed ({msg})",
                                 "check the network and the apt sources (/etc/apt/sources.list*), or reuse a "
                                 "cache that holds the packages")
    return lists


def _available_version(name: str, lists: Optional[str] = None) -> str:
    proc = _apt(["apt-cache", "policy", name], lists)
    m = re.search(r"Candidate:\s*(\S+)", proc.stdout)
    if proc.returncode != 0 or not m or m.group(1) == "(none)":
        raise CatalogCorpusError(f"the package archive has no candidate version of {name}",
                                 "check the apt sources, or reuse a cache that holds it")
    return m.group(1)


def fetch_package(cache: str, name: str, version: str, sha256: str, any_version: bool, offline: bool) -> dict:
    """The cached ``.deb`` of ``name`` (downloaded when missing) and its provenance record."""
    deb_dir = os.path.join(cache, "debs")
    os.makedirs(deb_dir, exist_ok=True)
    path = _cached_deb(deb_dir, name, version)
    used_version, pinned = version, True
    if path is None and any_version:
        cached = sorted(glob.glob(os.path.join(glob.escape(deb_dir), f"{name}_*.deb")))
        if cached:
            path = cached[-1]
            used_version = _deb_fields(path)[1]
    if path is None:
        if offline:
            raise UserFileError(f"{name} {version} is not in the cache {deb_dir} and --offline forbids downloading",
                                "run once without --offline, or copy a cache that holds it")
        lists = _FRESH_LISTS.get(cache)
        try:
            try:
                _download(deb_dir, name, version, lists)
            except CatalogCorpusError:  # the machine's lists may predate the pin: once more on fresh ones
                if lists is not None:
                    raise
                lists = _FRESH_LISTS[cache] = _refresh_lists(cache)
                _download(deb_dir, name, version, lists)
        except CatalogCorpusError:
            if not any_version:
                raise
            used_version = _available_version(name, lists)
            _download(deb_dir, name, used_version, lists)
        path = _cached_deb(deb_dir, name, used_version)
        if path is None:
            raise CatalogCorpusError(f"apt-get download {name} left no {name}_*.deb of version {used_version} "
                                     f"in {deb_dir}", "check the cache directory's permissions")
    digest = sha256_file(path)
    if used_version == version:
        if digest != sha256:
            raise CatalogCorpusError(
                f"{path} has sha256 {digest[:16]}..., not the pinned {sha256[:16]}... of {name} {version}",
                "delete the file and run again (a mirror served different bytes for the same version)")
    else:
        pinned = False
    return {"package": name, "version": used_version, "pinned_version": version, "pinned": pinned,
            "sha256": digest, "deb": os.path.basename(path), "path": path}


def unpack_catalogs(cache: str, record: dict) -> str:
    """Extract the package's ``usr/share/locale/*/LC_MESSAGES/*.mo`` into ``CACHE/catalogs/NAME_VERSION``
    (once: a ``.complete`` marker holding the .deb's sha256 makes later runs reuse it)."""
    key = f"{record['package']}_{record['version']}".replace(":", "%3a")
    dest = os.path.join(cache, "catalogs", key)
    marker = os.path.join(dest, ".complete")
    if os.path.exists(marker):
        with fileio.open_text(marker) as f:
            if f.read().strip() == record["sha256"]:
                return dest
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    tmp = tempfile.mkdtemp(prefix=".unpack.", dir=os.path.join(cache, "catalogs") if os.path.isdir(
        os.path.join(cache, "catalogs")) else _mkdir(os.path.join(cache, "catalogs")))
    try:
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", record["path"]], stdout=subprocess.PIPE)
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                m = _CATALOG_PATH.search(member.name)
                if not member.isfile() or not m or m.group(3) != "mo":
                    continue
                lang, domain = m.group(1), m.group(2)
                os.makedirs(os.path.join(tmp, lang), exist_ok=True)
                with open(os.path.join(tmp, lang, domain + ".mo"), "wb") as out:
                    shutil.copyfileobj(tar.extractfile(member), out)
        if proc.wait() != 0:
            raise CatalogCorpusError(f"dpkg-deb could not unpack {record['path']}", "delete it and run again")
        with fileio.open_text(os.path.join(tmp, ".complete"), "w") as f:
            f.write(record["sha256"] + "\n")
        os.replace(tmp, dest)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return dest


def _mkdir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


# --- reading catalogs -----------------------------------------------------------

@dataclass
class CatalogFile:
    path: str
    lang: str
    domain: str
    source: str  # package name, or "catalog-dir"


def catalogs_in_unpacked(root: str, package: str) -> List[CatalogFile]:
    out = []
    for lang in sorted(os.listdir(root)):
        d = os.path.join(root, lang)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            if name.endswith(".mo"):
                out.append(CatalogFile(os.path.join(d, name), lang, name[:-3], package))
    return out


def catalogs_in_dir(root: str) -> List[CatalogFile]:
    """Catalogs of a ``--catalog-dir``: ``.../LANG/LC_MESSAGES/DOMAIN.{mo,po}`` or ``.../DOMAIN/LANG.po``
    (a source tree's ``po/`` directory) anywhere under ``root``."""
    if not os.path.isdir(root):
        raise UserFileError(f"--catalog-dir {root} is not a directory",
                            "pass a directory holding LANG/LC_MESSAGES/DOMAIN.mo or DOMAIN/LANG.po files")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.endswith((".mo", ".po")):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            parts = rel.split("/")
            if len(parts) >= 3 and parts[-2] == "LC_MESSAGES":
                lang, domain = parts[-3], name[:-3]
            elif name.endswith(".po"):
                lang, domain = name[:-3], (parts[-2] if len(parts) >= 2 else "po")
            else:
                continue
            out.append(CatalogFile(path, lang, domain, "catalog-dir"))
    if not out:
        raise UserFileError(f"--catalog-dir {root} holds no catalogs",
                            "expected LANG/LC_MESSAGES/DOMAIN.mo or DOMAIN/LANG.po files under it")
    return out


def read_catalog(cat: CatalogFile) -> List[catalogs.Entry]:
    with open(cat.path, "rb") as f:
        data = f.read()
    return catalogs.parse_catalog(data, cat.path)


# --- the plan: which sentence goes where -----------------------------------------

@dataclass
class Plan:
    src: str
    others: List[str]
    files: Dict[str, List[str]] = field(default_factory=dict)
    stats: Dict[str, dict] = field(default_factory=dict)


def _rng(seed: int, purpose: str) -> random.Random:
    return random.Random(f"metabt-catalog/{seed}/{purpose}")


def _keys(*texts: str) -> List[str]:
    return [catalogs.leak_key(t) for t in texts]


def build_plan(tables: Dict[str, Dict[str, str]], english: Set[str], src: str, others: Sequence[str],
               sizes: Dict[str, int], seed: int) -> Plan:
    """Split the pooled tables into every file any preset writes (presets write subsets of it).

    1. valid+test: English sentences translated into ``src`` and every other language, taken in a
       seeded order while none of their sides repeats (by :func:`catalogs.leak_key`) a side already taken;
    2. every valid/test side's key is held out; a training or monolingual line whose key is held out
       is never used;
    3. ``src`` train from the remaining ``src`` sentences; each other language's train likewise (capped);
    4. ``mono.src``: the ``src`` side of further remaining ``src`` sentences (capped);
       ``mono.en``: every other English sentence (not in src train/valid/test, not the English of
       ``mono.src``), capped.
    """
    plan = Plan(src=src, others=list(others))
    langs = [src] + list(others)
    n_valid, n_test = sizes["valid"], sizes["test"]
    shared = sorted(set.intersection(*(set(tables[l]) for l in langs)))
    _rng(seed, "heldout").shuffle(shared)
    held: Set[str] = set()
    rows: List[List[str]] = []
    for e in shared:
        row = [e] + [tables[l][e] for l in langs]
        keys = _keys(*row)
        if any(k in held for k in keys) or len(set(keys)) < 2:
            continue
        held.update(keys)
        rows.append(row)
        if len(rows) == n_valid + n_test:
            break
    if len(rows) < n_valid + n_test:
        raise CatalogCorpusError(
            f"only {len(rows)} English sentences are translated into all of {', '.join(langs)}; "
            f"valid+test needs {n_valid + n_test}", "ask for fewer with --sizes valid=N,test=M or use other languages")
    for split, part in (("valid", rows[:n_valid]), ("test", rows[n_valid:])):
        for col, lang in enumerate(langs, start=1):
            plan.files[f"{split}.{lang}-{TARGET}.{lang}"] = [r[col] for r in part]
            plan.files[f"{split}.{lang}-{TARGET}.{TARGET}"] = [r[0] for r in part]
    held_english = {r[0] for r in rows}

    def clean_pairs(lang: str) -> List[str]:
        return [e for e in sorted(tables[lang]) if e not in held_english
                and not any(k in held for k in _keys(e, tables[lang][e]))]

    used_english: Set[str] = set()
    for lang in langs:
        cands = clean_pairs(lang)
        _rng(seed, f"train/{lang}").shuffle(cands)
        n = sizes["train"] if lang == src else sizes["other"]
        if lang == src and len(cands) < n:
            raise CatalogCorpusError(f"only {len(cands)} {lang}-{TARGET} pairs remain for training, {n} asked",
                                     "ask for fewer with --sizes train=N")
        chosen = cands[:n]
        plan.files[f"train.{lang}-{TARGET}.{lang}"] = [tables[lang][e] for e in chosen]
        plan.files[f"train.{lang}-{TARGET}.{TARGET}"] = chosen
        plan.stats[lang] = {"pairs_available": len(tables[lang]), "train_candidates": len(cands)}
        if lang == src:
            used_english.update(chosen)
            rest = cands[n:]
    mono_src = rest[: sizes["mono_src"]]
    plan.files[f"mono.{src}"] = [tables[src][e] for e in mono_src]
    used_english.update(mono_src)
    mono_en = sorted(e for e in english if e not in used_english and e not in held_english
                     and catalogs.leak_key(e) not in held)
    _rng(seed, f"mono/{TARGET}").shuffle(mono_en)
    plan.files[f"mono.{TARGET}"] = mono_en[: sizes["mono_tgt"]]
    plan.stats[TARGET] = {"sentences_available": len(english), "mono_candidates": len(mono_en)}
    return plan


def preset_files(plan: Plan, preset: str) -> Dict[str, List[str]]:
    """The files of ``plan`` that ``preset`` writes."""
    spec = PRESETS[preset]
    langs = [plan.src] + (plan.others if spec["multi"] else [])
    names = [f"{split}.{l}-{TARGET}.{side}" for l in langs for split in ("train", "valid", "test")
             for side in (l, TARGET)]
    names += [f"mono.{plan.src if m == 'src' else m}" for m in spec["mono"]]
    return {name: plan.files[name] for name in names}


# --- the leakage check ------------------------------------------------------------

def check_leakage(out_dir: str) -> dict:
    """Re-read ``out_dir`` and verify that no valid/test line (either side, any pair) occurs in a
    train or mono file, exactly or by :func:`catalogs.leak_key`; raise :class:`LeakageError` otherwise."""
    held: Dict[str, str] = {}
    exact: Set[str] = set()
    names = sorted(os.listdir(out_dir))
    for name in names:
        if name.startswith(("valid.", "test.")):
            with fileio.open_text(os.path.join(out_dir, name)) as f:
                for line in f:
                    line = line.rstrip("\n")
                    exact.add(line)
                    held.setdefault(catalogs.leak_key(line), name)
    checked = 0
    for name in names:
        if not name.startswith(("train.", "mono.")):
            continue
        with fileio.open_text(os.path.join(out_dir, name)) as f:
            for i, line in enumerate(f, start=1):
                line = line.rstrip("\n")
                checked += 1
                key = catalogs.leak_key(line)
                if line in exact or key in held:
                    raise LeakageError(
                        f"leakage: {os.path.join(out_dir, name)}, line {i} ({line[:60]!r}) also occurs in "
                        f"{held.get(key, 'a valid/test file')}; the corpus is incomplete (no manifest.json)",
                        "this is a bug of make_catalog_corpus.py: please report it")
    return {"heldout_lines": len(exact), "heldout_keys": len(held), "checked_lines": checked, "violations": 0}


# --- the whole run ----------------------------------------------------------------

_KIT_FILES = ("scripts/make_catalog_corpus.py", "fairseq_metabt/data/catalog_corpus.py",
              "fairseq_metabt/data/catalogs.py")


def git_commit() -> Optional[str]:
    """``git rev-parse HEAD`` of this checkout, with ``+dirty`` when the kit's own files differ from it."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--", *_KIT_FILES], cwd=root, capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def gather(catalog_files: Iterable[CatalogFile], langs: Sequence[str]):
    """Pool the catalogs: one cleaned table per language in ``langs`` and the cleaned English sentences
    of every catalog.  Catalogs whose domain the machine image installs are skipped."""
    entries: Dict[str, List[catalogs.Entry]] = {l: [] for l in langs}
    msgids: Set[str] = set()
    skipped, used = Counter(), Counter()
    for cat in catalog_files:
        if cat.domain in IMAGE_DOMAINS:
            skipped[cat.domain] += 1
            continue
        es = read_catalog(cat)
        used[cat.lang] += 1
        msgids.update(e.msgid for e in es if e.msgid_plural is None)
        if cat.lang in entries:
            entries[cat.lang].extend(es)
    english = {c for c in map(catalogs.clean_english, msgids) if c is not None}
    tables, rules = {}, {}
    for lang in langs:
        stats: Counter = Counter()
        tables[lang] = catalogs.pool_language(entries[lang], stats)
        rules[lang] = dict(sorted(stats.items()))
        if not tables[lang]:
            raise CatalogCorpusError(f"no usable {lang} catalog entries were found",
                                     f"pick a language the catalogs hold ({', '.join(sorted(used)[:30])}, ...)")
    return tables, english, rules, dict(skipped)


def build(preset: str, out_dir: str, cache: Optional[str], catalog_dir: Optional[str], seed: int,
          sizes: Dict[str, int], src: str, related: Sequence[str], unrelated: Sequence[str],
          force: bool = False, any_version: bool = False, offline: bool = False, log=print) -> dict:
    """Build the ``preset`` corpus into ``out_dir``; returns its manifest."""
    if preset not in PRESETS:
        raise CatalogCorpusError(f"unknown preset {preset!r}", f"use one of {', '.join(PRESETS)}")
    start = time.time()
    others = list(related) + list(unrelated)
    langs = [src] + others
    if len(set(langs)) != len(langs):
        raise CatalogCorpusError(f"languages repeat: {', '.join(langs)}", "give every language once")
    if cache and catalog_dir:
        raise CatalogCorpusError("--cache and --catalog-dir exclude each other",
                                 "pass --catalog-dir for local catalogs, --cache for the pinned packages")
    cache = os.path.abspath(cache or os.path.join(os.path.expanduser("~"), ".cache", "fairseq-metabt", "catalogs"))
    inputs = [("--catalog-dir", catalog_dir)] if catalog_dir else [("--cache", cache)]
    fileio.refuse_inputs_inside(out_dir, inputs, TOOL)
    fileio.output_directory(out_dir, "OUT", CatalogCorpusError)
    if not catalog_dir:
        fileio.output_directory(cache, "--cache", CatalogCorpusError)
    record = fileio.OutputRecord(out_dir, TOOL)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and (not force or record.files() is None):
        record.prepare([], force, CatalogCorpusError)  # refuses now, before any download or parsing

    overlap = sorted(set(p for p, _, _ in PACKAGES) & set(IMAGE_LOCALE_PACKAGES))
    assert not overlap, f"pinned packages own image catalogs: {overlap}"
    provenance: dict = {"tool": TOOL, "tool_version": VERSION, "commit": git_commit(), "seed": seed}
    if catalog_dir:
        files = catalogs_in_dir(catalog_dir)
        provenance["source"] = {"catalog_dir": os.path.abspath(catalog_dir), "files": [
            {"path": os.path.relpath(c.path, catalog_dir), "sha256": sha256_file(c.path)} for c in files]}
    else:
        files, packages = [], []
        for name, version, sha in PACKAGES:
            rec = fetch_package(cache, name, version, sha, any_version, offline)
            files += catalogs_in_unpacked(unpack_catalogs(cache, rec), name)
            packages.append({k: v for k, v in rec.items() if k != "path"})
        provenance["source"] = {"distribution": "Debian 12 (bookworm)", "packages": packages}
        log(f"[catalog] {len(packages)} packages, {len(files)} catalogs (cache {cache})")
    tables, english, rules, skipped = gather(files, langs)
    plan = build_plan(tables, english, src, others, sizes, seed)
    out_files = preset_files(plan, preset)

    manifest_langs = [{"code": TARGET, "name": LANGUAGE_NAMES.get(TARGET), "role": "target"},
                      {"code": src, "name": LANGUAGE_NAMES.get(src, src), "role": "low-resource source"}]
    if PRESETS[preset]["multi"]:
        manifest_langs += [{"code": l, "name": LANGUAGE_NAMES.get(l, l), "role": "related source",
                            "related_to": [src]} for l in related]
        manifest_langs += [{"code": l, "name": LANGUAGE_NAMES.get(l, l), "role": "unrelated source",
                            "related_to": []} for l in unrelated]
    pair_langs = [src] + (others if PRESETS[preset]["multi"] else [])
    provenance.update({
        "excluded": {"image_locale_packages": list(IMAGE_LOCALE_PACKAGES),
                     "image_domains_skipped": skipped,
                     "note": "catalogs installed under /usr/share/locale in the machine image are kept for "
                             "independent evaluation and are not used"},
        "cleaning": {"min_tokens_en": catalogs.MIN_TOKENS, "max_tokens": catalogs.MAX_TOKENS,
                     "max_char_ratio": catalogs.MAX_RATIO, "dropped_by_rule": {l: rules[l] for l in pair_langs}},
        "pools": plan.stats,
    })
    names = list(out_files) + ["manifest.json", "catalog.json"]
    record.prepare(names, force, CatalogCorpusError)
    for name, lines in out_files.items():
        with fileio.atomic_write(os.path.join(out_dir, name)) as f:
            f.write("".join(line + "\n" for line in lines))
    leakage = check_leakage(out_dir)
    provenance["leakage_check"] = leakage
    manifest = {
        "generator": TOOL, "version": VERSION, "preset": preset,
        "description": PRESETS[preset]["description"].format(
            src=src, related=", ".join(related), unrelated=", ".join(unrelated)),
        "seed": seed, "target": TARGET,
        "languages": manifest_langs,
        "pairs": [{"src": l, "tgt": TARGET, "splits": ["train", "valid", "test"]} for l in pair_langs],
        "related": {src: list(related)} if PRESETS[preset]["multi"] else {},
        "unrelated": {src: list(unrelated)} if PRESETS[preset]["multi"] else {},
        "size_keys": sizes, "files": list(out_files),
        "sizes": {name: len(lines) for name, lines in out_files.items()},
        "leakage_check": leakage, "provenance_file": "catalog.json",
        "packages": {p["package"]: p["version"] for p in provenance["source"].get("packages", [])},
    }
    fileio.write_json(os.path.join(out_dir, "catalog.json"), provenance)
    # the project's validator, and its own pair-level overlap check (never expected after check_leakage)
    warnings = overlap_warnings(scan_raw_dir(out_dir))
    if warnings:
        raise LeakageError(f"leakage: {warnings[0]}", "this is a bug of make_catalog_corpus.py: please report it")
    fileio.write_json(os.path.join(out_dir, "manifest.json"), manifest)  # last: marks a complete corpus
    scan_raw_dir(out_dir)  # the manifest declares every language
    manifest["seconds"] = round(time.time() - start, 1)
    return manifest
