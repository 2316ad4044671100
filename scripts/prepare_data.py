#!/usr/bin/env python
"""Prepare a raw-layout corpus for fairseq: joint sentencepiece, encoding, binarisation.

    python scripts/prepare_data.py RAW_DIR BIN_DIR [--vocab-size 4000] [--force]
    python scripts/prepare_data.py RAW_DIR BIN_DIR --spm-model OLD/spm.model --dict OLD/dict.txt
    python scripts/prepare_data.py RAW_DIR BIN_DIR --reuse     # recipes: keep BIN_DIR if it is this corpus

One sentencepiece model is trained on every train and mono file (both sides of
every pair), one fairseq dictionary is derived from it plus a language tag
``__LANG__`` for every language, and every bitext pair and monolingual file is
binarised with fairseq's own preprocessing code against that one dictionary.
See docs/data.md for the output layout.  Works unchanged on real corpora in the
raw layout.

Extra bitext subsets: ``metadev.SRC-TGT.SRC``/``.TGT`` files of a pair (as written by
``scripts/split_meta_dev.py``) are binarised as the subset ``metadev`` of that pair, with the same
dictionary (``--meta-dev-subset metadev``); ``RAW_DIR/meta_dev.json``, the record of the split, is copied
into ``prepare.json`` (``meta_dev_split``).

``BIN_DIR/prepare.json`` records the sha256 of every raw file (``raw_files``)
and the options: ``evaluate.py`` checks its reference against it, and
``--reuse`` keeps a preparation only when the corpus and options are the
same, and refuses one of another corpus instead of silently reusing it.
"""
from __future__ import annotations

import argparse
import filecmp
import logging
import os
import shutil
import sys
import tempfile
from typing import Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fairseq_metabt import fileio, validate  # noqa: E402
from fairseq_metabt.data.raw_layout import (  # noqa: E402
    SPLITS, RawLayout, RawLayoutError, check_text, raw_checksums, scan_raw_dir, sha256_file,
)
from fairseq_metabt.data.tagging import lang_tags  # noqa: E402
from fairseq_metabt.errors import UserError, cli  # noqa: E402

logger = logging.getLogger("prepare_data")


TOOL = "prepare_data.py"
# bitext subsets beyond the raw layout's train/valid/test, binarised under their own name when present
EXTRA_SPLITS = ("metadev",)
META_DEV_RECORD = "meta_dev.json"


class PrepareError(UserError):
    """Bad arguments or output directory for prepare_data.py."""


def train_sentencepiece(inputs: List[str], prefix: str, vocab_size: int, model_type: str, seed: int) -> str:
    import sentencepiece as spm

    if hasattr(spm, "set_random_generator_seed"):  # deterministic sentence sampling
        spm.set_random_generator_seed(seed)
    directory = os.path.dirname(os.path.abspath(prefix))
    kwargs = dict(
        input=",".join(inputs),
        model_prefix=prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        # The vocabulary size is an upper bound: tiny corpora (tests) get fewer pieces.
        hard_vocab_limit=False,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        num_threads=2,
        minloglevel=2,
    )
    with fileio.disk_errors(prefix + ".model"):
        try:
            spm.SentencePieceTrainer.train(**kwargs)
        except RuntimeError as e:  # sentencepiece reports a failed write as a RuntimeError, errno lost
            raise _spm_failure(directory, e) from e
    if not os.path.isfile(prefix + ".model") or os.path.getsize(prefix + ".model") == 0:
        raise _spm_failure(directory, RuntimeError("no model file was written"))
    return prefix + ".model"


def _spm_failure(directory: str, error: BaseException) -> UserError:
    """A sentencepiece training that failed: a full disk is named as such, anything else quoted."""
    import shutil as _shutil

    free = _shutil.disk_usage(directory).free
    detail = " ".join(str(error).split())[:160]
    if free < (1 << 20):
        return UserError(f"no space left on the disk holding {directory} while sentencepiece trained its model "
                         f"({free} bytes free; {detail})",
                         "free space on that disk and run the command again, or choose a BIN_DIR on another disk")
    return UserError(f"sentencepiece could not train or write its model in {directory} ({detail})",
                     f"check the raw training files and the free space on that disk ({free >> 20} MiB free)")


def encode_file(sp, src: str, dst: str) -> None:
    with fileio.open_text(src) as fin, fileio.open_text(dst, "w") as fout:
        for line in fin:
            fout.write(" ".join(sp.encode(line.strip(), out_type=str)) + "\n")


def build_dictionary(sp, langs: List[str], encoded_train: List[str], path: str) -> None:
    """fairseq dictionary: every sentencepiece piece (counted on the training text) plus language tags."""
    from fairseq.data import Dictionary

    d = Dictionary()
    counts: Dict[str, int] = {}
    for fname in encoded_train:
        with fileio.open_text(fname) as f:
            for line in f:
                for tok in line.split():
                    counts[tok] = counts.get(tok, 0) + 1
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if sp.is_control(i) or sp.is_unknown(i):
            continue  # <s>, </s>, <unk> are fairseq's own specials
        d.add_symbol(piece, n=max(counts.get(piece, 0), 1))
    for tag in lang_tags(langs):
        d.add_symbol(tag, n=1)
    d.finalize(threshold=-1, nwords=-1, padding_factor=8)
    with fileio.atomic_path(path) as tmp:
        d.save(tmp)


def load_spm(path: str, flag: Optional[str] = "--spm-model"):
    """A sentencepiece model; an unreadable file is a :class:`PrepareError` naming it (and ``flag``, the
    option that named it; None for the model this run trained)."""
    import sentencepiece as spm

    try:
        return spm.SentencePieceProcessor(model_file=path)
    except (RuntimeError, OSError) as e:
        detail = " ".join(str(e).split())[:120]
        if flag is None:
            raise PrepareError(f"the sentencepiece model {path} this run trained cannot be read back ({detail})",
                               "check the free space on its disk and run the command again") from e
        raise PrepareError(f"{flag} {path} is not a sentencepiece model ({detail})",
                           "pass the spm.model of a prepared BIN_DIR") from e


def check_dictionary_covers(sp, langs: List[str], dict_path: str) -> None:
    """A reused dictionary must contain every piece of the reused sentencepiece model and every tag."""
    from fairseq.data import Dictionary

    try:
        d = Dictionary.load(dict_path)
    except (ValueError, RuntimeError, UnicodeDecodeError) as e:
        raise PrepareError(f"--dict {dict_path} is not a fairseq dictionary ({e})",
                           "pass the dict.txt of a prepared BIN_DIR") from e
    missing = [
        sp.id_to_piece(i)
        for i in range(sp.get_piece_size())
        if not (sp.is_control(i) or sp.is_unknown(i)) and d.index(sp.id_to_piece(i)) == d.unk()
    ]
    missing += [t for t in lang_tags(langs) if d.index(t) == d.unk()]
    if missing:
        raise PrepareError(
            f"dictionary {dict_path} does not match the sentencepiece model: {len(missing)} symbols are "
            f"missing (e.g. {missing[:5]}). Pass the dict.txt that was prepared with that spm.model, "
            "or drop --spm-model/--dict to build both anew."
        )


def fairseq_preprocess(argv: List[str]) -> None:
    """Run fairseq-preprocess in this process (same code path as the CLI, one import)."""
    from fairseq import options
    from fairseq_cli.preprocess import main as preprocess_main

    parser = options.get_preprocessing_parser()
    preprocess_main(parser.parse_args(argv))


def prepare(
    raw_dir: str,
    bin_dir: str,
    vocab_size: int = 4000,
    model_type: str = "unigram",
    seed: int = 1,
    force: bool = False,
    spm_model: Optional[str] = None,
    dict_path: Optional[str] = None,
    workers: int = 2,
    reuse: bool = False,
) -> dict:
    """Prepare ``raw_dir`` into ``bin_dir``; returns the summary also written to ``bin_dir/prepare.json``.

    With ``reuse``, a complete preparation of the same corpus (same raw checksums) with the same options
    is kept as it is; one of another corpus or with other options is refused (never silently reused)."""
    validate.value("--workers", workers, ">=1")
    validate.value("--seed", seed, ">=0")
    with fileio.disk_errors(bin_dir):
        return _prepare(raw_dir, bin_dir, vocab_size, model_type, seed, force, spm_model, dict_path, workers, reuse)


def extra_bitext(layout: RawLayout) -> Dict[tuple, Dict[str, tuple]]:
    """``{pair: {split: (src file, tgt file)}}`` of the :data:`EXTRA_SPLITS` files of the layout's pairs,
    checked as the raw layout's own (both sides, line-aligned, non-empty, clean text)."""
    out: Dict[tuple, Dict[str, tuple]] = {}
    for s, t in layout.pairs:
        for split in EXTRA_SPLITS:
            files = tuple(os.path.join(layout.root, f"{split}.{s}-{t}.{lang}") for lang in (s, t))
            present = [os.path.isfile(f) for f in files]
            if not any(present):
                continue
            if not all(present):
                missing = files[present.index(False)]
                raise RawLayoutError(f"missing file {missing}: the {split} split of {s}-{t} has only one side",
                                     "add the other side (one translation per line) or remove the file that is there")
            ns, nt = check_text(files[0]), check_text(files[1])
            if ns != nt or ns == 0:
                raise RawLayoutError(f"{files[0]} has {ns} lines but {files[1]} has {nt}",
                                     "give two non-empty files where line i of one translates line i of the other")
            out.setdefault((s, t), {})[split] = files
    return out


def _prepare(raw_dir, bin_dir, vocab_size, model_type, seed, force, spm_model, dict_path, workers, reuse) -> dict:
    layout = scan_raw_dir(raw_dir)
    checksums = raw_checksums(layout)
    extras = extra_bitext(layout)
    checksums.update({os.path.basename(f): sha256_file(f)
                      for splits in extras.values() for files in splits.values() for f in files})
    options = {"vocab_size": vocab_size, "model_type": model_type, "seed": seed,
               "spm_model": _sha256_or_none(spm_model), "dict": _sha256_or_none(dict_path)}
    summary_path = os.path.join(bin_dir, "prepare.json")
    if reuse and os.path.isfile(summary_path):
        kept = _reusable(summary_path, layout, checksums, options)
        if kept is not None:
            return kept
    if reuse and os.path.isfile(os.path.join(bin_dir, fileio.RECORD_NAME)):
        force = True  # an interrupted preparation of ours: replace exactly what it wrote
    if (spm_model is None) != (dict_path is None):
        raise PrepareError("--spm-model and --dict go together: pass both to reuse a vocabulary, or neither.")
    for p in filter(None, (spm_model, dict_path)):
        if not os.path.isfile(p):
            raise PrepareError(f"{p} does not exist; point --spm-model/--dict at a prepared BIN_DIR's files.")
    if spm_model is not None:  # checked before anything is written
        check_dictionary_covers(load_spm(spm_model), layout.languages, dict_path)

    fileio.refuse_inputs_inside(bin_dir, [("RAW_DIR", raw_dir), ("--spm-model", spm_model), ("--dict", dict_path)],
                                TOOL)
    before = set(_files_under(bin_dir))
    record = fileio.OutputRecord(bin_dir, TOOL)
    record.prepare(planned_outputs(layout, train_spm=spm_model is None, extras=extras), force, PrepareError)
    spm_dir = os.path.join(bin_dir, "spm")
    os.makedirs(spm_dir, exist_ok=True)
    langs = layout.languages

    # 1. joint sentencepiece model over every train and mono file
    if spm_model is None:
        inputs = [f for splits in layout.bitext.values() for f in splits["train"]] + list(layout.mono.values())
        logger.info("training a joint sentencepiece model (vocab %d) on %d files", vocab_size, len(inputs))
        model_file = train_sentencepiece(inputs, os.path.join(bin_dir, "spm"), vocab_size, model_type, seed)
    else:
        model_file = os.path.join(bin_dir, "spm.model")
        shutil.copyfile(spm_model, model_file)
    sp = load_spm(model_file, None)

    # 2. encode every file with it
    encoded_train: List[str] = []
    for pair, splits in layout.bitext.items():
        for split, files in splits.items():
            for raw in files:
                out = os.path.join(spm_dir, os.path.basename(raw))
                encode_file(sp, raw, out)
                if split == "train":
                    encoded_train.append(out)
    for lang, raw in layout.mono.items():
        encode_file(sp, raw, os.path.join(spm_dir, os.path.basename(raw)))
        encoded_train.append(os.path.join(spm_dir, os.path.basename(raw)))
    for splits in extras.values():
        for files in splits.values():
            for raw in files:
                encode_file(sp, raw, os.path.join(spm_dir, os.path.basename(raw)))

    # 3. one joint dictionary, with a tag per language
    joint = os.path.join(bin_dir, "dict.txt")
    if dict_path is None:
        build_dictionary(sp, langs, encoded_train, joint)
    else:
        shutil.copyfile(dict_path, joint)

    # 4. binarise every pair and every monolingual file against it
    for (s, t), splits in sorted(layout.bitext.items()):
        argv = ["--source-lang", s, "--target-lang", t, "--destdir", bin_dir,
                "--srcdict", joint, "--tgtdict", joint, "--workers", str(workers)]
        for split in SPLITS:
            if split in splits:
                argv += [f"--{split}pref", os.path.join(spm_dir, f"{split}.{s}-{t}")]
        fairseq_preprocess(argv)
    for lang in sorted(layout.mono):
        with tempfile.TemporaryDirectory() as tmp:  # outside BIN_DIR: a crash leaves nothing there
            fairseq_preprocess(["--only-source", "--source-lang", lang, "--destdir", tmp, "--srcdict", joint,
                                "--trainpref", os.path.join(spm_dir, "mono"), "--workers", str(workers)])
            for ext in ("bin", "idx"):
                shutil.move(os.path.join(tmp, f"train.{lang}-None.{lang}.{ext}"),
                            os.path.join(bin_dir, f"mono.{lang}.{ext}"))
    for (s, t), splits in sorted(extras.items()):  # binarised as train in a scratch directory, then renamed
        for split in splits:
            with tempfile.TemporaryDirectory() as tmp:
                fairseq_preprocess(["--source-lang", s, "--target-lang", t, "--destdir", tmp, "--srcdict", joint,
                                    "--tgtdict", joint, "--workers", str(workers),
                                    "--trainpref", os.path.join(spm_dir, f"{split}.{s}-{t}")])
                for lang in (s, t):
                    for ext in ("bin", "idx"):
                        shutil.move(os.path.join(tmp, f"train.{s}-{t}.{lang}.{ext}"),
                                    os.path.join(bin_dir, f"{split}.{s}-{t}.{lang}.{ext}"))
    for lang in langs:  # fairseq's tasks look up dict.LANG.txt
        target = os.path.join(bin_dir, f"dict.{lang}.txt")
        if not os.path.exists(target) or not filecmp.cmp(joint, target, shallow=False):
            shutil.copyfile(joint, target)

    summary = {
        "raw_dir": layout.root,
        "spm_model": os.path.abspath(model_file),
        "dictionary": os.path.abspath(joint),
        "languages": langs,
        "pairs": [f"{s}-{t}" for s, t in layout.pairs],
        "splits": {f"{s}-{t}": sorted(sp_) + sorted(extras.get((s, t), {})) for (s, t), sp_ in layout.bitext.items()},
        "mono": sorted(layout.mono),
        "vocab_size": sum(1 for _ in fileio.open_text(joint)),
        "raw_files": checksums,  # sha256 of every raw file: evaluate.py and --reuse check them
        "options": options,
    }
    split_record = os.path.join(layout.root, META_DEV_RECORD)
    if extras and os.path.isfile(split_record):  # how the dev set was split (scripts/split_meta_dev.py)
        import json

        with fileio.open_text(split_record) as f:
            try:
                summary["meta_dev_split"] = json.load(f)
            except ValueError:
                logger.warning("%s is not valid JSON: the meta-dev split is not recorded", split_record)
    # everything this run created is recorded (for the next --force), then prepare.json marks it complete
    record.write(set(record.files() or []) | (set(_files_under(bin_dir)) - before) | {"prepare.json"})
    fileio.write_json(summary_path, summary)
    logger.info("prepared %s -> %s: pairs %s, mono %s", raw_dir, bin_dir, summary["pairs"], summary["mono"])
    return summary


def _sha256_or_none(path: Optional[str]) -> Optional[str]:
    from fairseq_metabt.data.raw_layout import sha256_file

    return sha256_file(path) if path and os.path.isfile(path) else None


def _reusable(summary_path: str, layout: RawLayout, checksums: Dict[str, str], options: dict) -> Optional[dict]:
    """The summary of a preparation that ``--reuse`` may keep; a refusal when it is of another corpus."""
    import json

    try:
        with fileio.open_text(summary_path) as f:
            old = json.load(f)
        old_raw = old["raw_dir"]
    except (ValueError, KeyError, TypeError):
        return None  # not a complete summary of ours: prepared again (the output record decides what may go)
    bin_dir = os.path.dirname(summary_path)
    fix = (f"use another output directory (a recipe: another --work-dir), or delete {bin_dir} and everything "
           "trained on it")
    recorded = old.get("raw_files")
    if recorded is None:  # prepared before checksums were recorded: only the path can be compared
        if os.path.realpath(old_raw) != os.path.realpath(layout.root):
            raise PrepareError(f"{bin_dir} was prepared from {old_raw}, not from {layout.root}", fix)
        logger.warning("%s records no checksums of %s (an older preparation): reused without checking its "
                       "content", summary_path, old_raw)
        return old
    if recorded != checksums:
        changed = sorted(n for n in set(recorded) | set(checksums) if recorded.get(n) != checksums.get(n))
        shown = ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")
        same = os.path.realpath(old_raw) == os.path.realpath(layout.root)
        raise PrepareError(f"{bin_dir} was prepared from {'the files of ' if same else ''}{old_raw}, whose content "
                           f"differs from {layout.root} ({len(changed)} files differ: {shown}); reusing it would "
                           "train and score on the old corpus", fix)
    before = old.get("options", options)
    if before != options:
        diff = ", ".join(f"{k} {before.get(k)} -> {options.get(k)}" for k in sorted(set(before) | set(options))
                         if before.get(k) != options.get(k))
        raise PrepareError(f"{bin_dir} was prepared from this corpus with other options ({diff})", fix)
    logger.info("%s already holds this corpus (%d files, same checksums): reused", bin_dir, len(checksums))
    return old


def planned_outputs(layout: RawLayout, train_spm: bool, extras: Optional[Dict[tuple, Dict[str, tuple]]] = None
                    ) -> List[str]:
    """Every file :func:`prepare` writes into BIN_DIR (names relative to it)."""
    names = ["spm.model", "dict.txt", "prepare.json", "preprocess.log"] + (["spm.vocab"] if train_spm else [])
    names += [f"dict.{lang}.txt" for lang in layout.languages]
    for (s, t), splits in layout.bitext.items():
        for split, files in splits.items():
            names += ["spm/" + os.path.basename(f) for f in files]
            names += [f"{split}.{s}-{t}.{lang}.{ext}" for lang in (s, t) for ext in ("bin", "idx")]
    for lang, raw in layout.mono.items():
        names += ["spm/" + os.path.basename(raw)] + [f"mono.{lang}.{ext}" for ext in ("bin", "idx")]
    for (s, t), splits in (extras or {}).items():
        for split, files in splits.items():
            names += ["spm/" + os.path.basename(f) for f in files]
            names += [f"{split}.{s}-{t}.{lang}.{ext}" for lang in (s, t) for ext in ("bin", "idx")]
    return names


def _files_under(directory: str) -> List[str]:
    if not os.path.isdir(directory):
        return []
    return [os.path.relpath(os.path.join(d, n), directory) for d, _, names in os.walk(directory) for n in names]


@cli
def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("raw_dir", help="corpus in the raw layout (docs/data.md)")
    p.add_argument("bin_dir", help="output directory for fairseq-binarised data")
    p.add_argument("--vocab-size", type=int, default=4000, help="joint sentencepiece vocabulary size (upper bound)")
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe"], help="sentencepiece model type")
    p.add_argument("--seed", type=int, default=1, help="sentencepiece sampling seed")
    p.add_argument("--workers", type=int, default=2, help="fairseq-preprocess worker processes")
    p.add_argument("--spm-model", help="reuse this sentencepiece model instead of training one")
    p.add_argument("--dict", dest="dict_path", help="reuse this fairseq dictionary (with --spm-model)")
    p.add_argument("--force", action="store_true", help="replace data previously prepared in BIN_DIR")
    p.add_argument("--reuse", action="store_true",
                   help="keep BIN_DIR when it already holds this corpus (same raw checksums and options); refuse "
                        "one prepared from another corpus")
    args = p.parse_args(argv)
    if args.vocab_size < 8:
        raise PrepareError(f"--vocab-size must be at least 8, got {args.vocab_size}", "pass --vocab-size 8 or more")
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s", level=logging.INFO)
    prepare(args.raw_dir, args.bin_dir, args.vocab_size, args.model_type, args.seed, args.force,
            args.spm_model, args.dict_path, args.workers, args.reuse)
    return 0


if __name__ == "__main__":
    sys.exit(main())
