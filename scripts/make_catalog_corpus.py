#!/usr/bin/env python
"""Real-text corpora in the raw layout from the gettext catalogs of pinned Debian packages.

    python scripts/make_catalog_corpus.py --preset bt|multi|bidir OUT [--cache DIR] [--seed N]
    python scripts/make_catalog_corpus.py --preset bt OUT --catalog-dir DIR   # your own .po/.mo files

The packages (``PACKAGES`` in ``fairseq_metabt/data/catalog_corpus.py``: name,
version, sha256) are fetched with ``apt-get download`` into ``--cache`` and
unpacked with ``dpkg-deb`` (never installed); with a warm cache the script
runs offline.  Presets: ``bt`` (gl-en 2,000/500/1,000 and English monolingual
text), ``multi`` (gl, pt, es, ru, tr -> en), ``bidir`` (gl-en with
monolingual text on both sides).  No valid/test sentence occurs in a train or
mono file: enforced while splitting and checked on the written files.
``OUT/catalog.json`` records the packages, versions, sha256 sums and the
script's commit.  Details: ``docs/catalog_corpus.md``.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_metabt.data import catalog_corpus as cc  # noqa: E402
from fairseq_metabt.errors import cli  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", metavar="OUT", help="output directory (must be empty or absent, unless --force)")
    p.add_argument("--preset", required=True, help=f"one of: {', '.join(cc.PRESETS)}")
    p.add_argument("--cache", metavar="DIR",
                   help="keeps the downloaded .debs and unpacked catalogs (default ~/.cache/fairseq-metabt/catalogs)")
    p.add_argument("--catalog-dir", metavar="DIR",
                   help="use the .po/.mo catalogs under DIR (LANG/LC_MESSAGES/DOMAIN.mo or DOMAIN/LANG.po) "
                        "instead of the pinned packages")
    p.add_argument("--seed", type=int, default=1, help="seed of the splits (default 1)")
    p.add_argument("--src", default=cc.DEFAULT_LANGS["src"], help="the low-resource source language (default gl)")
    p.add_argument("--related", default=",".join(cc.DEFAULT_LANGS["related"]),
                   help="multi: sources related to --src (default pt,es)")
    p.add_argument("--unrelated", default=",".join(cc.DEFAULT_LANGS["unrelated"]),
                   help="multi: unrelated sources (default ru,tr)")
    p.add_argument("--sizes", default="",
                   help="KEY=N,... over the defaults " + ",".join(f"{k}={v}" for k, v in cc.DEFAULT_SIZES.items())
                        + " (other: cap of each other language's train; mono_src, mono_tgt: caps)")
    p.add_argument("--force", action="store_true",
                   help="replace the files this script wrote into OUT before (and only those)")
    p.add_argument("--any-version", action="store_true",
                   help="when a pinned version is no longer downloadable, use the archive's current one "
                        "(recorded in catalog.json; the corpus may then differ)")
    p.add_argument("--offline", action="store_true", help="never download: everything must be in --cache")
    return p.parse_args(argv)


@cli
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.preset not in cc.PRESETS:
        raise cc.CatalogCorpusError(f"unknown preset {args.preset!r}", f"use one of {', '.join(cc.PRESETS)}")
    sizes = cc.parse_sizes(args.sizes)
    src = cc.check_language(args.src, "--src")
    related = [cc.check_language(x, "--related") for x in args.related.split(",") if x]
    unrelated = [cc.check_language(x, "--unrelated") for x in args.unrelated.split(",") if x]
    manifest = cc.build(args.preset, args.out, args.cache, args.catalog_dir, args.seed, sizes, src, related,
                        unrelated, force=args.force, any_version=args.any_version, offline=args.offline,
                        log=lambda m: print(m, file=sys.stderr))
    for name, n in manifest["sizes"].items():
        print(f"{n:8d}  {name}")
    check = manifest["leakage_check"]
    print(f"leakage check: {check['checked_lines']} train/mono lines against {check['heldout_keys']} "
          f"valid/test sentences: {check['violations']} violations")
    print(f"wrote {args.out} (preset {args.preset}, seed {args.seed}) in {manifest['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
