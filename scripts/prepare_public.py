#!/usr/bin/env python
"""Convert a local copy of a public corpus, in the format it is distributed in, into the raw layout.

    # TED talks (Qi et al. 2018): the tables all_talks_{train,dev,test}.tsv, a paper's language set
    python scripts/prepare_public.py --dataset ted --ted-dir ted_talks --preset ted8-related --out RAW
    python scripts/prepare_public.py --dataset ted --ted-dir ted_talks --langs aze,tur --out RAW
    # IWSLT'14 de-en (the XML/TAGS release, e.g. the de-en folder of de-en.tgz): fairseq's split
    python scripts/prepare_public.py --dataset iwslt14 --iwslt-dir de-en --src de --tgt en --out RAW
    # WMT-style pairs: corpus prefixes (PREFIX.LANG, .gz, or WMT .sgm), or a preset's file names
    python scripts/prepare_public.py --dataset wmt --wmt-dir wmt14 --preset wmt14-en-de --out RAW \\
        --mono de=news.2013.de.shuffled --mono-lines 1000000
    python scripts/prepare_public.py --dataset wmt --wmt-dir DIR --src tr --tgt en --train corpus.tc \\
        --valid newsdev2016.tc --test newstest2017.tc --out RAW

Nothing is downloaded.  The output directory receives ``train/valid/test.SRC-TGT.*`` and ``mono.LANG``
files (``docs/data.md``) and ``prepare_public.json``, the record of the conversion (dataset, options,
line counts).  A non-empty output directory is refused unless ``--force`` (which deletes only what this
tool wrote there before), ``--reuse`` (keep it when it holds this very conversion: what the recipes
use) or ``--append`` (add another conversion's files, e.g. WMT bitext next to IWSLT dev/test sets and
monotext, without replacing any file).  Formats, presets and the choices made: ``docs/reproduce.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_metabt import fileio  # noqa: E402
from fairseq_metabt.data import public_corpora as pc  # noqa: E402
from fairseq_metabt.data.raw_layout import check_text, scan_raw_dir  # noqa: E402
from fairseq_metabt.errors import UserError, cli  # noqa: E402

TOOL = "prepare_public.py"
RECORD = "prepare_public.json"

# WMT file prefixes of the papers' settings (override any of them with --train/--valid/--test)
WMT_PRESETS: Dict[str, dict] = {
    # MetaBT's standard setting and the latent-depth WMT experiment: WMT'14 En-De, newstest2013/2014
    "wmt14-en-de": {"src": "en", "tgt": "de", "valid": ["newstest2013"], "test": ["newstest2014"],
                    "train": ["europarl-v7.de-en", "commoncrawl.de-en", "news-commentary-v9.de-en"]},
    # STGS reconstruction (Niu et al. 2019): the WMT18 preprocessed tr-en "corpus", newsdev2016, newstest2017
    "wmt18-tr-en": {"src": "tr", "tgt": "en", "train": ["corpus.tc"], "valid": ["newsdev2016.tc"],
                    "test": ["newstest2017.tc"]},
    # wake-sleep (Cotterell & Kreutzer 2018): the WMT17 preprocessed de-en bitext (dev/test: newstest2016/2017)
    "wmt17-en-de": {"src": "en", "tgt": "de", "train": ["corpus.tc"], "valid": ["newstest2016.tc"],
                    "test": ["newstest2017.tc"]},
}


def _codes(value: str, flag: str) -> List[str]:
    out = [c.strip() for c in value.split(",") if c.strip()]
    if not out:
        raise UserError(f"{flag} is empty", f"give comma-separated language codes, e.g. {flag} aze,tur")
    for c in out:
        if not c.replace("_", "").replace("-", "").isalnum():
            raise UserError(f"{flag}: {c!r} is not a language code", "use letters, digits and _ (e.g. aze, pt_br)")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_public.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="TED presets: " + "; ".join(f"{k} = {','.join(v)}" for k, v in pc.PRESETS.items())
        + ". WMT presets: " + ", ".join(WMT_PRESETS) + ".")
    p.add_argument("--dataset", required=True, choices=["ted", "iwslt14", "wmt"],
                   help="the distributed format to read")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (the raw layout)")
    p.add_argument("--preset", metavar="NAME",
                   help="a paper's language set (ted) or file names (wmt); see the list below")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--force", action="store_true",
                      help="replace what this tool wrote in --out before (nothing else is deleted)")
    p.add_argument("--reuse", action="store_true",
                   help="keep --out unchanged when it already holds this conversion (same dataset and options); "
                        "otherwise write it as --force (or --append) would")
    mode.add_argument("--append", action="store_true",
                      help="add this conversion's files to an --out written by this tool before; an existing "
                           "file is never replaced")
    g = p.add_argument_group("TED talks (--dataset ted)")
    g.add_argument("--ted-dir", metavar="DIR", help="directory holding all_talks_{train,dev,test}.tsv")
    g.add_argument("--langs", metavar="L1,L2", help="languages to pair with the pivot (ISO 639-3 codes such as "
                   "aze, or TED column names); instead of --preset")
    g.add_argument("--pivot", default="eng", metavar="LANG", help="the language every pair shares (default: eng)")
    g = p.add_argument_group("IWSLT'14 (--dataset iwslt14)")
    g.add_argument("--iwslt-dir", metavar="DIR",
                   help="the unpacked release: train.tags.SRC-TGT.*, IWSLT14.TED*.SRC-TGT.*.xml")
    g.add_argument("--train-as", choices=["bitext", "mono"], default="bitext",
                   help="bitext (default): a train split; mono: the training sides become mono.SRC and mono.TGT "
                        "(the wake-sleep paper's TED monotext)")
    g = p.add_argument_group("WMT-style pairs (--dataset wmt)")
    g.add_argument("--wmt-dir", metavar="DIR", help="directory holding the corpus files")
    for split in ("train", "valid", "test"):
        g.add_argument(f"--{split}", metavar="PREFIX[,PREFIX]",
                       help=f"corpus prefix(es) of the {split} split (files PREFIX.LANG, PREFIX.LANG.gz or "
                            "PREFIX-SRCTGT-{src,ref}.LANG.sgm; several are concatenated)")
    p.add_argument("--src", metavar="LANG", help="source language (iwslt14, wmt; default de for iwslt14)")
    p.add_argument("--tgt", metavar="LANG", help="target language (iwslt14, wmt; default en for iwslt14)")
    p.add_argument("--mono", action="append", default=[], metavar="LANG=FILE",
                   help="monolingual text of LANG (plain, .gz or .sgm) written as mono.LANG; repeatable")
    p.add_argument("--mono-lines", type=int, metavar="N",
                   help="keep N lines of each --mono file, drawn uniformly with --seed (the papers sample "
                        "their monotext); default: all")
    p.add_argument("--seed", type=int, default=1, help="seed of the --mono-lines draw (default 1)")
    return p


def read_corpus(args: argparse.Namespace) -> pc.Corpus:
    """The corpus that the options describe (every input file checked before anything is written)."""
    need = {"ted": "--ted-dir", "iwslt14": "--iwslt-dir", "wmt": "--wmt-dir"}[args.dataset]
    directory = getattr(args, need[2:].replace("-", "_"))
    if not directory:
        raise UserError(f"--dataset {args.dataset} needs {need} DIR", f"give the directory of the downloaded corpus")
    if not os.path.isdir(directory):
        raise UserError(f"{need} {directory} is not a directory", "give the directory of the downloaded corpus")
    if args.dataset == "ted":
        if bool(args.preset) == bool(args.langs):
            raise UserError("--dataset ted needs one of --preset and --langs",
                            "e.g. --preset ted8-related, or --langs aze,tur")
        if args.preset and args.preset not in pc.PRESETS:
            raise UserError(f"unknown TED preset {args.preset!r}", "choose one of " + ", ".join(pc.PRESETS))
        langs = list(pc.PRESETS[args.preset]) if args.preset else _codes(args.langs, "--langs")
        pivot = _codes(args.pivot, "--pivot")[0]
        if pivot in langs:
            raise UserError(f"--pivot {pivot} is also in the language list", "list only the other languages")
        corpus = pc.read_ted(directory, langs, pivot)
        corpus.notes.append(f"TED talks (Qi et al. 2018): {','.join(langs)} paired with {pivot}")
    elif args.dataset == "iwslt14":
        corpus = pc.read_iwslt14(directory, args.src or "de", args.tgt or "en", args.train_as)
    else:
        preset = {}
        if args.preset:
            if args.preset not in WMT_PRESETS:
                raise UserError(f"unknown WMT preset {args.preset!r}", "choose one of " + ", ".join(WMT_PRESETS))
            preset = WMT_PRESETS[args.preset]
        src, tgt = args.src or preset.get("src"), args.tgt or preset.get("tgt")
        if not src or not tgt:
            raise UserError("--dataset wmt needs --src and --tgt (or a --preset)", "e.g. --src de --tgt en")
        splits = {s: (getattr(args, s).split(",") if getattr(args, s) else preset.get(s, []))
                  for s in ("train", "valid", "test")}
        if not splits["train"]:
            raise UserError("--dataset wmt needs --train PREFIX (or a --preset)",
                            "name the training corpus files, e.g. --train europarl-v7.de-en")
        corpus = pc.read_wmt(directory, src, tgt, splits["train"], splits["valid"], splits["test"])
        corpus.notes.append(f"WMT-style {src}-{tgt}: " + "; ".join(f"{s} = {' + '.join(v)}"
                                                                      for s, v in splits.items() if v))
    for spec in args.mono:
        lang, sep, path = spec.partition("=")
        if not sep or not lang or not path:
            raise UserError(f"--mono {spec!r} is not LANG=FILE", "e.g. --mono de=news.2013.de.shuffled")
        _codes(lang, "--mono")
        corpus.mono[lang] = corpus.mono.get(lang, []) + pc.sample_lines(path, args.mono_lines, args.seed)
        corpus.notes.append(f"mono.{lang}: {path}" + (f", {args.mono_lines} lines drawn with seed {args.seed}"
                                                      if args.mono_lines else ""))
    return corpus


def _options(args: argparse.Namespace) -> dict:
    """What identifies a conversion (paths made absolute), for --reuse."""
    out = {k: v for k, v in sorted(vars(args).items()) if k not in ("out", "force", "reuse", "append")}
    for k in ("ted_dir", "iwslt_dir", "wmt_dir"):
        if out.get(k):
            out[k] = os.path.abspath(out[k])
    out["mono"] = [m.split("=", 1)[0] + "=" + os.path.abspath(m.split("=", 1)[1]) if "=" in m else m
                   for m in args.mono]
    return out


def _runs(out_dir: str) -> Optional[List[dict]]:
    path = os.path.join(out_dir, RECORD)
    if not os.path.isfile(path):
        return None
    try:
        with fileio.open_text(path) as f:
            return list(json.load(f)["runs"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a record of {TOOL} ({e})", "choose another --out, or pass --force") from e


@cli
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.mono_lines is not None and args.mono_lines < 1:
        raise UserError(f"--mono-lines must be >= 1, got {args.mono_lines}", "or leave it out to keep every line")
    out_dir = os.path.abspath(args.out)
    options = _options(args)
    runs = _runs(out_dir) or []
    if args.reuse and any(r.get("options") == options for r in runs):
        print(f"{TOOL}: {out_dir} already holds this conversion; reused")
        return 0
    corpus = read_corpus(args)
    names = pc.planned_files(corpus)
    record = fileio.OutputRecord(out_dir, TOOL)
    if args.append:
        previous = record.files()
        if previous is None:
            raise UserError(f"--append: {out_dir} was not written by {TOOL}",
                            "convert the first dataset into it without --append")
        clash = [n for n in names if os.path.lexists(os.path.join(out_dir, n))]
        if clash:
            raise UserError(f"--append: {os.path.join(out_dir, clash[0])} exists; it is never replaced",
                            "convert into another directory, or without --append and with --force")
        record.write(previous + names + [RECORD])
    else:
        record.prepare(names + [RECORD], force=args.force or args.reuse)
        runs = []
    counts = pc.write_raw(corpus, out_dir)
    runs.append({"dataset": args.dataset, "options": options, "files": counts, "notes": corpus.notes})
    fileio.write_json(os.path.join(out_dir, RECORD), {"tool": TOOL, "runs": runs})
    if all("train" in splits for splits in corpus.bitext.values()) or args.append:
        scan_raw_dir(out_dir, require_valid=False)  # the directory as a whole, as every tool will read it
    else:  # dev/test sets and monotext whose training bitext comes with --append: each file on its own
        for name in counts:
            check_text(os.path.join(out_dir, name))
    for name, n in sorted(counts.items()):
        print(f"{name}\t{n}")
    print(f"{TOOL}: wrote {len(counts)} files to {out_dir} ({'; '.join(corpus.notes)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
