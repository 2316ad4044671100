#!/usr/bin/env python
"""Evaluate a checkpoint: fairseq-generate, sentencepiece decoding, sacrebleu BLEU and chrF.

    python scripts/evaluate.py BIN_DIR --path CKPT -s SRC -t TGT [--subset test] [--beam 5]
           [--task translation] [--json OUT.json] [-- extra fairseq-generate args]

The hypotheses come from the real ``fairseq-generate`` CLI (run with the
plugin's ``--user-dir``); the references are the untokenised raw files named in
``BIN_DIR/prepare.json`` (or ``--ref``), so scores are comparable with any other
system scored by sacrebleu on the same references.

Before anything runs, the checkpoint must translate ``-s``->``-t`` with
BIN_DIR's dictionary (``checkpoints.check_translates``), the reference must be
byte-identical to the raw file ``prepare.json`` recorded (its sha256), and no
output (``--json``, ``--hyps``, ``--output``) may be an input (checkpoint,
reference, a prepared file) or anything but a regular file or a new name.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
USER_DIR = os.path.join(ROOT, "fairseq_metabt")
sys.path.insert(0, ROOT)

from fairseq_metabt import checkpoints, fileio, validate  # noqa: E402
from fairseq_metabt.data.raw_layout import sha256_file  # noqa: E402
from fairseq_metabt.errors import UserError, UserFileError, cli  # noqa: E402


def fairseq_cli(name: str) -> List[str]:
    """Command prefix for a fairseq console script, preferring the one next to this interpreter."""
    local = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(local):
        return [local]
    found = shutil.which(name)
    if found is None:
        raise UserError(f"{name} not found", "run `bash scripts/setup_env.sh` and use .venv/bin/python")
    return [found]


def parse_generate_output(text: str, post_line: str = "D") -> Dict[int, str]:
    """``{sample id: hypothesis}`` from fairseq-generate's ``D-<id>\\t<score>\\t<text>`` lines."""
    hyps: Dict[int, str] = {}
    pattern = re.compile(rf"^{post_line}-(\d+)\t[^\t]*\t?(.*)$")
    for line in text.splitlines():
        m = pattern.match(line)
        if m:
            hyps[int(m.group(1))] = m.group(2).strip()
    return hyps


def score(hyps: List[str], refs: List[str]) -> dict:
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(hyps, [refs])
    c = chrf.corpus_score(hyps, [refs])
    return {
        "bleu": round(b.score, 2),
        "chrf": round(c.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "n": len(hyps),
    }


def evaluate(
    bin_dir: str,
    path: str,
    src: str,
    tgt: str,
    subset: str = "test",
    beam: int = 5,
    task: str = "translation",
    ref: Optional[str] = None,
    extra: Optional[List[str]] = None,
    batch_size: int = 64,
    output: Optional[str] = None,
    hyps_out: Optional[str] = None,
    json_out: Optional[str] = None,
) -> dict:
    validate.value("--beam", beam, ">=1")
    validate.value("--batch-size", batch_size, ">=1")
    if not os.path.exists(path):
        raise UserFileError(f"checkpoint {path} does not exist", "train first or fix --path")
    checkpoints.check_readable(path, "--path")  # a truncated file: one clear line, not fairseq-generate's OSError
    ref, recorded = reference(bin_dir, src, tgt, subset, ref)
    inputs = [("the checkpoint --path", path), ("the reference", ref)] + prepared_files(bin_dir)
    outputs = [(flag, out) for flag, out in (("--output", output), ("--hyps", hyps_out), ("--json", json_out)) if out]
    for i, (flag, out) in enumerate(outputs):
        fileio.check_output(out, flag, inputs)
        for other, earlier in outputs[:i]:
            if os.path.abspath(earlier) == os.path.abspath(out):
                raise UserError(f"{flag} and {other} name the same file {out}", "give each output its own file")
    if recorded is not None and sha256_file(ref) != recorded:
        raise UserError(f"the reference {ref} has changed since {bin_dir} was prepared (its sha256 differs from the "
                        "one recorded in prepare.json): the binarised test set and the reference no longer match",
                        "restore the file, or prepare the corpus again (and retrain on it)")
    state = checkpoints.load(path, "--path")  # not a checkpoint at all: one clear line
    checkpoints.check_translates(state, path, "--path", src, tgt, bin_dir)
    del state
    cmd = fairseq_cli("fairseq-generate") + [
        bin_dir, "--user-dir", USER_DIR, "--task", task, "--path", path,
        "--source-lang", src, "--target-lang", tgt, "--gen-subset", subset,
        "--beam", str(beam), "--batch-size", str(batch_size), "--post-process", "sentencepiece",
        "--seed", "1",
        # fairseq drops a last batch whose size is not a multiple of this (fairseq issue #5036):
        # every test sentence must be translated.
        "--required-batch-size-multiple", "1",
    ] + ([] if _cuda() else ["--cpu"]) + list(extra or [])
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if output:
        fileio.write_text(output, proc.stdout, "--output", inputs)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"evaluate.py: fairseq-generate failed (exit {proc.returncode}): {' '.join(cmd)}")
    hyps = parse_generate_output(proc.stdout)
    with open(ref, encoding="utf-8", newline="\n") as f:  # lines end at \n only, as everywhere
        refs = [line.strip() for line in f]
    if sorted(hyps) != list(range(len(refs))):
        raise UserError(
            f"fairseq-generate produced {len(hyps)} hypotheses for {len(refs)} references in {ref}: the binarised "
            "subset and the raw reference file disagree", "re-run prepare_data.py")
    ordered = [hyps[i] for i in range(len(refs))]
    result = score(ordered, refs)
    result.update({"checkpoint": os.path.abspath(path), "pair": f"{src}-{tgt}", "subset": subset,
                   "ref": os.path.abspath(ref)})
    if hyps_out:  # detokenised hypotheses in test-set order, for paired significance tests
        with fileio.atomic_write(hyps_out, flag="--hyps", inputs=inputs) as f:
            f.writelines(h + "\n" for h in ordered)
    if json_out:
        fileio.write_json(json_out, result, "--json", inputs)
    return result


def reference(bin_dir: str, src: str, tgt: str, subset: str, ref: Optional[str]) -> tuple:
    """The raw reference file and the sha256 prepare.json recorded for it (None: nothing to check against)."""
    if ref is not None:
        if not os.path.isfile(ref):
            raise UserFileError(f"reference file {ref} not found", "pass --ref")
        return ref, None
    info_path = os.path.join(bin_dir, "prepare.json")
    if not os.path.exists(info_path):
        raise UserFileError(f"{info_path} missing", "pass --ref RAW_REFERENCE_FILE")
    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
        raw_dir = info["raw_dir"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{info_path} is not a prepare_data.py summary ({e})",
                        "prepare the corpus again, or pass --ref RAW_REFERENCE_FILE") from e
    for name in (f"{subset}.{src}-{tgt}.{tgt}", f"{subset}.{tgt}-{src}.{tgt}"):  # either stored direction
        if os.path.exists(os.path.join(raw_dir, name)):
            break
    ref = os.path.join(raw_dir, name)
    if not os.path.exists(ref):
        raise UserFileError(f"reference file {ref} not found", "pass --ref")
    checksums = info.get("raw_files") or {}
    if name not in checksums:
        import logging

        logging.getLogger("evaluate").warning(
            "%s records no checksum of %s (prepared by an older version): cannot check that the reference is "
            "the one that was binarised", info_path, ref)
        return ref, None
    return ref, checksums[name]


def prepared_files(bin_dir: str) -> List[tuple]:
    """(description, path) of every file prepare_data.py wrote into BIN_DIR: inputs, never to be overwritten."""
    names = fileio.OutputRecord(bin_dir, "prepare_data.py").files() or []
    return [("the prepared file", os.path.join(bin_dir, n)) for n in names]


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@cli
def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bin_dir")
    p.add_argument("--path", required=True, help="checkpoint to evaluate")
    p.add_argument("-s", "--source-lang", required=True)
    p.add_argument("-t", "--target-lang", required=True)
    p.add_argument("--subset", default="test")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--task", default="translation", help="fairseq task for generation")
    p.add_argument("--ref", help="raw reference file (default: from BIN_DIR/prepare.json)")
    p.add_argument("--output", help="save fairseq-generate's output here")
    p.add_argument("--json", help="write the scores as JSON here")
    p.add_argument("--hyps", help="write the detokenised hypotheses here, one per line in test-set order")
    args = p.parse_args(argv)
    result = evaluate(args.bin_dir, args.path, args.source_lang, args.target_lang, args.subset, args.beam,
                      args.task, args.ref, extra, args.batch_size, args.output, args.hyps, args.json)
    print(f"BLEU = {result['bleu']:.2f}  ({result['bleu_signature']})")
    print(f"chrF = {result['chrf']:.2f}  ({result['chrf_signature']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
